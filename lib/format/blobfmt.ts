/**
 * On-disk structures of a Nydus v6 data blob (everything little-endian):
 *
 * - the 512-byte GNU tar header nydus-image writes *after* each section ("reverse tar";
 *   dragonflyoss/nydus:builder/src/core/context.rs `BlobContext::write_tar_header`, which uses the
 *   Rust `tar` crate's `Header::new_gnu()` + `set_path` + `set_entry_type(Regular)` + `set_size` +
 *   `set_cksum`);
 * - the 4096-byte chunk-info (CI) header `BlobCompressionContextHeader`
 *   (dragonflyoss/nydus:storage/src/meta/mod.rs), magic 0xb10bb10b at both ends;
 * - CI entries v1 (16 B, storage/src/meta/chunk_info_v1.rs) and v2 (24 B, chunk_info_v2.rs);
 * - ToC entries (128 B, storage/src/meta/toc.rs);
 * - blob feature bits (`BlobFeatures`, storage/src/device.rs).
 *
 * Decoders validate what they read and throw NaiadError NAIAD_FMT_* codes; encoders reject values
 * that do not fit their fields with NAIAD_FMT_LIMIT.
 */
import { NaiadError } from '../errors/index.ts'
import { COMPRESSOR_ID, type Compressor } from './types.ts'

export const TAR_HEADER_SIZE = 512
export const CI_HEADER_SIZE = 4096
export const CI_MAGIC = 0xb10bb10b
export const CI_V1_ENTRY_SIZE = 16
export const CI_V2_ENTRY_SIZE = 24
export const TOC_ENTRY_SIZE = 128
/** A ToC (entries + its tar header) is 512 B .. 64 KiB and a multiple of 128 (TocLocation::validate). */
export const TOC_MIN_SIZE = 512
export const TOC_MAX_SIZE = 0x10000
export const CHUNK_DIGEST_SIZE = 32
/** RAFS v6 chunk indexes are 24 bits; nydus-image refuses index 0xff_ffff and above. */
export const MAX_CHUNKS_PER_BLOB = 0xffffff
/** Largest chunk (RAFS_MAX_CHUNK_SIZE). */
export const MAX_CHUNK_SIZE = 0x1000000

/** Blob feature bits (`BlobFeatures` in dragonflyoss/nydus:storage/src/device.rs). */
export const BLOB_FEATURE = Object.freeze({
  ALIGNED: 0x1,
  INLINED_FS_META: 0x2,
  CHUNK_INFO_V2: 0x4,
  ZRAN: 0x8,
  SEPARATE: 0x10,
  INLINED_CHUNK_DIGEST: 0x20,
  TARFS: 0x40,
  BATCH: 0x80,
  ENCRYPTED: 0x100,
  IS_CHUNKDICT_GENERATED: 0x200,
  IS_SEPARATED_WITH_PREFETCH_FILES: 0x400,
  EXTERNAL: 0x800,
  HAS_TAR_HEADER: 0x1000_0000,
  HAS_TOC: 0x2000_0000,
  CAP_TAR_TOC: 0x4000_0000
})

/** ToC entry names (storage/src/meta/toc.rs). */
export const TOC_ENTRY = Object.freeze({
  BLOB_RAW: 'image.blob',
  BOOTSTRAP: 'image.boot',
  BLOB_META: 'blob.meta',
  BLOB_META_HEADER: 'blob.meta.header',
  BLOB_DIGEST: 'blob.digest',
  BLOB_TOC: 'rafs.blob.toc'
})

/** ToC entry flags: how the entry's content is compressed. */
export const TOC_FLAG = Object.freeze({ NONE: 0x1, ZSTD: 0x2, LZ4_BLOCK: 0x4, MASK: 0xf })

/** CI v2 per-chunk flags (top byte of the first word). */
export const CI_V2_FLAG = Object.freeze({ COMPRESSED: 0x1, ZRAN: 0x2, BATCH: 0x4, ENCRYPTED: 0x8, HAS_CRC32: 0x10 })

const TWO32 = 0x1_0000_0000

function corrupt (msg: string): never {
  throw new NaiadError('NAIAD_FMT_CORRUPT', msg)
}

function limit (msg: string): never {
  throw new NaiadError('NAIAD_FMT_LIMIT', msg)
}

