/**
 * LZ4 *block* format (raw block: no frame, no size prefix, no checksum), the format Nydus calls
 * `lz4_block` (dragonflyoss/nydus:utils/src/compress/lz4_standard.rs wraps liblz4's
 * `LZ4_compress_default` / `LZ4_decompress_safe`). Pure TypeScript, no dependencies.
 *
 * A block is a sequence of (token, literals, offset, match) records; the last record has literals
 * only. The decoder checks every read and write against the input and the expected output size, so
 * malformed input fails with NAIAD_FMT_DECOMPRESS and never touches memory out of range. The encoder
 * is a greedy hash-chain matcher that follows the end-of-block rules of the format: the last 5
 * bytes are always literals and no match starts within the last 12 bytes.
 */
import { NaiadError } from '../errors/index.ts'

const MIN_MATCH = 4
/** The last LAST_LITERALS bytes of a block are literals. */
const LAST_LITERALS = 5
/** No match may start within the last MF_LIMIT bytes of a block. */
const MF_LIMIT = 12
const MAX_OFFSET = 0xffff
const HASH_LOG = 16
const WINDOW_MASK = 0xffff
/** Positions inside a match indexed after its start (plus its last two). */
const INSERT_HEAD = 8
/** LZ4 itself handles inputs up to LZ4_MAX_INPUT_SIZE (0x7E000000). */
export const LZ4_MAX_INPUT_SIZE = 0x7e000000

/** Worst-case size of a compressed block for `n` input bytes (LZ4_compressBound). */
export function lz4CompressBound (n: number): number {
  return n + Math.floor(n / 255) + 16
}

export interface Lz4CompressOptions {
  /** How many earlier positions with the same hash to try (1 = plain hash table). Default 8. */
  maxChainDepth?: number
}

function fail (msg: string): never {
  throw new NaiadError('NAIAD_FMT_DECOMPRESS', `lz4 block: ${msg}`)
}

/**
 * Decode an LZ4 block that must expand to exactly `uncompressedSize` bytes.
 * Throws NAIAD_FMT_DECOMPRESS on any malformed input (bad offset, overrun of input or output,
 * output shorter than expected).
 */
export function lz4DecompressBlock (src: Uint8Array, uncompressedSize: number): Buffer {
  if (!Number.isSafeInteger(uncompressedSize) || uncompressedSize < 0 || uncompressedSize > LZ4_MAX_INPUT_SIZE) {
    fail(`invalid expected size ${uncompressedSize}`)
  }
  const srcLen = src.length
  if (srcLen === 0) fail('empty input')
  const dst = Buffer.allocUnsafe(uncompressedSize)
  let ip = 0
  let op = 0
  for (;;) {
    if (ip >= srcLen) fail('input ends before the last sequence')
    const token = src[ip++] as number

    // literals
    let litLen = token >>> 4
    if (litLen === 15) {
      let b: number
      do {
        if (ip >= srcLen) fail('input ends inside a literal length')
        b = src[ip++] as number
        litLen += b
      } while (b === 255)
    }
    if (litLen > 0) {
      if (litLen > srcLen - ip) fail(`literal run of ${litLen} bytes overruns the input at ${ip}`)
      if (litLen > uncompressedSize - op) fail(`literal run of ${litLen} bytes overruns the output at ${op}`)
      if (litLen < 16) {
        for (let k = 0; k < litLen; k++) dst[op + k] = src[ip + k] as number
      } else {
        dst.set(src.subarray(ip, ip + litLen), op)
      }
      ip += litLen
      op += litLen
    }

    // the last sequence has no match part
    if (ip === srcLen) break

    if (srcLen - ip < 2) fail('input ends inside a match offset')
    const offset = (src[ip] as number) | ((src[ip + 1] as number) << 8)
    ip += 2
    if (offset === 0) fail(`zero match offset at input ${ip - 2}`)
    if (offset > op) fail(`match offset ${offset} points before the start of the output (at ${op})`)

    let matchLen = token & 15
    if (matchLen === 15) {
      let b: number
      do {
        if (ip >= srcLen) fail('input ends inside a match length')
        b = src[ip++] as number
        matchLen += b
      } while (b === 255)
    }
    matchLen += MIN_MATCH
    if (matchLen > uncompressedSize - op) fail(`match of ${matchLen} bytes overruns the output at ${op}`)

    let ref = op - offset
    if (offset >= matchLen && matchLen > 32) {
      dst.copyWithin(op, ref, ref + matchLen)
      op += matchLen
    } else {
      const end = op + matchLen
      while (op < end) dst[op++] = dst[ref++] as number
    }
  }
  if (op !== uncompressedSize) fail(`decoded ${op} bytes, expected ${uncompressedSize}`)
  return dst
}

function read32 (s: Uint8Array, i: number): number {
  return ((s[i] as number) | ((s[i + 1] as number) << 8) | ((s[i + 2] as number) << 16) | ((s[i + 3] as number) << 24)) >>> 0
}

function hash4 (v: number): number {
  return Math.imul(v, 2654435761) >>> (32 - HASH_LOG)
}

