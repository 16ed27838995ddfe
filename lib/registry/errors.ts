/**
 * Mapping of HTTP statuses and transport failures to naiad error codes, and the redacted body
 * excerpts quoted in their messages.
 */
import type { Readable } from 'node:stream'
import { isAbortError, isNaiadError, NaiadError, type ErrorCode } from '../errors/index.ts'
import { redactText } from '../log/index.ts'

/** Statuses that mean "try again later": rate limiting and gateway trouble. */
export const RETRYABLE_STATUS: ReadonlySet<number> = new Set([429, 502, 503, 504])

const NET_RETRYABLE = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'ECONNABORTED',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
])
const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT'])

function codesOf (err: unknown): string[] {
  const out: string[] = []
  let cur: unknown = err
  for (let i = 0; i < 4 && typeof cur === 'object' && cur !== null; i++) {
    const c = (cur as { code?: unknown }).code
    if (typeof c === 'string') out.push(c)
    cur = (cur as { cause?: unknown }).cause
  }
  return out
}

/** True for transport failures worth retrying (resets, refused connections, timeouts). */
export function isRetryableNetworkError (err: unknown): boolean {
  if (isNaiadError(err)) return err.code === 'NAIAD_REG_UNAVAILABLE' || err.code === 'NAIAD_REG_TIMEOUT'
  return codesOf(err).some(c => NET_RETRYABLE.has(c))
}

export function isTimeoutError (err: unknown): boolean {
  return codesOf(err).some(c => TIMEOUT_CODES.has(c))
}

/** A URL without query and fragment (queries carry signatures of redirect targets). */
export function safeUrl (url: URL | string): string {
  const u = typeof url === 'string' ? new URL(url) : url
  return `${u.origin}${u.pathname}`
}

/**
 * Turns a transport failure into NAIAD_REG_TIMEOUT or NAIAD_REG_UNAVAILABLE. Cancellation
 * (AbortError/TimeoutError from a caller's signal) and NaiadErrors pass through unchanged.
 */
export function networkError (err: unknown, what: string, url: URL | string, attempts: number): unknown {
  if (isAbortError(err) || isNaiadError(err)) return err
  const codes = codesOf(err)
  const reason = `${codes[0] ?? 'error'}: ${redactText(err instanceof Error ? err.message : String(err))}`
  const tries = attempts > 1 ? ` (${attempts} attempts)` : ''
  if (isTimeoutError(err)) {
    return new NaiadError('NAIAD_REG_TIMEOUT', `${what}: ${safeUrl(url)} timed out${tries}: ${reason}`, { cause: err, details: { url: safeUrl(url), attempts } })
  }
  const tls = codes.some(c => c.startsWith('ERR_SSL') || c === 'EPROTO' || c.startsWith('ERR_TLS') || c.includes('CERT'))
  return new NaiadError('NAIAD_REG_UNAVAILABLE', `${what}: cannot reach ${safeUrl(url)}${tries}: ${reason}`, {
    cause: err,
    details: { url: safeUrl(url), attempts },
    ...(tls ? { hint: 'TLS failed: if the registry speaks plain HTTP, use --plain-http' } : {})
  })
}

/**
 * Throws a response body away without raising: undici's body emits an "aborted" error when it
 * is destroyed unread, so an error listener goes on first; small leftovers are drained so the
 * connection can be reused.
 */
export function discard (body: Readable): void {
  body.on('error', () => { /* discarded on purpose */ })
  const dump = (body as { dump?: (opts?: { limit?: number }) => Promise<void> }).dump
  if (typeof dump === 'function') dump.call(body, { limit: 64 * 1024 }).catch(() => { /* same */ })
  else body.destroy()
}

/** Reads at most `limit` bytes of a body and discards the rest (freeing the connection). */
export async function readExcerpt (body: Readable, limit = 2048): Promise<string> {
  const parts: Buffer[] = []
  let n = 0
  // Leaving the loop early destroys the body, which undici reports as an error event.
  body.on('error', () => { /* the excerpt is best effort */ })
  try {
    for await (const chunk of body) {
      const b = chunk as Buffer
      parts.push(b)
      n += b.length
      if (n >= limit) break
    }
  } catch {
    // The excerpt is best effort; the status already says what happened.
  } finally {
    discard(body)
  }
  return Buffer.concat(parts).subarray(0, limit).toString('utf8')
}

/** A short, redacted, single-line summary of an error body (distribution's JSON errors decoded). */
export function summarizeBody (text: string): string {
  let out = text
  try {
    const j = JSON.parse(text) as { errors?: Array<{ code?: unknown, message?: unknown, detail?: unknown }> }
    if (Array.isArray(j.errors) && j.errors.length > 0) {
      out = j.errors.map(e => [e.code, e.message].filter(x => typeof x === 'string').join(': ')).join('; ')
    }
  } catch {
    // not JSON: quote as is
  }
  out = redactText(out).replace(/[\r\n\t\0-\x1f]+/g, ' ').trim()
  return out.length > 200 ? `${out.slice(0, 200)}…` : out
}

/** The error for a final non-success status. `attempts` counts tries of retryable statuses. */
export function statusError (status: number, excerpt: string, what: string, method: string, url: URL | string, attempts = 1): NaiadError {
  let code: ErrorCode
  switch (status) {
    case 401: code = 'NAIAD_REG_UNAUTHORIZED'; break
    case 403: code = 'NAIAD_REG_DENIED'; break
    case 404: code = 'NAIAD_REG_NOT_FOUND'; break
    default: code = RETRYABLE_STATUS.has(status) ? 'NAIAD_REG_UNAVAILABLE' : 'NAIAD_REG_PROTOCOL'
  }
  const body = summarizeBody(excerpt)
  const tries = attempts > 1 ? ` after ${attempts} attempts` : ''
  return new NaiadError(code, `${what}: HTTP ${status} from ${method} ${safeUrl(url)}${tries}${body === '' ? '' : `: ${body}`}`, {
    details: { status, method, url: safeUrl(url), attempts }
  })
}
