/**
 * A bandwidth limit shared by prefetch workers: each reservation of `bytes` may start once the
 * bytes reserved so far (its own included) fit in the time elapsed at `bytesPerSec`. So n bytes
 * never take less than n / bytesPerSec, whatever the concurrency. 0 means unlimited.
 */
import { sleep } from '../fetch/util.ts'

export interface ThrottleDeps {
  now?: () => number
}

export class Throttle {
  private readonly rate: number
  private readonly now: () => number
  /** When the bytes reserved so far will have been "paid" (ms). */
  private next = -Infinity

  constructor (deps: ThrottleDeps, options: { bytesPerSec: number }) {
    this.rate = options.bytesPerSec
    this.now = deps.now ?? Date.now
  }

  get unlimited (): boolean { return !(this.rate > 0) }

  /** Waits until `bytes` more may be fetched; rejects on abort. */
  async reserve (bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.unlimited || bytes <= 0) return
    const t = this.now()
    this.next = Math.max(this.next, t) + bytes / this.rate * 1000
    await sleep(this.next - t, signal)
  }
}
