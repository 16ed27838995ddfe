/**
 * The Nydus v6 data blob written by nydus-image 2.2 (test/fixtures/nydus, from dragonflyoss/nydus
 * tests/texture): our reader must decode it, and our encoders must produce its structures byte
 * for byte.
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { BlobReader, fileBlobSource, type BlobSource } from '../../../lib/format/blob.ts'
import {
  BLOB_FEATURE, CI_HEADER_SIZE, decodeCiEntry, decodeCiHeader, decodeTarHeader, decodeTocEntry, encodeCiEntry, encodeCiHeader,
  encodeTarHeader, encodeTocEntry
} from '../../../lib/format/blobfmt.ts'
import { chunkDigest } from '../../../lib/digest/index.ts'
import type { BlobInfo } from '../../../lib/format/types.ts'

const FIXTURES = fileURLToPath(new URL('../../fixtures/nydus/', import.meta.url))
const BLOB_PATH = `${FIXTURES}be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef`
const blobBytes = readFileSync(BLOB_PATH)
const bootBytes = readFileSync(`${FIXTURES}rafs-v6-2.2.boot`)

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

function memSource (b: Buffer): BlobSource {
  return {
    size: b.length,
    read: async (offset, length) => b.subarray(offset, offset + length)
  }
}

/** The fixture's blob-table entry, as the bootstrap records it (nydus.md §1.7). */
function fixtureInfo (over: Partial<BlobInfo> = {}): BlobInfo {
  return {
    blobId: 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef',
    chunkSize: 0x100000,
    chunkCount: 2,
    compressor: 'zstd',
    digester: 'blake3',
    features: 0x70000021,
    compressedSize: 14554,
    uncompressedSize: 0x9000,
    tocSize: 1024,
    tocDigest: createHash('sha256').update(blobBytes.subarray(blobBytes.length - 1024)).digest(),
    ciCompressor: 'none',
    ciOffset: 8314,
    ciCompressedSize: 32,
    ciUncompressedSize: 32,
    ...over
  }
}

