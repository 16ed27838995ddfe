/**
 * The Linux FUSE wire protocol (include/uapi/linux/fuse.h), the parts a read-only filesystem
 * needs: request/reply headers, INIT negotiation, attributes, entries, dirents, statfs, xattrs.
 * All little-endian, all fixed offsets; every decoder checks the request length first.
 */

export const FUSE_KERNEL_VERSION = 7
/** The protocol minor we speak (7.31: max_pages, cache_symlinks, …); the kernel may speak more. */
export const FUSE_KERNEL_MINOR = 31
export const FUSE_ROOT_ID = 1

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SYNCFS: 50,
  TMPFILE: 51,
  STATX: 52
} as const

export const InitFlag = {
  ASYNC_READ: 1 << 0,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  PARALLEL_DIROPS: 1 << 18,
  POSIX_ACL: 1 << 20,
  /** The kernel may skip OPEN/RELEASE when the daemon answers OPEN with ENOSYS (5.1+). */
  NO_OPEN_SUPPORT: 1 << 17,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  /** The same for OPENDIR/RELEASEDIR (5.1+). */
  NO_OPENDIR_SUPPORT: 1 << 24,
  INIT_EXT: 1 << 30
} as const

export const OpenFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  /** Reads, mmap and splice go to the backing file named by backing_id (7.40, Linux 6.9+). */
  PASSTHROUGH: 1 << 7
} as const

/** Bits of INIT's flags2 (the upper 32 bits of the 64-bit flags; valid with INIT_EXT). */
export const InitFlag2 = {
  /** FUSE_PASSTHROUGH (1 << 37): files may be opened onto a backing file (Linux 6.9+). */
  PASSTHROUGH: 1 << (37 - 32),
  /** FUSE_HAS_RESEND (1 << 39) */
  HAS_RESEND: 1 << (39 - 32)
} as const

/** The protocol minor that brought passthrough; we answer with it when passthrough is on. */
export const FUSE_MINOR_PASSTHROUGH = 40

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  ENOSYS: 38,
  ENAMETOOLONG: 36,
  ENODATA: 61,
  ENOTSUP: 95,
  EOVERFLOW: 75
} as const

export const IN_HEADER = 40
export const OUT_HEADER = 16
export const ATTR_SIZE = 88
export const ENTRY_OUT = 40 + ATTR_SIZE
export const ATTR_OUT = 16 + ATTR_SIZE

export interface InHeader {
  len: number
  opcode: number
  unique: bigint
  nodeid: number
  uid: number
  gid: number
  pid: number
}

export class ProtocolError extends Error {}

export function decodeInHeader (b: Buffer): InHeader {
  if (b.length < IN_HEADER) throw new ProtocolError(`request of ${b.length} bytes is shorter than the header`)
  const len = b.readUInt32LE(0)
  if (len !== b.length) throw new ProtocolError(`request length ${len} does not match the ${b.length} bytes read`)
  const nodeid = b.readBigUInt64LE(16)
  return {
    len,
    opcode: b.readUInt32LE(4),
    unique: b.readBigUInt64LE(8),
    nodeid: nodeid > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(nodeid),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    pid: b.readUInt32LE(32)
  }
}

/** The NUL-terminated name that follows a request's fixed part. */
export function cName (b: Buffer, off: number): Buffer {
  const end = b.indexOf(0, off)
  if (end === -1) throw new ProtocolError('name is not NUL-terminated')
  return b.subarray(off, end)
}

export function outHeader (len: number, error: number, unique: bigint): Buffer {
  const h = Buffer.allocUnsafe(OUT_HEADER)
  h.writeUInt32LE(len, 0)
  h.writeInt32LE(error, 4)
  h.writeBigUInt64LE(unique, 8)
  return h
}

export interface InitIn { major: number, minor: number, maxReadahead: number, flags: number, flags2: number }

