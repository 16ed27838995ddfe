/**
 * SourceChain: the ChunkFetcher of a mount. Tries its sources in order (mirrors first, the origin
 * last, or a local blob dir), skipping sources named in `exclude` (they served bad bytes for this
 * range) and, while others remain, sources whose health check failed; unhealthy sources are still
 * tried as a last resort, after every healthy one failed. Records bytes, requests and errors per
 * source. On-demand fetches hold the shared FetchGate open, so prefetch waits behind them.
 *
 * When every source fails, it throws an error with the code of the last failure (so a missing
 * blob stays NotFound and a dead registry Unavailable) whose message names the blob, the range
 * and every source's cause; `details.causes` lists them too. With no source left to try at all
 * (all excluded), NAIAD_FS_SOURCES_EXHAUSTED.
 */
import { NaiadError, isNaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { ChunkFetcher, FetchOptions, FetchResult, RangeSource } from '../types.ts'
import { FetchGate } from './gate.ts'
import { abortReason, checkRange, describeError, isCallerAbort } from './util.ts'

export interface SourceChainDeps {
  /** In the order to try them. Names must be unique. */
  sources: readonly RangeSource[]
  /** Shared with the Prefetchers (default: an own gate, see `gate`). */
  gate?: FetchGate
  logger?: Logger
}

export interface SourceChainOptions {
  /** Try unhealthy sources after every healthy one failed (default true). */
  tryUnhealthy?: boolean
}

export interface SourceStats {
  kind: RangeSource['kind']
  healthy: boolean
  requests: number
  /** Bytes served (compressed blob bytes). */
  bytes: number
  errors: number
  /** Times the source was passed over as unhealthy. */
  skipped: number
  /** Ranges read straight into the cache's buffers (sources that can: plain-HTTP origin, mirrors). */
  directReads?: number
  lastError?: string
}

export interface SourceCause {
  source: string
  code?: string
  message: string
}

export class SourceChain implements ChunkFetcher {
  readonly gate: FetchGate
  private readonly sources: readonly RangeSource[]
  private readonly log: Logger
  private readonly tryUnhealthy: boolean
  private readonly perSource = new Map<string, SourceStats>()

  constructor (deps: SourceChainDeps, options: SourceChainOptions = {}) {
    if (deps.sources.length === 0) throw new NaiadError('NAIAD_INTERNAL', 'a source chain needs at least one source')
    const names = new Set<string>()
    for (const s of deps.sources) {
      if (names.has(s.name)) throw new NaiadError('NAIAD_INTERNAL', `two blob sources are named ${s.name}`)
      names.add(s.name)
      this.perSource.set(s.name, { kind: s.kind, healthy: true, requests: 0, bytes: 0, errors: 0, skipped: 0 })
    }
    this.sources = [...deps.sources]
    this.gate = deps.gate ?? new FetchGate()
    this.log = (deps.logger ?? nullLogger()).child({ component: 'fsdaemon.fetch' })
    this.tryUnhealthy = options.tryUnhealthy ?? true
  }

  /** Source names, in order. */
  get names (): string[] { return this.sources.map(s => s.name) }

  /** Per-source counters (a copy). */
  stats (): Record<string, SourceStats> {
    const out: Record<string, SourceStats> = {}
    for (const s of this.sources) {
      const st = this.perSource.get(s.name) as SourceStats
      const direct = s.directReads?.()
      out[s.name] = { ...st, healthy: s.healthy(), ...(direct !== undefined ? { directReads: direct } : {}) }
    }
    return out
  }

  async fetchRange (blobId: string, start: number, end: number, opts: FetchOptions & { exclude?: ReadonlySet<string> } = {}): Promise<FetchResult> {
    checkRange(blobId, start, end)
    const exclude = opts.exclude
    const priority = opts.priority ?? 'ondemand'
    const causes: SourceCause[] = []
    const healthy: RangeSource[] = []
    const unhealthy: RangeSource[] = []
    for (const s of this.sources) {
      if (exclude?.has(s.name) === true) {
        causes.push({ source: s.name, message: 'excluded: it served bytes that failed verification' })
      } else if (s.healthy()) {
        healthy.push(s)
      } else {
        unhealthy.push(s)
        ;(this.perSource.get(s.name) as SourceStats).skipped++
      }
    }
    const order = this.tryUnhealthy ? [...healthy, ...unhealthy] : healthy
    if (!this.tryUnhealthy) for (const s of unhealthy) causes.push({ source: s.name, message: 'skipped: unhealthy' })
    const leave = priority === 'ondemand' ? this.gate.enter() : undefined
    let last: unknown
    try {
      for (const s of order) {
        if (opts.signal?.aborted === true) throw abortReason(opts.signal)
        const st = this.perSource.get(s.name) as SourceStats
        st.requests++
        try {
          const progress = opts.onProgress
          const data = await s.fetch(blobId, start, end, {
            priority,
            ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
            ...(opts.alloc !== undefined ? { alloc: opts.alloc } : {}),
            ...(progress !== undefined ? { onProgress: (d: Buffer, filled: number) => { progress(d, filled, s.name) } } : {})
          })
          if (data.length !== end - start + 1) {
            throw new NaiadError('NAIAD_INTERNAL', `source ${s.name} returned ${data.length} bytes for ${end - start + 1}`)
          }
          st.bytes += data.length
          if (causes.length > 0) {
            this.log.info({ blobId, start, end, source: s.name, failed: causes.map(c => c.source) }, 'range served by a fallback source')
          }
          return { data, source: s.name }
        } catch (err) {
          if (isCallerAbort(opts.signal)) throw abortReason(opts.signal as AbortSignal)
          st.errors++
          st.lastError = describeError(err)
          last = err
          causes.push({ source: s.name, ...(isNaiadError(err) ? { code: err.code } : {}), message: isNaiadError(err) ? err.message : describeError(err) })
          const next = order[order.indexOf(s) + 1]
          this.log.warn({ blobId, start, end, source: s.name, err, ...(next !== undefined ? { next: next.name } : {}) },
            next !== undefined ? 'blob source failed, trying the next one' : 'blob source failed, no source left')
        }
      }
    } finally {
      leave?.()
    }
    const summary = causes.map(c => `${c.source}: ${c.code !== undefined ? `${c.code}: ` : ''}${c.message}`).join('; ')
    const msg = `blob ${blobId} bytes ${start}-${end}: every source failed (${summary})`
    const details = { blobId, start, end, causes }
    if (last === undefined) throw new NaiadError('NAIAD_FS_SOURCES_EXHAUSTED', msg, { details })
    if (isNaiadError(last)) throw new NaiadError(last.code, msg, { cause: last, details })
    throw new NaiadError('NAIAD_FS_SOURCES_EXHAUSTED', msg, { cause: last, details })
  }

  /** Closes every source. Safe twice. */
  async close (): Promise<void> {
    await Promise.all(this.sources.map(async s => { await s.close() }))
  }
}
