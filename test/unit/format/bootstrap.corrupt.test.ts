import { describe, expect, it } from 'vitest'
import { Bootstrap, writeBootstrap } from '../../../lib/format/bootstrap.ts'
import { decodeExtSuperBlock } from '../../../lib/format/erofs.ts'
import { isNaiadError, type ErrorCode } from '../../../lib/errors/index.ts'
import { FakeBlob, bytes, dir, file, symlink } from '../../helpers/format-trees.ts'

function sample (): Buffer {
  const blob = new FakeBlob(4096, 42)
  const at = { mtime: 1_000n }
  const root = dir([
    ['a', dir([['f', file(bytes(6000, 1), blob, at)], ['g', file(bytes(10, 2), blob, at)]], at)],
    ['s', symlink('target', at)],
    ['z', file(bytes(100, 3), blob, at)]
  ], at)
  return writeBootstrap(root, [blob.info], { chunkSize: 4096, compressor: 'zstd', digester: 'blake3' })
}

const GOOD = sample()
const B = Bootstrap.parse(GOOD)
const inodeOff = (nid: number): number => B.metaBlkaddr * 4096 + nid * 32
const nid = (...path: string[]): number => path.reduce((n, p) => B.lookup(n, Buffer.from(p))!.nid, B.rootNid)

/** Runs everything a reader may do with an image: parse, walk the whole tree. */
function readAll (buf: Buffer): void {
  Bootstrap.parse(buf).toTree()
}

function codeOf (fn: () => unknown): ErrorCode | 'ok' {
  try {
    fn()
    return 'ok'
  } catch (err) {
    if (isNaiadError(err)) return err.code
    throw err
  }
}

function mutate (fn: (b: Buffer) => void): Buffer {
  const b = Buffer.from(GOOD)
  fn(b)
  return b
}

