/**
 * One HTTP exchange with a registry, the way the distribution spec needs it: Authorization from an
 * `Authorizer` (only ever sent to the registry's own origin), redirects followed for GET/HEAD with
 * the Authorization header dropped when the target is another origin, retries with exponential
 * backoff and jitter on 429/502/503/504 and on transport failures (honouring Retry-After), idle
 * timeouts on headers and body, and the caller's AbortSignal on everything (sleeps included).
 *
 * Statuses are returned to the caller, who maps them with `statusError`; only transport failures
 * throw here (NAIAD_REG_UNAVAILABLE / NAIAD_REG_TIMEOUT, or the caller's AbortError).
 */
import type { IncomingHttpHeaders } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Dispatcher } from 'undici'
import { isAbortError, isNaiadError, NaiadError, throwIfAborted } from '../errors/index.ts'
import type { Logger } from '../log/index.ts'
import { discard, isRetryableNetworkError, networkError, RETRYABLE_STATUS, safeUrl } from './errors.ts'

export type HttpMethod = 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE'

export interface HttpPolicy {
  /** Idle timeout: waiting for response headers, and between two pieces of a response body. */
  timeoutMs: number
  /** Retries after the first try (so `retries + 1` tries in all). */
  retries: number
  retryBaseDelayMs: number
  /** Cap for one backoff delay and for an honoured Retry-After. */
  retryMaxDelayMs: number
  maxRedirects: number
  userAgent: string
}

/** Supplies and refreshes Authorization for one registry origin (see auth.ts). */
export interface Authorizer {
  /** The Authorization value for a request to `origin` needing `scopes`, if any is known. */
  authorization (origin: string, scopes: readonly string[], signal?: AbortSignal): Promise<string | undefined>
  /**
   * Called on a 401 from `origin`. Learns the challenge, drops a rejected cached token, and
   * returns true if sending the request again (with a fresh `authorization()`) may succeed.
   */
  onUnauthorized (origin: string, wwwAuthenticate: string | string[] | undefined, scopes: readonly string[], sent: string | undefined, signal?: AbortSignal): Promise<boolean>
}

export interface SendOptions {
  method: HttpMethod
  url: URL
  headers?: Record<string, string>
  /** Request bodies are buffers so that retries and re-authentication can send them again. */
  body?: Buffer
  /** Token scopes the request needs (`repository:name:pull`). */
  scopes?: readonly string[]
  signal?: AbortSignal
  /** Retry on retryable statuses and transport failures (default true). */
  retry?: boolean
  /** Follow 3xx redirects (default: for GET and HEAD). */
  redirect?: boolean
  /** What is being done, for error messages: `manifest library/busybox:latest`. */
  what: string
}

export interface HttpResponse {
  status: number
  headers: IncomingHttpHeaders
  body: Dispatcher.ResponseData['body']
  /** The URL that answered (after redirects). */
  url: URL
  /** Tries made (1 when the first try answered). */
  attempts: number
}

export interface RegistryHttpDeps {
  dispatcher: () => Dispatcher
  logger: Logger
  authorizer?: Authorizer
  random?: () => number
}

const REDIRECTS = new Set([301, 302, 303, 307, 308])
const SENSITIVE_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie'])

/** The single value of a header (first of a repeated one). */
export function header (headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name.toLowerCase()]
  return Array.isArray(v) ? v[0] : v
}

/**
 * Waits `ms`; an abort rejects with the signal's own reason (so a TimeoutError from
 * AbortSignal.timeout stays a TimeoutError), as undici does for requests.
 */
export async function delay (ms: number, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) { await sleep(ms); return }
  try {
    await sleep(ms, undefined, { signal })
  } catch (err) {
    throw signal.reason instanceof Error ? signal.reason : err
  }
}

/** Milliseconds to wait from a Retry-After value (delta seconds or an HTTP date). */
export function parseRetryAfter (v: string | undefined, now = Date.now()): number | undefined {
  if (v === undefined) return undefined
  const t = v.trim()
  if (/^\d+$/.test(t)) return Number(t) * 1000
  const at = Date.parse(t)
  return Number.isNaN(at) ? undefined : Math.max(0, at - now)
}

export class RegistryHttp {
  private readonly deps: RegistryHttpDeps
  private readonly policy: HttpPolicy
  private readonly random: () => number

  constructor (deps: RegistryHttpDeps, policy: HttpPolicy) {
    this.deps = deps
    this.policy = policy
    this.random = deps.random ?? Math.random
  }

  /** Backoff before retry number `n` (1-based): exponential, with "equal jitter". */
  backoff (n: number): number {
    const cap = Math.min(this.policy.retryMaxDelayMs, this.policy.retryBaseDelayMs * 2 ** (n - 1))
    return Math.round(cap / 2 + this.random() * cap / 2)
  }

