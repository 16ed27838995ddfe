/**
 * Errors with stable codes. One base class, `NaiadError`, carries `code` (from codes.ts), `kind`
 * (from kinds.ts), an optional `hint` and the standard `cause`. Callers match on `code` or `kind`,
 * never on the message. The brand (`Symbol.for`) lets `isNaiadError` work across module copies.
 *
 * @example
 *   throw new NaiadError('NAIAD_FMT_BAD_MAGIC', `superblock magic 0x${m.toString(16)}`)
 */
import { CODES, type ErrorCode } from './codes.ts'
import { EXIT_CODE, GRPC_STATUS, HTTP_STATUS, type ErrorKind } from './kinds.ts'

export { CODES, type ErrorCode, type CodeSpec } from './codes.ts'
export { EXIT_CODE, GRPC_STATUS, HTTP_STATUS, type ErrorKind } from './kinds.ts'

const BRAND = Symbol.for('naiad.error')

export interface NaiadErrorOptions {
  cause?: unknown
  hint?: string
  /** Structured details for logs and JSON output; never credentials. */
  details?: Record<string, unknown>
}

export class NaiadError extends Error {
  readonly code: ErrorCode
  readonly kind: ErrorKind
  readonly hint: string
  readonly details: Record<string, unknown> | undefined

  constructor (code: ErrorCode, message: string, opts: NaiadErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'NaiadError'
    this.code = code
    this.kind = CODES[code].kind
    this.hint = opts.hint ?? CODES[code].hint
    this.details = opts.details
    Object.defineProperty(this, BRAND, { value: true })
  }

  toJSON (): Record<string, unknown> {
    return { code: this.code, kind: this.kind, message: this.message, hint: this.hint, ...(this.details !== undefined ? { details: this.details } : {}) }
  }
}

export function isNaiadError (err: unknown): err is NaiadError {
  return typeof err === 'object' && err !== null && (err as Record<symbol, unknown>)[BRAND] === true
}

export function hasCode (err: unknown, code: ErrorCode): boolean {
  return isNaiadError(err) && err.code === code
}

/** True for the platform's cancellation errors (AbortSignal). */
export function isAbortError (err: unknown): boolean {
  return err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError')
}

/** The kind of any thrown value: ours, the platform's cancellation, or Unknown. */
export function kindOf (err: unknown): ErrorKind {
  if (isNaiadError(err)) return err.kind
  if (err instanceof Error && err.name === 'AbortError') return 'Aborted'
  if (err instanceof Error && err.name === 'TimeoutError') return 'DeadlineExceeded'
  return 'Unknown'
}

export function toExitCode (err: unknown): number {
  return EXIT_CODE[kindOf(err)]
}

export function toGrpcStatus (err: unknown): number {
  return GRPC_STATUS[kindOf(err)]
}

export function toHttpStatus (err: unknown): number {
  return HTTP_STATUS[kindOf(err)]
}

/** Wrap a Node system error (ENOENT, ENOSPC…) for a path into NAIAD_IO, keeping the cause. */
export function ioError (what: string, path: string, cause: unknown): NaiadError {
  const sys = cause instanceof Error && 'code' in cause ? String((cause as NodeJS.ErrnoException).code) : 'unknown'
  return new NaiadError('NAIAD_IO', `${what} ${path}: ${sys}`, { cause, details: { path, errno: sys } })
}

/** Throws the signal's reason if it is aborted. */
export function throwIfAborted (signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw signal.reason instanceof Error ? signal.reason : new DOMException('aborted', 'AbortError')
}

/** The chain of causes as lines, for --debug output. */
export function causeChain (err: unknown): string[] {
  const out: string[] = []
  let cur: unknown = err
  for (let i = 0; i < 10 && cur !== undefined && cur !== null; i++) {
    if (cur instanceof Error) {
      out.push(`${cur.name}${isNaiadError(cur) ? ` ${cur.code}` : ''}: ${cur.message}`)
      cur = cur.cause
    } else {
      out.push(String(cur))
      break
    }
  }
  return out
}