function readU64 (b: Buffer, off: number, what: string): number {
  const v = b.readBigUInt64LE(off)
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) corrupt(`${what} 0x${v.toString(16)} is out of range`)
  return Number(v)
}

export function roundUp4k (n: number): number {
  return Math.ceil(n / 4096) * 4096
}

// ---------------------------------------------------------------------------------------------
// compressor ids

export function compressorFromId (id: number, what: string): Compressor {
  if (id === COMPRESSOR_ID.none) return 'none'
  if (id === COMPRESSOR_ID.lz4_block) return 'lz4_block'
  if (id === COMPRESSOR_ID.zstd) return 'zstd'
  if (id === COMPRESSOR_ID.gzip) throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `${what}: gzip (ZRAN/stargz) data is not supported`)
  return corrupt(`${what}: unknown compressor id ${id}`)
}

export function tocFlagsFor (c: Compressor): number {
  return c === 'zstd' ? TOC_FLAG.ZSTD : c === 'lz4_block' ? TOC_FLAG.LZ4_BLOCK : TOC_FLAG.NONE
}

export function compressorFromTocFlags (flags: number, what: string): Compressor {
  if ((flags & ~TOC_FLAG.MASK) !== 0) corrupt(`${what}: unknown ToC entry flags 0x${flags.toString(16)}`)
  switch (flags & TOC_FLAG.MASK) {
    case TOC_FLAG.NONE: return 'none'
    case TOC_FLAG.ZSTD: return 'zstd'
    case TOC_FLAG.LZ4_BLOCK: return 'lz4_block'
    default: return corrupt(`${what}: invalid ToC compression flags 0x${flags.toString(16)}`)
  }
}

// ---------------------------------------------------------------------------------------------
// tar header

function writeOctal (b: Buffer, off: number, len: number, value: number): void {
  // like the Rust tar crate's octal_into: zero-padded digits, the last byte of the field left 0
  const s = value.toString(8)
  if (s.length > len - 1) limit(`tar header: ${value} does not fit in ${len - 1} octal digits`)
  b.write(s.padStart(len - 1, '0'), off, 'latin1')
}

/**
 * The 512-byte GNU tar header nydus-image writes after a section: name, regular file, size,
 * mtime 0, everything else zero, GNU magic "ustar  \0", checksum as 7 octal digits + NUL.
 * Sizes of 8 GiB and more use the GNU base-256 encoding, as the Rust tar crate does.
 */
export function encodeTarHeader (name: string, size: number): Buffer {
  const nameBytes = Buffer.from(name, 'utf8')
  if (nameBytes.length === 0 || nameBytes.length > 100) limit(`tar header: name ${JSON.stringify(name)} must be 1..100 bytes`)
  if (!Number.isSafeInteger(size) || size < 0) limit(`tar header: invalid size ${size}`)
  const h = Buffer.alloc(TAR_HEADER_SIZE)
  nameBytes.copy(h, 0)
  if (size >= 8 ** 11) {
    h.writeBigUInt64BE(BigInt(size), 124 + 4)
    h[124] = (h[124] as number) | 0x80
  } else {
    writeOctal(h, 124, 12, size)
  }
  writeOctal(h, 136, 12, 0) // mtime
  h[156] = 0x30 // '0': regular file
  h.write('ustar  \0', 257, 'latin1') // GNU magic "ustar " + version " \0"
  h.fill(0x20, 148, 156)
  let sum = 0
  for (let i = 0; i < TAR_HEADER_SIZE; i++) sum += h[i] as number
  h.fill(0, 148, 156)
  writeOctal(h, 148, 8, sum)
  return h
}

export interface TarHeaderInfo {
  name: string
  size: number
}

function parseOctalField (b: Buffer, off: number, len: number, what: string): number {
  let i = off
  const end = off + len
  while (i < end && (b[i] === 0x20)) i++
  let v = 0
  let digits = 0
  for (; i < end; i++) {
    const c = b[i] as number
    if (c === 0 || c === 0x20) break
    if (c < 0x30 || c > 0x37) corrupt(`tar header: ${what} is not octal`)
    v = v * 8 + (c - 0x30)
    digits++
  }
  for (; i < end; i++) {
    const c = b[i] as number
    if (c !== 0 && c !== 0x20) corrupt(`tar header: ${what} has trailing garbage`)
  }
  if (digits === 0) corrupt(`tar header: ${what} is empty`)
  if (!Number.isSafeInteger(v)) corrupt(`tar header: ${what} is out of range`)
  return v
}

