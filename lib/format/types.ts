/**
 * The in-memory model shared by the RAFS v6 bootstrap writer/reader and the data blob
 * writer/reader. This file is the contract between lib/format's two halves (bootstrap.ts: the EROFS
 * metadata; blob.ts: the Nydus v6 data blob) and their users (converter, fsdaemon, check).
 *
 * Names are raw bytes (Buffer): layer tars may hold names that are not valid UTF-8, and we keep
 * them exactly. Hard links are two directory entries pointing at the same `Inode` object.
 */

export type Compressor = 'none' | 'lz4_block' | 'zstd'
export type ChunkDigester = 'blake3' | 'sha256'

/** Compressor ids as stored in the blob table (`compression_algo`, `ci_compressor`). */
export const COMPRESSOR_ID: Readonly<Record<Compressor | 'gzip', number>> = Object.freeze({ none: 0, lz4_block: 1, gzip: 2, zstd: 3 })
/** Digester ids as stored in the blob table (`digest_algo`). */
export const DIGESTER_ID: Readonly<Record<ChunkDigester, number>> = Object.freeze({ blake3: 0, sha256: 1 })

export const DEFAULT_CHUNK_SIZE = 0x100000
export const MIN_CHUNK_SIZE = 0x1000
export const MAX_CHUNK_SIZE = 0x1000000

/**
 * One data blob of the image (one "device" of the EROFS image). Created by the blob writer (or
 * read from a bootstrap's blob table). The bootstrap writer assigns blob indexes in the order blobs
 * are listed; chunks point at the BlobInfo object, never at a number, so dropping an empty blob
 * cannot leave a stale index behind.
 */
export interface BlobInfo {
  /** 64 lowercase hex chars: sha256 of the whole blob file (= the OCI layer digest's hex). */
  blobId: string
  chunkSize: number
  chunkCount: number
  compressor: Compressor
  digester: ChunkDigester
  /** Blob feature bits (BLOB_FEATURE_* in spec.ts). */
  features: number
  /** Size of the blob file in bytes. */
  compressedSize: number
  /** Size of the uncompressed address space (4 KiB aligned end of the last chunk). */
  uncompressedSize: number
  /** ToC size including its 512-byte tar header (0 if none). */
  tocSize: number
  /** sha256 of the ToC data plus its tar header (32 bytes; zeros if none). */
  tocDigest: Buffer
  /** Where the chunk-info (CI) array sits in the blob file, and how it is stored. */
  ciCompressor: Compressor
  ciOffset: number
  ciCompressedSize: number
  ciUncompressedSize: number
}

/** One unique chunk: where its bytes live, compressed and uncompressed. */
export interface ChunkRef {
  blob: BlobInfo
  /** Chunk number within its blob (0-based; the CI array index). */
  index: number
  /** 32-byte digest of the uncompressed chunk (BLAKE3 or SHA-256, the blob's digester). */
  digest: Buffer
  compressedOffset: number
  compressedSize: number
  /** 4 KiB aligned offset in the blob's uncompressed address space. */
  uncompressedOffset: number
  uncompressedSize: number
  /** False when the chunk is stored raw (compression did not shrink it, or compressor none). */
  compressed: boolean
  /** Optional CRC32 of the uncompressed chunk (CI v2 / HAS_CRC32). */
  crc32?: number
}

export type InodeType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket'

/** POSIX S_IF* type bits. */
export const S_IFMT = 0o170000
export const TYPE_BITS: Readonly<Record<InodeType, number>> = Object.freeze({
  socket: 0o140000, symlink: 0o120000, file: 0o100000, block: 0o060000, dir: 0o040000, char: 0o020000, fifo: 0o010000
})

export interface Xattr {
  /** Full name, e.g. "security.capability" (bytes: names may be arbitrary). */
  name: Buffer
  value: Buffer
}

export interface DirEntry {
  name: Buffer
  inode: Inode
}

export interface Inode {
  type: InodeType
  /** Permission and special bits only (0o7777): setuid/setgid/sticky included, type bits excluded. */
  perm: number
  uid: number
  gid: number
  /** Seconds since the epoch (may be negative or beyond 2038). */
  mtime: bigint
  mtimeNsec: number
  /** File size in bytes (regular files; symlinks: target length; others 0). */
  size: number
  /** Device number for char/block devices, Linux encoding (major/minor as `makedev`). */
  rdev: number
  /** Symlink target (raw bytes). */
  symlink?: Buffer
  xattrs: Xattr[]
  /** Regular files: one ChunkRef per chunkSize-sized piece of the file, in file order. */
  chunks: ChunkRef[]
  /** Directories: children, in any order (writers sort by name bytes). */
  entries?: DirEntry[]
  /**
   * Filled by readers: the inode number the image assigns (EROFS nid). Writers ignore it.
   * Two entries with the same `ino` are hard links.
   */
  ino?: number
}

export function newInode (type: InodeType, init: Partial<Omit<Inode, 'type'>> = {}): Inode {
  return {
    type,
    perm: init.perm ?? (type === 'dir' ? 0o755 : type === 'symlink' ? 0o777 : 0o644),
    uid: init.uid ?? 0,
    gid: init.gid ?? 0,
    mtime: init.mtime ?? 0n,
    mtimeNsec: init.mtimeNsec ?? 0,
    size: init.size ?? 0,
    rdev: init.rdev ?? 0,
    ...(init.symlink !== undefined ? { symlink: init.symlink } : {}),
    xattrs: init.xattrs ?? [],
    chunks: init.chunks ?? [],
    ...(type === 'dir' ? { entries: init.entries ?? [] } : {})
  }
}

/** Linux makedev/major/minor (glibc encoding). */
export function makedev (major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12) | ((major & ~0xfff) << 32)) >>> 0
}
export function major (dev: number): number { return ((dev >>> 8) & 0xfff) }
export function minor (dev: number): number { return (dev & 0xff) | ((dev >>> 12) & 0xfff00) }

/** Options shared by writers. */
export interface FormatOptions {
  chunkSize: number
  compressor: Compressor
  digester: ChunkDigester
}
