import { describe, expect, it } from 'vitest'
import { Bootstrap, blobIndexOf, writeBootstrap, type WriteBootstrapOptions } from '../../../lib/format/bootstrap.ts'
import {
  BLOB_FEATURE, EROFS_INODE_CHUNK_BASED, EROFS_INODE_FLAT_INLINE, EROFS_INODE_FLAT_PLAIN, RAFS_FLAG,
  decodeChunkIndex, decodeChunkInfo, decodeExtSuperBlock, decodeSuperBlock, encodeChunkIndex, RAFS_V5_CHUNK_INFO_SIZE
} from '../../../lib/format/erofs.ts'
import { hasCode } from '../../../lib/errors/index.ts'
import { newInode, type Inode } from '../../../lib/format/types.ts'
import { FakeBlob, bytes, diffTrees, dir, everythingTree, file, special, symlink, walk, xattr } from '../../helpers/format-trees.ts'

function opts (chunkSize: number, more: Partial<WriteBootstrapOptions> = {}): WriteBootstrapOptions {
  return { chunkSize, compressor: 'zstd', digester: 'blake3', ...more }
}

/** The nid of a path, by lookups from the root. */
function nidOf (b: Bootstrap, path: string | Buffer[]): number {
  let nid = b.rootNid
  const parts = typeof path === 'string' ? path.split('/').filter(p => p !== '').map(p => Buffer.from(p)) : path
  for (const p of parts) {
    const e = b.lookup(nid, p)
    if (e === undefined) throw new Error(`no ${p.toString()} under nid ${nid}`)
    nid = e.nid
  }
  return nid
}

function expectCode (fn: () => unknown, code: string): void {
  try {
    fn()
  } catch (err) {
    if (!hasCode(err, code as never)) throw err
    return
  }
  throw new Error(`expected ${code}, nothing was thrown`)
}

