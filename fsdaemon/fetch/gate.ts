/**
 * FetchGate: keeps background prefetch behind on-demand reads. Every on-demand fetch holds the
 * gate open (`enter()` … `leave()`); prefetch waits in `idle()` until no on-demand fetch is in
 * flight and none has finished within the last `quietMs` (a reader streaming through a file
 * issues its next read right after the previous one, and prefetch should not slip in between).
 *
 * One gate per daemon: every SourceChain and every Prefetcher of the node share it, so a busy
 * mount pauses the prefetch of the others too.
 */
import { throwIfAborted } from '../../lib/errors/index.ts'
import { abortReason } from './util.ts'

export interface FetchGateOptions {
  /** Prefetch waits this long after the last on-demand fetch ended (default 10 ms). */
  quietMs?: number
}

export interface FetchGateDeps {
  /** Clock (tests). */
  now?: () => number
}

export class FetchGate {
  private active = 0
  private lastLeave = -Infinity
  private readonly quietMs: number
  private readonly now: () => number
  private waiters: Array<() => void> = []
  private timer: NodeJS.Timeout | undefined
  /** On-demand fetches started so far (metrics). */
  onDemandFetches = 0
  /** Times prefetch had to wait for on-demand fetches (metrics). */
  prefetchWaits = 0

  constructor (deps: FetchGateDeps = {}, options: FetchGateOptions = {}) {
    this.now = deps.now ?? Date.now
    this.quietMs = options.quietMs ?? 10
  }

  /** On-demand fetches in flight now. */
  get inFlight (): number { return this.active }

  /** Marks an on-demand fetch as started; call the returned function (once) when it ends. */
  enter (): () => void {
    this.active++
    this.onDemandFetches++
    let left = false
    return () => {
      if (left) return
      left = true
      this.active--
      this.lastLeave = this.now()
      this.wake()
    }
  }

  private isIdle (): boolean {
    return this.active === 0 && this.now() - this.lastLeave >= this.quietMs
  }

  private wake (): void {
    if (this.active > 0 || this.waiters.length === 0) return
    const wait = this.quietMs - (this.now() - this.lastLeave)
    if (wait > 0) {
      if (this.timer === undefined) {
        this.timer = setTimeout(() => { this.timer = undefined; this.wake() }, wait)
        this.timer.unref()
      }
      return
    }
    const ws = this.waiters
    this.waiters = []
    for (const w of ws) w()
  }

  /** Resolves when no on-demand fetch is in flight (at once if none is); rejects on abort. */
  async idle (signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal)
    if (this.isIdle()) return
    this.prefetchWaits++
    while (!this.isIdle()) {
      await new Promise<void>((resolve, reject) => {
        const done = (): void => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        }
        const onAbort = (): void => {
          this.waiters = this.waiters.filter(w => w !== done)
          reject(abortReason(signal as AbortSignal))
        }
        signal?.addEventListener('abort', onAbort, { once: true })
        this.waiters.push(done)
        this.wake()
      })
    }
  }
}
