/**
 * On-disk structures of a RAFS v6 bootstrap: the EROFS superblock, inodes, dirents, inline xattrs
 * and chunk indexes (as the Linux kernel's fs/erofs/erofs_fs.h and erofs-utils define them), plus the
 * Nydus additions (extended superblock, device-table use, blob table, prefetch table, 80-byte
 * chunk-info records; as dragonflyoss/nydus rafs/src/metadata/layout/v6.rs and v5.rs define them).
 *
 * Every structure has a plain-object form, an `encode…` that writes it into a caller's buffer at an
 * offset, and a `decode…` that reads it back. Decoders check that the structure lies inside the
 * buffer (NAIAD_FMT_TRUNCATED otherwise) and that 64-bit fields fit a JS number where they are
 * returned as numbers (NAIAD_FMT_CORRUPT naming the field otherwise); they do not judge the values:
 * semantic validation is the bootstrap reader's job (bootstrap.ts).
 *
 * All integers are little-endian. Byte offsets of each field are in the comments.
 */
import { NaiadError } from '../errors/index.ts'
import type { Compressor, ChunkDigester, InodeType } from './types.ts'

// ---------------------------------------------------------------------------------------------
// Constants

export const EROFS_SUPER_OFFSET = 1024
export const EROFS_SUPER_BLOCK_SIZE = 128
export const EROFS_SUPER_MAGIC = 0xe0f5e1e2
export const EROFS_BLOCK_BITS = 12
export const EROFS_BLOCK_SIZE = 1 << EROFS_BLOCK_BITS
/** Inode slots are 32 bytes: inode offset = meta_blkaddr * 4096 + nid * 32. */
export const EROFS_INODE_SLOT_BITS = 5
export const EROFS_INODE_SLOT_SIZE = 1 << EROFS_INODE_SLOT_BITS
export const EROFS_INODE_COMPACT_SIZE = 32
export const EROFS_INODE_EXTENDED_SIZE = 64
export const EROFS_DIRENT_SIZE = 12
export const EROFS_NAME_LEN = 255
export const EROFS_DEVT_SLOT_SIZE = 128
export const EROFS_CHUNK_INDEX_SIZE = 8
export const EROFS_XATTR_IBODY_HEADER_SIZE = 12
export const EROFS_XATTR_ENTRY_SIZE = 4

/** Nydus extended superblock, right after the EROFS one. */
export const RAFS_V6_EXT_SUPER_OFFSET = EROFS_SUPER_OFFSET + EROFS_SUPER_BLOCK_SIZE // 1152
export const RAFS_V6_EXT_SUPER_SIZE = 256
/** The device table follows the extended superblock: devt_slotoff 11 = 1408 / 128. */
export const RAFS_V6_DEVTABLE_OFFSET = RAFS_V6_EXT_SUPER_OFFSET + RAFS_V6_EXT_SUPER_SIZE // 1408
export const RAFS_V6_DEVT_SLOTOFF = RAFS_V6_DEVTABLE_OFFSET / EROFS_DEVT_SLOT_SIZE // 11
export const RAFS_V6_BLOB_ENTRY_SIZE = 256
export const RAFS_V5_CHUNK_INFO_SIZE = 80
export const RAFS_BLOB_ID_LEN = 64
/** Magic of a RAFS v5 superblock (u32 at offset 0): we do not read v5. */
export const RAFS_V5_SUPER_MAGIC = 0x52414653
/** Nydus aligns each device's `mapped_blkaddr` to 512 KiB after the bootstrap (V6_BLOCK_SEG_ALIGNMENT). */
export const RAFS_V6_BLOCK_SEG_ALIGNMENT = 0x80000
/** At most 2^24 chunks per blob (the chunk index has 24 bits). */
export const RAFS_MAX_CHUNKS_PER_BLOB = 0x1000000
/** At most 255 blobs: the chunk index's device byte is blob index + 1 (0 is the bootstrap). */
export const RAFS_MAX_BLOBS = 255

export const EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x00000001
export const EROFS_FEATURE_COMPAT_MTIME = 0x00000002
export const EROFS_FEATURE_COMPAT_XATTR_FILTER = 0x00000004
export const EROFS_FEATURE_COMPAT_RAFS_V6 = 0x40000000
export const EROFS_FEATURE_INCOMPAT_ZERO_PADDING = 0x00000001
export const EROFS_FEATURE_INCOMPAT_COMPR_CFGS = 0x00000002
export const EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x00000004
export const EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x00000008
/** The only incompat set a RAFS v6 bootstrap may carry. */
export const RAFS_V6_FEATURE_INCOMPAT = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE

