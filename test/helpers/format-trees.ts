/**
 * Declarative trees for the RAFS v6 format tests: fake blobs whose "device" is the uncompressed
 * address space (what a kernel or fsck.erofs reads as an extra EROFS device), builders for every
 * inode type, a tree walker and a deep comparison of two trees (attributes, xattrs, chunks and the
 * hard-link structure).
 */
import { createHash } from 'node:crypto'
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs'
import { newInode, type BlobInfo, type ChunkRef, type DirEntry, type Inode, type InodeType, type Xattr } from '../../lib/format/types.ts'

export const FEATURES_V22 = 0x70000021 // CAP_TAR_TOC | HAS_TOC | HAS_TAR_HEADER | INLINED_CHUNK_DIGEST | ALIGNED

/** One fake blob: chunk records are stored "raw" (compressed size = uncompressed size). */
export class FakeBlob {
  readonly info: BlobInfo
  /** Pieces of the uncompressed device: data at 4 KiB aligned offsets. */
  readonly pieces: { offset: number, data: Buffer }[] = []
  private nextOffset = 0
  private nextIndex = 0

  constructor (readonly chunkSize: number, seed: number, readonly withCrc = false) {
    this.info = {
      blobId: createHash('sha256').update(`fake-blob-${seed}`).digest('hex'),
      chunkSize,
      chunkCount: 0,
      compressor: 'zstd',
      digester: 'blake3',
      features: FEATURES_V22,
      compressedSize: 0,
      uncompressedSize: 0,
      tocSize: 1024,
      tocDigest: createHash('sha256').update(`toc-${seed}`).digest(),
      ciCompressor: 'none',
      ciOffset: 0,
      ciCompressedSize: 0,
      ciUncompressedSize: 0
    }
  }

  /** Stores one chunk; `index` / `offset` may be forced (sparse, high chunk indexes). */
  addChunk (data: Buffer, at?: { index: number, offset: number }): ChunkRef {
    if (data.length === 0 || data.length > this.chunkSize) throw new Error(`bad chunk length ${data.length}`)
    const index = at?.index ?? this.nextIndex
    const offset = at?.offset ?? this.nextOffset
    this.pieces.push({ offset, data })
    this.nextIndex = Math.max(this.nextIndex, index + 1)
    this.nextOffset = Math.max(this.nextOffset, offset + Math.ceil(data.length / 4096) * 4096)
    const ref: ChunkRef = {
      blob: this.info,
      index,
      digest: createHash('sha256').update(data).digest(),
      compressedOffset: this.info.compressedSize,
      compressedSize: data.length,
      uncompressedOffset: offset,
      uncompressedSize: data.length,
      compressed: false,
      ...(this.withCrc ? { crc32: crc32(data) } : {})
    }
    this.info.compressedSize += data.length
    this.info.chunkCount = this.nextIndex
    this.info.uncompressedSize = this.nextOffset
    this.info.ciOffset = this.info.compressedSize
    this.info.ciUncompressedSize = this.info.ciCompressedSize = this.info.chunkCount * 16
    return ref
  }

  /** Splits `data` into chunks (all in this blob). */
  addData (data: Buffer): ChunkRef[] {
    const out: ChunkRef[] = []
    for (let off = 0; off < data.length; off += this.chunkSize) out.push(this.addChunk(data.subarray(off, off + this.chunkSize)))
    return out
  }

  /** Writes the uncompressed device (sparse where no chunk is). */
  writeDevice (path: string): void {
    const fd = openSync(path, 'w')
    try {
      ftruncateSync(fd, this.info.uncompressedSize)
      for (const p of this.pieces) writeSync(fd, p.data, 0, p.data.length, p.offset)
    } finally {
      closeSync(fd)
    }
  }
}

function crc32 (data: Buffer): number {
  let c = 0xffffffff
  for (const b of data) {
    c ^= b
    for (let k = 0; k < 8; k++) c = (c & 1) !== 0 ? (c >>> 1) ^ 0xedb88320 : c >>> 1
  }
  return (c ^ 0xffffffff) >>> 0
}

/** Deterministic pseudo-random bytes. */
export function bytes (n: number, seed: number): Buffer {
  const out = Buffer.alloc(n)
  let x = (seed * 2654435761) >>> 0 || 1
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    out[i] = x & 0xff
  }
  return out
}

type Attrs = Partial<Omit<Inode, 'type' | 'entries' | 'chunks' | 'size' | 'symlink'>>

export function dir (entries: [string | Buffer, Inode][], attrs: Attrs = {}): Inode {
  const d = newInode('dir', attrs)
  d.entries = entries.map(([name, inode]) => ({ name: typeof name === 'string' ? Buffer.from(name) : name, inode }))
  return d
}

