/**
 * MirrorRangeSource: an HTTP blob mirror as docs/mirror-contract.md describes it (the node's p2p
 * peer, or any registry mirror). Requests are registry blob GETs with `Range`, `X-Naiad-Origin`
 * naming the origin registry, `X-Naiad-Priority` (ondemand | prefetch) and, only when configured
 * to, the origin's Authorization.
 *
 * Health: `start()` polls `GET /healthz` every `healthIntervalMs` (unref'd timers; `close()` stops
 * them). The mirror is marked unhealthy after `failureThreshold` consecutive failures, counting
 * failed requests (transport errors, 5xx, wrong answers) and failed health checks alike, and
 * healthy again as soon as a health check passes. A 404/401/403 is the origin's answer relayed,
 * not a mirror failure. A request it serves (the chain tries unhealthy sources as a last resort)
 * also makes it healthy again. The mirror never retries: the chain falls back to the next source.
 *
 * Over plain HTTP (the node's peer), a range is first read straight into the cache's buffer
 * (lib/registry DirectRangeReader, docs/decisions/0006-direct-range-reads.md); any answer but a
 * 206 of exactly the bytes asked for is asked again through undici, which maps it to an error as
 * before. A mirror whose answers say its ranges are not for direct reads (a redirect, a 206 in
 * a form not taken) is read through undici from then on.
 */
import { setMaxListeners } from 'node:events'
import { Agent, type Dispatcher } from 'undici'
import { NaiadError, isNaiadError } from '../../lib/errors/index.ts'
import { DirectRangeReader, isDirectUrl } from '../../lib/registry/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import { discard, networkError, readExcerpt, safeUrl, statusError } from '../../lib/registry/errors.ts'
import type { FetchOptions, RangeSource } from '../types.ts'
import { abortReason, checkBlobId, checkRange, describeError, isCallerAbort, linkSignals, ownedBuffer, readExact } from './util.ts'

export interface MirrorRangeSourceDeps {
  /** HTTP dispatcher (default: an own undici Agent, closed by close()). */
  dispatcher?: Dispatcher
  logger?: Logger
  /**
   * The origin's Authorization value (e.g. `Bearer …`), asked for each request when
   * `sendAuthorization` is set. Undefined: none is sent.
   */
  authorization?: (signal?: AbortSignal) => Promise<string | undefined>
}

export interface MirrorRangeSourceOptions {
  /** Base URL of the mirror, e.g. `http://127.0.0.1:65001` (a path prefix is kept). */
  url: string
  /** Repository of the image at the origin (`library/busybox`). */
  repository: string
  /** The origin registry as `scheme://host[:port]` (sent as X-Naiad-Origin). */
  origin: string
  /** Name in logs and metrics (default `mirror:<url>`). */
  name?: string
  /** Send the origin's Authorization (only to a mirror on this node; default false). */
  sendAuthorization?: boolean
  /** Deadline of one request, headers and body (default 30 s). */
  timeoutMs?: number
  /** Health check period (default 5 s). */
  healthIntervalMs?: number
  /** Deadline of one health check (default 2 s). */
  healthTimeoutMs?: number
  /** Consecutive failures that make the mirror unhealthy (default 3). */
  failureThreshold?: number
  /** Read plain-HTTP ranges straight into the cache's buffers (default true; not with an injected dispatcher). */
  direct?: boolean
}

export interface MirrorStats {
  healthy: boolean
  consecutiveFailures: number
  healthChecks: number
  healthCheckFailures: number
  /** Times the mirror went unhealthy. */
  markedUnhealthy: number
  /** Ranges read directly into the cache's buffers. */
  directReads: number
}

const REPOSITORY = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/

export class MirrorRangeSource implements RangeSource {
  readonly name: string
  readonly kind = 'mirror' as const
  readonly url: string
  private readonly base: URL
  private readonly repository: string
  private readonly origin: string
  private readonly log: Logger
  private readonly injected: Dispatcher | undefined
  private agent: Dispatcher | undefined
  private readonly authorization: MirrorRangeSourceDeps['authorization']
  private readonly sendAuthorization: boolean
  private readonly timeoutMs: number
  private readonly healthIntervalMs: number
  private readonly healthTimeoutMs: number
  private readonly failureThreshold: number
  private readonly closing = new AbortController()
  private closed = false
  private started = false
  private timer: NodeJS.Timeout | undefined
  private checking: Promise<void> | undefined
  private isHealthy = true
  private failures = 0
  private readonly counters = { healthChecks: 0, healthCheckFailures: 0, markedUnhealthy: 0, directReads: 0 }
  private direct: DirectRangeReader | undefined