/** i_format: bit 0 version (0 compact, 1 extended), bits 1-3 data layout; higher bits unknown to us. */
export const EROFS_I_VERSION_MASK = 0x1
export const EROFS_I_DATALAYOUT_BIT = 1
export const EROFS_I_DATALAYOUT_MASK = 0x7
export const EROFS_I_ALL = 0xf

export const EROFS_INODE_FLAT_PLAIN = 0
export const EROFS_INODE_COMPRESSED_FULL = 1
export const EROFS_INODE_FLAT_INLINE = 2
export const EROFS_INODE_COMPRESSED_COMPACT = 3
export const EROFS_INODE_CHUNK_BASED = 4

/** Chunk-based i_u: 0x20 = "has 8-byte chunk indexes", low 5 bits = log2(chunk size) - 12. */
export const EROFS_CHUNK_FORMAT_INDEXES = 0x20
export const EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x1f

/** Dirent file types (generic FT_*). */
export const EROFS_FT = Object.freeze({ unknown: 0, file: 1, dir: 2, char: 3, block: 4, fifo: 5, socket: 6, symlink: 7 } as const)
const FT_TO_TYPE: readonly (InodeType | undefined)[] = [undefined, 'file', 'dir', 'char', 'block', 'fifo', 'socket', 'symlink']

export function fileTypeOf (type: InodeType): number { return EROFS_FT[type] }
/** The InodeType of a dirent file type, or undefined for 0 (unknown) and out-of-range values. */
export function typeOfFileType (ft: number): InodeType | undefined { return FT_TO_TYPE[ft] }

/** RafsSuperFlags (u64 in the extended superblock; all defined bits are in the low 32). */
export const RAFS_FLAG = Object.freeze({
  COMPRESSION_NONE: 0x1,
  COMPRESSION_LZ4: 0x2,
  HASH_BLAKE3: 0x4,
  HASH_SHA256: 0x8,
  EXPLICIT_UID_GID: 0x10,
  HAS_XATTR: 0x20,
  COMPRESSION_GZIP: 0x40,
  COMPRESSION_ZSTD: 0x80,
  INLINED_CHUNK_DIGEST: 0x100,
  TARFS_MODE: 0x200,
  ENCRYPTION_NONE: 0x01000000,
  ENCRYPTION_AES_128_XTS: 0x02000000
} as const)
export const RAFS_FLAGS_COMPRESSION_MASK = RAFS_FLAG.COMPRESSION_NONE | RAFS_FLAG.COMPRESSION_LZ4 | RAFS_FLAG.COMPRESSION_GZIP | RAFS_FLAG.COMPRESSION_ZSTD
export const RAFS_FLAGS_DIGEST_MASK = RAFS_FLAG.HASH_BLAKE3 | RAFS_FLAG.HASH_SHA256

export function compressorFlag (c: Compressor): number {
  return c === 'none' ? RAFS_FLAG.COMPRESSION_NONE : c === 'lz4_block' ? RAFS_FLAG.COMPRESSION_LZ4 : RAFS_FLAG.COMPRESSION_ZSTD
}
export function digesterFlag (d: ChunkDigester): number {
  return d === 'blake3' ? RAFS_FLAG.HASH_BLAKE3 : RAFS_FLAG.HASH_SHA256
}

/** Blob feature bits: one table for the bootstrap and the blob code (blobfmt.ts). */
export { BLOB_FEATURE } from './blobfmt.ts'

/** Chunk flags in the 80-byte chunk-info record (BlobChunkFlags). */
export const CHUNK_FLAG = Object.freeze({ COMPRESSED: 0x1, HOLE: 0x2, ENCRYPTED: 0x4, BATCH: 0x8, HAS_CRC32: 0x10 } as const)

/** Inline xattr name indexes and their prefixes (EROFS_XATTR_INDEX_*); Lustre (5) is not supported. */
export const XATTR_PREFIXES: readonly { readonly index: number, readonly prefix: Buffer }[] = Object.freeze([
  { index: 1, prefix: Buffer.from('user.') },
  { index: 2, prefix: Buffer.from('system.posix_acl_access') },
  { index: 3, prefix: Buffer.from('system.posix_acl_default') },
  { index: 4, prefix: Buffer.from('trusted.') },
  { index: 6, prefix: Buffer.from('security.') }
])

// ---------------------------------------------------------------------------------------------
// Checked access

/** Throws NAIAD_FMT_TRUNCATED unless [off, off + len) lies inside buf. */
export function needBytes (buf: Buffer, off: number, len: number, what: string): void {
  if (!Number.isSafeInteger(off) || off < 0 || len < 0 || off + len > buf.length) {
    throw new NaiadError('NAIAD_FMT_TRUNCATED', `${what} at offset ${off} (+${len} bytes) lies beyond the end of the ${buf.length}-byte buffer`)
  }
}

