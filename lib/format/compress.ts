/**
 * Chunk compressors, as Nydus applies them (dragonflyoss/nydus:utils/src/compress/mod.rs):
 * `zstd` (one frame per chunk, level 3 = zstd's default, what `ZSTD_compress` with
 * `ZSTD_defaultCLevel()` gives), `lz4_block` (raw LZ4 block, see lz4.ts) and `none`.
 * When compression does not shrink a chunk, the raw bytes are stored and `compressed` is false.
 *
 * Decompression always takes the exact expected size and never produces more: a zstd frame that
 * claims or yields a different size, or trailing garbage, is NAIAD_FMT_DECOMPRESS.
 */
import zstd from 'zstd-napi/binding.js'
import type { CCtx, DCtx } from 'zstd-napi/binding.js'
import { NaiadError } from '../errors/index.ts'
import type { Compressor } from './types.ts'
import { lz4CompressBlock, lz4DecompressBlock } from './lz4.ts'

export const ZSTD_LEVEL = 3

let cctx: CCtx | undefined
let dctx: DCtx | undefined

export function isCompressor (s: string): s is Compressor {
  return s === 'none' || s === 'lz4_block' || s === 'zstd'
}

/** One zstd frame at level 3 (ZSTD_compressCCtx: content size in the header, no checksum). */
export function zstdCompress (data: Uint8Array, level = ZSTD_LEVEL): Buffer {
  cctx ??= new zstd.CCtx()
  const dst = Buffer.allocUnsafe(zstd.compressBound(data.length))
  const n = cctx.compress(dst, data, level)
  return dst.subarray(0, n)
}

/** Decompress zstd data that must expand to exactly `size` bytes. */
export function zstdDecompress (data: Uint8Array, size: number): Buffer {
  dctx ??= new zstd.DCtx()
  // one spare byte: a frame that decodes to more than `size` fails here instead of being cut
  const dst = Buffer.allocUnsafe(size + 1)
  let n: number
  try {
    n = dctx.decompress(dst, data)
  } catch (err) {
    throw new NaiadError('NAIAD_FMT_DECOMPRESS', `zstd: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
  }
  if (n !== size) throw new NaiadError('NAIAD_FMT_DECOMPRESS', `zstd: decoded ${n} bytes, expected ${size}`)
  return dst.subarray(0, size)
}

/**
 * Compress one chunk. Empty input and `none` are stored raw; so is any chunk whose compressed form
 * is not strictly smaller than the input (Nydus's COMPRESSION_MINIMUM_RATIO rule).
 */
export function compressChunk (c: Compressor, data: Buffer): { data: Buffer, compressed: boolean } {
  if (data.length === 0 || c === 'none') return { data, compressed: false }
  let out: Buffer
  if (c === 'zstd') out = zstdCompress(data)
  else if (c === 'lz4_block') out = lz4CompressBlock(data)
  else throw new NaiadError('NAIAD_FMT_OPTION', `unknown compressor ${JSON.stringify(c)}`)
  if (out.length >= data.length) return { data, compressed: false }
  return { data: out, compressed: true }
}

/**
 * Decompress one chunk stored with `c` into exactly `uncompressedSize` bytes. For `none` (a chunk
 * stored raw) the input is returned after the size check.
 */
export function decompressChunk (c: Compressor, data: Buffer, uncompressedSize: number): Buffer {
  if (!Number.isSafeInteger(uncompressedSize) || uncompressedSize < 0) {
    throw new NaiadError('NAIAD_FMT_CORRUPT', `invalid uncompressed chunk size ${uncompressedSize}`)
  }
  if (c === 'none') {
    if (data.length !== uncompressedSize) {
      throw new NaiadError('NAIAD_FMT_DECOMPRESS', `raw chunk has ${data.length} bytes, expected ${uncompressedSize}`)
    }
    return data
  }
  if (c === 'zstd') return zstdDecompress(data, uncompressedSize)
  if (c === 'lz4_block') return lz4DecompressBlock(data, uncompressedSize)
  throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `compressor ${JSON.stringify(c)} is not supported`)
}