describe('bootstrap round trip', () => {
  const t = everythingTree()
  const blobs = t.blobs.map(b => b.info)
  const buf = writeBootstrap(t.root, blobs, opts(t.chunkSize))
  const b = Bootstrap.parse(buf)

  it('gives back every attribute, xattr, chunk and hard link', () => {
    const back = b.toTree()
    expect(diffTrees(t.root, back)).toEqual([])
    // blobs come back as their own objects with the same fields
    expect(b.blobs.map(x => ({ ...x, tocDigest: x.tocDigest.toString('hex') }))).toEqual(blobs.map(x => ({ ...x, tocDigest: x.tocDigest.toString('hex') })))
  })

  it('is deterministic: same bytes for the same tree, and for an identical copy of it', () => {
    expect(writeBootstrap(t.root, blobs, opts(t.chunkSize)).equals(buf)).toBe(true)
    const again = everythingTree()
    expect(writeBootstrap(again.root, again.blobs.map(x => x.info), opts(again.chunkSize)).equals(buf)).toBe(true)
  })

  it('writes the superblocks as nydus-image does', () => {
    expect(buf.length % 4096).toBe(0)
    const sb = decodeSuperBlock(buf)
    expect(sb).toMatchObject({ magic: 0xe0f5e1e2, checksum: 0, featureCompat: 0x40000000, blkszbits: 12, sbExtslots: 0, rootNid: 128, featureIncompat: 0xc, extraDevices: 2, devtSlotoff: 11, xattrBlkaddr: 0 })
    expect(sb.buildTime).toBe(t.buildTime.mtime)
    expect(sb.buildTimeNsec).toBe(t.buildTime.nsec)
    expect(sb.blocks).toBe(blobs.reduce((n, x) => n + x.uncompressedSize / 4096, 0))
    const distinct = new Set(walk(t.root).map(e => e.inode)).size
    expect(Number(sb.inos)).toBe(distinct)
    expect(b.inodeCount).toBe(distinct)
    const ext = decodeExtSuperBlock(buf)
    expect(ext.flags).toBe(RAFS_FLAG.COMPRESSION_ZSTD | RAFS_FLAG.HASH_BLAKE3 | RAFS_FLAG.EXPLICIT_UID_GID | RAFS_FLAG.HAS_XATTR | RAFS_FLAG.INLINED_CHUNK_DIGEST | RAFS_FLAG.ENCRYPTION_NONE)
    expect(ext.blobTableOffset).toBe(4096)
    expect(ext.blobTableSize).toBe(512)
    expect(ext.chunkSize).toBe(t.chunkSize)
    expect(ext.chunkTableOffset % 4096).toBe(0)
    expect(ext.chunkTableOffset + ext.chunkTableSize).toBeLessThanOrEqual(buf.length)
    expect(buf.length - (ext.chunkTableOffset + ext.chunkTableSize)).toBeLessThan(4096)
    // meta_blkaddr is one block before the root inode
    expect(sb.metaBlkaddr * 4096 + 128 * 32).toBe(sb.metaBlkaddr * 4096 + 4096)
    expect(sb.metaBlkaddr).toBe(2)
    // device slots: blob ids and blocks
    for (let i = 0; i < blobs.length; i++) {
      const slot = buf.subarray(1408 + i * 128, 1408 + (i + 1) * 128)
      expect(slot.subarray(0, 64).toString()).toBe(blobs[i]!.blobId)
      expect(slot.readUInt32LE(64)).toBe(blobs[i]!.uncompressedSize / 4096)
    }
    expect(b.compressor).toBe('zstd')
    expect(b.digester).toBe('blake3')
  })

  it('counts links: files by names, directories 2 + subdirectories; hard links share one nid', () => {
    const a = nidOf(b, t.paths.hardlinkA)
    expect(nidOf(b, t.paths.hardlinkB)).toBe(a)
    expect(nidOf(b, t.paths.hardlinkC)).toBe(a)
    expect(b.inode(a).nlink).toBe(3)
    expect(b.inode(nidOf(b, 'link-a')).nlink).toBe(2)
    expect(nidOf(b, 'link-b')).toBe(nidOf(b, 'link-a'))
    expect(b.inode(nidOf(b, 'fifo-b')).nlink).toBe(2)
    for (const { path, inode } of walk(t.root)) {
      if (inode.type !== 'dir') continue
      const subdirs = (inode.entries ?? []).filter(e => e.inode.type === 'dir').length
      const nid = nidOf(b, path.toString('latin1').split('/').filter(p => p !== '').map(p => Buffer.from(p, 'latin1')))
      expect(b.inode(nid).nlink).toBe(2 + subdirs)
    }
    expect(b.inode(b.rootNid).ino).toBe(128)
  })

  it('writes compact inodes only when they lose nothing (mtime = build time, small ids, size < 4 GiB)', () => {
    let compact = 0
    let extended = 0
    for (const { path, inode } of walk(t.root)) {
      const nid = nidOf(b, path.toString('latin1').split('/').filter(p => p !== '').map(p => Buffer.from(p, 'latin1')))
      const a = b.inode(nid)
      const want = inode.mtime === t.buildTime.mtime && inode.mtimeNsec === t.buildTime.nsec && inode.uid <= 65535 && inode.gid <= 65535
      expect(a.compact, path.toString()).toBe(want)
      if (a.compact) compact++
      else extended++
    }
    expect(compact).toBeGreaterThan(100)
    expect(extended).toBeGreaterThan(3)
    expect(b.inode(nidOf(b, t.paths.bigUid)).compact).toBe(false)
    expect(b.inode(nidOf(b, t.paths.preEpoch)).mtime).toBe(-86400n * 365n - 1n)
  })

  it('uses the layouts Nydus uses: chunk-based files, inline or plain tails for directories and symlinks', () => {
    expect(b.inode(nidOf(b, 'small')).layout).toBe(EROFS_INODE_CHUNK_BASED)
    expect(b.inode(nidOf(b, t.paths.empty)).layout).toBe(EROFS_INODE_CHUNK_BASED)
    expect(b.chunks(nidOf(b, t.paths.empty))).toEqual([])
    expect(b.inode(nidOf(b, 'plain-dir')).layout).toBe(EROFS_INODE_FLAT_PLAIN)
    expect(b.inode(nidOf(b, 'long-link')).layout).toBe(EROFS_INODE_FLAT_PLAIN)
    expect(b.inode(nidOf(b, 'xlink')).layout).toBe(EROFS_INODE_FLAT_INLINE)
    expect(b.inode(nidOf(b, 'dev')).layout).toBe(EROFS_INODE_FLAT_INLINE)
    const big = b.inode(nidOf(b, t.paths.bigDir))
    expect(big.size).toBeGreaterThan(3 * 4096)
    expect(b.readlink(nidOf(b, 'long-link')).toString()).toBe('l'.repeat(4095))
  })

  it('declares one big chunk for a file contiguous in one blob (page-cache sharing), the image chunk size otherwise', () => {
    const ci = (path: string): number => {
      const nid = nidOf(b, path)
      const off = 2 * 4096 + nid * 32
      return buf.readUInt32LE(off + 16)
    }
    const contiguousSize = t.chunkSize * 3 + 123
    expect(ci('contiguous')).toBe(0x20 | (Math.log2(2 ** Math.ceil(Math.log2(contiguousSize))) - 12))
    expect(ci('interleaved')).toBe(0x20 | (Math.log2(t.chunkSize) - 12))
    expect(ci('small')).toBe(0x20 | (Math.log2(t.chunkSize) - 12))
    // the reader still resolves every chunk of the contiguous file
    expect(b.chunks(nidOf(b, 'contiguous'))).toHaveLength(4)
  })

  it('encodes chunk indexes with device = blob index + 1 and the 24-bit chunk number split over bytes 0-1 and 3', () => {
    const nid = nidOf(b, 'high-index')
    const a = b.inode(nid)
    const off = 2 * 4096 + nid * 32 + (a.compact ? 32 : 64)
    const raw = buf.subarray(off, off + 8)
    expect(raw.readUInt16LE(0)).toBe(70000 & 0xffff)
    expect(raw[2]).toBe(2) // blob 1
    expect(raw[3]).toBe(70000 >>> 16)
    expect(raw.readUInt32LE(4)).toBe(70000)
    expect(decodeChunkIndex(raw, 0)).toEqual({ blobIndex: 1, chunkIndex: 70000, blkaddr: 70000 })
    const again = Buffer.alloc(8)
    encodeChunkIndex({ blobIndex: 254, chunkIndex: 0xfffffe, blkaddr: 0xfffffffe }, again, 0)
    expect(again.toString('hex')).toBe('feffffff' + 'feffffff')
    const [ref] = b.chunks(nid)
    expect(ref!.index).toBe(70000)
    expect(ref!.blob).toBe(b.blobs[1])
  })

  it('stores one 80-byte record per unique chunk, sorted by digest, shared chunks once', () => {
    const ext = decodeExtSuperBlock(buf)
    const n = ext.chunkTableSize / RAFS_V5_CHUNK_INFO_SIZE
    const unique = new Set(walk(t.root).flatMap(e => e.inode.chunks.map(c => `${c.blob.blobId}:${c.index}`)))
    expect(n).toBe(unique.size)
    const recs = Array.from({ length: n }, (_, i) => decodeChunkInfo(buf, ext.chunkTableOffset + i * 80))
    for (let i = 1; i < n; i++) expect(Buffer.compare(recs[i - 1]!.digest, recs[i]!.digest)).toBeLessThanOrEqual(0)
    // the deduplicated chunk resolves to the very same ChunkRef object from both files
    expect(b.chunks(nidOf(b, 'small'))[0]).toBe(b.chunks(nidOf(b, 'dup-of-small'))[0])
    // CRC32 survives for blob 1's chunks
    expect(b.chunks(nidOf(b, 'only-b1'))[0]!.crc32).toBeTypeOf('number')
    expect(b.chunks(nidOf(b, 'small'))[0]!.crc32).toBeUndefined()
  })

  it('lists directories sorted with "." and ".." in their byte order, and finds every name by binary search', () => {
    for (const { path, inode } of walk(t.root)) {
      if (inode.type !== 'dir') continue
      const nid = nidOf(b, path.toString('latin1').split('/').filter(p => p !== '').map(p => Buffer.from(p, 'latin1')))
      const list = b.readdir(nid)
      const names = list.map(e => e.name)
      expect([...names].sort(Buffer.compare)).toEqual(names)
      expect(names.filter(n => n.equals(Buffer.from('.')) || n.equals(Buffer.from('..')))).toHaveLength(2)
      expect(list).toHaveLength((inode.entries?.length ?? 0) + 2)
      for (const e of list) expect(b.lookup(nid, e.name)).toEqual(e)
      for (const probe of ['', '\x01', '~~~~', 'entry-0000-', 'entry-0200-', 'zzzz'].map(s => Buffer.from(s))) {
        const want = list.find(e => e.name.equals(probe))
        expect(b.lookup(nid, probe)).toEqual(want)
      }
    }
    const names = b.readdir(nidOf(b, 'names')).map(e => e.name.toString('latin1'))
    expect(names.indexOf(' space')).toBeLessThan(names.indexOf('.'))
    expect(names.indexOf('!bang')).toBeLessThan(names.indexOf('.'))
    expect(names.indexOf('-dash')).toBeLessThan(names.indexOf('.'))
    expect(names.indexOf('.')).toBe(names.indexOf('..') - 1)
  })

  it('keeps xattrs with every prefix, sorted by name', () => {
    const xs = b.xattrs(nidOf(b, t.paths.xattrFile)).map(x => x.name.toString())
    expect(xs).toEqual(['security.capability', 'trusted.overlay.x', 'user.a', 'user.mime_type'])
    const acl = b.xattrs(nidOf(b, 'acl-dir')).map(x => x.name.toString())
    expect(acl).toEqual(['system.posix_acl_access', 'system.posix_acl_default'])
    expect(b.inode(nidOf(b, 'small')).hasXattrs).toBe(false)
  })

  it('writes the prefetch table as u32 nids, deduplicated', () => {
    const small = t.root.entries!.find(e => e.name.toString() === 'small')!.inode
    const hard = t.root.entries!.find(e => e.name.toString() === 'hard-a')!.inode
    const out = writeBootstrap(t.root, blobs, opts(t.chunkSize, { prefetch: [small, hard, small] }))
    const p = Bootstrap.parse(out)
    expect(p.prefetchNids).toEqual([nidOf(p, 'small'), nidOf(p, 'hard-a')])
    const ext = decodeExtSuperBlock(out)
    expect(ext.prefetchTableOffset).toBe(4096 + 512)
    expect(ext.prefetchTableSize).toBe(8)
    expect(diffTrees(t.root, p.toTree())).toEqual([])
  })

  it('can write every inode extended (nydus-image 2.2 style) and still round-trips', () => {
    const out = writeBootstrap(t.root, blobs, opts(t.chunkSize, { inodeFormat: 'extended' }))
    const p = Bootstrap.parse(out)
    for (const { path } of walk(t.root).slice(0, 50)) {
      expect(p.inode(nidOf(p, path.toString('latin1').split('/').filter(x => x !== '').map(x => Buffer.from(x, 'latin1')))).compact).toBe(false)
    }
    expect(diffTrees(t.root, p.toTree())).toEqual([])
  })

  it('takes the build time from the options, and picks the smallest on ties', () => {
    const out = writeBootstrap(t.root, blobs, opts(t.chunkSize, { buildTime: 5n, buildTimeNsec: 7 }))
    const p = Bootstrap.parse(out)
    expect(p.buildTime).toBe(5n)
    expect(p.buildTimeNsec).toBe(7)
    expect(p.inode(p.rootNid).compact).toBe(false)
    expect(diffTrees(t.root, p.toTree())).toEqual([])

    const tie = dir([['a', special('fifo', { mtime: 10n, mtimeNsec: 5 })], ['b', special('fifo', { mtime: 10n, mtimeNsec: 4 })]], { mtime: 20n })
    const q = Bootstrap.parse(writeBootstrap(tie, [], opts(4096)))
    expect([q.buildTime, q.buildTimeNsec]).toEqual([10n, 4])
  })

  it('writes a tree without blobs, xattrs or chunks (no HAS_XATTR, no chunk table)', () => {
    const root = dir([['s', symlink('t')], ['e', file(Buffer.alloc(0), undefined)], ['d', dir([])]])
    const out = writeBootstrap(root, [], opts(0x100000, { compressor: 'lz4_block', digester: 'sha256' }))
    const p = Bootstrap.parse(out)
    expect(p.flags & RAFS_FLAG.HAS_XATTR).toBe(0)
    expect(p.flags & RAFS_FLAG.COMPRESSION_LZ4).toBe(RAFS_FLAG.COMPRESSION_LZ4)
    expect(p.digester).toBe('sha256')
    expect(p.blobs).toEqual([])
    expect(p.metaBlkaddr).toBe(0)
    expect(p.rootNid).toBe(128)
    expect(decodeExtSuperBlock(out).chunkTableSize).toBe(0)
    expect(diffTrees(root, p.toTree())).toEqual([])
  })

  it('sets INLINED_CHUNK_DIGEST only when every blob has inlined chunk digests', () => {
    const blob = new FakeBlob(4096, 9)
    blob.info.features &= ~BLOB_FEATURE.INLINED_CHUNK_DIGEST
    const root = dir([['f', file(bytes(10, 1), blob)]])
    const p = Bootstrap.parse(writeBootstrap(root, [blob.info], opts(4096)))
    expect(p.flags & RAFS_FLAG.INLINED_CHUNK_DIGEST).toBe(0)
  })
})

