import { spawnSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { compressChunk, decompressChunk, zstdCompress } from '../../../lib/format/compress.ts'
import type { Compressor } from '../../../lib/format/types.ts'

function randomBytes (n: number, seed: number): Buffer {
  let s = seed >>> 0 || 1
  const b = Buffer.allocUnsafe(n)
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0
    b[i] = s & 0xff
  }
  return b
}

const text = Buffer.from('pub fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize> {\n'.repeat(2000))
const compressors: Compressor[] = ['zstd', 'lz4_block', 'none']
const hasZstdCli = spawnSync('zstd', ['-V'], { stdio: 'ignore' }).status === 0

describe('chunk compression', () => {
  it.each(compressors)('%s: round-trips compressible, incompressible, tiny and empty chunks', (c) => {
    for (const input of [text, randomBytes(100000, 1), Buffer.from('x'), Buffer.alloc(0), Buffer.alloc(4096, 2), Buffer.alloc(1 << 20)]) {
      const out = compressChunk(c, input)
      if (out.compressed) expect(out.data.length).toBeLessThan(input.length)
      else expect(out.data.equals(input)).toBe(true)
      const back = decompressChunk(out.compressed ? c : 'none', out.data, input.length)
      expect(back.equals(input)).toBe(true)
    }
  })

  it('stores raw when compression does not shrink the chunk, as Nydus does', () => {
    for (const c of compressors) {
      expect(compressChunk(c, randomBytes(65536, 2)).compressed).toBe(false)
      expect(compressChunk(c, Buffer.alloc(0)).compressed).toBe(false)
      expect(compressChunk(c, Buffer.from('ab')).compressed).toBe(false)
    }
    expect(compressChunk('none', text).compressed).toBe(false)
    expect(compressChunk('zstd', text).compressed).toBe(true)
    expect(compressChunk('lz4_block', text).compressed).toBe(true)
  })

  it('checks the uncompressed size exactly', () => {
    const z = compressChunk('zstd', text).data
    const l = compressChunk('lz4_block', text).data
    for (const [c, d] of [['zstd', z], ['lz4_block', l], ['none', text]] as const) {
      expect(() => decompressChunk(c, d, text.length - 1)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_DECOMPRESS' }))
      expect(() => decompressChunk(c, d, text.length + 1)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_DECOMPRESS' }))
    }
  })

  it('rejects zstd garbage, truncated frames and trailing bytes', () => {
    const z = compressChunk('zstd', text).data
    const cases = [
      Buffer.from('this is not a zstd frame at all'),
      Buffer.alloc(0),
      z.subarray(0, z.length - 3),
      z.subarray(0, 6),
      Buffer.concat([z, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8])]),
      randomBytes(5000, 3)
    ]
    for (const d of cases) {
      expect(() => decompressChunk('zstd', d, text.length)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_DECOMPRESS' }))
    }
    // a valid frame of another size never yields more than the expected bytes
    const small = zstdCompress(Buffer.alloc(10000, 7))
    expect(() => decompressChunk('zstd', small, 100)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_DECOMPRESS' }))
  })

  it('survives bit flips in zstd chunks: an error or the exact size, never a crash', () => {
    const z = compressChunk('zstd', text).data
    let s = 7
    for (let i = 0; i < 500; i++) {
      const d = Buffer.from(z)
      s = (s * 1103515245 + 12345) >>> 0
      d[s % d.length] ^= 1 << (s % 8)
      try {
        expect(decompressChunk('zstd', d, text.length).length).toBe(text.length)
      } catch (err) {
        expect(err).toMatchObject({ code: 'NAIAD_FMT_DECOMPRESS' })
      }
    }
  })

  it('rejects compressors it does not know', () => {
    expect(() => decompressChunk('gzip' as Compressor, text, text.length)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_UNSUPPORTED' }))
    expect(() => compressChunk('gzip' as Compressor, text)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_OPTION' }))
  })

  it.skipIf(!hasZstdCli)('our zstd chunks decompress with the zstd CLI, and its frames with ours', () => {
    for (const input of [text, Buffer.concat([text, randomBytes(300000, 4), text]), Buffer.alloc(1 << 20, 9), Buffer.from('tiny but compressible: aaaaaaaaaaaaaaaaaaaaaaaaaaaa')]) {
      const ours = compressChunk('zstd', input)
      expect(ours.compressed).toBe(true)
      const res = spawnSync('zstd', ['-d', '-c', '-q'], { input: ours.data, maxBuffer: 64 << 20 })
      expect(res.status, res.stderr.toString()).toBe(0)
      expect(res.stdout.equals(input)).toBe(true)

      const theirs = spawnSync('zstd', ['-3', '-c', '-q'], { input, maxBuffer: 64 << 20 })
      expect(theirs.status).toBe(0)
      expect(decompressChunk('zstd', theirs.stdout, input.length).equals(input)).toBe(true)
    }
  })
})
