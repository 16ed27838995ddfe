/**
 * A token bucket shared by all uploads of a peer: `take(n)` resolves when n bytes may be sent.
 * Rate 0 means unlimited. The bucket holds at most `burst` bytes (default: 1/10 s of rate, at
 * least 64 KiB), so an idle peer cannot later exceed its rate for long.
 */
export class TokenBucket {
  private tokens: number
  private last: number
  private readonly burst: number
  private queue: Promise<void> = Promise.resolve()

  constructor (private readonly rate: number, burst?: number, private readonly now: () => number = () => performance.now()) {
    this.burst = burst ?? Math.max(64 * 1024, rate / 10)
    this.tokens = this.burst
    this.last = this.now()
  }

  private refill (): void {
    const t = this.now()
    this.tokens = Math.min(this.burst, this.tokens + (t - this.last) / 1000 * this.rate)
    this.last = t
  }

  /** Waits until `n` bytes may be sent (callers are served in order). */
  async take (n: number, signal?: AbortSignal): Promise<void> {
    if (this.rate <= 0) return
    const turn = this.queue.then(async () => {
      this.refill()
      this.tokens -= n
      if (this.tokens < 0) {
        const ms = -this.tokens / this.rate * 1000
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(resolve, ms)
          signal?.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason) }, { once: true })
        })
      }
    })
    this.queue = turn.catch(() => {})
    await turn
  }
}