/** A u64 as a number; NAIAD_FMT_CORRUPT naming the field when it exceeds 2^53 - 1. */
export function readU64 (buf: Buffer, off: number, field: string): number {
  const v = buf.readBigUInt64LE(off)
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NaiadError('NAIAD_FMT_CORRUPT', `${field} 0x${v.toString(16)} is out of range`)
  return Number(v)
}

function writeU64 (buf: Buffer, off: number, v: number | bigint): void {
  buf.writeBigUInt64LE(typeof v === 'bigint' ? BigInt.asUintN(64, v) : BigInt(v), off)
}

// ---------------------------------------------------------------------------------------------
// EROFS superblock (128 bytes at 1024)

export interface ErofsSuperBlock {
  magic: number // 0
  checksum: number // 4
  featureCompat: number // 8
  blkszbits: number // 12
  sbExtslots: number // 13
  rootNid: number // 14 (u16)
  inos: bigint // 16
  /** Signed seconds (two's complement on disk); compact inodes take their mtime from it. */
  buildTime: bigint // 24
  buildTimeNsec: number // 32
  blocks: number // 36
  metaBlkaddr: number // 40
  xattrBlkaddr: number // 44
  uuid: Buffer // 48, 16 bytes
  volumeName: Buffer // 64, 16 bytes
  featureIncompat: number // 80
  u1: number // 84 (available_compr_algs / lz4_max_distance)
  extraDevices: number // 86
  devtSlotoff: number // 88
  dirblkbits: number // 90
  xattrPrefixCount: number // 91
  xattrPrefixStart: number // 92
  packedNid: bigint // 96
}

export function encodeSuperBlock (sb: ErofsSuperBlock, buf: Buffer, off = EROFS_SUPER_OFFSET): void {
  buf.fill(0, off, off + EROFS_SUPER_BLOCK_SIZE)
  buf.writeUInt32LE(sb.magic >>> 0, off)
  buf.writeUInt32LE(sb.checksum >>> 0, off + 4)
  buf.writeUInt32LE(sb.featureCompat >>> 0, off + 8)
  buf.writeUInt8(sb.blkszbits, off + 12)
  buf.writeUInt8(sb.sbExtslots, off + 13)
  buf.writeUInt16LE(sb.rootNid, off + 14)
  writeU64(buf, off + 16, sb.inos)
  writeU64(buf, off + 24, sb.buildTime)
  buf.writeUInt32LE(sb.buildTimeNsec, off + 32)
  buf.writeUInt32LE(sb.blocks, off + 36)
  buf.writeUInt32LE(sb.metaBlkaddr, off + 40)
  buf.writeUInt32LE(sb.xattrBlkaddr, off + 44)
  sb.uuid.copy(buf, off + 48, 0, 16)
  sb.volumeName.copy(buf, off + 64, 0, 16)
  buf.writeUInt32LE(sb.featureIncompat >>> 0, off + 80)
  buf.writeUInt16LE(sb.u1, off + 84)
  buf.writeUInt16LE(sb.extraDevices, off + 86)
  buf.writeUInt16LE(sb.devtSlotoff, off + 88)
  buf.writeUInt8(sb.dirblkbits, off + 90)
  buf.writeUInt8(sb.xattrPrefixCount, off + 91)
  buf.writeUInt32LE(sb.xattrPrefixStart, off + 92)
  writeU64(buf, off + 96, sb.packedNid)
}

export function decodeSuperBlock (buf: Buffer, off = EROFS_SUPER_OFFSET): ErofsSuperBlock {
  needBytes(buf, off, EROFS_SUPER_BLOCK_SIZE, 'EROFS superblock')
  return {
    magic: buf.readUInt32LE(off),
    checksum: buf.readUInt32LE(off + 4),
    featureCompat: buf.readUInt32LE(off + 8),
    blkszbits: buf.readUInt8(off + 12),
    sbExtslots: buf.readUInt8(off + 13),
    rootNid: buf.readUInt16LE(off + 14),
    inos: buf.readBigUInt64LE(off + 16),
    buildTime: buf.readBigInt64LE(off + 24),
    buildTimeNsec: buf.readUInt32LE(off + 32),
    blocks: buf.readUInt32LE(off + 36),
    metaBlkaddr: buf.readUInt32LE(off + 40),
    xattrBlkaddr: buf.readUInt32LE(off + 44),
    uuid: Buffer.from(buf.subarray(off + 48, off + 64)),
    volumeName: Buffer.from(buf.subarray(off + 64, off + 80)),
    featureIncompat: buf.readUInt32LE(off + 80),
    u1: buf.readUInt16LE(off + 84),
    extraDevices: buf.readUInt16LE(off + 86),
    devtSlotoff: buf.readUInt16LE(off + 88),
    dirblkbits: buf.readUInt8(off + 90),
    xattrPrefixCount: buf.readUInt8(off + 91),
    xattrPrefixStart: buf.readUInt32LE(off + 92),
    packedNid: buf.readBigUInt64LE(off + 96)
  }
}