  /**
   * Sends a request and returns the final response (any status). Retryable statuses are retried
   * while tries remain, then returned as they are for the caller to map. The response body must be
   * consumed or destroyed by the caller.
   */
  async send (opts: SendOptions): Promise<HttpResponse> {
    const canRetry = opts.retry ?? true
    let attempt = 0
    for (;;) {
      attempt++
      throwIfAborted(opts.signal)
      let res: HttpResponse
      try {
        res = await this.sendAuthorized(opts, attempt)
      } catch (err) {
        // NaiadErrors (from the token endpoint, redirects) were already retried or are final.
        if (isAbortError(err) || isNaiadError(err) || !canRetry || attempt > this.policy.retries || !isRetryableNetworkError(err)) {
          throw networkError(err, opts.what, opts.url, attempt)
        }
        const wait = this.backoff(attempt)
        this.deps.logger.debug({ method: opts.method, url: safeUrl(opts.url), attempt, delayMs: wait, err: { message: (err as Error).message, code: (err as { code?: unknown }).code } }, 'registry request failed, retrying')
        await delay(wait, opts.signal)
        continue
      }
      if (canRetry && RETRYABLE_STATUS.has(res.status) && attempt <= this.policy.retries) {
        const after = parseRetryAfter(header(res.headers, 'retry-after'))
        const wait = Math.min(this.policy.retryMaxDelayMs, after ?? this.backoff(attempt))
        discard(res.body)
        this.deps.logger.debug({ method: opts.method, url: safeUrl(res.url), status: res.status, attempt, delayMs: wait }, 'registry busy, retrying')
        await delay(wait, opts.signal)
        continue
      }
      return res
    }
  }

  /** One try, with one re-authentication when the registry answers 401. */
  private async sendAuthorized (opts: SendOptions, attempt: number): Promise<HttpResponse> {
    const auth = this.deps.authorizer
    const scopes = opts.scopes ?? []
    const origin = opts.url.origin
    let sent = auth !== undefined ? await auth.authorization(origin, scopes, opts.signal) : undefined
    let res = await this.sendFollowing(opts, sent, attempt)
    if (res.status === 401 && auth !== undefined && res.url.origin === origin) {
      let again: boolean
      try {
        again = await auth.onUnauthorized(origin, res.headers['www-authenticate'], scopes, sent, opts.signal)
      } catch (err) {
        discard(res.body)
        throw err
      }
      if (again) {
        discard(res.body)
        sent = await auth.authorization(origin, scopes, opts.signal)
        res = await this.sendFollowing(opts, sent, attempt)
      }
    }
    return res
  }

  /** Sends, following redirects for GET/HEAD; Authorization goes only to the first URL's origin. */
  private async sendFollowing (opts: SendOptions, authorization: string | undefined, attempt: number): Promise<HttpResponse> {
    const follow = opts.redirect ?? (opts.method === 'GET' || opts.method === 'HEAD')
    const home = opts.url.origin
    let url = opts.url
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': this.policy.userAgent }
      for (const [k, v] of Object.entries(opts.headers ?? {})) {
        // Credentials never follow a redirect to another origin, whoever set them.
        if (url.origin !== home && SENSITIVE_HEADERS.has(k.toLowerCase())) continue
        headers[k.toLowerCase()] = v
      }
      if (authorization !== undefined && url.origin === home) headers['authorization'] = authorization
      const started = Date.now()
      const res = await this.deps.dispatcher().request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method: opts.method,
        headers,
        body: opts.body ?? (opts.method === 'PUT' || opts.method === 'POST' || opts.method === 'PATCH' ? Buffer.alloc(0) : null),
        signal: opts.signal ?? null,
        // undici counts the time to push a buffered body into the socket against the headers
        // timeout, so uploads get an allowance of 1 s per 100 kB on top.
        headersTimeout: this.policy.timeoutMs + Math.ceil((opts.body?.length ?? 0) / 100),
        bodyTimeout: this.policy.timeoutMs
      })
      this.deps.logger.debug({ method: opts.method, url: safeUrl(url), status: res.statusCode, durationMs: Date.now() - started, attempt, hop }, 'registry request')
      const location = header(res.headers, 'location')
      if (follow && REDIRECTS.has(res.statusCode) && location !== undefined) {
        discard(res.body)
        if (hop >= this.policy.maxRedirects) {
          throw new NaiadError('NAIAD_REG_PROTOCOL', `${opts.what}: more than ${this.policy.maxRedirects} redirects from ${safeUrl(opts.url)}`)
        }
        let next: URL
        try {
          next = new URL(location, url)
        } catch (err) {
          throw new NaiadError('NAIAD_REG_PROTOCOL', `${opts.what}: bad redirect Location from ${safeUrl(url)}`, { cause: err })
        }
        if (next.protocol !== 'http:' && next.protocol !== 'https:') {
          throw new NaiadError('NAIAD_REG_PROTOCOL', `${opts.what}: redirect to unsupported scheme ${next.protocol}`)
        }
        url = next
        continue
      }
      return { status: res.statusCode, headers: res.headers, body: res.body, url, attempts: attempt }
    }
  }
}
