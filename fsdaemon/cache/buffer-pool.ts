/**
 * Reusable buffers for fetched ranges. A fresh multi-MiB ArrayBuffer per Range response costs
 * page faults on first touch and, at hundreds of MiB per second, makes V8 run full garbage
 * collections for the external memory; ranges are instead read into pooled buffers, given back
 * once the decoder threads are done with them. They are SharedArrayBuffers: the decoder threads
 * read a range's first chunks while the rest of it is still arriving. One pool per process,
 * bounded in bytes.
 */
export class RangeBufferPool {
  private readonly free = new Map<number, SharedArrayBuffer[]>()
  private held = 0

  /** `maxBytes`: most bytes kept while unused. `minSize`: smaller requests are not pooled. */
  constructor (private readonly maxBytes = 64 << 20, private readonly minSize = 256 << 10) {}

  /** A buffer of exactly `size` bytes, on a pooled SharedArrayBuffer of `capacity` ≥ size bytes when worth it. */
  take (size: number, capacity: number): Buffer {
    if (size < this.minSize || capacity < size) return Buffer.allocUnsafeSlow(size)
    const list = this.free.get(capacity)
    const ab = list?.pop()
    if (ab !== undefined) {
      this.held -= ab.byteLength
      return Buffer.from(ab, 0, size)
    }
    return Buffer.from(new SharedArrayBuffer(capacity), 0, size)
  }

  /** Gives a buffer's memory back (one that came from take(), now unused by anyone). */
  give (ab: ArrayBufferLike): void {
    if (!(ab instanceof SharedArrayBuffer) || ab.byteLength < this.minSize || this.held + ab.byteLength > this.maxBytes) return
    let list = this.free.get(ab.byteLength)
    if (list === undefined) { list = []; this.free.set(ab.byteLength, list) }
    list.push(ab)
    this.held += ab.byteLength
  }

  /** Bytes kept for reuse now. */
  get heldBytes (): number { return this.held }
}

let shared: RangeBufferPool | undefined

/** The process-wide pool. */
export function sharedRangeBufferPool (): RangeBufferPool {
  shared ??= new RangeBufferPool()
  return shared
}