// ---------------------------------------------------------------------------------------------
// Nydus extended superblock (RafsV6SuperBlockExt, 256 bytes at 1152)

export interface RafsV6ExtSuperBlock {
  /** RafsSuperFlags; u64 on disk, all defined bits in the low 32. */
  flags: number // 0
  blobTableOffset: number // 8 (u64)
  blobTableSize: number // 16 (u32)
  chunkSize: number // 20 (u32)
  chunkTableOffset: number // 24 (u64)
  chunkTableSize: number // 32 (u64)
  prefetchTableOffset: number // 40 (u64)
  prefetchTableSize: number // 48 (u32)
  // 52: u32 padding, 56: 200 bytes reserved
}

export function encodeExtSuperBlock (e: RafsV6ExtSuperBlock, buf: Buffer, off = RAFS_V6_EXT_SUPER_OFFSET): void {
  buf.fill(0, off, off + RAFS_V6_EXT_SUPER_SIZE)
  writeU64(buf, off, e.flags)
  writeU64(buf, off + 8, e.blobTableOffset)
  buf.writeUInt32LE(e.blobTableSize, off + 16)
  buf.writeUInt32LE(e.chunkSize, off + 20)
  writeU64(buf, off + 24, e.chunkTableOffset)
  writeU64(buf, off + 32, e.chunkTableSize)
  writeU64(buf, off + 40, e.prefetchTableOffset)
  buf.writeUInt32LE(e.prefetchTableSize, off + 48)
}

export function decodeExtSuperBlock (buf: Buffer, off = RAFS_V6_EXT_SUPER_OFFSET): RafsV6ExtSuperBlock {
  needBytes(buf, off, RAFS_V6_EXT_SUPER_SIZE, 'RAFS v6 extended superblock')
  const flags = buf.readBigUInt64LE(off)
  if (flags > 0xffffffffn) throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `extended superblock flags 0x${flags.toString(16)} use bits above 32 that naiad does not know`)
  return {
    flags: Number(flags),
    blobTableOffset: readU64(buf, off + 8, 'ext superblock blob_table_offset'),
    blobTableSize: buf.readUInt32LE(off + 16),
    chunkSize: buf.readUInt32LE(off + 20),
    chunkTableOffset: readU64(buf, off + 24, 'ext superblock chunk_table_offset'),
    chunkTableSize: readU64(buf, off + 32, 'ext superblock chunk_table_size'),
    prefetchTableOffset: readU64(buf, off + 40, 'ext superblock prefetch_table_offset'),
    prefetchTableSize: buf.readUInt32LE(off + 48)
  }
}

// ---------------------------------------------------------------------------------------------
// Device slot (erofs_deviceslot / RafsV6Device, 128 bytes each, from 1408)

export interface ErofsDeviceSlot {
  /** 64-byte tag: the blob id as ASCII hex. */
  tag: Buffer // 0
  blocks: number // 64
  mappedBlkaddr: number // 68
  // 72: 56 bytes reserved
}

export function encodeDeviceSlot (d: ErofsDeviceSlot, buf: Buffer, off: number): void {
  buf.fill(0, off, off + EROFS_DEVT_SLOT_SIZE)
  d.tag.copy(buf, off, 0, Math.min(d.tag.length, RAFS_BLOB_ID_LEN))
  buf.writeUInt32LE(d.blocks, off + 64)
  buf.writeUInt32LE(d.mappedBlkaddr, off + 68)
}

export function decodeDeviceSlot (buf: Buffer, off: number): ErofsDeviceSlot {
  needBytes(buf, off, EROFS_DEVT_SLOT_SIZE, 'device slot')
  return { tag: Buffer.from(buf.subarray(off, off + 64)), blocks: buf.readUInt32LE(off + 64), mappedBlkaddr: buf.readUInt32LE(off + 68) }
}

// ---------------------------------------------------------------------------------------------
// Blob table entry (RafsV6Blob, 256 bytes)

export interface RafsV6BlobEntry {
  blobId: Buffer // 0, 64 bytes ASCII
  blobIndex: number // 64
  chunkSize: number // 68
  chunkCount: number // 72
  compressionAlgo: number // 76
  digestAlgo: number // 80
  features: number // 84
  compressedSize: number // 88 (u64)
  uncompressedSize: number // 96 (u64)
  blobTocSize: number // 104
  ciCompressor: number // 108
  ciOffset: number // 112 (u64)
  ciCompressedSize: number // 120 (u64)
  ciUncompressedSize: number // 128 (u64)
  blobTocDigest: Buffer // 136, 32 bytes
  blobMetaDigest: Buffer // 168, 32 bytes (ZRAN meta digest / cipher key)
  blobMetaSize: bigint // 200 (u64; ZRAN meta size / half of the cipher IV)
  cipherIv: Buffer // 208, 8 bytes
  cipherAlgo: number // 216
  // 220: 36 bytes reserved
}

