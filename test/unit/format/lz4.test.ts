import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { hasCode } from '../../../lib/errors/index.ts'
import { lz4CompressBlock, lz4CompressBound, lz4DecompressBlock } from '../../../lib/format/lz4.ts'

/** Deterministic PRNG (xorshift32). */
function rng (seed: number): () => number {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13; s >>>= 0
    s ^= s >>> 17
    s ^= s << 5; s >>>= 0
    return s
  }
}

function randomBytes (n: number, seed: number): Buffer {
  const r = rng(seed)
  const b = Buffer.allocUnsafe(n)
  for (let i = 0; i < n; i++) b[i] = r() & 0xff
  return b
}

function textLike (n: number, seed: number): Buffer {
  const words = ['fn ', 'let ', 'const ', 'return ', 'chunk', 'blob', '{', '}', '\n', '  ', 'offset', 'size', '(', ')', ';', 'nydus', 'erofs', '0x1000', '// comment ']
  const r = rng(seed)
  const parts: string[] = []
  let len = 0
  while (len < n) {
    const w = words[r() % words.length] as string
    parts.push(w)
    len += w.length
  }
  return Buffer.from(parts.join('')).subarray(0, n)
}

/** A mix of runs, text, random bytes and long-distance repeats. */
function mixed (n: number, seed: number): Buffer {
  const r = rng(seed)
  const out = Buffer.alloc(n)
  let p = 0
  while (p < n) {
    const kind = r() % 5
    const len = Math.min(n - p, 1 + (r() % 5000))
    if (kind === 0) out.fill(r() & 0xff, p, p + len)
    else if (kind === 1) textLike(len, r()).copy(out, p)
    else if (kind === 2) randomBytes(len, r()).copy(out, p)
    else if (kind === 3 && p > 0) {
      const dist = 1 + (r() % Math.min(p, 70000))
      for (let i = 0; i < len; i++) out[p + i] = out[p + i - dist] as number
    } else out.fill(0, p, p + len)
    p += len
  }
  return out
}

interface Seq { litLen: number, matchStart: number, matchLen: number, offset: number }

/** Walk a block's sequences (assumes a well-formed block) to check the encoder's end-of-block rules. */
function sequences (block: Buffer): { seqs: Seq[], lastLiterals: number, outLen: number } {
  const seqs: Seq[] = []
  let ip = 0
  let op = 0
  for (;;) {
    const token = block[ip++] as number
    let lit = token >> 4
    if (lit === 15) { let b; do { b = block[ip++] as number; lit += b } while (b === 255) }
    ip += lit
    op += lit
    if (ip === block.length) return { seqs, lastLiterals: lit, outLen: op }
    const offset = (block[ip] as number) | ((block[ip + 1] as number) << 8)
    ip += 2
    let ml = token & 15
    if (ml === 15) { let b; do { b = block[ip++] as number; ml += b } while (b === 255) }
    ml += 4
    seqs.push({ litLen: lit, matchStart: op, matchLen: ml, offset })
    op += ml
  }
}

