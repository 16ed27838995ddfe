/**
 * RAFS v6 bootstrap: the EROFS metadata image of a Nydus filesystem (writer and reader).
 *
 * Byte map of what `writeBootstrap` produces (the layout nydus-image writes, builder/src/core/v6.rs):
 *
 *   0       1024 B   zeros
 *   1024     128 B   EROFS superblock (magic 0xE0F5E1E2, checksum 0, compat RAFS_V6, blkszbits 12,
 *                    incompat CHUNKED_FILE|DEVICE_TABLE, root nid 128, one extra device per blob)
 *   1152     256 B   Nydus extended superblock (flags, blob/chunk/prefetch table positions, chunk size)
 *   1408   128 × N   device table: blob id, blocks, mapped_blkaddr
 *   4 KiB  256 × N   blob table (RafsV6Blob)
 *   …        4 × P   prefetch table (u32 nids), only when there are blobs
 *   meta_blkaddr     one empty block (so that the root nid is 128, never 0), then inodes, inline
 *                    xattrs, chunk index arrays, symlink targets and directory blocks, placed with
 *                    nydus-image's allocator (tails packed next to their inode, leftovers reused)
 *   4 KiB  80 × K    chunk-info table (one RafsV5ChunkInfo per unique chunk, sorted by digest,
 *                    blob index, chunk index), then zero padding to a multiple of 4096
 *
 * Deliberate differences from nydus-image (all readable by Nydus, erofs-utils and Linux):
 *   - mtimes survive: the superblock build time is the most frequent (mtime, nsec) of the tree and
 *     an inode is compact only when its mtime equals it exactly (compact inodes have no mtime of
 *     their own; nydus-image loses them). Every other inode is extended (64 bytes).
 *   - hard links of any non-directory type share one inode (nydus-image only does it for regular
 *     files); `inos` counts distinct inodes and i_ino numbers them without gaps.
 *   - the device-table `mapped_blkaddr` follows current Nydus (512 KiB alignment; 2.2 used 2 MiB).
 *
 * Exports besides the writer and the reader, for the blob half and other users:
 *   - `blobIndexOf(blobs, blob)`: position of a BlobInfo in the image's blob list, or
 *     NAIAD_FMT_CORRUPT (chunks point at BlobInfo objects, never at numbers).
 *   - `blobEntryOf(blob, index)` / `blobInfoOf(entry)`: BlobInfo <-> on-disk RafsV6Blob entry.
 *   - `chunkRecordOf(ref, blobIndex, fileOffset)`: ChunkRef -> 80-byte chunk-info record fields.
 *   - `validateChunkSize(n)`: NAIAD_FMT_OPTION unless n is a power of two in 4 KiB..16 MiB.
 *   The raw structure encoders/decoders and constants (superblock flags, blob feature bits, chunk
 *   flags) live in erofs.ts.
 */
import { NaiadError } from '../errors/index.ts'
import {
  COMPRESSOR_ID, DIGESTER_ID, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, S_IFMT, TYPE_BITS,
  type BlobInfo, type ChunkDigester, type ChunkRef, type Compressor, type DirEntry, type Inode, type InodeType, type Xattr
} from './types.ts'
import {
  BLOB_FEATURE, CHUNK_FLAG, EROFS_BLOCK_BITS, EROFS_BLOCK_SIZE, EROFS_CHUNK_FORMAT_BLKBITS_MASK, EROFS_CHUNK_FORMAT_INDEXES,
  EROFS_CHUNK_INDEX_SIZE, EROFS_DEVT_SLOT_SIZE, EROFS_DIRENT_SIZE, EROFS_FEATURE_COMPAT_RAFS_V6, EROFS_I_ALL,
  EROFS_INODE_CHUNK_BASED, EROFS_INODE_COMPACT_SIZE, EROFS_INODE_COMPRESSED_COMPACT, EROFS_INODE_COMPRESSED_FULL,
  EROFS_INODE_EXTENDED_SIZE, EROFS_INODE_FLAT_INLINE, EROFS_INODE_FLAT_PLAIN, EROFS_INODE_SLOT_SIZE, EROFS_NAME_LEN,
  EROFS_SUPER_MAGIC, EROFS_SUPER_OFFSET, RAFS_BLOB_ID_LEN, RAFS_FLAG, RAFS_FLAGS_COMPRESSION_MASK, RAFS_FLAGS_DIGEST_MASK,
  RAFS_MAX_BLOBS, RAFS_MAX_CHUNKS_PER_BLOB, RAFS_V5_CHUNK_INFO_SIZE, RAFS_V5_SUPER_MAGIC, RAFS_V6_BLOB_ENTRY_SIZE,
  RAFS_V6_BLOCK_SEG_ALIGNMENT, RAFS_V6_DEVTABLE_OFFSET, RAFS_V6_DEVT_SLOTOFF,
  RAFS_V6_FEATURE_INCOMPAT, XATTR_PREFIXES,
  align, alignDown, chunkFormat, compressorFlag, decodeBlobEntry, decodeChunkIndex, decodeChunkInfo, decodeDeviceSlot,
  decodeExtSuperBlock, decodeInode, decodePrefetchTable, decodeSuperBlock, decodeXattrIbody, digesterFlag,
  encodeBlobEntry, encodeChunkIndex, encodeChunkInfo, encodeDeviceSlot, encodeDirent, encodeExtSuperBlock, encodeInode,
  encodePrefetchTable, encodeSuperBlock, encodeXattrIbody, fileTypeOf, isPowerOfTwo, needBytes, nextPowerOfTwo,
  splitXattrName, typeOfFileType, xattrIbodySize, xattrIbodySizeOf, xattrIcountOf, xattrPrefix,
  type ChunkInfoRecord, type ErofsSuperBlock, type RafsV6BlobEntry, type RafsV6ExtSuperBlock
} from './erofs.ts'

const BS = EROFS_BLOCK_SIZE
const U32_MAX = 0xffffffff
const U16_MAX = 0xffff
const S64_MIN = -(2n ** 63n)
const S64_MAX = 2n ** 63n - 1n
const HEX64 = /^[0-9a-f]{64}$/
const DOT = Buffer.from('.')
const DOTDOT = Buffer.from('..')

function corrupt (msg: string): never { throw new NaiadError('NAIAD_FMT_CORRUPT', msg) }
function limit (msg: string): never { throw new NaiadError('NAIAD_FMT_LIMIT', msg) }
function unsupported (msg: string): never { throw new NaiadError('NAIAD_FMT_UNSUPPORTED', msg) }
function truncated (msg: string): never { throw new NaiadError('NAIAD_FMT_TRUNCATED', msg) }