export function decodeInitIn (b: Buffer): InitIn {
  if (b.length < IN_HEADER + 16) throw new ProtocolError('short INIT request')
  return {
    major: b.readUInt32LE(IN_HEADER),
    minor: b.readUInt32LE(IN_HEADER + 4),
    maxReadahead: b.readUInt32LE(IN_HEADER + 8),
    flags: b.readUInt32LE(IN_HEADER + 12),
    flags2: b.length >= IN_HEADER + 20 ? b.readUInt32LE(IN_HEADER + 16) : 0
  }
}

export interface InitOut {
  minor: number
  maxReadahead: number
  flags: number
  maxBackground: number
  congestionThreshold: number
  maxWrite: number
  timeGran: number
  maxPages: number
  /** Sent only with InitFlag.INIT_EXT in `flags`. */
  flags2?: number
  /** With InitFlag2.PASSTHROUGH: how deep backing files' filesystems may stack (1 or 2). */
  maxStackDepth?: number
}

export function encodeInitOut (o: InitOut): Buffer {
  const b = Buffer.alloc(64)
  b.writeUInt32LE(FUSE_KERNEL_VERSION, 0)
  b.writeUInt32LE(o.minor, 4)
  b.writeUInt32LE(o.maxReadahead, 8)
  b.writeUInt32LE(o.flags >>> 0, 12)
  b.writeUInt16LE(o.maxBackground, 16)
  b.writeUInt16LE(o.congestionThreshold, 18)
  b.writeUInt32LE(o.maxWrite, 20)
  b.writeUInt32LE(o.timeGran, 24)
  b.writeUInt16LE(o.maxPages, 28)
  b.writeUInt32LE((o.flags2 ?? 0) >>> 0, 32)
  b.writeUInt32LE(o.maxStackDepth ?? 0, 36)
  return b
}

/** Attributes as the kernel wants them. Times are seconds + nanoseconds. */
export interface Attr {
  ino: number
  size: number
  blocks: number
  mtime: bigint
  mtimeNsec: number
  /** Full st_mode (type + permission bits). */
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev: number
  blksize: number
}

/** A non-negative safe integer as a little-endian u64, without a BigInt. */
function writeU64 (b: Buffer, n: number, off: number): void {
  b.writeUInt32LE(n % 0x100000000, off)
  b.writeUInt32LE(Math.floor(n / 0x100000000), off + 4)
}

function writeAttr (b: Buffer, off: number, a: Attr): void {
  writeU64(b, a.ino, off)
  writeU64(b, a.size, off + 8)
  writeU64(b, a.blocks, off + 16)
  const t = BigInt.asUintN(64, a.mtime)
  b.writeBigUInt64LE(t, off + 24) // atime
  b.writeBigUInt64LE(t, off + 32) // mtime
  b.writeBigUInt64LE(t, off + 40) // ctime
  b.writeUInt32LE(a.mtimeNsec, off + 48)
  b.writeUInt32LE(a.mtimeNsec, off + 52)
  b.writeUInt32LE(a.mtimeNsec, off + 56)
  b.writeUInt32LE(a.mode >>> 0, off + 60)
  b.writeUInt32LE(a.nlink >>> 0, off + 64)
  b.writeUInt32LE(a.uid >>> 0, off + 68)
  b.writeUInt32LE(a.gid >>> 0, off + 72)
  b.writeUInt32LE(a.rdev >>> 0, off + 76)
  b.writeUInt32LE(a.blksize, off + 80)
  b.writeUInt32LE(0, off + 84)
}

export interface Validity { entrySec: number, attrSec: number }

export function encodeEntryOut (nodeid: number, attr: Attr | null, v: Validity, into?: Buffer, off = 0): Buffer {
  const b = into ?? Buffer.alloc(ENTRY_OUT)
  writeU64(b, nodeid, off)
  writeU64(b, 0, off + 8) // generation
  writeU64(b, v.entrySec, off + 16)
  writeU64(b, v.attrSec, off + 24)
  b.writeUInt32LE(0, off + 32)
  b.writeUInt32LE(0, off + 36)
  if (attr !== null) writeAttr(b, off + 40, attr)
  else b.fill(0, off + 40, off + ENTRY_OUT)
  return b
}