describe('bootstrap reader rejects corrupt input', () => {
  it('sanity: the sample reads', () => {
    expect(codeOf(() => readAll(GOOD))).toBe('ok')
    expect(B.inode(nid('a')).compact).toBe(true)
    expect(B.inode(B.rootNid).layout).toBe(2)
  })

  it('truncated bootstraps: NAIAD_FMT_TRUNCATED at every cut', () => {
    expect(codeOf(() => readAll(Buffer.alloc(0)))).toBe('NAIAD_FMT_TRUNCATED')
    for (let len = 512; len < GOOD.length; len += 512) {
      expect(codeOf(() => readAll(GOOD.subarray(0, len))), `cut at ${len}`).toBe('NAIAD_FMT_TRUNCATED')
    }
    expect(codeOf(() => readAll(GOOD.subarray(0, GOOD.length - 1)))).toBe('NAIAD_FMT_TRUNCATED')
  })

  it('wrong magic: NAIAD_FMT_BAD_MAGIC; RAFS v5 and other EROFS flavours: NAIAD_FMT_UNSUPPORTED', () => {
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0xdeadbeef, 1024))))).toBe('NAIAD_FMT_BAD_MAGIC')
    expect(codeOf(() => readAll(Buffer.alloc(8192)))).toBe('NAIAD_FMT_BAD_MAGIC')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0x52414653, 0))))).toBe('NAIAD_FMT_UNSUPPORTED')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0xc | 0x1, 1024 + 80))))).toBe('NAIAD_FMT_UNSUPPORTED') // lz4 0-padding: compressed EROFS
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0, 1024 + 8))))).toBe('NAIAD_FMT_UNSUPPORTED') // plain EROFS
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(7, 1024 + 44))))).toBe('NAIAD_FMT_UNSUPPORTED') // shared xattrs
    expect(codeOf(() => readAll(mutate(b => b.writeUInt8(9, 1024 + 12))))).toBe('NAIAD_FMT_UNSUPPORTED') // tarfs blocks
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0x02000000 | 0x84, 1152))))).toBe('NAIAD_FMT_UNSUPPORTED') // encrypted
    expect(codeOf(() => readAll(mutate(b => b.writeUInt16LE((3 << 1), inodeOff(nid('z'))))))).toBe('NAIAD_FMT_UNSUPPORTED') // compressed inode
  })

  it('bad superblock fields: NAIAD_FMT_CORRUPT naming the field', () => {
    const cases: [string, (b: Buffer) => void, RegExp][] = [
      ['checksum', b => b.writeUInt32LE(1, 1028), /checksum/],
      ['devt_slotoff', b => b.writeUInt16LE(12, 1024 + 88), /devt_slotoff/],
      ['two compressors', b => b.writeUInt32LE(0x80 | 0x1 | 0x4, 1152), /compression/],
      ['no digest', b => b.writeUInt32LE(0x80, 1152), /digest/],
      ['chunk size', b => b.writeUInt32LE(3000, 1152 + 20), /chunk_size/],
      ['blob table offset', b => b.writeUInt32LE(4100, 1152 + 8), /blob table/],
      ['root nid out of range', b => b.writeUInt16LE(60000, 1024 + 14), /nid 60000/],
      ['root nid not a directory', b => b.writeUInt16LE(nid('z'), 1024 + 14), /root nid/],
      ['blob id', b => b.write('not-hex', 4096), /blob_id/],
      ['blob index', b => b.writeUInt32LE(3, 4096 + 64), /blob_index/],
      ['device tag', b => b.write('Z', 1408 + 63), /device slot/]
    ]
    for (const [what, fn, msg] of cases) {
      let err: unknown
      try { readAll(mutate(fn)) } catch (e) { err = e }
      expect(isNaiadError(err) && err.code, what).toBe('NAIAD_FMT_CORRUPT')
      expect((err as Error).message, what).toMatch(msg)
    }
  })

  it('a directory entry whose nid points out of range', () => {
    const root = inodeOff(B.rootNid)
    // root is compact with no xattrs: its dirents are inline right after the 32-byte inode
    const bad = mutate(b => b.writeBigUInt64LE(10n ** 9n, root + 32 + 2 * 12))
    expect(codeOf(() => readAll(bad))).toBe('NAIAD_FMT_CORRUPT')
    const huge = mutate(b => b.writeBigUInt64LE(2n ** 63n, root + 32 + 2 * 12))
    expect(codeOf(() => Bootstrap.parse(huge).readdir(B.rootNid))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => B.inode(1e9))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => B.inode(-1))).toBe('NAIAD_FMT_CORRUPT')
  })

  it('a dirent nameoff outside its block', () => {
    const root = inodeOff(B.rootNid)
    for (const v of [4000, 0, 5, 13, 0xffff]) {
      expect(codeOf(() => readAll(mutate(b => b.writeUInt16LE(v, root + 32 + 8)))), `first nameoff ${v}`).toBe('NAIAD_FMT_CORRUPT')
      expect(codeOf(() => readAll(mutate(b => b.writeUInt16LE(v, root + 32 + 2 * 12 + 8)))), `third nameoff ${v}`).toBe('NAIAD_FMT_CORRUPT')
    }
    expect(codeOf(() => Bootstrap.parse(mutate(b => b.writeUInt16LE(4000, root + 32 + 8))).lookup(B.rootNid, Buffer.from('a')))).toBe('NAIAD_FMT_CORRUPT')
  })

  it('absurd inode sizes', () => {
    // compact i_size is the u32 at +8
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0xffffffff, inodeOff(nid('a')) + 8))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0xffffffff, inodeOff(nid('z')) + 8))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(0x7fffffff, inodeOff(nid('s')) + 8))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(3, inodeOff(nid('a')) + 8))))).toBe('NAIAD_FMT_CORRUPT')
    // a file size that does not match its chunks
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(6001, inodeOff(nid('a', 'f')) + 8))))).toBe('NAIAD_FMT_CORRUPT')
    // xattr count pointing past the end
    expect(codeOf(() => readAll(mutate(b => b.writeUInt16LE(0xffff, inodeOff(nid('z')) + 2))))).toBe('NAIAD_FMT_CORRUPT')
  })

  it('a cyclic directory (entry pointing at an ancestor, or at itself), and wrong "." / ".."', () => {
    const a = nid('a')
    const aDirents = inodeOff(a) + 32
    const names = B.readdir(a).map(e => e.name.toString())
    expect(names).toEqual(['.', '..', 'f', 'g'])
    // turn "f" into a directory entry pointing back at the root
    const cyc = mutate(b => {
      b.writeBigUInt64LE(BigInt(B.rootNid), aDirents + 2 * 12)
      b.writeUInt8(2, aDirents + 2 * 12 + 10)
    })
    expect(codeOf(() => readAll(cyc))).toBe('NAIAD_FMT_CORRUPT')
    const self = mutate(b => {
      b.writeBigUInt64LE(BigInt(a), aDirents + 2 * 12)
      b.writeUInt8(2, aDirents + 2 * 12 + 10)
    })
    expect(codeOf(() => readAll(self))).toBe('NAIAD_FMT_CORRUPT')
    // lookups and readdir on such a directory stay finite
    expect(Bootstrap.parse(self).lookup(a, Buffer.from('f'))?.nid).toBe(a)
    expect(codeOf(() => readAll(mutate(b => b.writeBigUInt64LE(BigInt(nid('z')), aDirents + 12))))).toBe('NAIAD_FMT_CORRUPT') // ".."
  })

  it('a chunk index pointing past the chunk table, at a missing blob, or at the wrong block', () => {
    const f = nid('a', 'f')
    const idx = inodeOff(f) + 32 // compact, no xattrs: 8-byte aligned already
    expect(codeOf(() => B.chunks(f))).toBe('ok')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt16LE(999, idx))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt8(0xff, idx + 3))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt8(5, idx + 2))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt8(0, idx + 2))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(77, idx + 4))))).toBe('NAIAD_FMT_CORRUPT')
    // and a chunk-info record pointing past its blob
    const ext = decodeExtSuperBlock(GOOD)
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(1, ext.chunkTableOffset + 32))))).toBe('NAIAD_FMT_CORRUPT')
    expect(codeOf(() => readAll(mutate(b => b.writeUInt32LE(1000, ext.chunkTableOffset + 72))))).toBe('NAIAD_FMT_CORRUPT')
  })

  it('random damage to the metadata never crashes or hangs: a NaiadError or a readable tree', () => {
    let x = 12345
    const rnd = (n: number): number => {
      x = (x * 1103515245 + 12345) >>> 0
      return (x >>> 8) % n
    }
    const ext = decodeExtSuperBlock(GOOD)
    const regions = [[1024, 1408 + 128], [4096, 4096 + 256], [inodeOff(B.rootNid), ext.chunkTableOffset], [ext.chunkTableOffset, ext.chunkTableOffset + ext.chunkTableSize]] as const
    const codes = new Map<string, number>()
    const started = Date.now()
    for (let i = 0; i < 3000; i++) {
      const [lo, hi] = regions[rnd(regions.length)]!
      const bad = mutate(b => {
        for (let k = 0, n = 1 + rnd(4); k < n; k++) b[lo + rnd(hi - lo)] = rnd(256)
      })
      const c = codeOf(() => {
        const p = Bootstrap.parse(bad)
        const t = p.toTree()
        for (const e of t.entries ?? []) p.lookup(p.rootNid, e.name)
      })
      codes.set(c, (codes.get(c) ?? 0) + 1)
    }
    expect(Date.now() - started).toBeLessThan(60_000)
    expect(codes.get('NAIAD_FMT_CORRUPT')).toBeGreaterThan(100)
  })
})
