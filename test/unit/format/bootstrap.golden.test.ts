import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { Bootstrap, writeBootstrap } from '../../../lib/format/bootstrap.ts'
import { decodeChunkInfo, decodeDeviceSlot, decodeExtSuperBlock, decodeSuperBlock } from '../../../lib/format/erofs.ts'
import { chunkDigest } from '../../../lib/digest/index.ts'

const FIXTURES = join(import.meta.dirname, '../../fixtures/nydus')
const BOOT = readFileSync(join(FIXTURES, 'rafs-v6-2.2.boot'))
const BLOB_ID = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef'
const BLOB = readFileSync(join(FIXTURES, BLOB_ID))
const hasZstd = spawnSync('zstd', ['--version']).status === 0

describe('golden: nydus-image 2.2 bootstrap (rafs-v6-2.2.boot)', () => {
  const b = Bootstrap.parse(BOOT)

  it('has the superblock values of research/nydus.md §1.7', () => {
    expect(BOOT.length).toBe(20480)
    expect(b.rootNid).toBe(128)
    expect(b.inodeCount).toBe(3)
    expect(b.chunkSize).toBe(0x100000)
    expect(b.blocks).toBe(9)
    expect(b.metaBlkaddr).toBe(2)
    expect(b.flags).toBe(0x194)
    expect(b.compressor).toBe('zstd')
    expect(b.digester).toBe('blake3')
    expect(b.buildTime).toBe(0n)
    expect(b.prefetchNids).toEqual([])
    const sb = decodeSuperBlock(BOOT)
    expect(sb).toMatchObject({ featureCompat: 0x40000000, blkszbits: 12, featureIncompat: 0xc, extraDevices: 1, devtSlotoff: 11 })
    const ext = decodeExtSuperBlock(BOOT)
    expect(ext).toMatchObject({ blobTableOffset: 0x1000, blobTableSize: 256, chunkSize: 0x100000, chunkTableOffset: 0x4000, chunkTableSize: 160 })
    expect(decodeDeviceSlot(BOOT, 1408).tag.toString()).toBe(BLOB_ID)
  })

  it('decodes the blob table entry', () => {
    expect(b.blobs).toHaveLength(1)
    const blob = b.blobs[0]!
    expect(blob).toMatchObject({
      blobId: BLOB_ID,
      chunkSize: 0x100000,
      chunkCount: 2,
      compressor: 'zstd',
      digester: 'blake3',
      features: 0x70000021,
      compressedSize: 14554,
      uncompressedSize: 0x9000,
      tocSize: 1024,
      ciCompressor: 'none',
      ciOffset: 8314,
      ciCompressedSize: 32,
      ciUncompressedSize: 32
    })
    expect(blob.compressedSize).toBe(BLOB.length)
  })

  it('lists / with lib.rs (nid 133) and sync_io.rs (nid 136)', () => {
    expect(b.readdir(128).map(e => [e.name.toString(), e.nid, e.type])).toEqual([
      ['.', 128, 'dir'], ['..', 128, 'dir'], ['lib.rs', 133, 'file'], ['sync_io.rs', 136, 'file']
    ])
    expect(b.lookup(128, Buffer.from('sync_io.rs'))?.nid).toBe(136)
    expect(b.lookup(128, Buffer.from('nope'))).toBeUndefined()
    const root = b.inode(128)
    expect(root).toMatchObject({ type: 'dir', perm: 0o755, nlink: 2, size: 67, compact: false })
    expect(b.inode(133)).toMatchObject({ type: 'file', perm: 0o644, size: 16931, nlink: 1, uid: 0, gid: 0, mtime: 0x63f23c61n, mtimeNsec: 0x25789c56 })
    expect(b.inode(136)).toMatchObject({ type: 'file', size: 13400, mtime: 0x63f23c61n, mtimeNsec: 0x257dac3c })
  })

  it('resolves each file to one chunk with a plausible compressed range', () => {
    const lib = b.chunks(133)
    const sync = b.chunks(136)
    expect(lib).toHaveLength(1)
    expect(sync).toHaveLength(1)
    expect(lib[0]).toMatchObject({ index: 0, compressedOffset: 0, compressedSize: 4828, uncompressedOffset: 0, uncompressedSize: 16931, compressed: true })
    expect(sync[0]).toMatchObject({ index: 1, compressedOffset: 4828, compressedSize: 2974, uncompressedOffset: 0x5000, uncompressedSize: 13400, compressed: true })
    expect(lib[0]!.blob).toBe(b.blobs[0])
    // chunk data ends where the CI array's tar header begins (7802 = 4828 + 2974)
    expect(sync[0]!.compressedOffset + sync[0]!.compressedSize).toBe(7802)
  })

  it.skipIf(!hasZstd)('chunks decompress (zstd CLI) to the README sha256 and to their BLAKE3 chunk ids', () => {
    const want: Record<string, string> = {
      'lib.rs': '1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69',
      'sync_io.rs': 'e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96'
    }
    for (const [name, sha] of Object.entries(want)) {
      const nid = b.lookup(b.rootNid, Buffer.from(name))!.nid
      const [c] = b.chunks(nid)
      const r = spawnSync('zstd', ['-d', '-c'], { input: BLOB.subarray(c!.compressedOffset, c!.compressedOffset + c!.compressedSize) })
      expect(r.status).toBe(0)
      expect(r.stdout.length).toBe(c!.uncompressedSize)
      expect(createHash('sha256').update(r.stdout).digest('hex')).toBe(sha)
      expect(chunkDigest('blake3', r.stdout).equals(c!.digest)).toBe(true)
    }
  })

  it('toTree gives the two files with their chunks and ino = nid', () => {
    const root = b.toTree()
    expect(root.ino).toBe(128)
    expect(root.entries!.map(e => [e.name.toString(), e.inode.ino, e.inode.size])).toEqual([['lib.rs', 133, 16931], ['sync_io.rs', 136, 13400]])
  })

  it('re-writing its tree reproduces the file byte for byte, but for three version differences', () => {
    const out = writeBootstrap(b.toTree(), b.blobs, { chunkSize: b.chunkSize, compressor: 'zstd', digester: 'blake3', inodeFormat: 'extended', buildTime: 0n })
    expect(out.length).toBe(BOOT.length)
    const diffs: number[] = []
    for (let i = 0; i < out.length; i++) if (out[i] !== BOOT[i]) diffs.push(i)
    // 0x483: ENCRYPTION_NONE (0x0100_0000) in the ext superblock flags, set by nydus-image since 2.3;
    // 0x5c4-0x5c5: device slot mapped_blkaddr (2.2 aligned to 2 MiB = block 0x200, now 512 KiB = 0x80);
    // 0x3014: the root inode's i_ino (2.2 wrote 0; we number inodes from 1 like current nydus-image).
    expect(diffs.map(i => i.toString(16))).toEqual(['483', '5c4', '5c5', '3014'])
    expect(decodeDeviceSlot(out, 1408).mappedBlkaddr).toBe(0x80)
    // the chunk table is the same 80-byte records in the same (digest) order
    expect(decodeChunkInfo(out, 0x4000)).toEqual(decodeChunkInfo(BOOT, 0x4000))
    expect(decodeChunkInfo(out, 0x4050)).toEqual(decodeChunkInfo(BOOT, 0x4050))
  })
})