function corpus (): Array<[string, Buffer]> {
  const c: Array<[string, Buffer]> = [
    ['empty', Buffer.alloc(0)],
    ['1 byte', Buffer.from([0x42])],
    ['2 bytes', Buffer.from([2, 3])]
  ]
  for (const n of [3, 4, 5, 8, 11, 12, 13, 14, 15, 16, 17, 19, 20, 31, 32, 33]) {
    c.push([`zeros ${n}`, Buffer.alloc(n)])
    c.push([`random ${n}`, randomBytes(n, n)])
  }
  c.push(['pattern 1234 x4', Buffer.from([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4])])
  for (const n of [4095, 4096, 4097]) c.push([`0x2 x ${n}`, Buffer.alloc(n, 2)])
  c.push(['long literal run then match', Buffer.concat([randomBytes(300, 7), randomBytes(300, 7)])])
  c.push(['match length > 270', Buffer.concat([randomBytes(64, 9), Buffer.alloc(1000, 0x55), randomBytes(64, 10)])])
  c.push(['offset near 64 KiB', Buffer.concat([randomBytes(200, 11), randomBytes(65535 - 200, 12), randomBytes(200, 11), randomBytes(50, 13)])])
  c.push(['offset just over 64 KiB', Buffer.concat([randomBytes(200, 14), randomBytes(65536, 15), randomBytes(200, 14), randomBytes(50, 16)])])
  c.push(['text 10k', textLike(10000, 1)])
  c.push(['text 200k', textLike(200000, 2)])
  c.push(['random 100k', randomBytes(100000, 3)])
  c.push(['mixed 300k', mixed(300000, 4)])
  c.push(['mixed 1 MiB', mixed(1 << 20, 5)])
  c.push(['zeros 1 MiB', Buffer.alloc(1 << 20)])
  c.push(['ramp', Buffer.from(Array.from({ length: 70000 }, (_, i) => (i * 7) & 0xff))])
  c.push(['period 3', Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 3))])
  return c
}