/**
 * Decode and validate a tar header written after a blob section. Throws NAIAD_FMT_BAD_MAGIC if
 * the block is not a ustar/GNU header at all, NAIAD_FMT_CORRUPT if its checksum, type or fields
 * are wrong.
 */
export function decodeTarHeader (h: Buffer): TarHeaderInfo {
  if (h.length !== TAR_HEADER_SIZE) corrupt(`tar header: ${h.length} bytes, expected ${TAR_HEADER_SIZE}`)
  const magic = h.toString('latin1', 257, 263)
  if (magic !== 'ustar ' && magic !== 'ustar\0') {
    throw new NaiadError('NAIAD_FMT_BAD_MAGIC', 'no tar header where a Nydus blob section header should be (not a Nydus v6 blob with tar headers)')
  }
  const stored = parseOctalField(h, 148, 8, 'checksum')
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < TAR_HEADER_SIZE; i++) {
    const c = (i >= 148 && i < 156) ? 0x20 : h[i] as number
    unsigned += c
    signed += c > 127 ? c - 256 : c
  }
  if (stored !== unsigned && stored !== signed) corrupt(`tar header: checksum ${stored} does not match the computed ${unsigned}`)
  const type = h[156] as number
  if (type !== 0x30 && type !== 0) corrupt(`tar header: entry type 0x${type.toString(16)} is not a regular file`)
  let size: number
  if (((h[124] as number) & 0x80) !== 0) {
    if (h[124] !== 0x80 || h[125] !== 0 || h[126] !== 0 || h[127] !== 0) corrupt('tar header: size is out of range')
    size = readBigBE(h, 128)
  } else {
    size = parseOctalField(h, 124, 12, 'size')
  }
  const nameEnd = h.indexOf(0, 0)
  let name = h.toString('utf8', 0, nameEnd < 0 || nameEnd > 100 ? 100 : nameEnd)
  if (magic === 'ustar\0' && h[345] !== 0) {
    const pEnd = h.indexOf(0, 345)
    name = `${h.toString('utf8', 345, pEnd < 0 || pEnd > 500 ? 500 : pEnd)}/${name}`
  }
  return { name, size }
}

function readBigBE (h: Buffer, off: number): number {
  const v = h.readBigUInt64BE(off)
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) corrupt('tar header: size is out of range')
  return Number(v)
}

// ---------------------------------------------------------------------------------------------
// CI header

export interface CiHeader {
  /** Blob feature bits. */
  features: number
  /** Compressor id of the CI array (COMPRESSOR_ID). */
  ciCompressor: number
  ciEntries: number
  ciOffset: number
  ciCompressedSize: number
  ciUncompressedSize: number
  zranOffset: number
  zranSize: number
  zranCount: number
}

export function encodeCiHeader (v: CiHeader): Buffer {
  const b = Buffer.alloc(CI_HEADER_SIZE)
  b.writeUInt32LE(CI_MAGIC, 0)
  b.writeUInt32LE(v.features >>> 0, 4)
  b.writeUInt32LE(v.ciCompressor, 8)
  b.writeUInt32LE(v.ciEntries, 12)
  b.writeBigUInt64LE(BigInt(v.ciOffset), 16)
  b.writeBigUInt64LE(BigInt(v.ciCompressedSize), 24)
  b.writeBigUInt64LE(BigInt(v.ciUncompressedSize), 32)
  b.writeBigUInt64LE(BigInt(v.zranOffset), 40)
  b.writeBigUInt64LE(BigInt(v.zranSize), 48)
  b.writeUInt32LE(v.zranCount, 56)
  b.writeUInt32LE(CI_MAGIC, CI_HEADER_SIZE - 4)
  return b
}