/** A regular file whose content is `data`, chunked into `blob` (or given explicit chunks). */
export function file (data: Buffer, blob: FakeBlob | ChunkRef[] | undefined, attrs: Attrs = {}): Inode {
  const chunks = data.length === 0 ? [] : Array.isArray(blob) ? blob : blob!.addData(data)
  return newInode('file', { ...attrs, size: data.length, chunks })
}

export function symlink (target: string | Buffer, attrs: Attrs = {}): Inode {
  const t = typeof target === 'string' ? Buffer.from(target) : target
  return newInode('symlink', { ...attrs, symlink: t, size: t.length })
}

export function special (type: Exclude<InodeType, 'file' | 'dir' | 'symlink'>, attrs: Attrs = {}): Inode {
  return newInode(type, attrs)
}

export function xattr (name: string, value: string | Buffer): Xattr {
  return { name: Buffer.from(name), value: typeof value === 'string' ? Buffer.from(value) : value }
}

export interface WalkEntry { path: Buffer, inode: Inode }

/** Every entry of the tree (root first, then depth-first in the order given), iteratively. */
export function walk (root: Inode): WalkEntry[] {
  const out: WalkEntry[] = [{ path: Buffer.from('/'), inode: root }]
  const stack: WalkEntry[] = [{ path: Buffer.from('/'), inode: root }]
  while (stack.length > 0) {
    const { path, inode } = stack.pop()!
    const entries: DirEntry[] = [...(inode.entries ?? [])].sort((a, b) => Buffer.compare(a.name, b.name))
    for (let i = entries.length - 1; i >= 0; i--) {
      const e = entries[i]!
      const p = Buffer.concat([path, path.length > 1 ? Buffer.from('/') : Buffer.alloc(0), e.name])
      out.push({ path: p, inode: e.inode })
      if (e.inode.type === 'dir') stack.push({ path: p, inode: e.inode })
    }
  }
  return out
}

function describeChunk (c: ChunkRef): string {
  return [c.blob.blobId, c.index, c.digest.toString('hex'), c.compressedOffset, c.compressedSize, c.uncompressedOffset, c.uncompressedSize, c.compressed, c.crc32 ?? '-'].join(',')
}

/** What a reader must give back for an inode the writer was handed. */
export function describe (inode: Inode): Record<string, unknown> {
  return {
    type: inode.type,
    perm: inode.perm.toString(8),
    uid: inode.uid,
    gid: inode.gid,
    mtime: `${inode.mtime}.${inode.mtimeNsec}`,
    size: inode.type === 'file' ? inode.size : inode.type === 'symlink' ? inode.symlink!.length : 0,
    rdev: inode.type === 'char' || inode.type === 'block' ? inode.rdev : 0,
    symlink: inode.symlink?.toString('hex'),
    xattrs: [...inode.xattrs].sort((a, b) => Buffer.compare(a.name, b.name)).map(x => `${x.name.toString('hex')}=${x.value.toString('hex')}`),
    chunks: inode.chunks.map(describeChunk),
    entries: inode.type === 'dir' ? (inode.entries ?? []).map(e => e.name.toString('hex')).sort() : undefined
  }
}

/**
 * Differences between two trees: per path attributes, and the hard-link partition (paths sharing
 * one Inode object in `a` must share one in `b`, and only those).
 */
export function diffTrees (a: Inode, b: Inode): string[] {
  const wa = walk(a)
  const wb = walk(b)
  const diffs: string[] = []
  const mb = new Map(wb.map(e => [e.path.toString('hex'), e]))
  if (wa.length !== wb.length) diffs.push(`entry count ${wa.length} != ${wb.length}`)
  const groupsA = new Map<Inode, string[]>()
  const groupsB = new Map<Inode, string[]>()
  for (const ea of wa) {
    const key = ea.path.toString('hex')
    const eb = mb.get(key)
    if (eb === undefined) {
      diffs.push(`missing ${ea.path.toString()}`)
      continue
    }
    const da = JSON.stringify(describe(ea.inode))
    const db = JSON.stringify(describe(eb.inode))
    if (da !== db) diffs.push(`${ea.path.toString()}: ${da} != ${db}`)
    if (ea.inode.type !== 'dir') {
      groupsA.set(ea.inode, [...(groupsA.get(ea.inode) ?? []), key])
      groupsB.set(eb.inode, [...(groupsB.get(eb.inode) ?? []), key])
    }
  }
  const norm = (g: Map<Inode, string[]>): string[] => [...g.values()].map(v => v.sort().join('|')).sort()
  if (JSON.stringify(norm(groupsA)) !== JSON.stringify(norm(groupsB))) diffs.push('hard-link groups differ')
  return diffs
}

