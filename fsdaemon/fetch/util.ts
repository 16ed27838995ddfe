/**
 * Small helpers shared by the byte plane (fetch/, cache/, prefetch/): signals that combine a
 * caller's abort with a deadline (without AbortSignal.any, whose listeners on long-lived parent
 * signals Node 20 keeps alive), abortable waits, exact-length body reads and range checks.
 */
import type { Readable } from 'node:stream'
import { setTimeout as sleepTimer } from 'node:timers/promises'
import { NaiadError, isNaiadError, throwIfAborted } from '../../lib/errors/index.ts'

/** The reason an aborted signal carries, as an Error. */
export function abortReason (signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DOMException('aborted', 'AbortError')
}

export interface LinkedSignal {
  signal: AbortSignal
  /** True once the deadline (not a parent) aborted the signal. */
  timedOut: () => boolean
  /** Removes the listeners on the parents and clears the timer; call when the work is done. */
  dispose: () => void
}

/**
 * A signal aborted when any parent aborts (with the parent's reason) or after `timeoutMs` (with
 * `onTimeout()` as the reason). Always `dispose()` it.
 */
export function linkSignals (parents: ReadonlyArray<AbortSignal | undefined>, timeoutMs?: number, onTimeout?: () => Error): LinkedSignal {
  const ctl = new AbortController()
  const cleanups: Array<() => void> = []
  let timedOut = false
  for (const p of parents) {
    if (p === undefined) continue
    if (p.aborted) { ctl.abort(p.reason); break }
    const on = (): void => { ctl.abort(p.reason) }
    p.addEventListener('abort', on, { once: true })
    cleanups.push(() => p.removeEventListener('abort', on))
  }
  if (timeoutMs !== undefined && timeoutMs > 0 && Number.isFinite(timeoutMs) && !ctl.signal.aborted) {
    const t = setTimeout(() => {
      timedOut = true
      ctl.abort(onTimeout?.() ?? new DOMException('timed out', 'TimeoutError'))
    }, timeoutMs)
    t.unref()
    cleanups.push(() => clearTimeout(t))
  }
  return {
    signal: ctl.signal,
    timedOut: () => timedOut,
    dispose: () => { for (const c of cleanups.splice(0)) c() }
  }
}

/**
 * Waits for `p` unless `signal` aborts first (then rejects with its reason). `p` itself goes on:
 * this is for waiters that share work with others (single-flight).
 */
export async function raceSignal<T> (p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return await p
  throwIfAborted(signal)
  let on: (() => void) | undefined
  const aborted = new Promise<never>((_resolve, reject) => {
    on = () => reject(abortReason(signal))
    signal.addEventListener('abort', on, { once: true })
  })
  try {
    return await Promise.race([p, aborted])
  } finally {
    if (on !== undefined) signal.removeEventListener('abort', on)
  }
}

/** Sleeps `ms`; an abort rejects with the signal's reason. */
export async function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) { throwIfAborted(signal); return }
  try {
    await sleepTimer(ms, undefined, signal !== undefined ? { signal } : {})
  } catch (err) {
    if (signal?.aborted === true) throw abortReason(signal)
    throw err
  }
}

/**
 * Reads a stream to its end into exactly `length` bytes. More bytes → NAIAD_REG_PROTOCOL; fewer →
 * NAIAD_REG_UNAVAILABLE (a body cut short). Stream errors propagate unchanged.
 */
export async function readExact (stream: Readable, length: number, what: string, alloc?: (size: number) => Buffer): Promise<Buffer> {
  const out = alloc !== undefined ? alloc(length) : Buffer.allocUnsafeSlow(length)
  if (out.length !== length) throw new NaiadError('NAIAD_INTERNAL', `${what}: a buffer of ${out.length} bytes for ${length}`)
  owned.add(out)
  let n = 0
  try {
    for await (const c of stream) {
      const b = c as Buffer
      if (n + b.length > length) {
        throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: the source sent more than the ${length} bytes asked for`)
      }
      b.copy(out, n)
      n += b.length
    }
  } finally {
    if (!stream.destroyed) stream.destroy()
  }
  if (n !== length) throw new NaiadError('NAIAD_REG_UNAVAILABLE', `${what}: the body ended after ${n} of ${length} bytes`)
  return out
}

const owned = new WeakSet<Buffer>()

/** Marks a buffer that one fetch filled and nobody else holds (see isOwnedBuffer). */
export function ownedBuffer (b: Buffer): Buffer {
  owned.add(b)
  return b
}

/**
 * True for a buffer that readExact made for one fetch and nobody else holds: its consumer may
 * hand its memory on (transfer it to a worker thread) instead of copying it.
 */
export function isOwnedBuffer (b: Buffer): boolean {
  return owned.has(b)
}

/** Throws NAIAD_INTERNAL unless [start, end] is a valid inclusive byte range. */
export function checkRange (blobId: string, start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new NaiadError('NAIAD_INTERNAL', `invalid byte range [${start}, ${end}] of blob ${blobId}`)
  }
}

const BLOB_ID = /^[0-9a-f]{64}$/

/** Throws NAIAD_INTERNAL unless `blobId` is 64 lowercase hex characters (it names files). */
export function checkBlobId (blobId: string): void {
  if (!BLOB_ID.test(blobId)) throw new NaiadError('NAIAD_INTERNAL', `not a blob id: ${JSON.stringify(blobId.slice(0, 80))}`)
}

/**
 * True when a failure is the caller's own cancellation: its signal is aborted (whatever the
 * error looks like, the caller no longer wants the result; it is not the source's fault).
 */
export function isCallerAbort (signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

/** A one-line description of an error for aggregated messages: `CODE: message`. */
export function describeError (err: unknown): string {
  if (isNaiadError(err)) return `${err.code}: ${err.message}`
  if (err instanceof Error) return `${err.name}: ${err.message}`
  return String(err)
}