/** Write an LZ4 length continuation (the part of a length beyond the 15 that fits in the token). */
function writeLenExt (dst: Buffer, op: number, rest: number): number {
  while (rest >= 255) {
    dst[op++] = 255
    rest -= 255
  }
  dst[op++] = rest
  return op
}

/**
 * Compress `src` into one LZ4 block (decodable by LZ4_decompress_safe and by `lz4DecompressBlock`).
 * Deterministic: the same input and options always give the same bytes.
 */
export function lz4CompressBlock (src: Uint8Array, opts: Lz4CompressOptions = {}): Buffer {
  const n = src.length
  if (n > LZ4_MAX_INPUT_SIZE) throw new NaiadError('NAIAD_FMT_OPTION', `lz4 block: input of ${n} bytes is too large`)
  const maxDepth = Math.max(1, Math.floor(opts.maxChainDepth ?? 8))
  const dst = Buffer.allocUnsafe(lz4CompressBound(n))
  let op = 0
  let anchor = 0

  // a match must start before matchStartLimit and end at or before matchEndLimit
  const matchStartLimit = n - MF_LIMIT
  const matchEndLimit = n - LAST_LITERALS

  if (n >= MF_LIMIT + 1) {
    const head = new Int32Array(1 << HASH_LOG).fill(-1)
    const chain = new Int32Array(WINDOW_MASK + 1)
    head[hash4(read32(src, 0))] = 0
    chain[0] = -1

    let ip = 1 // a match can never start at 0 (nothing before it to refer to)
    let misses = 0
    while (ip < matchStartLimit) {
      const seq = read32(src, ip)
      const h = hash4(seq)
      let cand = head[h] as number
      chain[ip & WINDOW_MASK] = cand
      head[h] = ip

      let bestLen = 0
      let bestRef = 0
      const maxLen = matchEndLimit - ip
      for (let depth = 0; depth < maxDepth && cand >= 0 && ip - cand <= MAX_OFFSET; depth++) {
        // a candidate can only beat the best if it matches at the best's last byte too
        if (src[cand + bestLen] === src[ip + bestLen] && read32(src, cand) === seq) {
          let len = MIN_MATCH
          while (len + 4 <= maxLen && read32(src, cand + len) === read32(src, ip + len)) len += 4
          while (len < maxLen && src[cand + len] === src[ip + len]) len++
          if (len > bestLen) {
            bestLen = len
            bestRef = cand
            if (len === maxLen) break
          }
        }
        const next = chain[cand & WINDOW_MASK] as number
        if (next >= cand) break // stale slot from an older window position
        cand = next
      }

      if (bestLen < MIN_MATCH) {
        // accelerate through incompressible data, as LZ4 does
        ip += 1 + (misses++ >> 6)
        continue
      }
      misses = 0

      // extend the match backwards into pending literals
      let start = ip
      let ref = bestRef
      while (start > anchor && ref > 0 && src[start - 1] === src[ref - 1]) {
        start--
        ref--
        bestLen++
      }

      // emit the sequence
      const litLen = start - anchor
      const mlCode = bestLen - MIN_MATCH
      const tokenPos = op++
      let token: number
      if (litLen >= 15) {
        token = 15 << 4
        op = writeLenExt(dst, op, litLen - 15)
      } else {
        token = litLen << 4
      }
      if (litLen > 0) {
        if (litLen < 16) {
          for (let k = 0; k < litLen; k++) dst[op + k] = src[anchor + k] as number
        } else {
          dst.set(src.subarray(anchor, start), op)
        }
        op += litLen
      }
      const offset = start - ref
      dst[op++] = offset & 0xff
      dst[op++] = offset >>> 8
      if (mlCode >= 15) {
        token |= 15
        op = writeLenExt(dst, op, mlCode - 15)
      } else {
        token |= mlCode
      }
      dst[tokenPos] = token

      const end = start + bestLen
      // index some positions inside the match (the first few and the last two), so that later
      // data can refer into it; indexing every position costs more than it gains
      const insertEnd = Math.min(end, matchStartLimit)
      const firstEnd = Math.min(ip + 1 + INSERT_HEAD, insertEnd)
      for (let p = ip + 1; p < firstEnd; p++) {
        const hp = hash4(read32(src, p))
        chain[p & WINDOW_MASK] = head[hp] as number
        head[hp] = p
      }
      for (let p = Math.max(firstEnd, insertEnd - 2); p < insertEnd; p++) {
        const hp = hash4(read32(src, p))
        chain[p & WINDOW_MASK] = head[hp] as number
        head[hp] = p
      }
      ip = end
      anchor = end
    }
  }

  // last literals
  const litLen = n - anchor
  if (litLen >= 15) {
    dst[op++] = 15 << 4
    op = writeLenExt(dst, op, litLen - 15)
  } else {
    dst[op++] = litLen << 4
  }
  if (litLen > 0) {
    dst.set(src.subarray(anchor, n), op)
    op += litLen
  }
  return dst.subarray(0, op)
}