describe('lz4 block', () => {
  const inputs = corpus()

  it('has at least 50 inputs in its corpus', () => {
    expect(inputs.length).toBeGreaterThanOrEqual(50)
  })

  it.each(inputs)('round-trips %s', (_name, input) => {
    const block = lz4CompressBlock(input)
    expect(block.length).toBeLessThanOrEqual(lz4CompressBound(input.length))
    expect(lz4DecompressBlock(block, input.length).equals(input)).toBe(true)
    // with a plain hash table, too
    const fast = lz4CompressBlock(input, { maxChainDepth: 1 })
    expect(lz4DecompressBlock(fast, input.length).equals(input)).toBe(true)
  })

  it.each(inputs)('follows the end-of-block rules for %s', (_name, input) => {
    const { seqs, lastLiterals, outLen } = sequences(lz4CompressBlock(input))
    expect(outLen).toBe(input.length)
    if (input.length < 13) expect(seqs).toHaveLength(0)
    else if (seqs.length > 0) expect(lastLiterals).toBeGreaterThanOrEqual(5)
    const broken = seqs.filter(s => !(s.matchStart < input.length - 12 && s.matchStart + s.matchLen <= input.length - 5 && s.offset > 0 && s.offset <= 65535))
    expect(broken).toEqual([])
  })

  it('compresses redundant data', () => {
    expect(lz4CompressBlock(Buffer.alloc(1 << 20)).length).toBeLessThan(5000)
    expect(lz4CompressBlock(textLike(200000, 2)).length).toBeLessThan(100000)
  })

  it('is deterministic', () => {
    const m = mixed(200000, 99)
    expect(lz4CompressBlock(m).equals(lz4CompressBlock(Buffer.from(m)))).toBe(true)
  })

  it('decodes hand-made blocks, including overlapping matches', () => {
    // "a" then match offset 1 length 8 then literals "bcdef"
    const block = Buffer.from([0x14, 0x61, 0x01, 0x00, 0x50, 0x62, 0x63, 0x64, 0x65, 0x66])
    expect(lz4DecompressBlock(block, 14).toString()).toBe('aaaaaaaaabcdef')
    // the single zero token encodes the empty block
    expect(lz4DecompressBlock(Buffer.from([0]), 0).length).toBe(0)
  })

  const bad: Array<[string, Buffer, number]> = [
    ['empty input', Buffer.alloc(0), 0],
    ['match offset before the output start', Buffer.from([0x14, 0x61, 0x02, 0x00, 0x50, 0x62, 0x63, 0x64, 0x65, 0x66]), 14],
    ['out-of-range offset 0xffff', Buffer.from([0x14, 0x61, 0xff, 0xff, 0x50, 0x62, 0x63, 0x64, 0x65, 0x66]), 14],
    ['zero offset', Buffer.from([0x14, 0x61, 0x00, 0x00, 0x50, 0x62, 0x63, 0x64, 0x65, 0x66]), 14],
    ['literal run past the input', Buffer.from([0x50, 0x61, 0x62]), 5],
    ['literal run past the output', Buffer.from([0x50, 0x61, 0x62, 0x63, 0x64, 0x65]), 4],
    ['match past the output', Buffer.from([0x1f, 0x61, 0x01, 0x00, 0x40, 0x00]), 14],
    ['unterminated literal length', Buffer.from([0xf0, 0xff, 0xff]), 1000],
    ['unterminated match length', Buffer.from([0x1f, 0x61, 0x01, 0x00, 0xff]), 1000],
    ['truncated offset', Buffer.from([0x14, 0x61, 0x01]), 14],
    ['output shorter than expected', Buffer.from([0x30, 0x61, 0x62, 0x63]), 4],
    ['output longer than expected', Buffer.from([0x30, 0x61, 0x62, 0x63]), 2],
    ['no final literals sequence', Buffer.from([0x14, 0x61, 0x01, 0x00]), 9]
  ]
  it.each(bad)('rejects %s with NAIAD_FMT_DECOMPRESS', (_name, block, size) => {
    expect(() => lz4DecompressBlock(block, size)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_DECOMPRESS' }))
  })

  it('survives fuzzed input: only NAIAD_FMT_DECOMPRESS or exact-size output', () => {
    const r = rng(12345)
    const base = lz4CompressBlock(mixed(20000, 8))
    for (let iter = 0; iter < 3000; iter++) {
      let input: Buffer
      if (iter % 3 === 0) {
        input = randomBytes(1 + (r() % 200), r())
      } else {
        input = Buffer.from(base)
        const flips = 1 + (r() % 4)
        for (let k = 0; k < flips; k++) input[r() % input.length] = r() & 0xff
        if (iter % 3 === 2) input = input.subarray(0, r() % input.length)
      }
      const size = iter % 2 === 0 ? 20000 : r() % 50000
      try {
        const out = lz4DecompressBlock(input, size)
        expect(out.length).toBe(size)
      } catch (err) {
        expect(hasCode(err, 'NAIAD_FMT_DECOMPRESS')).toBe(true)
      }
    }
  })

  // Independent decoder and encoder: the lz4 CLI (liblz4), via the legacy frame format
  // (magic 0x184C2102, then blocks of up to 8 MiB each preceded by their u32 compressed size).
  const hasLz4Cli = spawnSync('lz4', ['-V'], { stdio: 'ignore' }).status === 0
  const LEGACY_MAGIC = 0x184c2102

  it.skipIf(!hasLz4Cli)('our blocks decode with liblz4 (lz4 CLI)', () => {
    for (const [name, input] of inputs) {
      const block = lz4CompressBlock(input)
      const head = Buffer.alloc(8)
      head.writeUInt32LE(LEGACY_MAGIC, 0)
      head.writeUInt32LE(block.length, 4)
      const res = spawnSync('lz4', ['-d', '-c', '-q'], { input: Buffer.concat([head, block]), maxBuffer: 64 << 20 })
      expect(res.status, `${name}: ${res.stderr.toString()}`).toBe(0)
      expect(createHash('sha256').update(res.stdout).digest('hex'), name).toBe(createHash('sha256').update(input).digest('hex'))
    }
  })

  it.skipIf(!hasLz4Cli)('liblz4 blocks (fast and HC) decode with ours', () => {
    for (const level of ['-1', '-9']) {
      for (const [name, input] of inputs) {
        if (input.length === 0) continue
        const res = spawnSync('lz4', ['-l', level, '-c', '-q'], { input, maxBuffer: 64 << 20 })
        expect(res.status, name).toBe(0)
        const frame = res.stdout
        expect(frame.readUInt32LE(0)).toBe(LEGACY_MAGIC)
        const size = frame.readUInt32LE(4)
        const block = frame.subarray(8, 8 + size)
        expect(lz4DecompressBlock(block, input.length).equals(input), `${name} ${level}`).toBe(true)
      }
    }
  })
})