/** Decode a CI header; NAIAD_FMT_BAD_MAGIC if either magic is wrong. */
export function decodeCiHeader (b: Buffer): CiHeader {
  if (b.length !== CI_HEADER_SIZE) corrupt(`CI header: ${b.length} bytes, expected ${CI_HEADER_SIZE}`)
  const m1 = b.readUInt32LE(0)
  const m2 = b.readUInt32LE(CI_HEADER_SIZE - 4)
  if (m1 !== CI_MAGIC || m2 !== CI_MAGIC) {
    throw new NaiadError('NAIAD_FMT_BAD_MAGIC', `CI header magic 0x${m1.toString(16)}/0x${m2.toString(16)}, expected 0x${CI_MAGIC.toString(16)}`)
  }
  return {
    features: b.readUInt32LE(4),
    ciCompressor: b.readUInt32LE(8),
    ciEntries: b.readUInt32LE(12),
    ciOffset: readU64(b, 16, 'CI offset'),
    ciCompressedSize: readU64(b, 24, 'CI compressed size'),
    ciUncompressedSize: readU64(b, 32, 'CI uncompressed size'),
    zranOffset: readU64(b, 40, 'ZRAN offset'),
    zranSize: readU64(b, 48, 'ZRAN size'),
    zranCount: b.readUInt32LE(56)
  }
}

// ---------------------------------------------------------------------------------------------
// CI entries

export interface CiEntry {
  compressedOffset: number
  compressedSize: number
  uncompressedOffset: number
  uncompressedSize: number
  compressed: boolean
  /** v2 only: the raw flag byte (CI_V2_FLAG). */
  flags?: number
  /** v2 only: the extra 64-bit word (CRC32 in the low half with HAS_CRC32; ZRAN/batch data). */
  data?: bigint
}

export function ciEntrySize (version: 1 | 2): number {
  return version === 2 ? CI_V2_ENTRY_SIZE : CI_V1_ENTRY_SIZE
}

function checkEntryFits (e: CiEntry, version: 1 | 2): void {
  if (!Number.isSafeInteger(e.uncompressedSize) || e.uncompressedSize < 1 || e.uncompressedSize > MAX_CHUNK_SIZE) limit(`CI v${version}: uncompressed size ${e.uncompressedSize} out of range`)
  if (!Number.isSafeInteger(e.compressedOffset) || e.compressedOffset < 0 || e.compressedOffset >= 2 ** 40) limit(`CI v${version}: compressed offset ${e.compressedOffset} needs more than 40 bits`)
  if (!Number.isSafeInteger(e.uncompressedOffset) || e.uncompressedOffset < 0 || e.uncompressedOffset >= 2 ** 44 || e.uncompressedOffset % 4096 !== 0) limit(`CI v${version}: uncompressed offset ${e.uncompressedOffset} must be 4 KiB aligned and below 2^44`)
  const maxC = version === 2 ? MAX_CHUNK_SIZE - 1 : MAX_CHUNK_SIZE
  if (!Number.isSafeInteger(e.compressedSize) || e.compressedSize < 1 || e.compressedSize > maxC) limit(`CI v${version}: compressed size ${e.compressedSize} out of range (1..${maxC})`)
  if (version === 1 && e.compressed !== (e.compressedSize !== e.uncompressedSize)) {
    limit('CI v1 cannot express a compressed chunk whose compressed size equals its uncompressed size')
  }
}

/** Write one CI entry at `off` of `b`. */
export function encodeCiEntry (b: Buffer, off: number, e: CiEntry, version: 1 | 2): void {
  checkEntryFits(e, version)
  const uOffLo = e.uncompressedOffset % TWO32
  const uOffHi = Math.floor(e.uncompressedOffset / TWO32)
  const cOffLo = e.compressedOffset % TWO32
  const cOffHi = Math.floor(e.compressedOffset / TWO32)
  if (version === 1) {
    const us = e.uncompressedSize - 1
    const cs = e.compressedSize - 1
    // uncomp_info: [8..11] size bits 20..23, [12..43] offset, [44..63] size bits 0..19
    b.writeUInt32LE(((uOffLo & 0xfffff000) | (((us >>> 20) & 0xf) << 8)) >>> 0, off)
    b.writeUInt32LE(((uOffHi & 0xfff) | ((us & 0xfffff) << 12)) >>> 0, off + 4)
    // comp_info: [0..39] offset, [40..43] size bits 20..23, [44..63] size bits 0..19
    b.writeUInt32LE(cOffLo >>> 0, off + 8)
    b.writeUInt32LE(((cOffHi & 0xff) | (((cs >>> 20) & 0xf) << 8) | ((cs & 0xfffff) << 12)) >>> 0, off + 12)
  } else {
    let flags = e.flags ?? 0
    flags = e.compressed ? (flags | CI_V2_FLAG.COMPRESSED) : (flags & ~CI_V2_FLAG.COMPRESSED)
    // uncomp_info: [0..31] offset >> 12, [32..55] size - 1, [56..63] flags
    b.writeUInt32LE(e.uncompressedOffset / 4096, off)
    b.writeUInt32LE((((e.uncompressedSize - 1) & 0xffffff) | ((flags & 0xff) << 24)) >>> 0, off + 4)
    // comp_info: [0..39] offset, [40..63] size
    b.writeUInt32LE(cOffLo >>> 0, off + 8)
    b.writeUInt32LE(((cOffHi & 0xff) | (e.compressedSize << 8)) >>> 0, off + 12)
    b.writeBigUInt64LE(e.data ?? 0n, off + 16)
  }
}

