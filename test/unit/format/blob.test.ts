import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { BlobReader, BlobWriter, fileBlobSource, type BlobSource } from '../../../lib/format/blob.ts'
import { BLOB_FEATURE, CI_HEADER_SIZE, TOC_ENTRY_SIZE, decodeTarHeader, decodeTocEntry, encodeTarHeader, encodeTocEntry } from '../../../lib/format/blobfmt.ts'
import { hasCode } from '../../../lib/errors/index.ts'
import type { BlobInfo, ChunkDigester, ChunkRef, Compressor } from '../../../lib/format/types.ts'

const dir = mkdtempSync(join(tmpdir(), 'naiad-blob-test-'))
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })
let seq = 0
const tmp = (name = 'blob'): string => join(dir, `${name}-${seq++}`)

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

function prng (seed: number): () => number {
  let s = seed >>> 0 || 1
  return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s }
}

/** Mixed compressible (text, zeros, repeats) and random data. */
function mixed (n: number, seed: number): Buffer {
  const r = prng(seed)
  const out = Buffer.alloc(n)
  const words = Buffer.from('fn read_chunk(&self, offset: u64) -> Result<Vec<u8>> { let blob = self.blob.clone(); }\n')
  let p = 0
  while (p < n) {
    const len = Math.min(n - p, 512 + (r() % 30000))
    const k = r() % 4
    if (k === 0) for (let i = 0; i < len; i++) out[p + i] = r() & 0xff
    else if (k === 1) for (let i = 0; i < len; i++) out[p + i] = words[(i + p) % words.length] as number
    else if (k === 2) out.fill(0, p, p + len)
    else for (let i = 0; i < len; i++) out[p + i] = (i * 31 + (r() & 3)) & 0xff
    p += len
  }
  return out
}

/** Deliver `b` in irregular pieces. */
async function * pieces (b: Buffer, seed = 1): AsyncGenerator<Buffer> {
  const r = prng(seed)
  let p = 0
  while (p < b.length) {
    const n = Math.min(b.length - p, 1 + (r() % 200000))
    yield b.subarray(p, p + n)
    p += n
  }
}

function memSource (b: Buffer): BlobSource {
  return { size: b.length, read: async (offset, length) => b.subarray(offset, offset + length) }
}

async function readFile (reader: BlobReader, refs: ChunkRef[], size: number, readers: Map<BlobInfo, BlobReader>): Promise<Buffer> {
  const parts: Buffer[] = []
  for (const ref of refs) {
    const r = readers.get(ref.blob) ?? reader
    parts.push(await r.readChunk(ref.index))
  }
  const out = Buffer.concat(parts)
  expect(out.length).toBe(size)
  return out
}

async function expectCode (p: Promise<unknown>, code: string, msg?: RegExp): Promise<void> {
  let err: unknown
  try {
    await p
  } catch (e) {
    err = e
  }
  expect(err, `expected ${code}`).toBeDefined()
  expect(err).toMatchObject({ code })
  if (msg !== undefined) expect((err as Error).message).toMatch(msg)
}

const big = mixed(3 * 1024 * 1024 + 12345, 42)