  constructor (deps: MirrorRangeSourceDeps, options: MirrorRangeSourceOptions) {
    let base: URL
    try {
      base = new URL(options.url)
    } catch (err) {
      throw new NaiadError('NAIAD_CFG_INVALID', `mirror URL ${JSON.stringify(options.url)} is not a URL`, { cause: err })
    }
    if ((base.protocol !== 'http:' && base.protocol !== 'https:') || base.search !== '' || base.hash !== '' || base.username !== '' || base.password !== '') {
      throw new NaiadError('NAIAD_CFG_INVALID', `mirror URL ${JSON.stringify(options.url)} must be http(s)://host[:port][/prefix] without query or credentials`)
    }
    if (!/^https?:\/\/[^/\s?#]+$/.test(options.origin)) {
      throw new NaiadError('NAIAD_CFG_INVALID', `mirror origin ${JSON.stringify(options.origin)} must be scheme://host[:port]`)
    }
    if (!REPOSITORY.test(options.repository)) {
      throw new NaiadError('NAIAD_REF_INVALID', `not a repository name: ${JSON.stringify(options.repository.slice(0, 200))}`)
    }
    // shared by every request in flight
    setMaxListeners(0, this.closing.signal)
    this.base = base
    this.url = `${base.origin}${base.pathname.replace(/\/+$/, '')}`
    this.name = options.name ?? `mirror:${this.url}`
    this.repository = options.repository
    this.origin = options.origin
    this.log = (deps.logger ?? nullLogger()).child({ component: 'fsdaemon.fetch', source: this.name })
    this.injected = deps.dispatcher
    this.authorization = deps.authorization
    this.sendAuthorization = options.sendAuthorization ?? false
    this.timeoutMs = options.timeoutMs ?? 30_000
    this.healthIntervalMs = options.healthIntervalMs ?? 5000
    this.healthTimeoutMs = options.healthTimeoutMs ?? 2000
    this.failureThreshold = options.failureThreshold ?? 3
    this.direct = (options.direct ?? true) && deps.dispatcher === undefined && isDirectUrl(base) ? new DirectRangeReader({ idleTimeoutMs: this.timeoutMs }) : undefined
    if (!(this.timeoutMs > 0) || !(this.healthIntervalMs > 0) || !(this.healthTimeoutMs > 0) || !Number.isInteger(this.failureThreshold) || this.failureThreshold < 1) {
      throw new NaiadError('NAIAD_CFG_INVALID', `mirror ${this.url}: timeouts and intervals must be positive, failureThreshold at least 1`)
    }
  }

  healthy (): boolean { return this.isHealthy && !this.closed }

  directReads (): number { return this.counters.directReads }

  stats (): MirrorStats {
    return { healthy: this.healthy(), consecutiveFailures: this.failures, ...this.counters }
  }

  private dispatcher (): Dispatcher {
    if (this.injected !== undefined) return this.injected
    this.agent ??= new Agent({ connect: { timeout: this.timeoutMs } })
    return this.agent
  }

  private path (p: string): string {
    return `${this.base.pathname.replace(/\/+$/, '')}${p}`
  }

  /** Starts the periodic health check (the first one right away). Idempotent. */
  start (): void {
    if (this.started || this.closed) return
    this.started = true
    this.schedule(0)
  }

  private schedule (ms: number): void {
    if (this.closed) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.checking = this.check().then(() => undefined, () => undefined).finally(() => {
        this.checking = undefined
        this.schedule(this.healthIntervalMs)
      })
    }, ms)
    this.timer.unref()
  }

  /** Runs one health check now; resolves with its outcome (also updates `healthy()`). */
  async check (): Promise<boolean> {
    if (this.closed) return false
    this.counters.healthChecks++
    const deadline = linkSignals([this.closing.signal], this.healthTimeoutMs)
    let ok = false
    let reason = ''
    try {
      const res = await this.dispatcher().request({
        origin: this.base.origin,
        path: this.path('/healthz'),
        method: 'GET',
        headers: { 'user-agent': 'naiad-fsd/0.1' },
        signal: deadline.signal,
        headersTimeout: this.healthTimeoutMs,
        bodyTimeout: this.healthTimeoutMs
      })
      discard(res.body)
      ok = res.statusCode === 200
      if (!ok) reason = `HTTP ${res.statusCode}`
    } catch (err) {
      reason = deadline.timedOut() ? `no answer within ${this.healthTimeoutMs} ms` : describeError(err)
    } finally {
      deadline.dispose()
    }
    if (this.closed) return false
    if (ok) {
      this.succeeded()
    } else {
      this.counters.healthCheckFailures++
      this.failed(`health check: ${reason}`)
    }
    return ok
  }

  /** A passing health check, or a request served (e.g. tried as a last resort): healthy again. */
  private succeeded (): void {
    this.failures = 0
    if (!this.isHealthy) {
      this.isHealthy = true
      this.log.info({ mirror: this.url }, 'mirror healthy again, using it')
    }
  }

  private failed (reason: string): void {
    this.failures++
    if (this.isHealthy && this.failures >= this.failureThreshold) {
      this.isHealthy = false
      this.counters.markedUnhealthy++
      this.log.warn({ mirror: this.url, failures: this.failures, reason }, 'mirror unhealthy, falling back to the next source')
    }
  }

  async fetch (blobId: string, start: number, end: number, opts: FetchOptions = {}): Promise<Buffer> {
    checkBlobId(blobId)
    checkRange(blobId, start, end)
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`)
    const what = `blob ${blobId} bytes ${start}-${end} from mirror ${this.url}`
    const url = new URL(`${this.url}/v2/${this.repository}/blobs/sha256:${blobId}`)
    const deadline = linkSignals([opts.signal, this.closing.signal], this.timeoutMs, () =>
      new NaiadError('NAIAD_REG_TIMEOUT', `${what}: no complete answer within ${this.timeoutMs} ms`, { details: { blobId, start, end, source: this.name } }))
    try {
      const headers: Record<string, string> = {
        'user-agent': 'naiad-fsd/0.1',
        range: `bytes=${start}-${end}`,
        'x-naiad-origin': this.origin,
        'x-naiad-priority': opts.priority ?? 'ondemand'
      }
      if (this.sendAuthorization && this.authorization !== undefined) {
        const auth = await this.authorization(deadline.signal)
        if (auth !== undefined) headers['authorization'] = auth
      }
      let into: Buffer | undefined
      if (this.direct !== undefined) {
        into = opts.alloc !== undefined ? opts.alloc(end - start + 1) : Buffer.allocUnsafeSlow(end - start + 1)
        const progress = opts.onProgress
        const target = into
        // (the reader writes its own Range line)
        const out = await this.direct.read({ url, headers, start, end, into, signal: deadline.signal, ...(progress !== undefined ? { onProgress: (filled: number) => { progress(target, filled) } } : {}) })
          .catch((err: unknown) => { throw isNaiadError(err) ? new NaiadError(err.code, `${what}: ${err.message}`, { cause: err, details: { source: this.name } }) : err })
        if (out.served) {
          this.counters.directReads++
          this.succeeded()
          return ownedBuffer(into)
        }
        if (out.stop) {
          this.log.info({ status: out.status, reason: out.reason }, 'mirror answers ranges in a way direct reads do not take; reading through the HTTP client from now on')
          this.direct.close()
          this.direct = undefined
        }
      }
      let res: Dispatcher.ResponseData
      try {
        res = await this.dispatcher().request({
          origin: url.origin,
          path: url.pathname,
          method: 'GET',
          headers,
          signal: deadline.signal,
          headersTimeout: this.timeoutMs,
          bodyTimeout: this.timeoutMs
        })
      } catch (err) {
        throw networkError(err, what, url, 1)
      }
      if (res.statusCode !== 206) {
        const source = header(res.headers, 'x-naiad-error-source')
        if (res.statusCode === 200) {
          discard(res.body)
          throw new NaiadError('NAIAD_REG_RANGE_UNSUPPORTED', `${what}: the mirror answered 200 (whole blob) to a Range request`, { details: { url: safeUrl(url), source: this.name } })
        }
        const excerpt = await readExcerpt(res.body)
        const e = statusError(res.statusCode, excerpt, what, 'GET', url)
        // the origin's own answer relayed (404, 401, 403, or flagged so) says nothing about the mirror
        const relayed = source === 'origin' || res.statusCode === 404 || res.statusCode === 401 || res.statusCode === 403
        throw new NaiadError(e.code, `${e.message}${source !== undefined ? ` (X-Naiad-Error-Source: ${source})` : ''}`, {
          details: { ...e.details, source: this.name, errorSource: source ?? 'unknown', relayed }
        })
      }
      const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header(res.headers, 'content-range') ?? '')
      if (cr === null || Number(cr[1]) !== start || Number(cr[2]) !== end) {
        discard(res.body)
        throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: 206 with Content-Range ${JSON.stringify(header(res.headers, 'content-range') ?? '(none)')}, expected bytes ${start}-${end}/…`)
      }
      let data: Buffer
      try {
        const reuse = into
        data = await readExact(res.body, end - start + 1, what, reuse !== undefined ? () => reuse : opts.alloc)
      } catch (err) {
        throw networkError(err, what, url, 1)
      }
      this.succeeded()
      return data
    } catch (err) {
      if (isCallerAbort(opts.signal)) throw abortReason(opts.signal as AbortSignal)
      if (this.closing.signal.aborted) throw new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`)
      const e = deadline.timedOut() ? abortReason(deadline.signal) : err
      const relayed = e instanceof NaiadError && e.details?.['relayed'] === true
      if (!relayed) this.failed(describeError(e))
      throw e
    } finally {
      deadline.dispose()
    }
  }

  /** Stops the health checks, aborts requests in flight, closes the own agent. Safe twice. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.closing.abort(new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`))
    await this.checking?.catch(() => undefined)
    this.direct?.close()
    const a = this.agent
    this.agent = undefined
    if (a !== undefined) await a.close().catch(() => undefined)
  }
}

function header (headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}
