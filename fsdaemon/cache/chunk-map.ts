/**
 * The persisted ready-bitmap of one blob's cache: `<blobId>.chunk_map`.
 *
 *   offset  size  field
 *        0     8  magic "NAIADCMP"
 *        8     4  version (1), u32 LE
 *       12     4  chunk count, u32 LE
 *       16     8  uncompressed size of the blob (= size of <blobId>.blob.data), u64 LE
 *       24    32  blob id (sha256 of the blob, raw bytes)
 *       56     8  reserved (zero)
 *       64     …  1 bit per chunk (bit i%8 of byte i/8); bits past the chunk count are zero
 *
 * A file whose size, magic, version, chunk count, blob size or blob id differ from what the blob
 * needs is untrusted: the cache starts empty. The bitmap only ever claims chunks whose data was
 * made durable before the bitmap was written (see BlobCache.flush).
 */
import type { BlobInfo } from '../../lib/format/types.ts'

export const CHUNK_MAP_MAGIC = Buffer.from('NAIADCMP', 'latin1')
export const CHUNK_MAP_VERSION = 1
export const CHUNK_MAP_HEADER_SIZE = 64

export function bitmapBytes (chunkCount: number): number {
  return Math.ceil(chunkCount / 8)
}

export function chunkMapSize (chunkCount: number): number {
  return CHUNK_MAP_HEADER_SIZE + bitmapBytes(chunkCount)
}

export function encodeChunkMapHeader (blob: BlobInfo): Buffer {
  const h = Buffer.alloc(CHUNK_MAP_HEADER_SIZE)
  CHUNK_MAP_MAGIC.copy(h, 0)
  h.writeUInt32LE(CHUNK_MAP_VERSION, 8)
  h.writeUInt32LE(blob.chunkCount, 12)
  h.writeBigUInt64LE(BigInt(blob.uncompressedSize), 16)
  Buffer.from(blob.blobId, 'hex').copy(h, 24)
  return h
}

/**
 * The ready bits from a chunk_map file's content, or the reason it cannot be trusted.
 */
export function decodeChunkMap (buf: Buffer, blob: BlobInfo): { bits: Uint8Array } | { untrusted: string } {
  const want = chunkMapSize(blob.chunkCount)
  if (buf.length !== want) return { untrusted: `size ${buf.length}, expected ${want}` }
  if (!buf.subarray(0, 8).equals(CHUNK_MAP_MAGIC)) return { untrusted: 'bad magic' }
  const version = buf.readUInt32LE(8)
  if (version !== CHUNK_MAP_VERSION) return { untrusted: `version ${version}, expected ${CHUNK_MAP_VERSION}` }
  const count = buf.readUInt32LE(12)
  if (count !== blob.chunkCount) return { untrusted: `chunk count ${count}, expected ${blob.chunkCount}` }
  const size = buf.readBigUInt64LE(16)
  if (size !== BigInt(blob.uncompressedSize)) return { untrusted: `blob size ${size}, expected ${blob.uncompressedSize}` }
  const id = buf.subarray(24, 56).toString('hex')
  if (id !== blob.blobId) return { untrusted: `blob id ${id}, expected ${blob.blobId}` }
  const bits = new Uint8Array(bitmapBytes(blob.chunkCount))
  bits.set(buf.subarray(CHUNK_MAP_HEADER_SIZE))
  // bits past the chunk count mean nothing: clear them
  const tail = blob.chunkCount % 8
  if (tail !== 0) bits[bits.length - 1] = (bits[bits.length - 1] as number) & ((1 << tail) - 1)
  return { bits }
}

export function testBit (bits: Uint8Array, i: number): boolean {
  return (((bits[i >>> 3] ?? 0) >>> (i & 7)) & 1) === 1
}

export function setBit (bits: Uint8Array, i: number): void {
  bits[i >>> 3] = (bits[i >>> 3] as number) | (1 << (i & 7))
}

export function clearBit (bits: Uint8Array, i: number): void {
  bits[i >>> 3] = (bits[i >>> 3] as number) & ~(1 << (i & 7))
}

export function popcount (bits: Uint8Array): number {
  let n = 0
  for (const b of bits) {
    let x = b
    while (x !== 0) { x &= x - 1; n++ }
  }
  return n
}