function showName (name: Buffer): string {
  return JSON.stringify(name.toString('utf8').slice(0, 80))
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

export function validateChunkSize (chunkSize: number): void {
  if (!isPowerOfTwo(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new NaiadError('NAIAD_FMT_OPTION', `chunk size ${chunkSize} is not a power of two between 4 KiB and 16 MiB`)
  }
}

/** Position of `blob` (by identity) in the image's blob list; NAIAD_FMT_CORRUPT if absent. */
export function blobIndexOf (blobs: readonly BlobInfo[], blob: BlobInfo): number {
  const i = blobs.indexOf(blob)
  if (i < 0) corrupt(`a chunk refers to blob ${String(blob.blobId).slice(0, 64)} which is not in the image's blob list`)
  return i
}

const COMPRESSOR_BY_ID = new Map<number, Compressor>([[COMPRESSOR_ID.none, 'none'], [COMPRESSOR_ID.lz4_block, 'lz4_block'], [COMPRESSOR_ID.zstd, 'zstd']])
const DIGESTER_BY_ID = new Map<number, ChunkDigester>([[DIGESTER_ID.blake3, 'blake3'], [DIGESTER_ID.sha256, 'sha256']])

/** The on-disk blob table entry for a blob at `index`. */
export function blobEntryOf (blob: BlobInfo, index: number): RafsV6BlobEntry {
  return {
    blobId: Buffer.from(blob.blobId, 'latin1'),
    blobIndex: index,
    chunkSize: blob.chunkSize,
    chunkCount: blob.chunkCount,
    compressionAlgo: COMPRESSOR_ID[blob.compressor],
    digestAlgo: DIGESTER_ID[blob.digester],
    features: blob.features,
    compressedSize: blob.compressedSize,
    uncompressedSize: blob.uncompressedSize,
    blobTocSize: blob.tocSize,
    ciCompressor: COMPRESSOR_ID[blob.ciCompressor],
    ciOffset: blob.ciOffset,
    ciCompressedSize: blob.ciCompressedSize,
    ciUncompressedSize: blob.ciUncompressedSize,
    blobTocDigest: blob.tocDigest,
    blobMetaDigest: Buffer.alloc(32),
    blobMetaSize: 0n,
    cipherIv: Buffer.alloc(8),
    cipherAlgo: 0
  }
}

function compressorOfId (id: number, field: string): Compressor {
  const c = COMPRESSOR_BY_ID.get(id)
  if (c !== undefined) return c
  if (id === COMPRESSOR_ID.gzip) unsupported(`${field} is gzip (ZRAN/eStargz data), which naiad does not read`)
  return corrupt(`${field} ${id} is not a known compressor`)
}

/** A BlobInfo from a blob table entry (validated: NAIAD_FMT_CORRUPT / NAIAD_FMT_UNSUPPORTED). */
export function blobInfoOf (e: RafsV6BlobEntry, index = e.blobIndex): BlobInfo {
  const id = e.blobId.toString('latin1')
  if (!HEX64.test(id)) corrupt(`blob[${index}].blob_id ${JSON.stringify(id.replace(/\0+$/, ''))} is not 64 lowercase hex characters`)
  const unsupportedFeatures = e.features & (BLOB_FEATURE.ZRAN | BLOB_FEATURE.BATCH | BLOB_FEATURE.ENCRYPTED | BLOB_FEATURE.TARFS | BLOB_FEATURE.EXTERNAL)
  if (unsupportedFeatures !== 0) unsupported(`blob[${index}] uses features 0x${unsupportedFeatures.toString(16)} (ZRAN, batch, encryption, tarfs or external blobs)`)
  if (e.cipherAlgo !== 0) unsupported(`blob[${index}] is encrypted (cipher_algo ${e.cipherAlgo})`)
  const digester = DIGESTER_BY_ID.get(e.digestAlgo)
  if (digester === undefined) corrupt(`blob[${index}].digest_algo ${e.digestAlgo} is not a known digest`)
  if (e.chunkCount > RAFS_MAX_CHUNKS_PER_BLOB) corrupt(`blob[${index}].chunk_count ${e.chunkCount} exceeds 2^24`)
  if (e.ciCompressedSize > e.ciUncompressedSize && e.ciCompressor === COMPRESSOR_ID.none) corrupt(`blob[${index}].ci_compressed_size exceeds ci_uncompressed_size`)
  return {
    blobId: id,
    chunkSize: e.chunkSize,
    chunkCount: e.chunkCount,
    compressor: compressorOfId(e.compressionAlgo, `blob[${index}].compression_algo`),
    digester,
    features: e.features,
    compressedSize: e.compressedSize,
    uncompressedSize: e.uncompressedSize,
    tocSize: e.blobTocSize,
    tocDigest: e.blobTocDigest,
    ciCompressor: compressorOfId(e.ciCompressor, `blob[${index}].ci_compressor`),
    ciOffset: e.ciOffset,
    ciCompressedSize: e.ciCompressedSize,
    ciUncompressedSize: e.ciUncompressedSize
  }
}

/** The 80-byte chunk-info record of a chunk (`fileOffset`: where it sits in a file using it). */
export function chunkRecordOf (ref: ChunkRef, blobIndex: number, fileOffset: number): ChunkInfoRecord {
  return {
    digest: ref.digest,
    blobIndex,
    flags: (ref.compressed ? CHUNK_FLAG.COMPRESSED : 0) | (ref.crc32 !== undefined ? CHUNK_FLAG.HAS_CRC32 : 0),
    compressedSize: ref.compressedSize,
    uncompressedSize: ref.uncompressedSize,
    compressedOffset: ref.compressedOffset,
    uncompressedOffset: ref.uncompressedOffset,
    fileOffset,
    index: ref.index,
    crc32: ref.crc32 ?? 0
  }
}

function compareMtime (a: { mtime: bigint, nsec: number }, b: { mtime: bigint, nsec: number }): number {
  return a.mtime < b.mtime ? -1 : a.mtime > b.mtime ? 1 : a.nsec - b.nsec
}

// ---------------------------------------------------------------------------------------------
// Writer

export interface WriteBootstrapOptions {
  chunkSize: number
  compressor: Compressor
  digester: ChunkDigester
  /** Files (or any inodes of the tree) to list in the prefetch table, in this order. */
  prefetch?: Inode[]
  /** Superblock build time (seconds); default: the most frequent mtime of the tree. */
  buildTime?: bigint
  /** Nanoseconds of `buildTime` (only with `buildTime`; default 0). */
  buildTimeNsec?: number
  /**
   * 'auto' (default): compact inodes wherever they lose nothing. 'extended': every inode 64 bytes,
   * as nydus-image 2.2 wrote them (used to compare against its output byte for byte).
   */
  inodeFormat?: 'auto' | 'extended'
}

interface XattrOnDisk { index: number, suffix: Buffer, value: Buffer, name: Buffer }

interface Plan {
  inode: Inode
  type: InodeType
  ino: number
  compact: boolean
  layout: number
  isize: number
  xattrs: XattrOnDisk[]
  xsize: number
  nlink: number
  /** i_size: file size, symlink length, directory bytes. */
  size: number
  /** Offset in the pre-shift layout (root at 4096): nid = offset / 32. */
  offset: number
  /** Directories and symlinks: where the (non-inline) data blocks start, pre-shift. */
  dataOffset: number
  parent: Plan | undefined
  /** Directories: sorted children (without "." and ".."). */
  children: DirEntry[]
  /** Regular files: the i_u chunk format. */
  chunkU: number
}

/** nydus-image's metadata allocator (BootstrapContext: offset + v6_available_blocks). */
class MetaAllocator {
  offset = BS
  /** buckets[i]: starts of blocks with i × 32 bytes free at their end, oldest first. */
  private readonly buckets: { items: number[], head: number }[] = Array.from({ length: BS / EROFS_INODE_SLOT_SIZE }, () => ({ items: [], head: 0 }))

  alignOffset (to: number): void { this.offset = align(this.offset, to) }

  /** Space for `size` bytes in a partly used block, or 0. */
  allocateAvailable (size: number): number {
    if (size >= BS) return 0
    const minIdx = Math.ceil(size / EROFS_INODE_SLOT_SIZE)
    for (let idx = minIdx; idx < this.buckets.length; idx++) {
      const b = this.buckets[idx]!
      if (b.head < b.items.length) {
        const start = b.items[b.head]!
        b.head++
        const off = start + BS - idx * EROFS_INODE_SLOT_SIZE
        this.appendAvailable(off + minIdx * EROFS_INODE_SLOT_SIZE)
        return off
      }
    }
    return 0
  }

  appendAvailable (off: number): void {
    if (off % BS === 0) return
    const avail = BS - (off % BS)
    this.buckets[Math.floor(avail / EROFS_INODE_SLOT_SIZE)]!.items.push(alignDown(off, BS))
  }
}

function direntSize (names: readonly Buffer[]): number {
  let d = 0
  for (const n of names) {
    const len = n.length + EROFS_DIRENT_SIZE
    if ((d % BS) + len > BS) d = align(d, BS)
    d += len
  }
  return d
}

function validateName (name: Buffer, where: string): void {
  if (!Buffer.isBuffer(name) || name.length === 0) corrupt(`empty file name in ${where}`)
  if (name.length > EROFS_NAME_LEN) limit(`file name ${showName(name)} in ${where} is ${name.length} bytes (EROFS allows 255)`)
  if (name.includes(0) || name.includes(0x2f)) corrupt(`file name ${showName(name)} in ${where} contains NUL or '/'`)
  if (name.equals(DOT) || name.equals(DOTDOT)) corrupt(`file name ${showName(name)} in ${where} is reserved`)
}

function validateU32 (v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0) corrupt(`${what} ${v} is not a non-negative integer`)
  if (v > U32_MAX) limit(`${what} ${v} does not fit 32 bits`)
}

function prepareXattrs (xattrs: readonly Xattr[], where: string): XattrOnDisk[] {
  const out: XattrOnDisk[] = []
  for (const x of xattrs) {
    const split = splitXattrName(x.name)
    if (split === undefined) unsupported(`xattr ${showName(x.name)} of ${where}: EROFS stores only user., trusted., security. and POSIX ACL xattrs`)
    if (x.name.length > EROFS_NAME_LEN || split.suffix.length > 255) limit(`xattr name ${showName(x.name)} of ${where} is longer than 255 bytes`)
    if (x.value.length > U16_MAX) limit(`xattr ${showName(x.name)} of ${where} has a ${x.value.length}-byte value (at most 65535)`)
    out.push({ ...split, value: x.value, name: x.name })
  }
  out.sort((a, b) => Buffer.compare(a.name, b.name))
  for (let i = 1; i < out.length; i++) {
    if (out[i]!.name.equals(out[i - 1]!.name)) corrupt(`xattr ${showName(out[i]!.name)} of ${where} is set twice`)
  }
  return out
}

/**
 * Writes the RAFS v6 bootstrap of the tree at `root` whose chunks live in `blobs` (blob index =
 * position in the list). Deterministic: the same input gives the same bytes.
 */
export function writeBootstrap (root: Inode, blobs: BlobInfo[], opts: WriteBootstrapOptions): Buffer {
  const chunkSize = opts.chunkSize
  validateChunkSize(chunkSize)
  if (!(opts.compressor in COMPRESSOR_ID) || (opts.compressor as string) === 'gzip') throw new NaiadError('NAIAD_FMT_OPTION', `compressor ${String(opts.compressor)} is not one of zstd, lz4_block, none`)
  if (!(opts.digester in DIGESTER_ID)) throw new NaiadError('NAIAD_FMT_OPTION', `digester ${String(opts.digester)} is not one of blake3, sha256`)
  if (root.type !== 'dir') corrupt('the root inode is not a directory')
  if (blobs.length > RAFS_MAX_BLOBS) limit(`${blobs.length} blobs: a RAFS v6 image holds at most 255`)

  // Blobs
  const blobIndex = new Map<BlobInfo, number>()
  const seenIds = new Set<string>()
  blobs.forEach((b, i) => {
    if (typeof b.blobId !== 'string' || !HEX64.test(b.blobId)) corrupt(`blob[${i}].blobId ${JSON.stringify(String(b.blobId).slice(0, 80))} is not 64 lowercase hex characters`)
    if (seenIds.has(b.blobId) || blobIndex.has(b)) corrupt(`blob ${b.blobId} is listed twice`)
    if (b.chunkSize !== chunkSize) throw new NaiadError('NAIAD_FMT_OPTION', `blob ${b.blobId} has chunk size ${b.chunkSize}, the image ${chunkSize}`)
    if (!Number.isSafeInteger(b.uncompressedSize) || b.uncompressedSize <= 0 || b.uncompressedSize % BS !== 0) corrupt(`blob ${b.blobId} uncompressedSize ${b.uncompressedSize} is not a positive multiple of 4096 (drop empty blobs from the list)`)
    if (b.uncompressedSize / BS > U32_MAX) limit(`blob ${b.blobId} is too large for a RAFS v6 device (${b.uncompressedSize} bytes)`)
    if (!Number.isSafeInteger(b.chunkCount) || b.chunkCount < 0 || b.chunkCount > RAFS_MAX_CHUNKS_PER_BLOB) limit(`blob ${b.blobId} has ${b.chunkCount} chunks (at most 2^24)`)
    seenIds.add(b.blobId)
    blobIndex.set(b, i)
  })

  // Pass 1: walk the tree once; count links, sort and check children, reject directory cycles.
  const refs = new Map<Inode, number>([[root, 1]])
  const sortedChildren = new Map<Inode, DirEntry[]>()
  const dirParent = new Map<Inode, Inode | undefined>([[root, undefined]])
  const paths = new Map<Inode, string>([[root, '/']])
  const stack: Inode[] = [root]
  while (stack.length > 0) {
    const dir = stack.pop()!
    const where = paths.get(dir)!
    const entries = [...(dir.entries ?? [])]
    for (const e of entries) validateName(e.name, where)
    entries.sort((a, b) => Buffer.compare(a.name, b.name))
    for (let i = 1; i < entries.length; i++) {
      if (entries[i]!.name.equals(entries[i - 1]!.name)) corrupt(`directory ${where} has two entries named ${showName(entries[i]!.name)}`)
    }
    sortedChildren.set(dir, entries)
    for (const e of entries) {
      const child = e.inode
      if (child.type === 'dir') {
        if (refs.has(child)) corrupt(`directory ${where}${e.name.toString('utf8')} appears twice in the tree (directory hard link or cycle)`)
        refs.set(child, 1)
        dirParent.set(child, dir)
        paths.set(child, `${where}${e.name.toString('utf8')}/`)
        stack.push(child)
      } else {
        const n = refs.get(child)
        if (n === undefined) paths.set(child, `${where}${e.name.toString('utf8')}`)
        refs.set(child, (n ?? 0) + 1)
      }
    }
  }

  // Validate inodes and pick the build time.
  const counts = new Map<string, { mtime: bigint, nsec: number, n: number }>()
  for (const inode of refs.keys()) {
    const where = paths.get(inode)!
    if (!(inode.type in TYPE_BITS)) corrupt(`${where} has unknown type ${String(inode.type)}`)
    if (!Number.isInteger(inode.perm) || inode.perm < 0 || inode.perm > 0o7777) corrupt(`${where} has permission bits 0o${Number(inode.perm).toString(8)} outside 0o7777`)
    validateU32(inode.uid, `${where} uid`)
    validateU32(inode.gid, `${where} gid`)
    if (typeof inode.mtime !== 'bigint' || inode.mtime < S64_MIN || inode.mtime > S64_MAX) corrupt(`${where} mtime ${String(inode.mtime)} is not a signed 64-bit bigint`)
    if (!Number.isInteger(inode.mtimeNsec) || inode.mtimeNsec < 0 || inode.mtimeNsec > 999_999_999) corrupt(`${where} mtimeNsec ${inode.mtimeNsec} is out of range`)
    const key = `${inode.mtime}:${inode.mtimeNsec}`
    const c = counts.get(key)
    if (c === undefined) counts.set(key, { mtime: inode.mtime, nsec: inode.mtimeNsec, n: 1 })
    else c.n++
  }
  let buildTime: { mtime: bigint, nsec: number } = { mtime: 0n, nsec: 0 }
  if (opts.buildTime !== undefined) {
    const nsec = opts.buildTimeNsec ?? 0
    if (opts.buildTime < S64_MIN || opts.buildTime > S64_MAX || !Number.isInteger(nsec) || nsec < 0 || nsec > 999_999_999) throw new NaiadError('NAIAD_FMT_OPTION', `build time ${opts.buildTime}.${nsec} is out of range`)
    buildTime = { mtime: opts.buildTime, nsec }
  } else {
    let best: { mtime: bigint, nsec: number, n: number } | undefined
    for (const c of counts.values()) {
      if (best === undefined || c.n > best.n || (c.n === best.n && compareMtime(c, best) < 0)) best = c
    }
    if (best !== undefined) buildTime = best
  }

  // Plans: one per distinct inode.
  const plans = new Map<Inode, Plan>()
  const makePlan = (inode: Inode, parent: Plan | undefined): Plan => {
    const where = paths.get(inode)!
    const xattrs = prepareXattrs(inode.xattrs, where)
    const xsize = xattrIbodySize(xattrs)
    const icount = xattrIcountOf(xsize)
    if (icount > U16_MAX) limit(`xattrs of ${where} take ${xsize} bytes (the inline xattr area holds at most 262148)`)
    const children = sortedChildren.get(inode) ?? []
    let size = 0
    let nlink = refs.get(inode)!
    let chunkU = 0
    switch (inode.type) {
      case 'dir': {
        const names = [DOT, DOTDOT, ...children.map(e => e.name)].sort(Buffer.compare)
        size = direntSize(names)
        nlink = 2 + children.filter(e => e.inode.type === 'dir').length
        break
      }
      case 'symlink': {
        if (!Buffer.isBuffer(inode.symlink) || inode.symlink.length === 0) corrupt(`symlink ${where} has no target`)
        if (inode.symlink.length >= BS) limit(`symlink ${where} target is ${inode.symlink.length} bytes (at most 4095)`)
        size = inode.symlink.length
        break
      }
      case 'file': {
        size = inode.size
        if (!Number.isSafeInteger(size) || size < 0) corrupt(`${where} size ${size} is not a non-negative integer`)
        chunkU = fileChunkFormat(inode, where)
        break
      }
      case 'char':
      case 'block':
        validateU32(inode.rdev, `${where} rdev`)
        break
      default:
        break
    }
    if (nlink > U32_MAX) limit(`${where} has ${nlink} links`)
    const compact = opts.inodeFormat !== 'extended' &&
      inode.mtime === buildTime.mtime && inode.mtimeNsec === buildTime.nsec &&
      inode.uid <= U16_MAX && inode.gid <= U16_MAX && nlink <= U16_MAX && size <= U32_MAX
    return {
      inode,
      type: inode.type,
      ino: 0,
      compact,
      layout: inode.type === 'file' ? EROFS_INODE_CHUNK_BASED : EROFS_INODE_FLAT_PLAIN,
      isize: compact ? EROFS_INODE_COMPACT_SIZE : EROFS_INODE_EXTENDED_SIZE,
      xattrs,
      xsize,
      nlink,
      size,
      offset: 0,
      dataOffset: 0,
      parent,
      children,
      chunkU
    }
  }

  const fileChunkFormat = (inode: Inode, where: string): number => {
    const n = Math.ceil(inode.size / chunkSize)
    if (!Array.isArray(inode.chunks) || inode.chunks.length !== n) corrupt(`${where} has ${inode.chunks?.length} chunks, its size ${inode.size} needs ${n}`)
    let continuous = true
    inode.chunks.forEach((c, i) => {
      const want = Math.min(chunkSize, inode.size - i * chunkSize)
      if (c.uncompressedSize !== want) corrupt(`${where} chunk ${i} holds ${c.uncompressedSize} bytes, expected ${want}`)
      if (i > 0) {
        const prev = inode.chunks[i - 1]!
        if (prev.blob !== c.blob || prev.uncompressedOffset + chunkSize !== c.uncompressedOffset) continuous = false
      }
    })
    // nydus-image: a file whose chunks are contiguous in one blob declares one big chunk (the next
    // power of two of its size) so the kernel maps it as a single extent (page cache sharing).
    let declared = chunkSize
    if (continuous && inode.size > chunkSize) {
      const p = nextPowerOfTwo(inode.size)
      if (Math.log2(p) - EROFS_BLOCK_BITS <= EROFS_CHUNK_FORMAT_BLKBITS_MASK) declared = p
    }
    return chunkFormat(declared)
  }

  // Pass 2: layout, in nydus-image's order (a directory, then its non-directory children, then
  // each subdirectory recursively), with its allocator. i_ino follows nydus-image's numbering order.
  const alloc = new MetaAllocator()
  const placeWithTail = (p: Plan, dSize: number): void => {
    const inodeSize = p.isize + p.xsize
    const tail = dSize % BS
    if (tail !== 0 && inodeSize + tail <= BS) {
      let off = alloc.allocateAvailable(inodeSize + tail)
      if (off === 0) {
        const available = BS - (alloc.offset % BS)
        if (available < inodeSize + tail) {
          alloc.appendAvailable(alloc.offset)
          alloc.alignOffset(BS)
        }
        off = alloc.offset
        alloc.offset += inodeSize + tail
      }
      if (dSize !== tail) {
        alloc.appendAvailable(alloc.offset)
        alloc.alignOffset(BS)
      }
      p.offset = off
      p.dataOffset = alloc.offset
      alloc.offset += alignDown(dSize, BS)
      p.layout = EROFS_INODE_FLAT_INLINE
    } else {
      let off = alloc.allocateAvailable(inodeSize)
      if (off === 0) {
        off = alloc.offset
        alloc.offset += inodeSize
      }
      alloc.appendAvailable(alloc.offset)
      alloc.alignOffset(BS)
      p.offset = off
      p.dataOffset = alloc.offset
      alloc.offset += dSize
      alloc.alignOffset(BS)
      p.layout = EROFS_INODE_FLAT_PLAIN
    }
  }
  const placeNonDir = (p: Plan): void => {
    const inodeSize = p.isize + p.xsize
    if (p.type === 'file') {
      const total = align(inodeSize, EROFS_CHUNK_INDEX_SIZE) + p.inode.chunks.length * EROFS_CHUNK_INDEX_SIZE
      let off = alloc.allocateAvailable(total)
      if (off === 0) {
        off = alloc.offset
        alloc.offset += total
      }
      p.offset = off
    } else if (p.type === 'symlink') {
      placeWithTail(p, p.size)
    } else {
      p.offset = alloc.offset
      alloc.offset += inodeSize
    }
    alloc.alignOffset(EROFS_INODE_SLOT_SIZE)
  }

  let nextIno = 1
  const rootPlan = makePlan(root, undefined)
  rootPlan.ino = nextIno++
  plans.set(root, rootPlan)
  const order: Plan[] = []
  const dirStack: Plan[] = [rootPlan]
  while (dirStack.length > 0) {
    const dp = dirStack.pop()!
    placeWithTail(dp, dp.size)
    alloc.alignOffset(EROFS_INODE_SLOT_SIZE)
    order.push(dp)
    const subdirs: Plan[] = []
    for (const e of dp.children) {
      if (plans.has(e.inode)) continue // a hard link to an inode placed already
      const cp = makePlan(e.inode, dp)
      cp.ino = nextIno++
      plans.set(e.inode, cp)
      if (cp.type === 'dir') {
        subdirs.push(cp)
      } else {
        placeNonDir(cp)
        order.push(cp)
      }
    }
    for (let i = subdirs.length - 1; i >= 0; i--) dirStack.push(subdirs[i]!)
  }

  // Prefetch table (nids), chunk table, then the final positions.
  const nidOf = (p: Plan): number => p.offset / EROFS_INODE_SLOT_SIZE
  const prefetchNids: number[] = []
  if (blobs.length > 0) {
    const seen = new Set<number>()
    for (const inode of opts.prefetch ?? []) {
      const p = plans.get(inode)
      if (p === undefined) corrupt('a prefetch inode is not part of the tree')
      const nid = nidOf(p)
      if (!seen.has(nid)) {
        seen.add(nid)
        prefetchNids.push(nid)
      }
    }
  }

  const records = collectChunkRecords(root, sortedChildren, blobIndex, chunkSize)

  const devtableEnd = RAFS_V6_DEVTABLE_OFFSET + blobs.length * EROFS_DEVT_SLOT_SIZE
  const blobTableOffset = align(devtableEnd, BS)
  const blobTableSize = blobs.length * RAFS_V6_BLOB_ENTRY_SIZE
  const prefetchTableOffset = prefetchNids.length > 0 ? blobTableOffset + blobTableSize : 0
  const prefetchTableSize = prefetchNids.length * 4
  const metaAddr = blobs.length > 0 ? align(blobTableOffset + blobTableSize + prefetchTableSize, BS) : 0

  let metaEnd = 0
  for (const p of order) {
    let end = p.offset + p.isize + p.xsize
    if (p.type === 'file') end = align(end, EROFS_CHUNK_INDEX_SIZE) + p.inode.chunks.length * EROFS_CHUNK_INDEX_SIZE
    else if (p.layout === EROFS_INODE_FLAT_INLINE) {
      const tail = p.size % BS
      end += tail
      if (p.size > tail) end = Math.max(end, p.dataOffset + p.size - tail)
    } else if (p.type === 'dir' || p.type === 'symlink') {
      end = Math.max(end, p.dataOffset + p.size)
    }
    metaEnd = Math.max(metaEnd, end)
  }
  const chunkTableOffset = align(metaAddr + metaEnd, BS)
  const chunkTableSize = records.length * RAFS_V5_CHUNK_INFO_SIZE
  const total = align(chunkTableOffset + chunkTableSize, BS)
  if ((metaAddr + metaEnd) / BS > U32_MAX) limit('the metadata area exceeds 2^32 blocks')
  const buf = Buffer.alloc(total)

  // Inodes and their data.
  for (const p of order) writePlan(buf, p, metaAddr, plans, blobIndex)

  // Chunk-info table.
  records.forEach((r, i) => encodeChunkInfo(r, buf, chunkTableOffset + i * RAFS_V5_CHUNK_INFO_SIZE))

  // Device table: blocks and mapped_blkaddr as nydus-image computes them (flat-device layout after the bootstrap).
  let pos = total
  let blocks = 0
  blobs.forEach((b, i) => {
    const cnt = b.uncompressedSize / BS
    const mapped = align(pos, RAFS_V6_BLOCK_SEG_ALIGNMENT) / BS
    if (mapped + cnt > U32_MAX || blocks + cnt > U32_MAX) limit('the blobs hold more than 2^32 blocks in all')
    pos = (mapped + cnt) * BS
    blocks += cnt
    encodeDeviceSlot({ tag: Buffer.from(b.blobId, 'latin1'), blocks: cnt, mappedBlkaddr: mapped }, buf, RAFS_V6_DEVTABLE_OFFSET + i * EROFS_DEVT_SLOT_SIZE)
    encodeBlobEntry(blobEntryOf(b, i), buf, blobTableOffset + i * RAFS_V6_BLOB_ENTRY_SIZE)
  })
  encodePrefetchTable(prefetchNids, buf, prefetchTableOffset)

  const hasXattr = [...plans.values()].some(p => p.xattrs.length > 0)
  const inlinedDigest = blobs.every(b => (b.features & BLOB_FEATURE.INLINED_CHUNK_DIGEST) !== 0)
  const flags = compressorFlag(opts.compressor) | digesterFlag(opts.digester) | RAFS_FLAG.EXPLICIT_UID_GID |
    (hasXattr ? RAFS_FLAG.HAS_XATTR : 0) | (inlinedDigest ? RAFS_FLAG.INLINED_CHUNK_DIGEST : 0) | RAFS_FLAG.ENCRYPTION_NONE

  const sb: ErofsSuperBlock = {
    magic: EROFS_SUPER_MAGIC,
    checksum: 0,
    featureCompat: EROFS_FEATURE_COMPAT_RAFS_V6,
    blkszbits: EROFS_BLOCK_BITS,
    sbExtslots: 0,
    rootNid: nidOf(rootPlan),
    inos: BigInt(plans.size),
    buildTime: buildTime.mtime,
    buildTimeNsec: buildTime.nsec,
    blocks,
    metaBlkaddr: metaAddr / BS,
    xattrBlkaddr: 0,
    uuid: Buffer.alloc(16),
    volumeName: Buffer.alloc(16),
    featureIncompat: RAFS_V6_FEATURE_INCOMPAT,
    u1: 0,
    extraDevices: blobs.length,
    devtSlotoff: RAFS_V6_DEVT_SLOTOFF,
    dirblkbits: 0,
    xattrPrefixCount: 0,
    xattrPrefixStart: 0,
    packedNid: 0n
  }
  encodeSuperBlock(sb, buf)
  encodeExtSuperBlock({
    flags,
    blobTableOffset,
    blobTableSize,
    chunkSize,
    chunkTableOffset,
    chunkTableSize,
    prefetchTableOffset,
    prefetchTableSize
  }, buf)
  return buf
}

/**
 * One record per unique (blob, chunk index), sorted like nydus-image's BTreeMap (digest, blob
 * index + 1; then chunk index). file_offset is the chunk's position in the last file using it in
 * breadth-first order, as nydus-image records it.
 */
function collectChunkRecords (root: Inode, sortedChildren: Map<Inode, DirEntry[]>, blobIndex: Map<BlobInfo, number>, chunkSize: number): ChunkInfoRecord[] {
  const byKey = new Map<number, { ref: ChunkRef, blobIndex: number, fileOffset: number }>()
  const queue: Inode[] = [root]
  for (let qi = 0; qi < queue.length; qi++) {
    for (const e of sortedChildren.get(queue[qi]!) ?? []) {
      const inode = e.inode
      if (inode.type === 'dir') {
        queue.push(inode)
        continue
      }
      if (inode.type !== 'file') continue
      inode.chunks.forEach((c, i) => {
        const bi = blobIndex.get(c.blob)
        if (bi === undefined) corrupt(`chunk ${i} of ${showName(e.name)} refers to blob ${String(c.blob?.blobId).slice(0, 64)} which is not in the image's blob list`)
        if (!Number.isSafeInteger(c.index) || c.index < 0) corrupt(`chunk ${i} of ${showName(e.name)} has index ${c.index}`)
        if (c.index >= RAFS_MAX_CHUNKS_PER_BLOB) limit(`chunk index ${c.index} of blob ${c.blob.blobId} does not fit 24 bits`)
        const key = bi * RAFS_MAX_CHUNKS_PER_BLOB + c.index
        const have = byKey.get(key)
        if (have === undefined) {
          validateChunkRef(c, chunkSize, e.name)
          byKey.set(key, { ref: c, blobIndex: bi, fileOffset: i * chunkSize })
        } else {
          if (have.ref !== c && !sameChunk(have.ref, c)) corrupt(`two different chunks claim index ${c.index} of blob ${c.blob.blobId}`)
          have.fileOffset = i * chunkSize
        }
      })
    }
  }
  const out = [...byKey.values()]
  out.sort((a, b) => Buffer.compare(a.ref.digest, b.ref.digest) || a.blobIndex - b.blobIndex || a.ref.index - b.ref.index)
  return out.map(r => chunkRecordOf(r.ref, r.blobIndex, r.fileOffset))
}

function sameChunk (a: ChunkRef, b: ChunkRef): boolean {
  return a.blob === b.blob && a.index === b.index && a.digest.equals(b.digest) && a.compressedOffset === b.compressedOffset &&
    a.compressedSize === b.compressedSize && a.uncompressedOffset === b.uncompressedOffset && a.uncompressedSize === b.uncompressedSize &&
    a.compressed === b.compressed && a.crc32 === b.crc32
}

function validateChunkRef (c: ChunkRef, chunkSize: number, name: Buffer): void {
  const what = `chunk ${c.index} of blob ${c.blob.blobId} (used by ${showName(name)})`
  if (c.index >= c.blob.chunkCount) corrupt(`${what}: index is not below the blob's chunk count ${c.blob.chunkCount}`)
  if (!Buffer.isBuffer(c.digest) || c.digest.length !== 32) corrupt(`${what}: digest is not 32 bytes`)
  if (!Number.isSafeInteger(c.uncompressedOffset) || c.uncompressedOffset < 0 || c.uncompressedOffset % BS !== 0) corrupt(`${what}: uncompressed offset ${c.uncompressedOffset} is not 4 KiB aligned`)
  if (c.uncompressedOffset / BS > U32_MAX) limit(`${what}: uncompressed offset ${c.uncompressedOffset} is beyond 2^32 blocks`)
  if (!Number.isSafeInteger(c.uncompressedSize) || c.uncompressedSize <= 0 || c.uncompressedSize > chunkSize) corrupt(`${what}: uncompressed size ${c.uncompressedSize} is out of range`)
  if (c.uncompressedOffset + c.uncompressedSize > c.blob.uncompressedSize) corrupt(`${what}: ends beyond the blob's uncompressed size ${c.blob.uncompressedSize}`)
  if (!Number.isSafeInteger(c.compressedOffset) || c.compressedOffset < 0) corrupt(`${what}: compressed offset ${c.compressedOffset} is invalid`)
  if (!Number.isSafeInteger(c.compressedSize) || c.compressedSize <= 0 || c.compressedSize > U32_MAX) corrupt(`${what}: compressed size ${c.compressedSize} is invalid`)
  if (c.compressedOffset + c.compressedSize > c.blob.compressedSize) corrupt(`${what}: ends beyond the blob's compressed size ${c.blob.compressedSize}`)
  if (c.crc32 !== undefined && (!Number.isInteger(c.crc32) || c.crc32 < 0 || c.crc32 > U32_MAX)) corrupt(`${what}: crc32 ${c.crc32} is not a u32`)
}

function writePlan (buf: Buffer, p: Plan, metaAddr: number, plans: Map<Inode, Plan>, blobIndex: Map<BlobInfo, number>): void {
  const inode = p.inode
  const off = metaAddr + p.offset
  let u = 0
  if (p.type === 'dir' || p.type === 'symlink') u = Math.floor((metaAddr + p.dataOffset) / BS)
  else if (p.type === 'file') u = p.chunkU
  else if (p.type === 'char' || p.type === 'block') u = inode.rdev
  encodeInode({
    compact: p.compact,
    format: 0,
    layout: p.layout,
    xattrIcount: xattrIcountOf(p.xsize),
    mode: TYPE_BITS[p.type] | inode.perm,
    nlink: p.nlink,
    size: p.size,
    mtimeDelta: 0,
    u,
    ino: p.ino,
    uid: inode.uid,
    gid: inode.gid,
    mtime: inode.mtime,
    mtimeNsec: inode.mtimeNsec
  }, buf, off)
  encodeXattrIbody(p.xattrs, buf, off + p.isize)
  const inlineAt = off + p.isize + p.xsize

  if (p.type === 'file') {
    const at = align(inlineAt, EROFS_CHUNK_INDEX_SIZE)
    inode.chunks.forEach((c, i) => {
      encodeChunkIndex({ blobIndex: blobIndex.get(c.blob)!, chunkIndex: c.index, blkaddr: c.uncompressedOffset / BS }, buf, at + i * EROFS_CHUNK_INDEX_SIZE)
    })
  } else if (p.type === 'symlink') {
    inode.symlink!.copy(buf, p.layout === EROFS_INODE_FLAT_INLINE ? inlineAt : metaAddr + p.dataOffset)
  } else if (p.type === 'dir') {
    const nid = (q: Plan): number => q.offset / EROFS_INODE_SLOT_SIZE
    const entries = [
      { name: DOT, nid: nid(p), ft: fileTypeOf('dir') },
      { name: DOTDOT, nid: nid(p.parent ?? p), ft: fileTypeOf('dir') },
      ...p.children.map(e => {
        const cp = plans.get(e.inode)!
        return { name: e.name, nid: nid(cp), ft: fileTypeOf(cp.type) }
      })
    ].sort((a, b) => Buffer.compare(a.name, b.name))
    // Fill blocks: a block takes entries while their dirents and names fit in 4096 bytes.
    const blocks: (typeof entries)[] = []
    let cur: typeof entries = []
    let used = 0
    for (const e of entries) {
      const len = e.name.length + EROFS_DIRENT_SIZE
      if (used + len > BS) {
        blocks.push(cur)
        cur = []
        used = 0
      }
      cur.push(e)
      used += len
    }
    blocks.push(cur)
    blocks.forEach((blk, k) => {
      const last = k === blocks.length - 1
      const at = last && p.layout === EROFS_INODE_FLAT_INLINE ? inlineAt : metaAddr + p.dataOffset + k * BS
      let nameoff = blk.length * EROFS_DIRENT_SIZE
      blk.forEach((e, i) => {
        encodeDirent({ nid: e.nid, nameoff, fileType: e.ft }, buf, at + i * EROFS_DIRENT_SIZE)
        e.name.copy(buf, at + nameoff)
        nameoff += e.name.length
      })
    })
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

/** Attributes of one inode, as a FUSE daemon needs them. */
export interface BootstrapInode {
  /** The nid (what the kernel reports as st_ino). */
  ino: number
  type: InodeType
  /** Full st_mode (type and permission bits). */
  mode: number
  perm: number
  uid: number
  gid: number
  mtime: bigint
  mtimeNsec: number
  /** i_size: file size, symlink target length, directory bytes. */
  size: number
  rdev: number
  nlink: number
  /** The EROFS inode's own i_ino field (32-bit stat compatibility). */
  iIno: number
  compact: boolean
  layout: number
  /** Whether the inode has an inline xattr body. */
  hasXattrs: boolean
}

export interface BootstrapDirent {
  name: Buffer
  nid: number
  type: InodeType
}

interface DecodedInode {
  attr: BootstrapInode
  offset: number
  /** Offset and size of the inline xattr body. */
  xattrOff: number
  xattrSize: number
  /** Offset right after inode + xattrs (inline data, or where chunk indexes start after 8-alignment). */
  inlineOff: number
  /** Directories and symlinks: block address of the first data block. */
  rawBlkaddr: number
  /** Regular files: number of chunk index entries. */
  chunkCount: number
}

/** One parsed directory block: where its dirents and names are. */
interface DirBlock { start: number, len: number, count: number }

export class Bootstrap {
  readonly buffer: Buffer
  readonly superblock: ErofsSuperBlock
  readonly ext: RafsV6ExtSuperBlock
  readonly chunkSize: number
  readonly compressor: Compressor
  readonly digester: ChunkDigester
  /** RafsSuperFlags. */
  readonly flags: number
  readonly inodeCount: number
  readonly rootNid: number
  readonly buildTime: bigint
  readonly buildTimeNsec: number
  /** Blocks of all devices (statfs). */
  readonly blocks: number
  readonly metaBlkaddr: number
  readonly blobs: BlobInfo[]
  readonly prefetchNids: number[]
  private readonly metaBase: number
  private readonly inodes = new Map<number, DecodedInode>()
  private chunkMap: Map<number, number> | undefined
  private readonly chunkRefs = new Map<number, ChunkRef>()

  private constructor (buf: Buffer) {
    this.buffer = buf
    if (buf.length >= 4 && buf.readUInt32LE(0) === RAFS_V5_SUPER_MAGIC) unsupported('this is a RAFS v5 bootstrap; naiad reads RAFS v6 only')
    if (buf.length < EROFS_SUPER_OFFSET + 4) truncated(`bootstrap is ${buf.length} bytes, too short for an EROFS superblock`)
    const magic = buf.readUInt32LE(EROFS_SUPER_OFFSET)
    if (magic !== EROFS_SUPER_MAGIC) throw new NaiadError('NAIAD_FMT_BAD_MAGIC', `superblock magic 0x${magic.toString(16)} is not EROFS (0xe0f5e1e2)`)
    const sb = decodeSuperBlock(buf)
    if ((sb.featureCompat & EROFS_FEATURE_COMPAT_RAFS_V6) === 0) unsupported(`feature_compat 0x${sb.featureCompat.toString(16)} lacks the RAFS v6 bit: a plain EROFS image, not a Nydus bootstrap`)
    if (sb.blkszbits !== EROFS_BLOCK_BITS) unsupported(`block size 2^${sb.blkszbits} (only 4096; 512-byte blocks are tarfs mode)`)
    const other = sb.featureIncompat & ~RAFS_V6_FEATURE_INCOMPAT
    if (other !== 0) unsupported(`feature_incompat 0x${sb.featureIncompat.toString(16)} has EROFS features naiad does not read (compression, fragments, dedupe, long xattr prefixes…)`)
    if (sb.featureIncompat !== RAFS_V6_FEATURE_INCOMPAT) corrupt(`feature_incompat 0x${sb.featureIncompat.toString(16)} must be CHUNKED_FILE|DEVICE_TABLE (0xc)`)
    if (buf.length < BS || buf.length % BS !== 0) truncated(`bootstrap size ${buf.length} is not a positive multiple of 4096`)
    if (sb.checksum !== 0) corrupt(`superblock checksum 0x${sb.checksum.toString(16)} must be 0 in RAFS v6`)
    if (sb.sbExtslots !== 0) corrupt(`superblock sb_extslots ${sb.sbExtslots} must be 0`)
    if (sb.xattrBlkaddr !== 0) unsupported(`xattr_blkaddr ${sb.xattrBlkaddr}: shared xattrs are not used by RAFS v6`)
    if (sb.xattrPrefixCount !== 0) unsupported('long xattr name prefixes')
    if (sb.u1 !== 0) corrupt(`superblock u1 0x${sb.u1.toString(16)} must be 0`)
    if (sb.dirblkbits !== 0) unsupported(`dirblkbits ${sb.dirblkbits}`)
    if (sb.devtSlotoff !== RAFS_V6_DEVT_SLOTOFF) corrupt(`superblock devt_slotoff ${sb.devtSlotoff} must be 11`)
    if (sb.extraDevices > RAFS_MAX_BLOBS) corrupt(`superblock extra_devices ${sb.extraDevices} exceeds 255`)
    if (sb.inos === 0n || sb.inos > BigInt(Number.MAX_SAFE_INTEGER)) corrupt(`superblock inos ${sb.inos} is out of range`)
    if (sb.buildTimeNsec > 999_999_999) corrupt(`superblock build_time_nsec ${sb.buildTimeNsec} is out of range`)
    const devtableEnd = RAFS_V6_DEVTABLE_OFFSET + sb.extraDevices * EROFS_DEVT_SLOT_SIZE
    needBytes(buf, RAFS_V6_DEVTABLE_OFFSET, sb.extraDevices * EROFS_DEVT_SLOT_SIZE, 'device table')

    const ext = decodeExtSuperBlock(buf)
    const comp = ext.flags & RAFS_FLAGS_COMPRESSION_MASK
    if (popcount(comp) !== 1) corrupt(`extended superblock flags 0x${ext.flags.toString(16)}: need exactly one compression flag`)
    if (comp === RAFS_FLAG.COMPRESSION_GZIP) unsupported('gzip-compressed chunks (ZRAN images)')
    if (popcount(ext.flags & RAFS_FLAGS_DIGEST_MASK) !== 1) corrupt(`extended superblock flags 0x${ext.flags.toString(16)}: need exactly one digest flag`)
    if ((ext.flags & RAFS_FLAG.TARFS_MODE) !== 0) unsupported('tarfs mode')
    if ((ext.flags & RAFS_FLAG.ENCRYPTION_AES_128_XTS) !== 0) unsupported('encrypted chunks (AES-128-XTS)')
    if (!isPowerOfTwo(ext.chunkSize) || ext.chunkSize < MIN_CHUNK_SIZE || ext.chunkSize > MAX_CHUNK_SIZE) corrupt(`extended superblock chunk_size ${ext.chunkSize} is not a power of two in 4 KiB..16 MiB`)

    const bt = { off: ext.blobTableOffset, size: ext.blobTableSize }
    if (bt.off % BS !== 0 || bt.off < BS || bt.off < devtableEnd || bt.size % RAFS_V6_BLOB_ENTRY_SIZE !== 0) corrupt(`extended superblock blob table offset 0x${bt.off.toString(16)} / size ${bt.size} is invalid`)
    if (bt.size / RAFS_V6_BLOB_ENTRY_SIZE !== sb.extraDevices) corrupt(`blob table has ${bt.size / RAFS_V6_BLOB_ENTRY_SIZE} entries, the device table ${sb.extraDevices}`)
    if (bt.off + bt.size > buf.length) truncated(`blob table at ${bt.off} (+${bt.size}) lies beyond the end of the ${buf.length}-byte bootstrap`)
    if (ext.chunkTableSize > 0) {
      const ct = { off: ext.chunkTableOffset, size: ext.chunkTableSize }
      if (ct.off % BS !== 0 || ct.off < BS || ct.off < devtableEnd || ct.size % RAFS_V5_CHUNK_INFO_SIZE !== 0) corrupt(`extended superblock chunk table offset 0x${ct.off.toString(16)} / size ${ct.size} is invalid`)
      if (ct.off + ct.size > buf.length) truncated(`chunk table at ${ct.off} (+${ct.size}) lies beyond the end of the ${buf.length}-byte bootstrap`)
      if (overlaps(bt.off, bt.size, ct.off, ct.size)) corrupt('blob table and chunk table overlap')
    }
    let prefetchNids: number[] = []
    if (ext.prefetchTableSize > 0 && ext.prefetchTableOffset !== 0) {
      const pt = { off: ext.prefetchTableOffset, size: ext.prefetchTableSize }
      if (pt.off < BS || pt.off < devtableEnd || pt.size % 4 !== 0) corrupt(`extended superblock prefetch table offset 0x${pt.off.toString(16)} / size ${pt.size} is invalid`)
      if (pt.off + pt.size > buf.length) truncated(`prefetch table at ${pt.off} (+${pt.size}) lies beyond the end of the ${buf.length}-byte bootstrap`)
      if (overlaps(bt.off, bt.size, pt.off, pt.size) || (ext.chunkTableSize > 0 && overlaps(ext.chunkTableOffset, ext.chunkTableSize, pt.off, pt.size))) corrupt('prefetch table overlaps the blob or chunk table')
      prefetchNids = decodePrefetchTable(buf, pt.off, pt.size)
    }

    const metaBase = sb.metaBlkaddr * BS
    if (metaBase >= buf.length) corrupt(`superblock meta_blkaddr ${sb.metaBlkaddr} lies beyond the end of the bootstrap`)

    const blobs: BlobInfo[] = []
    const ids = new Set<string>()
    for (let i = 0; i < sb.extraDevices; i++) {
      const e = decodeBlobEntry(buf, bt.off + i * RAFS_V6_BLOB_ENTRY_SIZE)
      if (e.blobIndex !== i) corrupt(`blob[${i}].blob_index is ${e.blobIndex}`)
      if (e.chunkSize !== ext.chunkSize) corrupt(`blob[${i}].chunk_size ${e.chunkSize} differs from the image's ${ext.chunkSize}`)
      const info = blobInfoOf(e, i)
      if (ids.has(info.blobId)) corrupt(`blob ${info.blobId} is listed twice`)
      ids.add(info.blobId)
      const slot = decodeDeviceSlot(buf, RAFS_V6_DEVTABLE_OFFSET + i * EROFS_DEVT_SLOT_SIZE)
      if (!slot.tag.subarray(0, RAFS_BLOB_ID_LEN).equals(e.blobId)) corrupt(`device slot ${i} tag does not match blob[${i}].blob_id`)
      blobs.push(info)
    }

    this.superblock = sb
    this.ext = ext
    this.chunkSize = ext.chunkSize
    this.compressor = comp === RAFS_FLAG.COMPRESSION_NONE ? 'none' : comp === RAFS_FLAG.COMPRESSION_LZ4 ? 'lz4_block' : 'zstd'
    this.digester = (ext.flags & RAFS_FLAG.HASH_BLAKE3) !== 0 ? 'blake3' : 'sha256'
    this.flags = ext.flags
    this.inodeCount = Number(sb.inos)
    this.rootNid = sb.rootNid
    this.buildTime = sb.buildTime
    this.buildTimeNsec = sb.buildTimeNsec
    this.blocks = sb.blocks
    this.metaBlkaddr = sb.metaBlkaddr
    this.metaBase = metaBase
    this.blobs = blobs
    this.prefetchNids = prefetchNids

    const root = this.inode(sb.rootNid)
    if (root.type !== 'dir') corrupt(`root nid ${sb.rootNid} is not a directory`)
    for (const nid of prefetchNids) this.checkNid(nid, 'prefetch table entry')
  }

  /** Parses and validates the superblocks, device and blob tables, and the root inode. */
  static parse (buf: Buffer): Bootstrap {
    return new Bootstrap(buf)
  }

  private checkNid (nid: number | bigint, what: string): number {
    const off = this.metaBase + Number(nid) * EROFS_INODE_SLOT_SIZE
    if (typeof nid === 'bigint' ? nid > BigInt(U32_MAX) : (!Number.isSafeInteger(nid) || nid < 0)) corrupt(`${what}: nid ${nid} is out of range`)
    if (off + EROFS_INODE_COMPACT_SIZE > this.buffer.length) corrupt(`${what}: nid ${nid} points beyond the end of the bootstrap`)
    return Number(nid)
  }

  private decoded (nid: number): DecodedInode {
    const have = this.inodes.get(nid)
    if (have !== undefined) return have
    this.checkNid(nid, 'inode')
    const buf = this.buffer
    const offset = this.metaBase + nid * EROFS_INODE_SLOT_SIZE
    const what = `inode ${nid}`
    if (offset + EROFS_INODE_EXTENDED_SIZE > buf.length && (buf.readUInt16LE(offset) & 1) === 1) corrupt(`${what}: extended inode runs past the end of the bootstrap`)
    const raw = decodeInode(buf, offset)
    if ((raw.format & ~EROFS_I_ALL) !== 0) unsupported(`${what}: i_format 0x${raw.format.toString(16)} has unknown bits`)
    if (raw.layout === EROFS_INODE_COMPRESSED_FULL || raw.layout === EROFS_INODE_COMPRESSED_COMPACT) unsupported(`${what}: compressed EROFS inode`)
    if (raw.layout > EROFS_INODE_CHUNK_BASED) corrupt(`${what}: data layout ${raw.layout} is invalid`)
    const type = typeOfMode(raw.mode)
    if (type === undefined) corrupt(`${what}: i_mode 0o${raw.mode.toString(8)} has no valid file type`)
    const isize = raw.compact ? EROFS_INODE_COMPACT_SIZE : EROFS_INODE_EXTENDED_SIZE
    const xattrSize = xattrIbodySizeOf(raw.xattrIcount)
    const xattrOff = offset + isize
    const inlineOff = xattrOff + xattrSize
    if (inlineOff > buf.length) corrupt(`${what}: inline xattrs (${xattrSize} bytes) run past the end of the bootstrap`)
    let chunkCount = 0
    let rawBlkaddr = 0
    const size = raw.size
    if (type === 'dir' || type === 'symlink') {
      if (raw.layout !== EROFS_INODE_FLAT_PLAIN && raw.layout !== EROFS_INODE_FLAT_INLINE) corrupt(`${what}: ${type} with data layout ${raw.layout}`)
      if (type === 'dir' && size < 2 * EROFS_DIRENT_SIZE + 3) corrupt(`${what}: directory size ${size} is too small for "." and ".."`)
      rawBlkaddr = raw.u
      const nblocks = Math.ceil(size / BS)
      const full = raw.layout === EROFS_INODE_FLAT_INLINE ? nblocks - 1 : nblocks
      if (full > 0 && rawBlkaddr * BS + full * BS > buf.length) corrupt(`${what}: ${type} size ${size} at block ${rawBlkaddr} runs past the end of the bootstrap`)
      if (raw.layout === EROFS_INODE_FLAT_INLINE) {
        const tail = size - full * BS
        if ((inlineOff % BS) + tail > BS) corrupt(`${what}: inline ${type} data (${tail} bytes) crosses a block boundary`)
        if (inlineOff + tail > buf.length) corrupt(`${what}: inline data runs past the end of the bootstrap`)
      }
    } else if (type === 'file') {
      if (raw.layout === EROFS_INODE_CHUNK_BASED) {
        if ((raw.u & EROFS_CHUNK_FORMAT_INDEXES) === 0) unsupported(`${what}: chunk-based file without chunk indexes (block map)`)
        if ((raw.u & ~(EROFS_CHUNK_FORMAT_INDEXES | EROFS_CHUNK_FORMAT_BLKBITS_MASK)) !== 0) corrupt(`${what}: chunk format 0x${raw.u.toString(16)} has unknown bits`)
        const bits = (raw.u & EROFS_CHUNK_FORMAT_BLKBITS_MASK) + EROFS_BLOCK_BITS
        if (2 ** bits < this.chunkSize) corrupt(`${what}: chunk size 2^${bits} is below the image chunk size ${this.chunkSize}`)
        chunkCount = Math.ceil(size / this.chunkSize)
        const at = align(inlineOff, EROFS_CHUNK_INDEX_SIZE)
        if (at + chunkCount * EROFS_CHUNK_INDEX_SIZE > buf.length) corrupt(`${what}: file size ${size} needs ${chunkCount} chunk indexes, which run past the end of the bootstrap`)
      } else if ((raw.layout === EROFS_INODE_FLAT_PLAIN || raw.layout === EROFS_INODE_FLAT_INLINE) && size === 0) {
        chunkCount = 0
      } else {
        unsupported(`${what}: regular file with data layout ${raw.layout} (data inside the bootstrap)`)
      }
    }
    let mtime = raw.mtime
    let mtimeNsec = raw.mtimeNsec
    if (raw.compact) {
      mtime = this.buildTime + BigInt(raw.mtimeDelta)
      mtimeNsec = this.buildTimeNsec
    } else if (mtimeNsec > 999_999_999) {
      corrupt(`${what}: i_mtime_nsec ${mtimeNsec} is out of range`)
    }
    const attr: BootstrapInode = Object.freeze({
      ino: nid,
      type,
      mode: raw.mode,
      perm: raw.mode & 0o7777,
      uid: raw.uid,
      gid: raw.gid,
      mtime,
      mtimeNsec,
      size,
      rdev: type === 'char' || type === 'block' ? raw.u : 0,
      nlink: raw.nlink,
      iIno: raw.ino,
      compact: raw.compact,
      layout: raw.layout,
      hasXattrs: xattrSize > 0
    })
    const d: DecodedInode = { attr, offset, xattrOff, xattrSize, inlineOff, rawBlkaddr, chunkCount }
    this.inodes.set(nid, d)
    return d
  }

  /** Attributes of inode `nid` (decoded once, then cached). */
  inode (nid: number): BootstrapInode {
    return this.decoded(nid).attr
  }

  private dirInode (nid: number): DecodedInode {
    const d = this.decoded(nid)
    if (d.attr.type !== 'dir') throw new NaiadError('NAIAD_INTERNAL', `nid ${nid} is not a directory`)
    return d
  }

  private dirBlockCount (d: DecodedInode): number {
    return Math.ceil(d.attr.size / BS)
  }

  private dirBlock (d: DecodedInode, k: number): DirBlock {
    const nblocks = this.dirBlockCount(d)
    const last = k === nblocks - 1
    const len = last ? d.attr.size - k * BS : BS
    const start = last && d.attr.layout === EROFS_INODE_FLAT_INLINE ? d.inlineOff : (d.rawBlkaddr + k) * BS
    const what = `directory ${d.attr.ino} block ${k}`
    if (len < EROFS_DIRENT_SIZE) corrupt(`${what}: ${len} bytes cannot hold a dirent`)
    const first = this.buffer.readUInt16LE(start + 8)
    if (first < EROFS_DIRENT_SIZE || first % EROFS_DIRENT_SIZE !== 0 || first >= len) corrupt(`${what}: first dirent nameoff ${first} is out of the block`)
    return { start, len, count: first / EROFS_DIRENT_SIZE }
  }

  /** The name of entry i of a directory block (validated), as a view into the bootstrap. */
  private dirName (d: DecodedInode, blk: DirBlock, i: number): Buffer {
    const buf = this.buffer
    const at = blk.start + i * EROFS_DIRENT_SIZE
    const nameoff = buf.readUInt16LE(at + 8)
    const end = i + 1 < blk.count ? buf.readUInt16LE(at + EROFS_DIRENT_SIZE + 8) : blk.len
    if (nameoff < blk.count * EROFS_DIRENT_SIZE || nameoff >= blk.len || end > blk.len || end <= nameoff) corrupt(`directory ${d.attr.ino}: dirent nameoff ${nameoff} is out of its block`)
    let name = buf.subarray(blk.start + nameoff, blk.start + end)
    if (i + 1 === blk.count) {
      const nul = name.indexOf(0)
      if (nul >= 0) name = name.subarray(0, nul)
    }
    if (name.length === 0 || name.length > EROFS_NAME_LEN || name.includes(0) || name.includes(0x2f)) corrupt(`directory ${d.attr.ino}: dirent name ${showName(name)} is invalid`)
    return name
  }

  /** Entry i of a directory block: its name (a copy), nid and type, all validated. */
  private dirEntry (d: DecodedInode, blk: DirBlock, i: number, name = this.dirName(d, blk, i)): BootstrapDirent {
    const buf = this.buffer
    const at = blk.start + i * EROFS_DIRENT_SIZE
    const what = `directory ${d.attr.ino}`
    const type = typeOfFileType(buf.readUInt8(at + 10))
    if (type === undefined) corrupt(`${what}: dirent ${showName(name)} has file type ${buf.readUInt8(at + 10)}`)
    const nid = this.checkNid(buf.readBigUInt64LE(at), `${what}: dirent ${showName(name)}`)
    return { name: Buffer.from(name), nid, type }
  }

  /** All entries of a directory in on-disk (sorted) order, including "." and "..". */
  readdir (nid: number): BootstrapDirent[] {
    const d = this.dirInode(nid)
    const out: BootstrapDirent[] = []
    const nblocks = this.dirBlockCount(d)
    for (let k = 0; k < nblocks; k++) {
      const blk = this.dirBlock(d, k)
      for (let i = 0; i < blk.count; i++) {
        const e = this.dirEntry(d, blk, i)
        const prev = out[out.length - 1]
        if (prev !== undefined && Buffer.compare(prev.name, e.name) >= 0) corrupt(`directory ${nid}: names are not sorted (${showName(prev.name)} before ${showName(e.name)})`)
        out.push(e)
      }
    }
    return out
  }

  /** Looks a name up in a directory by binary search over its sorted blocks and entries. */
  lookup (dirNid: number, name: Buffer): BootstrapDirent | undefined {
    const d = this.dirInode(dirNid)
    const nblocks = this.dirBlockCount(d)
    let lo = 0
    let hi = nblocks - 1
    let candidate: DirBlock | undefined
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      const blk = this.dirBlock(d, mid)
      const first = this.dirName(d, blk, 0)
      const c = Buffer.compare(name, first)
      if (c === 0) return this.dirEntry(d, blk, 0, first)
      if (c < 0) {
        hi = mid - 1
      } else {
        candidate = blk
        lo = mid + 1
      }
    }
    if (candidate === undefined) return undefined
    let l = 1
    let h = candidate.count - 1
    while (l <= h) {
      const mid = (l + h) >>> 1
      const n = this.dirName(d, candidate, mid)
      const c = Buffer.compare(name, n)
      if (c === 0) return this.dirEntry(d, candidate, mid, n)
      if (c < 0) h = mid - 1
      else l = mid + 1
    }
    return undefined
  }

  /** The target of a symlink. */
  readlink (nid: number): Buffer {
    const d = this.decoded(nid)
    if (d.attr.type !== 'symlink') throw new NaiadError('NAIAD_INTERNAL', `nid ${nid} is not a symlink`)
    const start = d.attr.layout === EROFS_INODE_FLAT_INLINE ? d.inlineOff : d.rawBlkaddr * BS
    return Buffer.from(this.buffer.subarray(start, start + d.attr.size))
  }

  /** Inline xattrs of an inode, full names restored, in on-disk order. */
  xattrs (nid: number): Xattr[] {
    const d = this.decoded(nid)
    return decodeXattrIbody(this.buffer, d.xattrOff, d.xattrSize).map(e => {
      const prefix = xattrPrefix(e.index)
      if (prefix === undefined) unsupported(`inode ${nid}: xattr name index ${e.index}${e.index >= 0x80 ? ' (long prefix)' : ''}`)
      return { name: Buffer.concat([prefix, e.suffix]), value: e.value }
    })
  }

  private buildChunkMap (): Map<number, number> {
    if (this.chunkMap !== undefined) return this.chunkMap
    const map = new Map<number, number>()
    const n = this.ext.chunkTableSize / RAFS_V5_CHUNK_INFO_SIZE
    for (let i = 0; i < n; i++) {
      const off = this.ext.chunkTableOffset + i * RAFS_V5_CHUNK_INFO_SIZE
      const blobIndex = this.buffer.readUInt32LE(off + 32)
      const index = this.buffer.readUInt32LE(off + 72)
      if (blobIndex >= this.blobs.length) corrupt(`chunk-info record ${i}: blob_index ${blobIndex} is not in the blob table`)
      if (index >= this.blobs[blobIndex]!.chunkCount) corrupt(`chunk-info record ${i}: index ${index} is past blob ${blobIndex}'s ${this.blobs[blobIndex]!.chunkCount} chunks`)
      const key = blobIndex * RAFS_MAX_CHUNKS_PER_BLOB + index
      if (map.has(key)) corrupt(`chunk-info records ${map.get(key)} and ${i} both describe chunk ${index} of blob ${blobIndex}`)
      map.set(key, i)
    }
    this.chunkMap = map
    return map
  }

  private chunkRef (record: number): ChunkRef {
    const have = this.chunkRefs.get(record)
    if (have !== undefined) return have
    const r = decodeChunkInfo(this.buffer, this.ext.chunkTableOffset + record * RAFS_V5_CHUNK_INFO_SIZE)
    const what = `chunk-info record ${record}`
    if ((r.flags & (CHUNK_FLAG.ENCRYPTED | CHUNK_FLAG.BATCH)) !== 0) unsupported(`${what}: encrypted or batch chunk (flags 0x${r.flags.toString(16)})`)
    const blob = this.blobs[r.blobIndex]!
    if (r.uncompressedOffset % BS !== 0) corrupt(`${what}: uncompressed_offset ${r.uncompressedOffset} is not 4 KiB aligned`)
    if (r.uncompressedSize === 0 || r.uncompressedSize > this.chunkSize) corrupt(`${what}: uncompressed_size ${r.uncompressedSize} is out of range`)
    if (r.compressedSize === 0) corrupt(`${what}: compressed_size is 0`)
    if (r.uncompressedOffset + r.uncompressedSize > blob.uncompressedSize) corrupt(`${what}: chunk ends past blob ${r.blobIndex}'s uncompressed size`)
    if (r.compressedOffset + r.compressedSize > blob.compressedSize) corrupt(`${what}: chunk ends past blob ${r.blobIndex}'s compressed size`)
    const ref: ChunkRef = {
      blob,
      index: r.index,
      digest: r.digest,
      compressedOffset: r.compressedOffset,
      compressedSize: r.compressedSize,
      uncompressedOffset: r.uncompressedOffset,
      uncompressedSize: r.uncompressedSize,
      compressed: (r.flags & CHUNK_FLAG.COMPRESSED) !== 0,
      ...((r.flags & CHUNK_FLAG.HAS_CRC32) !== 0 ? { crc32: r.crc32 } : {})
    }
    this.chunkRefs.set(record, ref)
    return ref
  }

  /** The chunks of a regular file, in file order, resolved through the chunk-info table. */
  chunks (nid: number): ChunkRef[] {
    const d = this.decoded(nid)
    if (d.attr.type !== 'file') return []
    if (d.chunkCount === 0) return []
    const map = this.buildChunkMap()
    const at = align(d.inlineOff, EROFS_CHUNK_INDEX_SIZE)
    const out: ChunkRef[] = []
    for (let i = 0; i < d.chunkCount; i++) {
      const ci = decodeChunkIndex(this.buffer, at + i * EROFS_CHUNK_INDEX_SIZE)
      const what = `inode ${nid} chunk ${i}`
      if (ci.blobIndex < 0 || ci.blobIndex >= this.blobs.length) corrupt(`${what}: device id ${ci.blobIndex + 1} is not a blob of this image`)
      const record = map.get(ci.blobIndex * RAFS_MAX_CHUNKS_PER_BLOB + ci.chunkIndex)
      if (record === undefined) corrupt(`${what}: chunk ${ci.chunkIndex} of blob ${ci.blobIndex} is not in the chunk-info table`)
      const ref = this.chunkRef(record)
      if (ref.uncompressedOffset !== ci.blkaddr * BS) corrupt(`${what}: block address ${ci.blkaddr} disagrees with the chunk-info table (${ref.uncompressedOffset})`)
      const want = Math.min(this.chunkSize, d.attr.size - i * this.chunkSize)
      if (ref.uncompressedSize !== want) corrupt(`${what}: chunk holds ${ref.uncompressedSize} bytes, the file needs ${want}`)
      out.push(ref)
    }
    return out
  }

  /**
   * The whole tree as the shared in-memory model: hard links are the same Inode object, `ino` is
   * the nid. Rejects directory cycles, directories reached twice and inconsistent "."/"..".
   */
  toTree (): Inode {
    const byNid = new Map<number, Inode>()
    const make = (nid: number): Inode => {
      const a = this.inode(nid)
      const inode: Inode = {
        type: a.type,
        perm: a.perm,
        uid: a.uid,
        gid: a.gid,
        mtime: a.mtime,
        mtimeNsec: a.mtimeNsec,
        size: a.type === 'file' || a.type === 'symlink' ? a.size : 0,
        rdev: a.rdev,
        xattrs: this.xattrs(nid),
        chunks: a.type === 'file' ? this.chunks(nid) : [],
        ino: nid
      }
      if (a.type === 'symlink') inode.symlink = this.readlink(nid)
      if (a.type === 'dir') inode.entries = []
      byNid.set(nid, inode)
      return inode
    }
    const root = make(this.rootNid)
    const stack: { nid: number, parent: number, inode: Inode }[] = [{ nid: this.rootNid, parent: this.rootNid, inode: root }]
    while (stack.length > 0) {
      const { nid, parent, inode } = stack.pop()!
      let dots = 0
      for (const e of this.readdir(nid)) {
        if (e.name.equals(DOT) || e.name.equals(DOTDOT)) {
          const want = e.name.length === 1 ? nid : parent
          if (e.nid !== want || e.type !== 'dir') corrupt(`directory ${nid}: "${e.name.toString()}" points at nid ${e.nid}, expected ${want}`)
          dots++
          continue
        }
        const a = this.inode(e.nid)
        if (a.type !== e.type) corrupt(`directory ${nid}: entry ${showName(e.name)} says ${e.type}, inode ${e.nid} is a ${a.type}`)
        let child = byNid.get(e.nid)
        if (a.type === 'dir') {
          if (child !== undefined) corrupt(`directory ${nid}: entry ${showName(e.name)} reaches directory ${e.nid} a second time (cycle or directory hard link)`)
          child = make(e.nid)
          stack.push({ nid: e.nid, parent: nid, inode: child })
        } else {
          child ??= make(e.nid)
        }
        inode.entries!.push({ name: e.name, inode: child })
      }
      if (dots !== 2) corrupt(`directory ${nid} lacks "." or ".."`)
    }
    return root
  }
}

function popcount (n: number): number {
  let c = 0
  for (let v = n >>> 0; v !== 0; v &= v - 1) c++
  return c
}

function overlaps (a: number, alen: number, b: number, blen: number): boolean {
  return a < b + blen && b < a + alen
}

/** S_IFMT bits → type, built once (decoding an inode must not allocate). */
const TYPE_OF_BITS: ReadonlyMap<number, InodeType> = new Map(Object.entries(TYPE_BITS).map(([k, v]) => [v, k as InodeType]))

function typeOfMode (mode: number): InodeType | undefined {
  return TYPE_OF_BITS.get(mode & S_IFMT)
}

/** Names of the EROFS xattr prefixes naiad stores (for callers that filter xattrs before writing). */
export const STORABLE_XATTR_PREFIXES: readonly string[] = XATTR_PREFIXES.map(p => p.prefix.toString())