describe('bootstrap writer input checks', () => {
  const blob = new FakeBlob(4096, 1)
  const f = file(bytes(5000, 1), blob)

  it('blobIndexOf finds a blob by identity and rejects strangers', () => {
    expect(blobIndexOf([blob.info], blob.info)).toBe(0)
    expectCode(() => blobIndexOf([blob.info], { ...blob.info }), 'NAIAD_FMT_CORRUPT')
  })

  it('rejects a chunk whose blob is not in the list', () => {
    expectCode(() => writeBootstrap(dir([['f', f]]), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
    const other = new FakeBlob(4096, 2)
    expectCode(() => writeBootstrap(dir([['f', f]]), [other.info], opts(4096)), 'NAIAD_FMT_CORRUPT')
  })

  it('rejects more than 255 blobs and chunk indexes of 2^24 and above', () => {
    const many = Array.from({ length: 256 }, (_, i) => { const b = new FakeBlob(4096, 1000 + i); b.addChunk(bytes(1, i)); return b.info })
    expectCode(() => writeBootstrap(dir([]), many, opts(4096)), 'NAIAD_FMT_LIMIT')
    expect(() => writeBootstrap(dir([]), many.slice(0, 255), opts(4096))).not.toThrow()
    const big = new FakeBlob(4096, 3)
    const c = big.addChunk(bytes(100, 3), { index: 2 ** 24, offset: 0 })
    big.info.chunkCount = 2 ** 24 // a lie, but the index is what must be caught
    expectCode(() => writeBootstrap(dir([['f', file(bytes(100, 3), [c])]]), [big.info], opts(4096)), 'NAIAD_FMT_LIMIT')
  })

  it('rejects directory cycles, directory hard links, duplicate and invalid names', () => {
    const d = dir([])
    d.entries!.push({ name: Buffer.from('self'), inode: d })
    expectCode(() => writeBootstrap(dir([['d', d]]), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
    const sub = dir([])
    expectCode(() => writeBootstrap(dir([['a', sub], ['b', sub]]), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
    expectCode(() => writeBootstrap(dir([['x', dir([])], ['x', dir([])]]), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
    for (const bad of ['', '.', '..', 'a/b', 'a\0b']) expectCode(() => writeBootstrap(dir([[bad, dir([])]]), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
    expectCode(() => writeBootstrap(dir([['n'.repeat(256), dir([])]]), [], opts(4096)), 'NAIAD_FMT_LIMIT')
    expectCode(() => writeBootstrap(newInode('file'), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
  })

  it('rejects xattrs EROFS cannot store, bad options and inconsistent chunks', () => {
    expectCode(() => writeBootstrap(dir([], { xattrs: [xattr('system.nfs4_acl', 'x')] }), [], opts(4096)), 'NAIAD_FMT_UNSUPPORTED')
    expectCode(() => writeBootstrap(dir([], { xattrs: [xattr('user.a', 'x'), xattr('user.a', 'y')] }), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
    expectCode(() => writeBootstrap(dir([], { xattrs: [xattr('user.a', Buffer.alloc(65536))] }), [], opts(4096)), 'NAIAD_FMT_LIMIT')
    expectCode(() => writeBootstrap(dir([]), [], opts(3000)), 'NAIAD_FMT_OPTION')
    expectCode(() => writeBootstrap(dir([]), [], opts(0x2000000)), 'NAIAD_FMT_OPTION')
    expectCode(() => writeBootstrap(dir([['f', f]]), [blob.info], opts(8192)), 'NAIAD_FMT_OPTION')
    const wrongSize: Inode = { ...f, size: 99999 }
    expectCode(() => writeBootstrap(dir([['f', wrongSize]]), [blob.info], opts(4096)), 'NAIAD_FMT_CORRUPT')
    expectCode(() => writeBootstrap(dir([['f', f]], { mtimeNsec: 1e9 }), [blob.info], opts(4096)), 'NAIAD_FMT_CORRUPT')
    expectCode(() => writeBootstrap(dir([['c', special('char', { rdev: 2 ** 32 })]]), [], opts(4096)), 'NAIAD_FMT_LIMIT')
    expectCode(() => writeBootstrap(dir([['s', symlink('x'.repeat(4096))]]), [], opts(4096)), 'NAIAD_FMT_LIMIT')
    expectCode(() => writeBootstrap(dir([], { uid: -1 }), [], opts(4096)), 'NAIAD_FMT_CORRUPT')
  })
})
