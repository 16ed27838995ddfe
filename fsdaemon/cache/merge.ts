/**
 * Request merging: missing chunks of one blob that lie next to each other in the blob file
 * (contiguous, or with gaps up to `maxGapBytes`) go into one Range request of at most
 * `maxRequestBytes` (a single chunk larger than that gets a request of its own). nydusd does the
 * same for RAFS v6 (batch size 1 MiB, gaps up to batch/128: storage/src/cache/cachedfile.rs).
 */
import type { ChunkRef } from '../../lib/format/types.ts'

export interface RangeRequest {
  /** First byte (inclusive) in the blob file. */
  start: number
  /** Last byte (inclusive). */
  end: number
  /** The chunks it covers, by compressed offset. */
  chunks: ChunkRef[]
}

export function planRequests (refs: readonly ChunkRef[], maxRequestBytes: number, maxGapBytes: number): RangeRequest[] {
  const sorted = [...refs].sort((a, b) => a.compressedOffset - b.compressedOffset || a.index - b.index)
  const out: RangeRequest[] = []
  let cur: RangeRequest | undefined
  for (const c of sorted) {
    const cStart = c.compressedOffset
    const cEnd = c.compressedOffset + c.compressedSize - 1
    if (cur !== undefined) {
      const gap = cStart - cur.end - 1
      const end = Math.max(cur.end, cEnd)
      if (gap <= maxGapBytes && end - cur.start + 1 <= maxRequestBytes) {
        cur.end = end
        cur.chunks.push(c)
        continue
      }
    }
    cur = { start: cStart, end: cEnd, chunks: [c] }
    out.push(cur)
  }
  return out
}