export function encodeBlobEntry (b: RafsV6BlobEntry, buf: Buffer, off: number): void {
  buf.fill(0, off, off + RAFS_V6_BLOB_ENTRY_SIZE)
  b.blobId.copy(buf, off, 0, Math.min(b.blobId.length, RAFS_BLOB_ID_LEN))
  buf.writeUInt32LE(b.blobIndex, off + 64)
  buf.writeUInt32LE(b.chunkSize, off + 68)
  buf.writeUInt32LE(b.chunkCount, off + 72)
  buf.writeUInt32LE(b.compressionAlgo, off + 76)
  buf.writeUInt32LE(b.digestAlgo, off + 80)
  buf.writeUInt32LE(b.features >>> 0, off + 84)
  writeU64(buf, off + 88, b.compressedSize)
  writeU64(buf, off + 96, b.uncompressedSize)
  buf.writeUInt32LE(b.blobTocSize, off + 104)
  buf.writeUInt32LE(b.ciCompressor, off + 108)
  writeU64(buf, off + 112, b.ciOffset)
  writeU64(buf, off + 120, b.ciCompressedSize)
  writeU64(buf, off + 128, b.ciUncompressedSize)
  b.blobTocDigest.copy(buf, off + 136, 0, 32)
  b.blobMetaDigest.copy(buf, off + 168, 0, 32)
  writeU64(buf, off + 200, b.blobMetaSize)
  b.cipherIv.copy(buf, off + 208, 0, 8)
  buf.writeUInt32LE(b.cipherAlgo, off + 216)
}

export function decodeBlobEntry (buf: Buffer, off: number): RafsV6BlobEntry {
  needBytes(buf, off, RAFS_V6_BLOB_ENTRY_SIZE, 'blob table entry')
  return {
    blobId: Buffer.from(buf.subarray(off, off + 64)),
    blobIndex: buf.readUInt32LE(off + 64),
    chunkSize: buf.readUInt32LE(off + 68),
    chunkCount: buf.readUInt32LE(off + 72),
    compressionAlgo: buf.readUInt32LE(off + 76),
    digestAlgo: buf.readUInt32LE(off + 80),
    features: buf.readUInt32LE(off + 84),
    compressedSize: readU64(buf, off + 88, 'blob compressed_size'),
    uncompressedSize: readU64(buf, off + 96, 'blob uncompressed_size'),
    blobTocSize: buf.readUInt32LE(off + 104),
    ciCompressor: buf.readUInt32LE(off + 108),
    ciOffset: readU64(buf, off + 112, 'blob ci_offset'),
    ciCompressedSize: readU64(buf, off + 120, 'blob ci_compressed_size'),
    ciUncompressedSize: readU64(buf, off + 128, 'blob ci_uncompressed_size'),
    blobTocDigest: Buffer.from(buf.subarray(off + 136, off + 168)),
    blobMetaDigest: Buffer.from(buf.subarray(off + 168, off + 200)),
    blobMetaSize: buf.readBigUInt64LE(off + 200),
    cipherIv: Buffer.from(buf.subarray(off + 208, off + 216)),
    cipherAlgo: buf.readUInt32LE(off + 216)
  }
}

// ---------------------------------------------------------------------------------------------
// Inodes (erofs_inode_compact, 32 bytes; erofs_inode_extended, 64 bytes)

export interface ErofsInode {
  compact: boolean
  /** Raw i_format (version bit, layout bits, unknown bits kept for validation). */
  format: number // 0
  layout: number
  xattrIcount: number // 2
  mode: number // 4
  nlink: number // compact 6 (u16), extended 44 (u32)
  size: number // compact 8 (u32), extended 8 (u64)
  /** Compact only: byte 12, seconds after the superblock build time (Linux 6.15+; 0 = build time). */
  mtimeDelta: number
  /** raw_blkaddr, rdev or chunk format. */
  u: number // 16
  ino: number // 20
  uid: number // compact 24 (u16), extended 24 (u32)
  gid: number // compact 26 (u16), extended 28 (u32)
  /** Extended only (compact: 0n). Signed seconds. */
  mtime: bigint // extended 32
  mtimeNsec: number // extended 40
}

export function inodeFormat (compact: boolean, layout: number): number {
  return (layout << EROFS_I_DATALAYOUT_BIT) | (compact ? 0 : 1)
}

