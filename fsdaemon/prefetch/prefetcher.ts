/**
 * Prefetcher: after a mount, fetches in the background the chunks of the files named in the
 * image's prefetch table, in their order, and then (optionally) every other chunk of the image,
 * by blob and blob offset so that requests merge well.
 *
 * - Bounded: `concurrency` batches in flight, each at most `batchBytes` (compressed) of chunks
 *   of one blob; the cache merges a batch into Range requests.
 * - Throttled: `bandwidthBytesPerSec` (compressed bytes; 0 = unlimited).
 * - Always behind on-demand reads: before each batch it waits until the shared FetchGate reports
 *   no on-demand fetch in flight, so a reader never queues behind prefetch work; prefetch
 *   requests carry priority `prefetch` (X-Naiad-Priority for mirrors).
 * - Chunks already ready are skipped (checked again right before fetching).
 * - Failures are logged and counted, never thrown, and never fail a read: a read that joined a
 *   failed prefetch fetch fetches again by itself (BlobCache).
 * - `close()` (or the `signal`) stops it: no new batch starts, the wait ends (requests already
 *   sent complete in the cache's background and are kept).
 */
import { setMaxListeners } from 'node:events'
import type { BlobInfo, ChunkRef } from '../../lib/format/types.ts'
import { NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { FetchGate } from '../fetch/gate.ts'
import type { ChunkFetcher, ChunkReader } from '../types.ts'
import { Throttle } from './throttle.ts'

export interface PrefetchFile {
  /** For logs. */
  path?: string
  /** The file's chunks in file order. */
  chunks: readonly ChunkRef[]
}

export interface PrefetcherDeps {
  /** The chunk cache of a blob (the mount's leases). */
  cacheFor: (blob: BlobInfo) => ChunkReader
  fetcher: ChunkFetcher
  /** The daemon's gate (SourceChain.gate); without one prefetch does not yield to reads. */
  gate?: FetchGate
  logger?: Logger
  now?: () => number
}

export interface PrefetcherOptions {
  /** The prefetch table's files, in order. */
  files: readonly PrefetchFile[]
  /** Then these chunks too ("prefetch all"), e.g. every chunk of the image; duplicates are fine. */
  rest?: Iterable<ChunkRef> | (() => Iterable<ChunkRef>)
  /** Batches in flight (default 4). */
  concurrency?: number
  /** Compressed bytes per second (default 0 = unlimited). */
  bandwidthBytesPerSec?: number
  /** Compressed bytes of chunks per batch (default 1 MiB; a batch has at least one chunk). */
  batchBytes?: number
  /** Stops the prefetch (as close() does). */
  signal?: AbortSignal
}

export type PrefetchState = 'idle' | 'running' | 'done' | 'stopped'

export interface PrefetchStats {
  state: PrefetchState
  /** What is being fetched now. */
  phase: 'files' | 'rest' | undefined
  files: number
  /** Unique chunks to prefetch (known once started). */
  chunksTotal: number
  /** Chunks handled: fetched, found ready, or failed. */
  chunksDone: number
  chunksFetched: number
  /** Chunks that were ready already (cached, or read on demand meanwhile). */
  chunksSkipped: number
  chunksFailed: number
  /** Compressed bytes of the chunks fetched. */
  bytesFetched: number
  /** Batches that waited for on-demand fetches first. */
  yieldedToReads: number
  startedAt?: string
  durationMs?: number
}

interface Batch { chunks: ChunkRef[], bytes: number, file?: string }

const MiB = 1024 * 1024

export class Prefetcher {
  private readonly deps: PrefetcherDeps
  private readonly files: readonly PrefetchFile[]
  private readonly rest: PrefetcherOptions['rest']
  private readonly concurrency: number
  private readonly batchBytes: number
  private readonly throttle: Throttle
  private readonly log: Logger
  private readonly now: () => number
  private readonly ctl = new AbortController()
  private readonly unlink: (() => void) | undefined
  private running: Promise<void> | undefined
  private started = 0
  private finished: number | undefined
  private readonly s: Omit<PrefetchStats, 'startedAt' | 'durationMs'>

  constructor (deps: PrefetcherDeps, options: PrefetcherOptions) {
    this.deps = deps
    this.files = options.files
    this.rest = options.rest
    this.concurrency = options.concurrency ?? 4
    this.batchBytes = options.batchBytes ?? MiB
    const bw = options.bandwidthBytesPerSec ?? 0
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1 || !(this.batchBytes > 0) || !(bw >= 0)) {
      throw new NaiadError('NAIAD_CFG_INVALID', `prefetch: concurrency ${this.concurrency} must be a positive integer, batchBytes ${this.batchBytes} positive, bandwidth ${bw} not negative`)
    }
    this.now = deps.now ?? Date.now
    this.throttle = new Throttle({ now: this.now }, { bytesPerSec: bw })
    this.log = (deps.logger ?? nullLogger()).child({ component: 'fsdaemon.prefetch' })
    // shared by every request in flight
    setMaxListeners(0, this.ctl.signal)
    this.s = { state: 'idle', phase: undefined, files: this.files.length, chunksTotal: 0, chunksDone: 0, chunksFetched: 0, chunksSkipped: 0, chunksFailed: 0, bytesFetched: 0, yieldedToReads: 0 }
    const outer = options.signal
    if (outer !== undefined) {
      const on = (): void => { this.ctl.abort(outer.reason) }
      if (outer.aborted) on()
      else {
        outer.addEventListener('abort', on, { once: true })
        this.unlink = () => outer.removeEventListener('abort', on)
      }
    }
  }

  /** Starts the background work. Idempotent; a no-op after close(). */
  start (): void {
    if (this.running !== undefined || this.ctl.signal.aborted) return
    this.s.state = 'running'
    this.started = this.now()
    this.running = this.main().catch((err: unknown) => {
      this.log.error({ err }, 'prefetch stopped by an unexpected error')
    }).finally(() => {
      this.finished = this.now()
      this.s.state = this.ctl.signal.aborted ? 'stopped' : 'done'
      this.s.phase = undefined
      this.unlink?.()
    })
  }

  /** Resolves when the prefetch is done or stopped (at once if never started). */
  async wait (): Promise<PrefetchStats> {
    await this.running
    return this.stats()
  }

  stats (): PrefetchStats {
    return {
      ...this.s,
      ...(this.started > 0 ? { startedAt: new Date(this.started).toISOString(), durationMs: (this.finished ?? this.now()) - this.started } : {})
    }
  }

  /**
   * Stops: no new batch starts and the workers stop waiting; resolves when they have. Requests
   * already sent finish in the background and still fill the cache. Safe twice.
   */
  async close (): Promise<void> {
    if (!this.ctl.signal.aborted) this.ctl.abort(new NaiadError('NAIAD_CLOSED', 'prefetch stopped'))
    await this.running
    if (this.running === undefined) this.s.state = this.s.state === 'idle' ? 'stopped' : this.s.state
    this.unlink?.()
  }

  private async main (): Promise<void> {
    const seen = new Set<string>()
    const key = (c: ChunkRef): string => `${c.blob.blobId}:${c.index}`
    const fileBatches: Batch[] = []
    for (const f of this.files) {
      const fresh = f.chunks.filter(c => {
        if (seen.has(key(c))) return false
        seen.add(key(c))
        return true
      })
      // a file's chunks in file order; consecutive chunks of one blob share a batch
      this.pack(fresh, fileBatches, f.path)
    }
    const restRefs: ChunkRef[] = []
    if (this.rest !== undefined) {
      const it = typeof this.rest === 'function' ? this.rest() : this.rest
      for (const c of it) {
        if (seen.has(key(c))) continue
        seen.add(key(c))
        restRefs.push(c)
      }
      restRefs.sort((a, b) => a.blob.blobId < b.blob.blobId ? -1 : a.blob.blobId > b.blob.blobId ? 1 : a.compressedOffset - b.compressedOffset)
    }
    const restBatches: Batch[] = []
    this.pack(restRefs, restBatches, undefined)
    this.s.chunksTotal = seen.size
    this.log.info({ files: this.files.length, chunks: seen.size, restChunks: restRefs.length }, 'prefetch started')

    this.s.phase = 'files'
    await this.runAll(fileBatches)
    if (!this.ctl.signal.aborted && restBatches.length > 0) {
      this.s.phase = 'rest'
      await this.runAll(restBatches)
    }
    const { chunksFetched, chunksSkipped, chunksFailed, bytesFetched } = this.s
    this.log.info({ chunksFetched, chunksSkipped, chunksFailed, bytesFetched, durationMs: this.now() - this.started, stopped: this.ctl.signal.aborted },
      this.ctl.signal.aborted ? 'prefetch stopped' : 'prefetch done')
  }

  private pack (refs: readonly ChunkRef[], out: Batch[], file: string | undefined): void {
    let cur: Batch | undefined
    for (const c of refs) {
      if (cur !== undefined && (cur.chunks[0]?.blob.blobId !== c.blob.blobId || cur.bytes + c.compressedSize > this.batchBytes)) cur = undefined
      if (cur === undefined) {
        cur = { chunks: [], bytes: 0, ...(file !== undefined ? { file } : {}) }
        out.push(cur)
      }
      cur.chunks.push(c)
      cur.bytes += c.compressedSize
    }
  }

  private async runAll (batches: Batch[]): Promise<void> {
    let next = 0
    const worker = async (): Promise<void> => {
      while (!this.ctl.signal.aborted) {
        const b = batches[next++]
        if (b === undefined) return
        await this.runBatch(b)
      }
    }
    await Promise.all(Array.from({ length: Math.min(this.concurrency, batches.length) }, worker))
  }

  private async runBatch (b: Batch): Promise<void> {
    const signal = this.ctl.signal
    const first = b.chunks[0] as ChunkRef
    let missing = b.chunks
    try {
      const cache = this.deps.cacheFor(first.blob)
      const notReady = (): ChunkRef[] => missing.filter(c => !cache.isReady(c.index))
      let still = notReady()
      this.skip(missing.length - still.length)
      missing = still
      if (missing.length === 0) return
      const gate = this.deps.gate
      if (gate !== undefined && gate.inFlight > 0) this.s.yieldedToReads++
      await gate?.idle(signal)
      await this.throttle.reserve(missing.reduce((n, c) => n + c.compressedSize, 0), signal)
      // reads may have fetched some of them meanwhile
      still = notReady()
      this.skip(missing.length - still.length)
      missing = still
      if (missing.length === 0) return
      await cache.ensure(missing, this.deps.fetcher, { signal, priority: 'prefetch' })
      this.s.chunksFetched += missing.length
      this.s.chunksDone += missing.length
      this.s.bytesFetched += missing.reduce((n, c) => n + c.compressedSize, 0)
    } catch (err) {
      if (signal.aborted) return
      this.s.chunksFailed += missing.length
      this.s.chunksDone += missing.length
      this.log.warn({ err, blobId: first.blob.blobId, chunkIndex: first.index, chunks: missing.length, ...(b.file !== undefined ? { path: b.file } : {}) },
        'prefetch of chunks failed; they will be fetched on demand')
    }
  }

  private skip (n: number): void {
    this.s.chunksSkipped += n
    this.s.chunksDone += n
  }
}