/** Expected content of every regular file, by path (from the fake blobs' pieces). */
export function fileContent (inode: Inode, blobs: FakeBlob[]): Buffer {
  const parts = inode.chunks.map(c => {
    const blob = blobs.find(b => b.info === c.blob)!
    const piece = blob.pieces.find(p => p.offset === c.uncompressedOffset)!
    return piece.data.subarray(0, c.uncompressedSize)
  })
  return Buffer.concat(parts)
}

export interface EverythingTree {
  root: Inode
  blobs: FakeBlob[]
  chunkSize: number
  /** Paths (UTF-8, from the root) of a few notable entries. */
  paths: { hardlinkA: string, hardlinkB: string, hardlinkC: string, bigDir: string, deepLeaf: string, empty: string, xattrFile: string, preEpoch: string, bigUid: string }
  /** The (mtime, nsec) the writer should pick as build time. */
  buildTime: { mtime: bigint, nsec: number }
}

/**
 * Every entry type and corner case the bootstrap must keep, on two blobs. `highChunkIndex: false`
 * leaves out the file whose chunk index is above 2^16: erofs-utils 1.5 does not mask the chunk
 * index's upper byte off the device id (the kernel does), so `fsck.erofs --extract` cannot read it.
 */
export function everythingTree (opts: { highChunkIndex?: boolean } = {}): EverythingTree {
  const chunkSize = 0x10000
  const b0 = new FakeBlob(chunkSize, 0)
  const b1 = new FakeBlob(chunkSize, 1, true)
  const T = 1_700_000_000n // the most frequent mtime
  const at = { mtime: T, mtimeNsec: 0 }

  // files: small, contiguous multi-chunk (one blob), interleaved over two blobs, shared chunk
  const small = file(bytes(5000, 1), b0, { ...at, perm: 0o644 })
  const contiguous = file(bytes(chunkSize * 3 + 123, 2), b0, { ...at, perm: 0o755, mtime: T + 7n, mtimeNsec: 123_456_789 })
  const inter = bytes(chunkSize * 2 + 10, 3)
  const interChunks = [b0.addChunk(inter.subarray(0, chunkSize)), b1.addChunk(inter.subarray(chunkSize, 2 * chunkSize)), b0.addChunk(inter.subarray(2 * chunkSize))]
  const interleaved = file(inter, interChunks, { ...at, uid: 1000, gid: 1000 })
  const shared = small.chunks[0]! // a second file made of the same (deduplicated) chunk
  const dup = file(bytes(5000, 1), [shared], { ...at })
  const onlyB1 = file(bytes(100, 4), b1, { ...at, perm: 0o600 })
  // a chunk with an index above 2^16 (exercises byte 3 of the chunk index) at a sparse offset
  const highData = bytes(3000, 5)
  const high = opts.highChunkIndex === false ? undefined : file(highData, [b1.addChunk(highData, { index: 70000, offset: 70000 * 4096 })], { ...at })
  const empty = file(Buffer.alloc(0), undefined, { ...at })

  // hard links: one regular file, one symlink and one fifo, each reachable under several names
  const hard = file(bytes(9000, 6), b1, { ...at, perm: 0o640 })
  const hardLink = symlink('target-of-a-hard-linked-symlink', { ...at })
  const hardFifo = special('fifo', { ...at })

  const specials: [string, Inode][] = [
    ['chr', special('char', { ...at, rdev: makeRdev(1, 3), perm: 0o666 })],
    ['blk', special('block', { ...at, rdev: makeRdev(259, 70000), perm: 0o660, gid: 6 })],
    ['fifo', special('fifo', { ...at, perm: 0o600 })],
    ['sock', special('socket', { ...at, perm: 0o755 })]
  ]

  // xattrs
  const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex')
  const xattrFile = file(bytes(10, 7), b0, {
    ...at,
    xattrs: [xattr('user.mime_type', 'text/plain'), xattr('security.capability', cap), xattr('trusted.overlay.x', ''), xattr('user.a', 'b'.repeat(300))]
  })
  const aclDir = dir([], {
    ...at,
    xattrs: [xattr('system.posix_acl_access', Buffer.from('0200000001000600ffffffff04000400ffffffff', 'hex')), xattr('system.posix_acl_default', Buffer.from('0200000001000700ffffffff04000500ffffffff', 'hex'))]
  })
  // a directory whose inode + xattrs cannot share a block with its entries (FLAT_PLAIN)
  const plainDir = dir([['only', symlink('x', { ...at })]], { ...at, xattrs: [xattr('user.big', bytes(4050, 8))] })
  // a long symlink (FLAT_PLAIN data block) and a symlink with xattrs
  const longLink = symlink('l'.repeat(4095), { ...at })
  const xlink = symlink('../to/somewhere', { ...at, xattrs: [xattr('trusted.on-link', 'yes')] })

  // modes, owners, times
  const modes: [string, Inode][] = [
    ['setuid', file(bytes(1, 9), b0, { ...at, perm: 0o4755 })],
    ['setgid-dir', dir([], { ...at, perm: 0o2775 })],
    ['sticky', dir([], { ...at, perm: 0o1777 })],
    ['all-bits', file(bytes(2, 10), b0, { ...at, perm: 0o7777 })],
    ['no-perm', file(bytes(3, 11), b0, { ...at, perm: 0 })],
    ['big-uid', file(bytes(4, 12), b0, { ...at, uid: 70000, gid: 70001 })],
    ['max-uid', special('fifo', { ...at, uid: 0xfffffffe, gid: 65535 })],
    ['pre-epoch', file(bytes(5, 13), b0, { mtime: -86400n * 365n - 1n, mtimeNsec: 500_000_000 })],
    ['epoch-zero', special('socket', { mtime: 0n, mtimeNsec: 0 })],
    ['y2038', file(bytes(6, 14), b0, { mtime: 2n ** 33n, mtimeNsec: 999_999_999 })],
    ['nsec-only', symlink('n', { mtime: T, mtimeNsec: 1 })]
  ]

  // names: 255 bytes, not UTF-8, sorting before "." and ".."
  const names: [string | Buffer, Inode][] = [
    ['n'.repeat(255), file(bytes(7, 15), b0, { ...at })],
    [Buffer.from([0xff, 0xfe, 0x80, 0x2e, 0x41]), file(bytes(8, 16), b0, { ...at })],
    [Buffer.from([0xc3, 0x28]), special('fifo', { ...at })],
    ['-dash', file(bytes(9, 17), b0, { ...at })],
    ['!bang', file(bytes(10, 18), b0, { ...at })],
    [' space', special('fifo', { ...at })],
    ['#hash', dir([['inner', file(bytes(11, 19), b0, { ...at })]], { ...at })],
    ['é-utf8', file(bytes(12, 20), b0, { ...at })]
  ]

  // a directory with many entries (several 4 KiB blocks), mixing entry types
  const big: [string, Inode][] = []
  for (let i = 0; i < 450; i++) {
    const name = `entry-${String(i).padStart(4, '0')}-${'x'.repeat(i % 37)}`
    big.push([name, i % 50 === 0 ? file(bytes(i + 1, 100 + i), b1, { ...at }) : i % 7 === 0 ? symlink(`t${i}`, { ...at }) : i % 11 === 0 ? dir([], { ...at }) : file(Buffer.alloc(0), undefined, { ...at })])
  }
  big.push(['hard-in-big', hard])

  // a 100-level deep path
  let deep: Inode = file(bytes(13, 21), b0, { ...at })
  for (let i = 99; i >= 0; i--) deep = dir([[i === 99 ? 'leaf' : `l${i + 1}`, deep]], { ...at })
  // (the loop above nests 100 directories: l1/l2/…/l99/leaf inside "deep")

  const root = dir([
    ['small', small],
    ['contiguous', contiguous],
    ['interleaved', interleaved],
    ['dup-of-small', dup],
    ['only-b1', onlyB1],
    ...(high !== undefined ? [['high-index', high] as [string, Inode]] : []),
    ['empty', empty],
    ['hard-a', hard],
    ['hard-b', hard],
    ['link-a', hardLink],
    ['link-b', hardLink],
    ['fifo-a', hardFifo],
    ['fifo-b', hardFifo],
    ['dev', dir(specials, { ...at })],
    ['xattrs', xattrFile],
    ['acl-dir', aclDir],
    ['plain-dir', plainDir],
    ['long-link', longLink],
    ['xlink', xlink],
    ['modes', dir(modes, { ...at, uid: 3, gid: 4 })],
    ['names', dir(names, { ...at })],
    ['big', dir(big, { ...at })],
    ['deep', deep]
  ], { ...at, perm: 0o755 })

  let leaf = 'deep'
  for (let i = 1; i < 100; i++) leaf += `/l${i}`
  leaf += '/leaf'
  return {
    root,
    blobs: [b0, b1],
    chunkSize,
    paths: { hardlinkA: 'hard-a', hardlinkB: 'hard-b', hardlinkC: 'big/hard-in-big', bigDir: 'big', deepLeaf: leaf, empty: 'empty', xattrFile: 'xattrs', preEpoch: 'modes/pre-epoch', bigUid: 'modes/big-uid' },
    buildTime: { mtime: T, nsec: 0 }
  }
}

/** Linux new_encode_dev (what the kernel stores and stat reports) for 32-bit device numbers. */
export function makeRdev (major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0
}