export function encodeInode (i: ErofsInode, buf: Buffer, off: number): void {
  if (i.compact) {
    buf.fill(0, off, off + EROFS_INODE_COMPACT_SIZE)
    buf.writeUInt16LE(inodeFormat(true, i.layout), off)
    buf.writeUInt16LE(i.xattrIcount, off + 2)
    buf.writeUInt16LE(i.mode, off + 4)
    buf.writeUInt16LE(i.nlink, off + 6)
    buf.writeUInt32LE(i.size, off + 8)
    buf.writeUInt32LE(i.mtimeDelta, off + 12)
    buf.writeUInt32LE(i.u >>> 0, off + 16)
    buf.writeUInt32LE(i.ino >>> 0, off + 20)
    buf.writeUInt16LE(i.uid, off + 24)
    buf.writeUInt16LE(i.gid, off + 26)
    return
  }
  buf.fill(0, off, off + EROFS_INODE_EXTENDED_SIZE)
  buf.writeUInt16LE(inodeFormat(false, i.layout), off)
  buf.writeUInt16LE(i.xattrIcount, off + 2)
  buf.writeUInt16LE(i.mode, off + 4)
  writeU64(buf, off + 8, i.size)
  buf.writeUInt32LE(i.u >>> 0, off + 16)
  buf.writeUInt32LE(i.ino >>> 0, off + 20)
  buf.writeUInt32LE(i.uid >>> 0, off + 24)
  buf.writeUInt32LE(i.gid >>> 0, off + 28)
  writeU64(buf, off + 32, i.mtime)
  buf.writeUInt32LE(i.mtimeNsec, off + 40)
  buf.writeUInt32LE(i.nlink >>> 0, off + 44)
}

/** Decodes the inode at `off`, reading 32 bytes first and 32 more only for extended inodes. */
export function decodeInode (buf: Buffer, off: number): ErofsInode {
  needBytes(buf, off, EROFS_INODE_COMPACT_SIZE, 'inode')
  const format = buf.readUInt16LE(off)
  const compact = (format & EROFS_I_VERSION_MASK) === 0
  const layout = (format >> EROFS_I_DATALAYOUT_BIT) & EROFS_I_DATALAYOUT_MASK
  if (compact) {
    return {
      compact,
      format,
      layout,
      xattrIcount: buf.readUInt16LE(off + 2),
      mode: buf.readUInt16LE(off + 4),
      nlink: buf.readUInt16LE(off + 6),
      size: buf.readUInt32LE(off + 8),
      mtimeDelta: buf.readUInt32LE(off + 12),
      u: buf.readUInt32LE(off + 16),
      ino: buf.readUInt32LE(off + 20),
      uid: buf.readUInt16LE(off + 24),
      gid: buf.readUInt16LE(off + 26),
      mtime: 0n,
      mtimeNsec: 0
    }
  }
  needBytes(buf, off, EROFS_INODE_EXTENDED_SIZE, 'extended inode')
  return {
    compact,
    format,
    layout,
    xattrIcount: buf.readUInt16LE(off + 2),
    mode: buf.readUInt16LE(off + 4),
    nlink: buf.readUInt32LE(off + 44),
    size: readU64(buf, off + 8, 'inode i_size'),
    mtimeDelta: 0,
    u: buf.readUInt32LE(off + 16),
    ino: buf.readUInt32LE(off + 20),
    uid: buf.readUInt32LE(off + 24),
    gid: buf.readUInt32LE(off + 28),
    mtime: buf.readBigInt64LE(off + 32),
    mtimeNsec: buf.readUInt32LE(off + 40)
  }
}

/** The chunk-based i_u for a chunk size (a power of two ≥ 4096). */
export function chunkFormat (chunkSize: number): number {
  return EROFS_CHUNK_FORMAT_INDEXES | (Math.log2(chunkSize) - EROFS_BLOCK_BITS)
}

// ---------------------------------------------------------------------------------------------
// Dirents (erofs_dirent, 12 bytes)

export interface ErofsDirent {
  nid: bigint // 0 (u64)
  nameoff: number // 8 (u16)
  fileType: number // 10 (u8)
  // 11: reserved
}

export function encodeDirent (d: { nid: number, nameoff: number, fileType: number }, buf: Buffer, off: number): void {
  buf.writeBigUInt64LE(BigInt(d.nid), off)
  buf.writeUInt16LE(d.nameoff, off + 8)
  buf.writeUInt8(d.fileType, off + 10)
  buf.writeUInt8(0, off + 11)
}

export function decodeDirent (buf: Buffer, off: number): ErofsDirent {
  needBytes(buf, off, EROFS_DIRENT_SIZE, 'dirent')
  return { nid: buf.readBigUInt64LE(off), nameoff: buf.readUInt16LE(off + 8), fileType: buf.readUInt8(off + 10) }
}