export function encodeAttrOut (attr: Attr, attrSec: number): Buffer {
  const b = Buffer.alloc(ATTR_OUT)
  writeU64(b, attrSec, 0)
  writeAttr(b, 16, attr)
  return b
}

/** fuse_open_out: `fh` comes back in the file's later requests (RELEASE); `backingId` with PASSTHROUGH. */
export function encodeOpenOut (openFlags: number, fh = 0n, backingId = 0): Buffer {
  const b = Buffer.alloc(16)
  b.writeBigUInt64LE(fh, 0)
  b.writeUInt32LE(openFlags, 8)
  b.writeInt32LE(backingId, 12)
  return b
}

/** The node ids of a BATCH_FORGET (fuse_batch_forget_in, then fuse_forget_one each). */
export function decodeBatchForget (b: Buffer): number[] {
  if (b.length < IN_HEADER + 8) throw new ProtocolError('short BATCH_FORGET request')
  const count = b.readUInt32LE(IN_HEADER)
  if (IN_HEADER + 8 + count * 16 > b.length) throw new ProtocolError('BATCH_FORGET longer than its request')
  const out: number[] = []
  for (let i = 0; i < count; i++) out.push(Number(b.readBigUInt64LE(IN_HEADER + 8 + i * 16)))
  return out
}

export interface ReadIn { fh: bigint, offset: number, size: number }

export function decodeReadIn (b: Buffer): ReadIn {
  if (b.length < IN_HEADER + 24) throw new ProtocolError('short READ request')
  const off = b.readBigUInt64LE(IN_HEADER + 8)
  return { fh: b.readBigUInt64LE(IN_HEADER), offset: off > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(off), size: b.readUInt32LE(IN_HEADER + 16) }
}

export function decodeGetxattrIn (b: Buffer): { size: number, name: Buffer } {
  if (b.length < IN_HEADER + 8) throw new ProtocolError('short GETXATTR request')
  return { size: b.readUInt32LE(IN_HEADER), name: cName(b, IN_HEADER + 8) }
}

export function encodeGetxattrOut (size: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeUInt32LE(size, 0)
  return b
}

export interface StatFs { blocks: number, bfree: number, bavail: number, files: number, ffree: number, bsize: number, namelen: number, frsize: number }

export function encodeStatfsOut (s: StatFs): Buffer {
  const b = Buffer.alloc(80)
  b.writeBigUInt64LE(BigInt(s.blocks), 0)
  b.writeBigUInt64LE(BigInt(s.bfree), 8)
  b.writeBigUInt64LE(BigInt(s.bavail), 16)
  b.writeBigUInt64LE(BigInt(s.files), 24)
  b.writeBigUInt64LE(BigInt(s.ffree), 32)
  b.writeUInt32LE(s.bsize, 40)
  b.writeUInt32LE(s.namelen, 44)
  b.writeUInt32LE(s.frsize, 48)
  return b
}

/** DT_* values for dirents. */
export const DT = { fifo: 1, char: 2, dir: 4, block: 6, file: 8, symlink: 10, socket: 12 } as const

const align8 = (n: number): number => (n + 7) & ~7

/** Size of one READDIR dirent with this name. */
export function direntSize (name: Buffer): number {
  return align8(24 + name.length)
}

export function writeDirent (b: Buffer, off: number, ino: number, nextOff: number, type: number, name: Buffer): number {
  writeU64(b, ino, off)
  writeU64(b, nextOff, off + 8)
  b.writeUInt32LE(name.length, off + 16)
  b.writeUInt32LE(type, off + 20)
  name.copy(b, off + 24)
  const end = off + 24 + name.length
  const padded = off + direntSize(name)
  b.fill(0, end, padded)
  return padded
}

export function direntplusSize (name: Buffer): number {
  return ENTRY_OUT + direntSize(name)
}
