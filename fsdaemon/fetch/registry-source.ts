/**
 * RegistryRangeSource: the origin. Range GETs of a data blob through lib/registry (an ImageStore
 * bound to the image's repository, or a RegistryClient with a repository), which brings auth
 * (bearer tokens refreshed on 401, docker config credentials), redirects and retries with backoff
 * on 429/502/503/504 and connection failures before the response.
 *
 * On top of that this source adds what a long-lived lazy mount needs: a deadline per request
 * (headers and body; NAIAD_REG_TIMEOUT), and retries with backoff for what the client does not
 * retry on its own: a body cut off mid-stream (reset, truncation) and HTTP 500. Errors keep the
 * client's codes (NAIAD_REG_UNAVAILABLE, NAIAD_REG_NOT_FOUND, NAIAD_REG_UNAUTHORIZED…).
 */
import { setMaxListeners } from 'node:events'
import type { Readable } from 'node:stream'
import { parseDigest, type Digest } from '../../lib/digest/index.ts'
import { NaiadError, isNaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { DirectRangeOutcome, GetBlobOptions } from '../../lib/registry/index.ts'
import type { FetchOptions, RangeSource } from '../types.ts'
import { checkBlobId, checkRange, describeError, isCallerAbort, linkSignals, ownedBuffer, readExact, sleep, abortReason } from './util.ts'

/** What the source needs from lib/registry: an ImageStore (bound to one repository) has it. */
export interface BlobRangeStore {
  getBlob (digest: Digest, opts?: GetBlobOptions): Promise<Readable>
  /**
   * Optional: the range straight into `into` (RegistryImageStore over plain HTTP); `served:
   * false` and the source uses getBlob (with `stop`, for every later range too).
   */
  readBlobRange? (digest: Digest, start: number, end: number, into: Buffer, opts?: { signal?: AbortSignal, onProgress?: (filled: number) => void }): Promise<DirectRangeOutcome>
}

export interface RegistryRangeSourceDeps {
  /** `openImageStore(ref)` for the image, or any store with `getBlob` (e.g. an OCI layout). */
  store: BlobRangeStore
  logger?: Logger
  /** Jitter source for backoff (tests). */
  random?: () => number
}

export interface RegistryRangeSourceOptions {
  /** Name in logs and metrics (default `origin`). */
  name?: string
  /** Where the blobs come from, for messages (e.g. `127.0.0.1:5000/app`). */
  location?: string
  /** Deadline of one request, headers and body (default 60 s); the client's idle timeout also applies. */
  timeoutMs?: number
  /** Retries of failures the registry client does not retry itself (default 3). */
  retries?: number
  /** First backoff delay (default 100 ms), doubled per retry with jitter, at most 5 s. */
  retryBaseDelayMs?: number
  /**
   * Read ranges straight into the cache's buffers when the store can (plain HTTP; default true).
   * A registry that redirects blobs or a store that cannot is asked through getBlob from then on.
   */
  direct?: boolean
}

export class RegistryRangeSource implements RangeSource {
  readonly name: string
  readonly kind = 'origin' as const
  private readonly store: BlobRangeStore
  private readonly log: Logger
  private readonly random: () => number
  private readonly location: string
  private readonly timeoutMs: number
  private readonly retries: number
  private readonly baseDelay: number
  private readonly closing = new AbortController()
  private closed = false
  private direct: boolean
  /** Ranges read directly, and direct reads that failed (then read through getBlob). */
  readonly directStats = { served: 0, failed: 0 }

  constructor (deps: RegistryRangeSourceDeps, options: RegistryRangeSourceOptions = {}) {
    this.store = deps.store
    this.name = options.name ?? 'origin'
    this.location = options.location ?? this.name
    this.log = (deps.logger ?? nullLogger()).child({ component: 'fsdaemon.fetch', source: this.name })
    this.random = deps.random ?? Math.random
    this.timeoutMs = options.timeoutMs ?? 60_000
    this.retries = options.retries ?? 3
    this.baseDelay = options.retryBaseDelayMs ?? 100
    this.direct = (options.direct ?? true) && deps.store.readBlobRange !== undefined
    // shared by every request in flight
    setMaxListeners(0, this.closing.signal)
    if (!(this.timeoutMs > 0) || !Number.isInteger(this.retries) || this.retries < 0) {
      throw new NaiadError('NAIAD_INTERNAL', `registry source ${this.name}: invalid timeout ${this.timeoutMs} or retries ${this.retries}`)
    }
  }

  directReads (): number { return this.directStats.served }

  /** The origin is always worth trying; its failures are per request. */
  healthy (): boolean { return !this.closed }

  async fetch (blobId: string, start: number, end: number, opts: FetchOptions = {}): Promise<Buffer> {
    checkBlobId(blobId)
    checkRange(blobId, start, end)
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`)
    const digest = parseDigest(`sha256:${blobId}`)
    const what = `blob ${blobId} bytes ${start}-${end} from ${this.location}`
    let alloc = opts.alloc
    if (this.direct) {
      const into = opts.alloc !== undefined ? opts.alloc(end - start + 1) : Buffer.allocUnsafeSlow(end - start + 1)
      const progress = opts.onProgress
      const got = await this.fetchDirect(digest, start, end, into, what, opts.signal, progress !== undefined ? (filled) => { progress(into, filled) } : undefined)
      if (got) return ownedBuffer(into)
      // the buffer is free again (the direct read's connection is closed or done): every try
      // below reads into it (each try's stream is destroyed before the next begins)
      alloc = () => into
    }
    for (let attempt = 1; ; attempt++) {
      const deadline = linkSignals([opts.signal, this.closing.signal], this.timeoutMs, () =>
        new NaiadError('NAIAD_REG_TIMEOUT', `${what}: no complete answer within ${this.timeoutMs} ms`, { details: { blobId, start, end, source: this.name } }))
      let stage: 'request' | 'body' = 'request'
      try {
        const stream = await this.store.getBlob(digest, { range: [start, end], signal: deadline.signal })
        stage = 'body'
        return await readExact(stream, end - start + 1, what, alloc)
      } catch (err) {
        if (isCallerAbort(opts.signal)) throw abortReason(opts.signal as AbortSignal)
        if (this.closing.signal.aborted) throw new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`)
        const e = toNaiad(deadline.timedOut() ? abortReason(deadline.signal) : err, what)
        if (attempt > this.retries || !retryable(e, stage, deadline.timedOut())) throw e
        const wait = Math.min(5000, this.baseDelay * 2 ** (attempt - 1))
        const jittered = Math.round(wait / 2 + this.random() * wait / 2)
        this.log.debug({ blobId, start, end, attempt, delayMs: jittered, err: { message: describeError(e) } }, 'range request failed, retrying')
        await sleep(jittered, opts.signal)
      } finally {
        deadline.dispose()
      }
    }
  }

  /**
   * One direct read (no retries): true when the bytes are in `into`. Anything else is left to the
   * getBlob path, which retries and maps errors: a failure is logged at debug level; an answer
   * that says the registry's ranges are not for direct reads (`stop`: a redirect, a 206 in a form
   * not taken; or a store that cannot read directly) turns direct reads off for this source.
   */
  private async fetchDirect (digest: Digest, start: number, end: number, into: Buffer, what: string, signal: AbortSignal | undefined, onProgress: ((filled: number) => void) | undefined): Promise<boolean> {
    const read = this.store.readBlobRange
    if (read === undefined) return false
    const deadline = linkSignals([signal, this.closing.signal], this.timeoutMs, () =>
      new NaiadError('NAIAD_REG_TIMEOUT', `${what}: no complete answer within ${this.timeoutMs} ms`))
    try {
      const out = await read.call(this.store, digest, start, end, into, { signal: deadline.signal, ...(onProgress !== undefined ? { onProgress } : {}) })
      if (out.served) {
        this.directStats.served++
        return true
      }
      if (out.stop) {
        this.direct = false
        this.log.debug({ status: out.status, reason: out.reason }, 'direct range reads off for this source')
      }
      return false
    } catch (err) {
      if (isCallerAbort(signal)) throw abortReason(signal as AbortSignal)
      if (this.closing.signal.aborted) throw new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`)
      this.directStats.failed++
      this.log.debug({ start, end, err: { message: describeError(err) } }, 'direct range read failed; asking through the HTTP client')
      return false
    } finally {
      deadline.dispose()
    }
  }

  /** Aborts requests in flight (they fail with NAIAD_CLOSED). The store stays open: it is the caller's. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.closing.abort(new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`))
  }
}

function toNaiad (err: unknown, what: string): NaiadError {
  if (isNaiadError(err)) return err
  return new NaiadError('NAIAD_REG_UNAVAILABLE', `${what}: ${describeError(err)}`, { cause: err })
}

/**
 * Whether to try again. The client already retried statuses 429/502/503/504 and failures before
 * the response; what is left worth retrying: the body broke off, our deadline passed, or HTTP 500.
 */
function retryable (e: NaiadError, stage: 'request' | 'body', timedOut: boolean): boolean {
  if (timedOut) return true
  if (stage === 'body' && (e.code === 'NAIAD_REG_UNAVAILABLE' || e.code === 'NAIAD_REG_TIMEOUT' || e.code === 'NAIAD_IO')) return true
  const status = e.details?.['status']
  return e.code === 'NAIAD_REG_PROTOCOL' && status === 500
}