// ---------------------------------------------------------------------------------------------
// Inline xattrs (erofs_xattr_ibody_header 12 bytes + erofs_xattr_entry 4 bytes + name + value, each
// entry padded to 4 bytes). i_xattr_icount = 1 + (ibody size - 12) / 4; 0 means no xattrs.

export interface EncodedXattrName { index: number, suffix: Buffer }

/** Splits a full xattr name into its EROFS name index and suffix; undefined for unknown prefixes. */
export function splitXattrName (name: Buffer): EncodedXattrName | undefined {
  for (const p of XATTR_PREFIXES) {
    if (name.length >= p.prefix.length && name.subarray(0, p.prefix.length).equals(p.prefix)) {
      return { index: p.index, suffix: name.subarray(p.prefix.length) }
    }
  }
  return undefined
}

export function xattrPrefix (index: number): Buffer | undefined {
  return XATTR_PREFIXES.find(p => p.index === index)?.prefix
}

/** Size of the inline xattr body for already split entries (0 when there are none). */
export function xattrIbodySize (entries: readonly { suffix: Buffer, value: Buffer }[]): number {
  if (entries.length === 0) return 0
  let size = EROFS_XATTR_IBODY_HEADER_SIZE
  for (const e of entries) size += align(EROFS_XATTR_ENTRY_SIZE + e.suffix.length + e.value.length, 4)
  return size
}

export function xattrIcountOf (ibodySize: number): number {
  return ibodySize === 0 ? 0 : (ibodySize - EROFS_XATTR_IBODY_HEADER_SIZE) / 4 + 1
}

export function xattrIbodySizeOf (icount: number): number {
  return icount === 0 ? 0 : EROFS_XATTR_IBODY_HEADER_SIZE + (icount - 1) * 4
}

/** Writes header + entries at `off`; returns the bytes written (= xattrIbodySize). */
export function encodeXattrIbody (entries: readonly { index: number, suffix: Buffer, value: Buffer }[], buf: Buffer, off: number): number {
  if (entries.length === 0) return 0
  buf.fill(0, off, off + EROFS_XATTR_IBODY_HEADER_SIZE) // h_name_filter 0, h_shared_count 0
  let p = off + EROFS_XATTR_IBODY_HEADER_SIZE
  for (const e of entries) {
    const len = EROFS_XATTR_ENTRY_SIZE + e.suffix.length + e.value.length
    buf.fill(0, p, p + align(len, 4))
    buf.writeUInt8(e.suffix.length, p)
    buf.writeUInt8(e.index, p + 1)
    buf.writeUInt16LE(e.value.length, p + 2)
    e.suffix.copy(buf, p + 4)
    e.value.copy(buf, p + 4 + e.suffix.length)
    p += align(len, 4)
  }
  return p - off
}

export interface DecodedXattrEntry { index: number, suffix: Buffer, value: Buffer }

/**
 * Decodes an inline xattr body of `size` bytes at `off` (header, then entries filling the body
 * exactly, ignoring zero padding at the end). Shared xattrs are NAIAD_FMT_UNSUPPORTED.
 */