describe('BlobWriter + BlobReader round trip', () => {
  const compressors: Compressor[] = ['zstd', 'lz4_block', 'none']
  const digesters: ChunkDigester[] = ['blake3', 'sha256']
  const chunkSizes = [0x1000, 0x10000, 0x100000]
  const matrix: Array<[Compressor, ChunkDigester, number, 1 | 2]> = []
  for (const c of compressors) for (const d of digesters) for (const cs of chunkSizes) for (const v of [1, 2] as const) matrix.push([c, d, cs, v])

  it.each(matrix)('%s / %s / chunk %i / CI v%i', async (compressor, digester, chunkSize, ciVersion) => {
    const path = tmp()
    const w = new BlobWriter({ path, chunkSize, compressor, digester, ciVersion, dedup: new Map() })
    const files: Buffer[] = [
      Buffer.alloc(0),
      Buffer.from('x'),
      mixed(chunkSize - 1, 1),
      mixed(chunkSize, 2),
      mixed(chunkSize + 1, 3),
      big
    ]
    const refs: ChunkRef[][] = []
    for (const [i, f] of files.entries()) refs.push(await w.addFile(pieces(f, i + 1), f.length))
    expect(refs[0]).toEqual([])
    for (const [i, f] of files.entries()) expect(refs[i]).toHaveLength(Math.ceil(f.length / chunkSize))
    const { blob, blobMeta } = await w.finish()
    expect(blob).toBe(w.blob)
    for (const r of refs.flat()) expect(r.blob).toBe(blob)

    const bytes = readFileSync(path)
    expect(blob.blobId).toBe(sha256(bytes))
    expect(blob.compressedSize).toBe(bytes.length)
    expect(blob.features).toBe(0x70000021 | (ciVersion === 2 ? BLOB_FEATURE.CHUNK_INFO_V2 : 0))
    expect(blob.chunkCount).toBe(new Set(refs.flat()).size)
    expect(blob.tocDigest.toString('hex')).toBe(sha256(bytes.subarray(bytes.length - blob.tocSize)))
    const last = refs.flat().reduce((a, b) => (a.uncompressedOffset > b.uncompressedOffset ? a : b))
    expect(blob.uncompressedSize).toBe(last.uncompressedOffset + Math.ceil(last.uncompressedSize / 4096) * 4096)

    // reader with the blob table entry, through a file
    const src = await fileBlobSource(path)
    try {
      const r = await BlobReader.open(src, { blob })
      expect(r.chunkCount).toBe(blob.chunkCount)
      expect(r.ciVersion).toBe(ciVersion)
      expect(r.blobMeta().equals(blobMeta)).toBe(true)
      for (const ref of refs.flat()) {
        expect(r.chunk(ref.index)).toMatchObject({
          compressedOffset: ref.compressedOffset,
          compressedSize: ref.compressedSize,
          uncompressedOffset: ref.uncompressedOffset,
          uncompressedSize: ref.uncompressedSize,
          compressed: ref.compressed
        })
        expect(r.chunk(ref.index).digest?.equals(ref.digest)).toBe(true)
      }
      for (const [i, f] of files.entries()) {
        const back = await readFile(r, refs[i] as ChunkRef[], f.length, new Map())
        expect(back.equals(f)).toBe(true)
      }
    } finally {
      await src.close()
    }

    // reader without any hint, through decodeChunk (the daemon path)
    const r2 = await BlobReader.open(memSource(bytes))
    expect(r2.chunkCount).toBe(blob.chunkCount)
    const parts = (refs[5] as ChunkRef[]).map(ref => BlobReader.decodeChunk(ref, bytes.subarray(ref.compressedOffset, ref.compressedOffset + ref.compressedSize)))
    expect(Buffer.concat(parts).equals(big)).toBe(true)
  })

  it('lays the blob out like nydus-image: data, CI + header, digests, ToC, each followed by a tar header', async () => {
    const path = tmp()
    const w = new BlobWriter({ path, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3', dedup: new Map() })
    const refs = await w.addFile(pieces(big), big.length)
    const { blob, blobMeta } = await w.finish()
    const b = readFileSync(path)
    const n = blob.chunkCount
    const dataEnd = refs.reduce((m, r) => Math.max(m, r.compressedOffset + r.compressedSize), 0)
    expect(decodeTarHeader(b.subarray(dataEnd, dataEnd + 512))).toEqual({ name: 'image.blob', size: dataEnd })
    expect(blob.ciOffset).toBe(dataEnd + 512)
    const metaHdr = blob.ciOffset + blob.ciCompressedSize + CI_HEADER_SIZE
    expect(decodeTarHeader(b.subarray(metaHdr, metaHdr + 512))).toEqual({ name: 'blob.meta', size: blob.ciCompressedSize + CI_HEADER_SIZE })
    const digestHdr = metaHdr + 512 + n * 32
    expect(decodeTarHeader(b.subarray(digestHdr, digestHdr + 512))).toEqual({ name: 'blob.digest', size: n * 32 })
    const tocAt = digestHdr + 512
    expect(decodeTarHeader(b.subarray(b.length - 512))).toEqual({ name: 'rafs.blob.toc', size: 4 * TOC_ENTRY_SIZE })
    expect(b.length).toBe(tocAt + 4 * TOC_ENTRY_SIZE + 512)
    const toc = [0, 1, 2, 3].map(i => decodeTocEntry(b, tocAt + i * TOC_ENTRY_SIZE))
    expect(toc.map(e => e.name)).toEqual(['image.blob', 'blob.meta', 'blob.meta.header', 'blob.digest'])
    expect(toc[0]).toMatchObject({ compressedOffset: 0, compressedSize: dataEnd, uncompressedSize: blob.uncompressedSize })
    expect(toc[0]?.digest.toString('hex')).toBe(sha256(b.subarray(0, dataEnd + 512)))
    expect(toc[1]).toMatchObject({ compressedOffset: blob.ciOffset, compressedSize: blob.ciCompressedSize, uncompressedSize: n * 16 })
    expect(toc[2]).toMatchObject({ compressedOffset: blob.ciOffset + blob.ciCompressedSize, compressedSize: 4096 })
    expect(toc[3]).toMatchObject({ compressedOffset: metaHdr + 512, compressedSize: n * 32 })
    // the CI array is stored compressed with the chunk compressor when that shrinks it
    expect(blob.ciCompressor).toBe('zstd')
    expect(blob.ciCompressedSize).toBeLessThan(blob.ciUncompressedSize)
    // blob.meta: CI padded to 4 KiB + the CI header from the blob
    expect(blobMeta.length).toBe(Math.ceil(n * 16 / 4096) * 4096 + 4096)
    expect(blobMeta.subarray(blobMeta.length - 4096).equals(b.subarray(metaHdr - 4096, metaHdr))).toBe(true)
  })

  it('writes identical bytes and blob id for identical input', async () => {
    const out: Buffer[] = []
    for (let k = 0; k < 2; k++) {
      const path = tmp()
      const w = new BlobWriter({ path, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3', dedup: new Map() })
      await w.addFile(pieces(big, k + 5), big.length)
      await w.addFile(pieces(Buffer.from('hello')), 5)
      const { blob } = await w.finish()
      const b = readFileSync(path)
      expect(blob.blobId).toBe(sha256(b))
      out.push(b)
    }
    expect((out[0] as Buffer).equals(out[1] as Buffer)).toBe(true)
  })

  it('writes the same bytes with and without zstd worker threads; settle() makes refs final', async () => {
    const out: Buffer[] = []
    for (const workers of [true, false]) {
      const path = tmp()
      const w = new BlobWriter({ path, chunkSize: 0x40000, compressor: 'zstd', digester: 'sha256', dedup: new Map(), workers })
      const refs = [...await w.addFile(pieces(big, 3), big.length), ...await w.addFile(pieces(Buffer.from('small')), 5)]
      await w.settle()
      expect(refs.every(r => r.compressedOffset >= 0 && r.compressedSize > 0)).toBe(true)
      const offsets = refs.map(r => [r.compressedOffset, r.compressedSize, r.compressed])
      await w.finish()
      expect(refs.map(r => [r.compressedOffset, r.compressedSize, r.compressed])).toEqual(offsets)
      out.push(readFileSync(path))
    }
    expect((out[0] as Buffer).equals(out[1] as Buffer)).toBe(true)
  })

  it('keeps several writers\' chunks apart when they compress concurrently', async () => {
    const datas = [mixed(2_500_000, 11), mixed(2_000_000, 12), mixed(1_500_000, 13)]
    const results = await Promise.all(datas.map(async (d, i) => {
      const path = tmp()
      const w = new BlobWriter({ path, chunkSize: 0x40000, compressor: 'zstd', digester: 'blake3', dedup: new Map() })
      const refs = await w.addFile(pieces(d, i), d.length)
      const { blob } = await w.finish()
      return { path, refs, blob, d }
    }))
    for (const { path, refs, blob, d } of results) {
      const r = await BlobReader.open(memSource(readFileSync(path)), { blob })
      expect((await readFile(r, refs, d.length, new Map())).equals(d)).toBe(true)
    }
  })

  it('dedups within a blob: the same file twice gives the same refs and no bigger blob', async () => {
    const once = tmp()
    const w1 = new BlobWriter({ path: once, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3', dedup: new Map() })
    const a1 = await w1.addFile(pieces(big), big.length)
    await w1.finish()

    const twice = tmp()
    const w2 = new BlobWriter({ path: twice, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3', dedup: new Map() })
    const a = await w2.addFile(pieces(big, 1), big.length)
    const b = await w2.addFile(pieces(big, 2), big.length)
    expect(b).toHaveLength(a.length)
    for (let i = 0; i < a.length; i++) expect(b[i]).toBe(a[i])
    expect(w2.stats.dedupedChunks).toBeGreaterThanOrEqual(a.length)
    const { blob } = await w2.finish()
    expect(statSync(twice).size).toBe(statSync(once).size)
    expect(blob.chunkCount).toBe(w1.blob.chunkCount)
    expect(a1.map(r => r.compressedOffset)).toEqual(a.map(r => r.compressedOffset))
  })

  it('dedups across blobs sharing one map; a blob with no new chunks still finishes', async () => {
    const dedup = new Map<string, ChunkRef>()
    const p1 = tmp()
    const p2 = tmp()
    const w1 = new BlobWriter({ path: p1, chunkSize: 0x10000, compressor: 'lz4_block', digester: 'sha256', dedup })
    const w2 = new BlobWriter({ path: p2, chunkSize: 0x10000, compressor: 'lz4_block', digester: 'sha256', dedup })
    const r1 = await w1.addFile(pieces(big), big.length)
    const r2 = await w2.addFile(pieces(big, 3), big.length)
    for (const r of r2) expect(r.blob).toBe(w1.blob)
    expect(r2).toEqual(r1)
    const extra = mixed(70000, 77)
    const r3 = await w2.addFile(pieces(extra), extra.length)
    expect(r3[0]?.blob).toBe(w2.blob)
    const { blob: b1 } = await w1.finish()
    const { blob: b2, blobMeta } = await w2.finish()
    expect(b2.chunkCount).toBe(2)
    expect(blobMeta.length).toBe(4096 + 4096)

    const readers = new Map([[b1, await BlobReader.open(memSource(readFileSync(p1)), { blob: b1 })], [b2, await BlobReader.open(memSource(readFileSync(p2)), { blob: b2 })]])
    const back = await readFile(readers.get(b2) as BlobReader, r2, big.length, readers)
    expect(back.equals(big)).toBe(true)
    expect((await readFile(readers.get(b2) as BlobReader, r3, extra.length, readers)).equals(extra)).toBe(true)

    // a third layer with only known content: zero chunks
    const p3 = tmp()
    const w3 = new BlobWriter({ path: p3, chunkSize: 0x10000, compressor: 'lz4_block', digester: 'sha256', dedup })
    await w3.addFile(pieces(extra), extra.length)
    await w3.addFile(pieces(Buffer.alloc(0)), 0)
    const { blob: b3, blobMeta: m3 } = await w3.finish()
    expect(b3.chunkCount).toBe(0)
    expect(m3.length).toBe(0)
    expect(b3.blobId).toBe(sha256(readFileSync(p3)))
    const r = await BlobReader.open(memSource(readFileSync(p3)), { blob: b3 })
    expect(r.chunkCount).toBe(0)
    expect(r.toc?.map(e => e.name)).toEqual(['image.blob'])
  })

  it('fails with NAIAD_FMT_CORRUPT when the stream is longer or shorter than the size', async () => {
    const w = new BlobWriter({ path: tmp(), chunkSize: 0x1000, compressor: 'none', digester: 'blake3', dedup: new Map() })
    await expectCode(w.addFile(pieces(big), big.length - 1), 'NAIAD_FMT_CORRUPT', /longer/)
    await expectCode(w.addFile(pieces(big), big.length + 1), 'NAIAD_FMT_CORRUPT', /ends after/)
    await expectCode(w.addFile(pieces(Buffer.from('ab')), 0), 'NAIAD_FMT_CORRUPT')
    // the writer stays usable
    expect(await w.addFile(pieces(Buffer.from('ok')), 2)).toHaveLength(1)
    await w.finish()
  })

  it('does not buffer whole files: it pulls pieces as it goes', async () => {
    const w = new BlobWriter({ path: tmp(), chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3', dedup: new Map() })
    let pulled = 0
    let refsAtPull: number[] = []
    const total = 64 * 0x10000
    async function * gen (): AsyncGenerator<Buffer> {
      for (let i = 0; i < 64; i++) {
        pulled++
        refsAtPull.push(w.blob.chunkCount)
        yield mixed(0x10000, 1000 + i)
      }
    }
    const refs = await w.addFile(gen(), total)
    expect(pulled).toBe(64)
    expect(refs).toHaveLength(64)
    // chunk i was stored before piece i + 1 was pulled
    expect(refsAtPull.slice(1).every((c, i) => c >= i)).toBe(true)
    refsAtPull = []
    await w.finish()
  })

  it('honours an AbortSignal', async () => {
    const ac = new AbortController()
    const w = new BlobWriter({ path: tmp(), chunkSize: 0x1000, compressor: 'none', digester: 'blake3', dedup: new Map() })
    async function * gen (): AsyncGenerator<Buffer> {
      yield Buffer.alloc(5000)
      ac.abort()
      yield Buffer.alloc(5000)
    }
    await expect(w.addFile(gen(), 10000, { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' })
    await w.abort()
  })

  it('abort() removes the file and forgets the blob\'s chunks', async () => {
    const dedup = new Map<string, ChunkRef>()
    const path = tmp()
    const w = new BlobWriter({ path, chunkSize: 0x10000, compressor: 'zstd', digester: 'blake3', dedup })
    await w.addFile(pieces(big), big.length)
    expect(existsSync(path)).toBe(true)
    expect(dedup.size).toBeGreaterThan(0)
    await w.abort()
    expect(existsSync(path)).toBe(false)
    expect(dedup.size).toBe(0)
    await expectCode(w.addFile(pieces(big), big.length), 'NAIAD_ABORTED')
    await expectCode(w.finish(), 'NAIAD_ABORTED')
  })

  it('rejects invalid options and use after finish', async () => {
    const base = { path: tmp(), compressor: 'zstd' as Compressor, digester: 'blake3' as ChunkDigester, dedup: new Map<string, ChunkRef>() }
    for (const chunkSize of [0, 0x800, 0x3000, 0x2000000]) expect(() => new BlobWriter({ ...base, chunkSize })).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_OPTION' }))
    expect(() => new BlobWriter({ ...base, chunkSize: 0x1000, compressor: 'gzip' as Compressor })).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_OPTION' }))
    expect(() => new BlobWriter({ ...base, chunkSize: 0x1000000, ciVersion: 2 })).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_OPTION' }))
    const w = new BlobWriter({ ...base, chunkSize: 0x1000 })
    await w.finish()
    await expectCode(w.addFile(pieces(Buffer.from('x')), 1), 'NAIAD_CLOSED')
    await expectCode(w.finish(), 'NAIAD_CLOSED')
  })

  it('stores 16 MiB chunks (CI v1 size fields hold 2^24)', async () => {
    const path = tmp()
    const data = Buffer.concat([mixed(0x1000000, 5), Buffer.from('tail')])
    const w = new BlobWriter({ path, chunkSize: 0x1000000, compressor: 'none', digester: 'blake3', dedup: new Map() })
    const refs = await w.addFile(pieces(data), data.length)
    const { blob } = await w.finish()
    const r = await BlobReader.open(memSource(readFileSync(path)), { blob })
    expect(r.chunk(0)).toMatchObject({ uncompressedSize: 0x1000000, compressedSize: 0x1000000, compressed: false, uncompressedOffset: 0 })
    expect(r.chunk(1)).toMatchObject({ uncompressedSize: 4, uncompressedOffset: 0x1000000 })
    expect((await readFile(r, refs, data.length, new Map())).equals(data)).toBe(true)
  })
})

// ---------------------------------------------------------------------------------------------

describe('BlobReader on damaged blobs', () => {
  async function makeBlob (compressor: Compressor): Promise<{ bytes: Buffer, blob: BlobInfo, refs: ChunkRef[] }> {
    const path = tmp()
    const w = new BlobWriter({ path, chunkSize: 0x10000, compressor, digester: 'blake3', dedup: new Map() })
    const refs = await w.addFile(pieces(big), big.length)
    const { blob } = await w.finish()
    return { bytes: readFileSync(path), blob, refs }
  }

  /** Replace the trailing ToC tar header. */
  function withTocHeader (b: Buffer, size: number): Buffer {
    return Buffer.concat([b.subarray(0, b.length - 512), encodeTarHeader('rafs.blob.toc', size)])
  }

  it('truncated blob: NAIAD_FMT_TRUNCATED against the blob table, never garbage', async () => {
    const { bytes, blob } = await makeBlob('zstd')
    for (const cut of [1, 100, 512, 5000, bytes.length - 10, bytes.length]) {
      const t = bytes.subarray(0, bytes.length - cut)
      await expectCode(BlobReader.open(memSource(t), { blob }), 'NAIAD_FMT_TRUNCATED')
      // without the blob table the damage shows in the trailing tar header
      let err: unknown
      try { await BlobReader.open(memSource(t)) } catch (e) { err = e }
      expect(err).toBeDefined()
      expect(['NAIAD_FMT_BAD_MAGIC', 'NAIAD_FMT_CORRUPT', 'NAIAD_FMT_TRUNCATED'].some(c => hasCode(err, c as never))).toBe(true)
    }
  })

  it('a short read from the source is NAIAD_FMT_TRUNCATED', async () => {
    const { bytes } = await makeBlob('zstd')
    const src: BlobSource = { size: bytes.length, read: async (o, l) => bytes.subarray(o, o + Math.max(0, l - 1)) }
    await expectCode(BlobReader.open(src), 'NAIAD_FMT_TRUNCATED')
  })

  it('bad tar header checksum: NAIAD_FMT_CORRUPT', async () => {
    const { bytes } = await makeBlob('zstd')
    const b = Buffer.from(bytes)
    b[b.length - 512 + 3] ^= 0x20 // in the name "rafs.blob.toc"
    await expectCode(BlobReader.open(memSource(b)), 'NAIAD_FMT_CORRUPT', /checksum/)
  })

  it('no tar header at the end: NAIAD_FMT_BAD_MAGIC', async () => {
    await expectCode(BlobReader.open(memSource(Buffer.alloc(8192, 0x41))), 'NAIAD_FMT_BAD_MAGIC')
    await expectCode(BlobReader.open(memSource(Buffer.alloc(100))), 'NAIAD_FMT_TRUNCATED')
  })

  it('ToC size not a multiple of 128, too big, or larger than the blob: rejected', async () => {
    const { bytes } = await makeBlob('zstd')
    await expectCode(BlobReader.open(memSource(withTocHeader(bytes, 500))), 'NAIAD_FMT_CORRUPT', /multiple of 128/)
    await expectCode(BlobReader.open(memSource(withTocHeader(bytes, 0x10000))), 'NAIAD_FMT_CORRUPT', /outside/)
    const small = withTocHeader(Buffer.alloc(2048), 2048)
    await expectCode(BlobReader.open(memSource(small)), 'NAIAD_FMT_TRUNCATED')
  })

  it('ToC that does not match the blob table digest: NAIAD_FMT_CORRUPT', async () => {
    const { bytes, blob } = await makeBlob('zstd')
    const b = Buffer.from(bytes)
    b[b.length - 512 - 100] ^= 1 // in the reserved tail of the last ToC entry
    await expectCode(BlobReader.open(memSource(b), { blob }), 'NAIAD_FMT_CORRUPT', /ToC sha256/)
  })

  it('CI header with a bad magic: NAIAD_FMT_BAD_MAGIC', async () => {
    const { bytes, blob } = await makeBlob('zstd')
    for (const at of [0, CI_HEADER_SIZE - 1]) {
      const b = Buffer.from(bytes)
      b[blob.ciOffset + blob.ciCompressedSize + at] ^= 0xff
      await expectCode(BlobReader.open(memSource(b)), 'NAIAD_FMT_BAD_MAGIC')
    }
  })

  it('CI entry pointing past EOF: NAIAD_FMT_CORRUPT, even when the ToC digests are fixed up', async () => {
    const { bytes, blob } = await makeBlob('none') // CI stored raw
    expect(blob.ciCompressor).toBe('none')
    const b = Buffer.from(bytes)
    // chunk 1: compressed offset (bits 0..39 of the second word) -> far beyond EOF
    b.writeUInt32LE(0xfffffff0, blob.ciOffset + 16 + 8)
    // recompute the blob.meta ToC entry digest so only the bounds check can catch it
    const tocAt = b.length - blob.tocSize
    const meta = decodeTocEntry(b, tocAt + TOC_ENTRY_SIZE)
    expect(meta.name).toBe('blob.meta')
    meta.digest = createHash('sha256').update(b.subarray(blob.ciOffset, blob.ciOffset + blob.ciUncompressedSize)).digest()
    encodeTocEntry(meta).copy(b, tocAt + TOC_ENTRY_SIZE)
    await expectCode(BlobReader.open(memSource(b)), 'NAIAD_FMT_CORRUPT', /points past/)
    // without the fix-up the ToC digest catches it first
    const c = Buffer.from(bytes)
    c.writeUInt32LE(0xfffffff0, blob.ciOffset + 16 + 8)
    await expectCode(BlobReader.open(memSource(c)), 'NAIAD_FMT_CORRUPT', /sha256/)
  })

  it('CI location disagreeing with the blob table: NAIAD_FMT_CORRUPT', async () => {
    const { bytes, blob } = await makeBlob('zstd')
    await expectCode(BlobReader.open(memSource(bytes), { blob: { ...blob, ciOffset: blob.ciOffset + 1 } }), 'NAIAD_FMT_CORRUPT')
    await expectCode(BlobReader.open(memSource(bytes), { blob: { ...blob, chunkCount: blob.chunkCount + 1 } }), 'NAIAD_FMT_CORRUPT')
  })

  it('a flipped byte in a raw chunk: NAIAD_FMT_CHUNK_DIGEST, no data returned', async () => {
    const { bytes, blob, refs } = await makeBlob('none')
    const ref = refs[3] as ChunkRef
    const b = Buffer.from(bytes)
    b[ref.compressedOffset + 1234] ^= 0x01
    const r = await BlobReader.open(memSource(b), { blob })
    await expectCode(r.readChunk(ref.index), 'NAIAD_FMT_CHUNK_DIGEST')
    const fetched = b.subarray(ref.compressedOffset, ref.compressedOffset + ref.compressedSize)
    expect(() => BlobReader.decodeChunk(ref, fetched)).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_CHUNK_DIGEST' }))
    // other chunks are fine
    expect((await r.readChunk((refs[4] as ChunkRef).index)).length).toBe(0x10000)
  })

  it('a flipped byte in a zstd chunk: NAIAD_FMT_CHUNK_DIGEST or NAIAD_FMT_DECOMPRESS, never data', async () => {
    const { bytes, blob, refs } = await makeBlob('zstd')
    const ref = refs.find(r => r.compressed && r.compressedSize > 1000) as ChunkRef
    let digestErrors = 0
    for (let k = 0; k < 40; k++) {
      const b = Buffer.from(bytes)
      b[ref.compressedOffset + 20 + Math.floor(k * (ref.compressedSize - 40) / 40)] ^= 0x10
      const r = await BlobReader.open(memSource(b), { blob })
      let err: unknown
      let data: Buffer | undefined
      try { data = await r.readChunk(ref.index) } catch (e) { err = e }
      expect(data).toBeUndefined()
      expect(hasCode(err, 'NAIAD_FMT_CHUNK_DIGEST') || hasCode(err, 'NAIAD_FMT_DECOMPRESS')).toBe(true)
      if (hasCode(err, 'NAIAD_FMT_CHUNK_DIGEST')) digestErrors++
    }
    expect(digestErrors).toBeGreaterThan(0)
  })

  it('decodeChunk with the wrong number of bytes: NAIAD_FMT_TRUNCATED', async () => {
    const { bytes, refs } = await makeBlob('zstd')
    const ref = refs[0] as ChunkRef
    expect(() => BlobReader.decodeChunk(ref, bytes.subarray(ref.compressedOffset, ref.compressedOffset + ref.compressedSize - 1))).toThrow(expect.objectContaining({ code: 'NAIAD_FMT_TRUNCATED' }))
  })

  it('survives random damage to the metadata tail: precise codes, no crash, no hang', async () => {
    const { bytes } = await makeBlob('lz4_block')
    const tailStart = bytes.length - 8192
    let s = 99
    const seen = new Set<string>()
    for (let k = 0; k < 300; k++) {
      const b = Buffer.from(bytes)
      for (let j = 0; j < 1 + (k % 3); j++) {
        s = (s * 1103515245 + 12345) >>> 0
        b[tailStart + (s % 8192)] ^= 1 << (s % 8)
      }
      try {
        const r = await BlobReader.open(memSource(b))
        for (let i = 0; i < r.chunkCount; i++) await r.readChunk(i)
        seen.add('ok')
      } catch (err) {
        expect((err as { code?: string }).code, String(err)).toMatch(/^NAIAD_FMT_/)
        seen.add((err as { code: string }).code)
      }
    }
    expect(seen.size).toBeGreaterThan(1)
  })
})

it('fileBlobSource reports reads past the end as NAIAD_FMT_TRUNCATED', async () => {
  const p = tmp('plain')
  writeFileSync(p, Buffer.alloc(100, 1))
  const src = await fileBlobSource(p)
  try {
    expect(src.size).toBe(100)
    expect((await src.read(90, 10)).equals(Buffer.alloc(10, 1))).toBe(true)
    await expectCode(src.read(95, 10), 'NAIAD_FMT_TRUNCATED')
  } finally {
    await src.close()
  }
  await expectCode(fileBlobSource(join(dir, 'missing')), 'NAIAD_IO')
})
