/**
 * ChunkDecodePool (lib/format/decode-pool.ts): chunks of real blobs decoded in worker threads give
 * the same bytes as BlobReader.decodeChunk, and bytes that fail give the same error codes, per
 * chunk, never the bytes; decodeInto writes only verified chunks.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ChunkDecodePool, Unwritten, WRITTEN } from '../../../lib/format/decode-pool.ts'
import { NaiadError } from '../../../lib/errors/index.ts'
import { buildBlob, type TestBlob } from './cache-fixtures.ts'

const blobs: TestBlob[] = []
const pools: ChunkDecodePool[] = []
afterAll(async () => {
  for (const p of pools) await p.close()
  for (const b of blobs) await b.cleanup()
})

function span (tb: TestBlob, from: number, to: number): { data: Buffer, start: number } {
  const start = tb.refs[from]!.compressedOffset
  const last = tb.refs[to]!
  return { data: Buffer.from(tb.bytes.subarray(start, last.compressedOffset + last.compressedSize)), start }
}

describe('ChunkDecodePool', () => {
  for (const compressor of ['zstd', 'none', 'lz4_block'] as const) {
    it(`decodes ${compressor} chunks of a range in worker threads: the bytes of each chunk`, async () => {
      const tb = await buildBlob({ chunks: 9, chunkSize: 64 * 1024, compressor, lastChunkBytes: 1000 })
      blobs.push(tb)
      const pool = new ChunkDecodePool({ workers: 2 })
      pools.push(pool)
      const { data, start } = span(tb, 0, 8)
      const out = await pool.decode(tb.refs, data, start, true)
      expect(out).toHaveLength(9)
      out.forEach((b, i) => { expect(b instanceof Buffer && b.equals(tb.chunk(i))).toBe(true) })
      if (compressor !== 'lz4_block') {
        expect(pool.running).toBeGreaterThan(0)
        expect(data.buffer.byteLength).toBe(0) // owned: transferred to the worker, not copied
      }
    })
  }

  it('a corrupt byte fails only its chunk, with NAIAD_FMT_CHUNK_DIGEST or NAIAD_FMT_DECOMPRESS, never its bytes', async () => {
    const tb = await buildBlob({ chunks: 4, chunkSize: 64 * 1024, compressor: 'zstd', seed: 3 })
    blobs.push(tb)
    const pool = new ChunkDecodePool({ workers: 1 })
    pools.push(pool)
    const { data, start } = span(tb, 0, 3)
    const copy = Buffer.from(data)
    // chunk 1: flip a byte inside its frame; chunk 3: garbage frame header
    const c1 = tb.refs[1]!
    copy[c1.compressedOffset - start + Math.floor(c1.compressedSize / 2)]! ^= 0x55
    copy[tb.refs[3]!.compressedOffset - start] = 0
    const out = await pool.decode(tb.refs, copy, start, false)
    expect(copy.buffer.byteLength).toBeGreaterThan(0) // not owned: copied
    expect(out[0] instanceof Buffer && out[0].equals(tb.chunk(0))).toBe(true)
    expect(out[2] instanceof Buffer && out[2].equals(tb.chunk(2))).toBe(true)
    for (const i of [1, 3]) {
      const e = out[i]
      expect(e).toBeInstanceOf(NaiadError)
      expect(['NAIAD_FMT_CHUNK_DIGEST', 'NAIAD_FMT_DECOMPRESS']).toContain((e as NaiadError).code)
      expect((e as NaiadError).message).toContain(`chunk ${i} of blob ${tb.blob.blobId}`)
    }
    // a raw chunk with a flipped byte: the digest catches it
    const raw = await buildBlob({ chunks: 2, chunkSize: 64 * 1024, compressor: 'none', seed: 5 })
    blobs.push(raw)
    const r = span(raw, 0, 1)
    r.data[10]! ^= 1
    const out2 = await pool.decode(raw.refs, r.data, r.start, true)
    expect((out2[0] as NaiadError).code).toBe('NAIAD_FMT_CHUNK_DIGEST')
    expect(out2[1] instanceof Buffer && out2[1].equals(raw.chunk(1))).toBe(true)
  })

  it('decodeInto: the worker writes verified chunks to the file at their offsets; bad chunks are not written; a failed write returns the bytes', async () => {
    const tb = await buildBlob({ chunks: 5, chunkSize: 64 * 1024, compressor: 'zstd', seed: 11, lastChunkBytes: 777 })
    blobs.push(tb)
    const pool = new ChunkDecodePool({ workers: 1 })
    pools.push(pool)
    const file = join(tb.dir, 'cache.data')
    const fh = await open(file, 'w+')
    try {
      await fh.truncate(tb.blob.uncompressedSize)
      const { data, start } = span(tb, 0, 4)
      data[tb.refs[2]!.compressedOffset - start + 20]! ^= 0xff
      const early: number[] = []
      const out = await pool.decodeInto(fh.fd, tb.refs, data, start, { owned: true, onWritten: (i) => early.push(i) })
      expect(out.map(r => r === WRITTEN)).toEqual([true, true, false, true, true])
      expect(early).toEqual([0, 1, 3, 4]) // each said as soon as it was written
      expect(['NAIAD_FMT_CHUNK_DIGEST', 'NAIAD_FMT_DECOMPRESS']).toContain((out[2] as NaiadError).code)
      const onDisk = await readFile(file)
      for (const i of [0, 1, 3, 4]) {
        const r = tb.refs[i]!
        expect(onDisk.subarray(r.uncompressedOffset, r.uncompressedOffset + r.uncompressedSize).equals(tb.chunk(i))).toBe(true)
      }
      expect(onDisk.subarray(tb.refs[2]!.uncompressedOffset, tb.refs[2]!.uncompressedOffset + 4096).equals(Buffer.alloc(4096))).toBe(true)
    } finally {
      await fh.close()
    }
    // a descriptor that cannot be written: verified bytes come back to be served from memory
    const ro = await open(file, 'r')
    try {
      const { data, start } = span(tb, 0, 1)
      const out = await pool.decodeInto(ro.fd, tb.refs.slice(0, 2), data, start, { owned: true })
      out.forEach((r, i) => {
        expect(r).toBeInstanceOf(Unwritten)
        expect((r as Unwritten).data.equals(tb.chunk(i))).toBe(true)
        expect((r as Unwritten).cause).toMatch(/EBADF/)
      })
    } finally {
      await ro.close()
    }
  })

  it('with 0 workers decodes on the calling thread; a range that does not hold the chunks is an internal error', async () => {
    const tb = await buildBlob({ chunks: 3, chunkSize: 64 * 1024, compressor: 'zstd', seed: 9 })
    blobs.push(tb)
    const pool = new ChunkDecodePool({ workers: 0 })
    const { data, start } = span(tb, 0, 2)
    const out = await pool.decode(tb.refs, data, start, true)
    out.forEach((b, i) => { expect(b instanceof Buffer && b.equals(tb.chunk(i))).toBe(true) })
    expect(pool.running).toBe(0)
    await expect(pool.decode(tb.refs, data.subarray(0, 10), start)).rejects.toMatchObject({ code: 'NAIAD_INTERNAL' })
  })
})