/** Read one CI entry at `off` of `b` (no semantic validation: see the blob reader). */
export function decodeCiEntry (b: Buffer, off: number, version: 1 | 2): CiEntry {
  const w0 = b.readUInt32LE(off)
  const w1 = b.readUInt32LE(off + 4)
  const w2 = b.readUInt32LE(off + 8)
  const w3 = b.readUInt32LE(off + 12)
  if (version === 1) {
    const uncompressedSize = ((w1 >>> 12) | (((w0 >>> 8) & 0xf) << 20)) + 1
    const compressedSize = ((w3 >>> 12) | (((w3 >>> 8) & 0xf) << 20)) + 1
    return {
      uncompressedOffset: ((w0 & 0xfffff000) >>> 0) + (w1 & 0xfff) * TWO32,
      uncompressedSize,
      compressedOffset: w2 + (w3 & 0xff) * TWO32,
      compressedSize,
      compressed: compressedSize !== uncompressedSize
    }
  }
  const flags = w1 >>> 24
  return {
    uncompressedOffset: w0 * 4096,
    uncompressedSize: (w1 & 0xffffff) + 1,
    compressedOffset: w2 + (w3 & 0xff) * TWO32,
    compressedSize: w3 >>> 8,
    compressed: (flags & CI_V2_FLAG.COMPRESSED) !== 0,
    flags,
    data: b.readBigUInt64LE(off + 16)
  }
}

// ---------------------------------------------------------------------------------------------
// ToC entries

export interface TocEntry {
  /** TOC_FLAG bits. */
  flags: number
  name: string
  /** sha256 of the uncompressed content (32 bytes; zeros = unknown). */
  digest: Buffer
  compressedOffset: number
  compressedSize: number
  uncompressedSize: number
}

export function encodeTocEntry (e: TocEntry): Buffer {
  const b = Buffer.alloc(TOC_ENTRY_SIZE)
  const name = Buffer.from(e.name, 'utf8')
  if (name.length > 16) limit(`ToC entry name ${JSON.stringify(e.name)} is longer than 16 bytes`)
  if (e.digest.length !== 32) limit('ToC entry digest must be 32 bytes')
  b.writeUInt32LE(e.flags, 0)
  name.copy(b, 8)
  e.digest.copy(b, 24)
  b.writeBigUInt64LE(BigInt(e.compressedOffset), 56)
  b.writeBigUInt64LE(BigInt(e.compressedSize), 64)
  b.writeBigUInt64LE(BigInt(e.uncompressedSize), 72)
  return b
}

export function decodeTocEntry (b: Buffer, off: number): TocEntry {
  const e = b.subarray(off, off + TOC_ENTRY_SIZE)
  if (e.length !== TOC_ENTRY_SIZE) corrupt('ToC entry is truncated')
  const nameEnd = e.indexOf(0, 8)
  const name = e.toString('utf8', 8, nameEnd < 0 || nameEnd > 24 ? 24 : nameEnd)
  return {
    flags: e.readUInt32LE(0),
    name,
    digest: Buffer.from(e.subarray(24, 56)),
    compressedOffset: readU64(e, 56, `ToC entry ${name} offset`),
    compressedSize: readU64(e, 64, `ToC entry ${name} compressed size`),
    uncompressedSize: readU64(e, 72, `ToC entry ${name} uncompressed size`)
  }
}