export function decodeXattrIbody (buf: Buffer, off: number, size: number): DecodedXattrEntry[] {
  if (size === 0) return []
  needBytes(buf, off, size, 'inline xattrs')
  const shared = buf.readUInt8(off + 4)
  if (shared !== 0) throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `inode uses ${shared} shared xattrs (RAFS v6 has only inline xattrs)`)
  const out: DecodedXattrEntry[] = []
  const end = off + size
  let p = off + EROFS_XATTR_IBODY_HEADER_SIZE
  while (p + EROFS_XATTR_ENTRY_SIZE <= end) {
    const nameLen = buf.readUInt8(p)
    const index = buf.readUInt8(p + 1)
    const valueLen = buf.readUInt16LE(p + 2)
    if (nameLen === 0 && index === 0 && valueLen === 0) {
      // zero padding up to the end of the body
      if (buf.subarray(p, end).some(b => b !== 0)) throw new NaiadError('NAIAD_FMT_CORRUPT', `xattr entry at offset ${p} has name index 0`)
      break
    }
    const len = EROFS_XATTR_ENTRY_SIZE + nameLen + valueLen
    if (p + len > end) throw new NaiadError('NAIAD_FMT_CORRUPT', `xattr entry at offset ${p} (${len} bytes) overruns the ${size}-byte inline xattr body`)
    out.push({ index, suffix: Buffer.from(buf.subarray(p + 4, p + 4 + nameLen)), value: Buffer.from(buf.subarray(p + 4 + nameLen, p + len)) })
    p += align(len, 4)
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Chunk index (erofs_inode_chunk_index / RafsV6InodeChunkAddr, 8 bytes)
//   bytes 0-1 low 16 bits of the chunk index in its blob ("advise" for EROFS)
//   byte 2    blob index + 1 (EROFS device id; 0 is the bootstrap itself)
//   byte 3    bits 16-23 of the chunk index (EROFS masks them off the device id)
//   bytes 4-7 uncompressed offset / 4096 in the blob's device

export interface ChunkIndexEntry { blobIndex: number, chunkIndex: number, blkaddr: number }

export function encodeChunkIndex (c: ChunkIndexEntry, buf: Buffer, off: number): void {
  buf.writeUInt16LE(c.chunkIndex & 0xffff, off)
  buf.writeUInt8(c.blobIndex + 1, off + 2)
  buf.writeUInt8((c.chunkIndex >>> 16) & 0xff, off + 3)
  buf.writeUInt32LE(c.blkaddr >>> 0, off + 4)
}

/** blobIndex is -1 when the device byte is 0 (a chunk on the bootstrap device: invalid for RAFS). */
export function decodeChunkIndex (buf: Buffer, off: number): ChunkIndexEntry {
  needBytes(buf, off, EROFS_CHUNK_INDEX_SIZE, 'chunk index')
  return {
    chunkIndex: buf.readUInt16LE(off) | (buf.readUInt8(off + 3) << 16),
    blobIndex: buf.readUInt8(off + 2) - 1,
    blkaddr: buf.readUInt32LE(off + 4)
  }
}

// ---------------------------------------------------------------------------------------------
// Chunk-info record (RafsV5ChunkInfo, 80 bytes; the table at the end of a v6 bootstrap)

export interface ChunkInfoRecord {
  digest: Buffer // 0, 32 bytes
  blobIndex: number // 32
  flags: number // 36
  compressedSize: number // 40
  uncompressedSize: number // 44
  compressedOffset: number // 48 (u64)
  uncompressedOffset: number // 56 (u64)
  fileOffset: number // 64 (u64)
  index: number // 72
  crc32: number // 76 (reserved before CRC support)
}

export function encodeChunkInfo (c: ChunkInfoRecord, buf: Buffer, off: number): void {
  buf.fill(0, off, off + RAFS_V5_CHUNK_INFO_SIZE)
  c.digest.copy(buf, off, 0, 32)
  buf.writeUInt32LE(c.blobIndex, off + 32)
  buf.writeUInt32LE(c.flags, off + 36)
  buf.writeUInt32LE(c.compressedSize, off + 40)
  buf.writeUInt32LE(c.uncompressedSize, off + 44)
  writeU64(buf, off + 48, c.compressedOffset)
  writeU64(buf, off + 56, c.uncompressedOffset)
  writeU64(buf, off + 64, c.fileOffset)
  buf.writeUInt32LE(c.index, off + 72)
  buf.writeUInt32LE(c.crc32 >>> 0, off + 76)
}

export function decodeChunkInfo (buf: Buffer, off: number): ChunkInfoRecord {
  needBytes(buf, off, RAFS_V5_CHUNK_INFO_SIZE, 'chunk-info record')
  return {
    digest: Buffer.from(buf.subarray(off, off + 32)),
    blobIndex: buf.readUInt32LE(off + 32),
    flags: buf.readUInt32LE(off + 36),
    compressedSize: buf.readUInt32LE(off + 40),
    uncompressedSize: buf.readUInt32LE(off + 44),
    compressedOffset: readU64(buf, off + 48, 'chunk-info compressed_offset'),
    uncompressedOffset: readU64(buf, off + 56, 'chunk-info uncompressed_offset'),
    fileOffset: readU64(buf, off + 64, 'chunk-info file_offset'),
    index: buf.readUInt32LE(off + 72),
    crc32: buf.readUInt32LE(off + 76)
  }
}

// ---------------------------------------------------------------------------------------------
// Prefetch table: u32 nids

export function encodePrefetchTable (nids: readonly number[], buf: Buffer, off: number): void {
  nids.forEach((nid, i) => buf.writeUInt32LE(nid, off + 4 * i))
}

export function decodePrefetchTable (buf: Buffer, off: number, size: number): number[] {
  needBytes(buf, off, size, 'prefetch table')
  const out: number[] = []
  for (let p = off; p + 4 <= off + size; p += 4) out.push(buf.readUInt32LE(p))
  return out
}

// ---------------------------------------------------------------------------------------------
// Small arithmetic

export function align (n: number, to: number): number {
  return Math.ceil(n / to) * to
}

export function alignDown (n: number, to: number): number {
  return Math.floor(n / to) * to
}

export function isPowerOfTwo (n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n
}

/** Smallest power of two ≥ n (n ≥ 1). */
export function nextPowerOfTwo (n: number): number {
  return 2 ** Math.ceil(Math.log2(n))
}