describe('golden Nydus v6 blob (nydus-image 2.2)', () => {
  it('opens with the known layout: 2 chunks, raw 32-byte CI at 8314, features 0x70000021', async () => {
    const r = await BlobReader.open(memSource(blobBytes), { compressor: 'zstd', digester: 'blake3' })
    expect(r.chunkCount).toBe(2)
    expect(r.features).toBe(0x70000021)
    expect(r.features).toBe(BLOB_FEATURE.CAP_TAR_TOC | BLOB_FEATURE.HAS_TOC | BLOB_FEATURE.HAS_TAR_HEADER | BLOB_FEATURE.INLINED_CHUNK_DIGEST | BLOB_FEATURE.ALIGNED)
    expect(r.ciVersion).toBe(1)
    expect(r.ciHeader).toMatchObject({ ciCompressor: 0, ciEntries: 2, ciOffset: 8314, ciCompressedSize: 32, ciUncompressedSize: 32 })
    expect(r.tocSize).toBe(1024)
    expect(r.toc?.map(e => e.name)).toEqual(['image.blob', 'blob.meta', 'blob.meta.header', 'blob.digest'])
    expect(r.chunk(0)).toMatchObject({ compressedOffset: 0, compressedSize: 4828, uncompressedOffset: 0, uncompressedSize: 16931, compressed: true })
    expect(r.chunk(1)).toMatchObject({ compressedOffset: 4828, compressedSize: 2974, uncompressedOffset: 0x5000, uncompressedSize: 13400, compressed: true })
    expect(r.chunk(0).compressedOffset + r.chunk(0).compressedSize + r.chunk(1).compressedSize).toBe(7802)
  })

  it('decompresses each chunk to its stored BLAKE3 digest and rebuilds both files', async () => {
    const src = await fileBlobSource(BLOB_PATH)
    try {
      const r = await BlobReader.open(src, { blob: fixtureInfo() })
      const space = Buffer.alloc(0x9000)
      for (let i = 0; i < r.chunkCount; i++) {
        const c = r.chunk(i)
        const data = await r.readChunk(i)
        expect(data.length).toBe(c.uncompressedSize)
        expect(chunkDigest('blake3', data).equals(c.digest as Buffer)).toBe(true)
        data.copy(space, c.uncompressedOffset)
      }
      expect(sha256(space.subarray(0, 16931))).toBe('1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69')
      expect(sha256(space.subarray(0x5000, 0x5000 + 13400))).toBe('e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96')
    } finally {
      await src.close()
    }
  })

  it('decodes chunks through decodeChunk (the FUSE daemon path)', async () => {
    const r = await BlobReader.open(memSource(blobBytes))
    const blob = fixtureInfo()
    for (let i = 0; i < 2; i++) {
      const ref = r.chunkRef(i, blob)
      const bytes = blobBytes.subarray(ref.compressedOffset, ref.compressedOffset + ref.compressedSize)
      expect(BlobReader.decodeChunk(ref, Buffer.from(bytes)).length).toBe(ref.uncompressedSize)
    }
  })

  it('detects compressor and digester when not told', async () => {
    const r = await BlobReader.open(memSource(blobBytes))
    expect(r.compressor).toBeUndefined()
    await r.readChunk(1)
    expect(r.compressor).toBe('zstd')
    expect(r.digester).toBe('blake3')
  })

  it('stores in its bootstrap the ToC digest we compute (sha256 of ToC + its tar header)', async () => {
    const r = await BlobReader.open(memSource(blobBytes))
    expect(bootBytes.includes(r.tocDigest)).toBe(true)
  })

  it('opens without the ToC, from the blob table or the tar headers', async () => {
    // cut the ToC (entries + tar header) off: what pre-ToC blobs look like
    const noToc = blobBytes.subarray(0, blobBytes.length - 1024)
    const viaTable = await BlobReader.open(memSource(noToc), { blob: fixtureInfo({ compressedSize: 0, tocSize: 0 }) })
    expect(viaTable.toc).toBeUndefined()
    expect(viaTable.chunkCount).toBe(2)
    expect((await viaTable.readChunk(0)).length).toBe(16931)
    const viaTar = await BlobReader.open(memSource(noToc), { compressor: 'zstd', digester: 'blake3' })
    expect(viaTar.chunk(1).digest?.equals(viaTable.chunk(1).digest as Buffer)).toBe(true)
    expect((await viaTar.readChunk(1)).length).toBe(13400)
  })

  it('records sha256 of chunk data + its tar header as the image.blob ToC digest (what we write too)', () => {
    const tocStart = blobBytes.length - 1024
    const e = decodeTocEntry(blobBytes, tocStart)
    expect(e.name).toBe('image.blob')
    expect(e.digest.toString('hex')).toBe(sha256(blobBytes.subarray(0, 7802 + 512)))
    expect(e.uncompressedSize).toBe(0x9000)
    expect(e.compressedSize).toBe(7802)
  })

  it('our tar headers equal nydus-image\'s byte for byte', () => {
    const sections: Array<[number, string, number]> = [
      [7802, 'image.blob', 7802],
      [12442, 'blob.meta', 32 + CI_HEADER_SIZE],
      [13018, 'blob.digest', 64],
      [14042, 'rafs.blob.toc', 512]
    ]
    for (const [at, name, size] of sections) {
      const theirs = blobBytes.subarray(at, at + 512)
      expect(decodeTarHeader(Buffer.from(theirs))).toEqual({ name, size })
      expect(encodeTarHeader(name, size).equals(theirs), name).toBe(true)
    }
  })

  it('our CI header and CI v1 entries equal nydus-image\'s byte for byte', () => {
    const theirs = blobBytes.subarray(8346, 8346 + CI_HEADER_SIZE)
    const h = decodeCiHeader(Buffer.from(theirs))
    expect(encodeCiHeader(h).equals(theirs)).toBe(true)
    const ci = blobBytes.subarray(8314, 8346)
    const ours = Buffer.alloc(32)
    for (let i = 0; i < 2; i++) encodeCiEntry(ours, i * 16, decodeCiEntry(Buffer.from(ci), i * 16, 1), 1)
    expect(ours.equals(ci)).toBe(true)
  })

  it('our ToC entries equal nydus-image\'s (up to the reserved tail)', () => {
    const tocStart = blobBytes.length - 1024
    for (let i = 0; i < 4; i++) {
      const theirs = blobBytes.subarray(tocStart + i * 128, tocStart + (i + 1) * 128)
      const e = decodeTocEntry(Buffer.from(theirs), 0)
      // bytes 80..127 are reserved; this old nydus-image left garbage in the last 4
      expect(encodeTocEntry(e).subarray(0, 124).equals(theirs.subarray(0, 124))).toBe(true)
    }
  })

  it('exposes blob.meta in nydusd\'s cache layout (CI padded to 4 KiB + header)', async () => {
    const r = await BlobReader.open(memSource(blobBytes))
    const meta = r.blobMeta()
    expect(meta.length).toBe(4096 + 4096)
    expect(meta.subarray(0, 32).equals(blobBytes.subarray(8314, 8346))).toBe(true)
    expect(meta.subarray(32, 4096).equals(Buffer.alloc(4096 - 32))).toBe(true)
    expect(meta.subarray(4096).equals(blobBytes.subarray(8346, 8346 + 4096))).toBe(true)
  })
})
