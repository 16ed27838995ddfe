import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, stat, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { BlobCache } from '../../../fsdaemon/cache/blob-cache.ts'
import { CacheManager } from '../../../fsdaemon/cache/cache-manager.ts'
import { CHUNK_MAP_HEADER_SIZE, decodeChunkMap, encodeChunkMapHeader } from '../../../fsdaemon/cache/chunk-map.ts'
import { planRequests } from '../../../fsdaemon/cache/merge.ts'
import { RangeBufferPool } from '../../../fsdaemon/cache/buffer-pool.ts'
import { NaiadError } from '../../../lib/errors/index.ts'
import { LocalDirRangeSource } from '../../../fsdaemon/fetch/local-source.ts'
import { MirrorRangeSource } from '../../../fsdaemon/fetch/mirror-source.ts'
import { RegistryRangeSource } from '../../../fsdaemon/fetch/registry-source.ts'
import { SourceChain } from '../../../fsdaemon/fetch/source-chain.ts'
import type { ChunkFetcher, FetchOptions, FetchResult, RangeSource } from '../../../fsdaemon/types.ts'
import type { ChunkRef } from '../../../lib/format/types.ts'
import { RegistryClient } from '../../../lib/registry/index.ts'
import { buildBlob, recordingLogger, startBlobServer, tempDir, until, type BlobServer, type TestBlob } from './cache-fixtures.ts'

const execFileP = promisify(execFile)
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

let tb: TestBlob
let tb2: TestBlob
let server: BlobServer

beforeAll(async () => {
  tb = await buildBlob({ chunks: 16, lastChunkBytes: 1000 })
  tb2 = await buildBlob({ chunks: 8, seed: 99 })
  server = await startBlobServer(new Map([[tb.blob.blobId, tb.bytes], [tb2.blob.blobId, tb2.bytes]]))
})
afterAll(async () => {
  await server.stop()
  await tb.cleanup()
  await tb2.cleanup()
})

/** The origin: RegistryRangeSource through lib/registry's client against the test server. */
function origin (srv: BlobServer, name = 'origin'): RangeSource {
  const client = new RegistryClient({}, { endpoint: srv.host, plainHttp: true, retries: 0, retryBaseDelayMs: 1 })
  cleanups.push(async () => { await client.close() })
  return new RegistryRangeSource({ store: { getBlob: async (d, o) => await client.getBlob('test/app', d, o) } }, { name, retries: 0 })
}

/** A chain over a local blob dir, closed after the test. */
function localChain (dir: string): SourceChain {
  const chain = new SourceChain({ sources: [new LocalDirRangeSource({}, { dir })] })
  cleanups.push(async () => { await chain.close() })
  return chain
}

async function openCache (blob = tb, opts: { dir?: string, maxRequestBytes?: number, flushIntervalMs?: number, logger?: ReturnType<typeof recordingLogger>['logger'] } = {}): Promise<BlobCache> {
  let dir = opts.dir
  if (dir === undefined) {
    const t = await tempDir()
    cleanups.push(t.cleanup)
    dir = t.dir
  }
  const c = new BlobCache(opts.logger !== undefined ? { logger: opts.logger } : {}, {
    dir,
    blob: blob.blob,
    ...(opts.maxRequestBytes !== undefined ? { maxRequestBytes: opts.maxRequestBytes } : {}),
    ...(opts.flushIntervalMs !== undefined ? { flushIntervalMs: opts.flushIntervalMs } : {})
  })
  await c.open()
  cleanups.push(async () => { await c.close() })
  return c
}

function ref (i: number, blob = tb): ChunkRef {
  return blob.refs[i] as ChunkRef
}

async function expectCode (p: Promise<unknown>, code: string): Promise<Error> {
  let err: unknown
  try {
    await p
  } catch (e) {
    err = e
  }
  expect(err, `expected ${code}`).toBeInstanceOf(Error)
  expect(err).toMatchObject({ code })
  return err as Error
}

describe('BlobCache reads', () => {
  it('returns exact bytes from a local blob dir: whole chunks, pieces, the short last chunk', async () => {
    const chain = localChain(tb.dir)
    const cache = await openCache()
    for (const r of tb.refs) {
      const whole = await cache.read(r, 0, r.uncompressedSize, chain)
      expect(whole.equals(tb.chunk(r.index))).toBe(true)
      const piece = await cache.read(r, 100, 333, chain)
      expect(piece.equals(tb.chunk(r.index).subarray(100, 433))).toBe(true)
    }
    expect(ref(15).uncompressedSize).toBe(1000)
    expect((await cache.read(ref(15), 999, 1, chain)).equals(tb.content.subarray(tb.content.length - 1))).toBe(true)
    expect((await cache.read(ref(3), 7, 0, chain)).length).toBe(0)
    await expectCode(cache.read(ref(3), 4000, 200, chain), 'NAIAD_INTERNAL')
    const s = cache.stats()
    expect(s).toMatchObject({ blobId: tb.blob.blobId, chunks: 16, readyChunks: 16, chunksVerified: 16, digestFailures: 0 })
    expect(s.bytesFetched[`local:${tb.dir}`]).toBeGreaterThan(0)
    // the cache file holds the EROFS device content: chunk i at its uncompressed offset
    const data = await readFile(cache.dataPath)
    expect(data.length).toBe(tb.blob.uncompressedSize)
    for (const r of tb.refs) expect(data.subarray(r.uncompressedOffset, r.uncompressedOffset + r.uncompressedSize).equals(tb.chunk(r.index))).toBe(true)
  })

  it('serves a second read from the cache without a request; reads of ready chunks are hits', async () => {
    server.reset()
    const chain = new SourceChain({ sources: [origin(server)] })
    const cache = await openCache()
    const a = await cache.read(ref(5), 10, 2000, chain)
    expect(a.equals(tb.chunk(5).subarray(10, 2010))).toBe(true)
    expect(server.requests()).toHaveLength(1)
    expect(server.requests()[0]?.range).toBe(`bytes=${ref(5).compressedOffset}-${ref(5).compressedOffset + ref(5).compressedSize - 1}`)
    const b = await cache.read(ref(5), 0, 4096, chain)
    expect(b.equals(tb.chunk(5))).toBe(true)
    expect(server.requests()).toHaveLength(1)
    expect(cache.stats()).toMatchObject({ cacheHits: 1, chunksVerified: 1, readyChunks: 1, requests: 1 })
    expect(cache.stats().bytesFetched).toEqual({ origin: ref(5).compressedSize })
  })

  it('reads ready chunks synchronously into a buffer; ready bits are in shared memory', async () => {
    const chain = new SourceChain({ sources: [origin(server)] })
    const cache = await openCache()
    const into = Buffer.alloc(1000)
    // not ready: nothing read, read() has to fetch
    expect(cache.readReadySync(ref(3), 100, into)).toBe(false)
    expect(cache.readyBits.buffer).toBeInstanceOf(SharedArrayBuffer)
    expect((cache.readyBits[0]! >> 3) & 1).toBe(0)
    await cache.read(ref(3), 0, 10, chain)
    expect((cache.readyBits[0]! >> 3) & 1).toBe(1)
    const hits = cache.stats().cacheHits
    expect(cache.readReadySync(ref(3), 100, into)).toBe(true)
    expect(into.equals(tb.chunk(3).subarray(100, 1100))).toBe(true)
    expect(cache.stats().cacheHits).toBe(hits + 1)
    // out of the chunk's bounds: refused, not read
    expect(cache.readReadySync(ref(3), 4000, into)).toBe(false)
    // the cache file lost the chunk: a short read is no answer (read() fetches it again)
    await truncate(cache.dataPath, ref(3).uncompressedOffset)
    expect(cache.readReadySync(ref(3), 100, into)).toBe(false)
    expect((await cache.read(ref(3), 100, 1000, chain)).equals(tb.chunk(3).subarray(100, 1100))).toBe(true)
  })

  it('fetches a chunk once for many concurrent readers', async () => {
    server.reset()
    server.delayMs = 50
    try {
      const chain = new SourceChain({ sources: [origin(server)] })
      const cache = await openCache()
      const reads = await Promise.all(Array.from({ length: 20 }, async (_, k) => await cache.read(ref(7), k * 100, 100, chain)))
      reads.forEach((b, k) => expect(b.equals(tb.chunk(7).subarray(k * 100, k * 100 + 100))).toBe(true))
      expect(server.requests()).toHaveLength(1)
      expect(cache.stats().chunksVerified).toBe(1)
    } finally {
      server.delayMs = 0
    }
  })

  it('merges adjacent missing chunks into one Range request, up to maxRequestBytes', async () => {
    server.reset()
    const chain = new SourceChain({ sources: [origin(server)] })
    const cache = await openCache()
    const four = [ref(2), ref(3), ref(4), ref(5)]
    await cache.ensure(four, chain)
    const reqs = server.requests()
    expect(reqs).toHaveLength(1)
    expect(reqs[0]?.range).toBe(`bytes=${ref(2).compressedOffset}-${ref(5).compressedOffset + ref(5).compressedSize - 1}`)
    for (const r of four) expect(cache.isReady(r.index)).toBe(true)
    for (const r of four) expect((await cache.read(r, 0, r.uncompressedSize, chain)).equals(tb.chunk(r.index))).toBe(true)
    expect(server.requests()).toHaveLength(1)

    // ready chunks in the middle split the request; a small maxRequestBytes splits it too
    server.reset()
    const small = await openCache(tb, { maxRequestBytes: ref(8).compressedSize + ref(9).compressedSize })
    await small.ensure([ref(8), ref(9), ref(10), ref(11)], chain)
    expect(server.requests()).toHaveLength(2)
    // a single chunk larger than maxRequestBytes still goes in one request
    server.reset()
    const tiny = await openCache(tb, { maxRequestBytes: 100 })
    expect((await tiny.read(ref(1), 0, 4096, chain)).equals(tb.chunk(1))).toBe(true)
    expect(server.requests()).toHaveLength(1)
  })

  it('plans merged requests across small gaps but not large ones', () => {
    const mk = (index: number, off: number, size: number): ChunkRef => ({ ...ref(0), index, compressedOffset: off, compressedSize: size })
    const plan = planRequests([mk(3, 300, 100), mk(1, 0, 100), mk(2, 110, 100), mk(4, 1000, 50)], 1024, 100)
    expect(plan.map(p => [p.start, p.end, p.chunks.map(c => c.index)])).toEqual([[0, 399, [1, 2, 3]], [1000, 1049, [4]]])
    expect(planRequests([mk(1, 0, 600), mk(2, 600, 600)], 1000, 0).length).toBe(2)
    expect(planRequests([mk(1, 0, 5000)], 1000, 0)).toEqual([{ start: 0, end: 4999, chunks: [mk(1, 0, 5000)] }])
  })

  it('a reader that gives up stops waiting; the fetch goes on and fills the cache', async () => {
    server.reset()
    server.delayMs = 150
    try {
      const chain = new SourceChain({ sources: [origin(server)] })
      const cache = await openCache()
      const ac = new AbortController()
      const p = cache.read(ref(6), 0, 10, chain, { signal: ac.signal })
      setTimeout(() => ac.abort(), 20)
      await expect(p).rejects.toMatchObject({ name: 'AbortError' })
      await until(() => cache.isReady(6), 3000, 'chunk 6 ready')
      expect((await cache.read(ref(6), 0, 4096, chain)).equals(tb.chunk(6))).toBe(true)
      expect(server.requests()).toHaveLength(1)
    } finally {
      server.delayMs = 0
    }
  })

  it('an on-demand read that joined a failing prefetch fetch fetches again by itself', async () => {
    const local = localChain(tb.dir)
    let prefetchCalls = 0
    const flaky: ChunkFetcher = {
      async fetchRange (blobId: string, start: number, end: number, opts: FetchOptions & { exclude?: ReadonlySet<string> } = {}): Promise<FetchResult> {
        if (opts.priority === 'prefetch') {
          prefetchCalls++
          await new Promise(resolve => setTimeout(resolve, 50))
          throw Object.assign(new Error('prefetch source broke'), { code: 'ECONNRESET' })
        }
        return await local.fetchRange(blobId, start, end, opts)
      }
    }
    const cache = await openCache()
    const pre = cache.ensure([ref(9)], flaky, { priority: 'prefetch' })
    const read = cache.read(ref(9), 0, 4096, flaky, { priority: 'ondemand' })
    await expect(pre).rejects.toThrow()
    expect((await read).equals(tb.chunk(9))).toBe(true)
    expect(prefetchCalls).toBe(1)
  })

  const asRoot = process.getuid?.() === 0 ? it : it.skip
  asRoot('a full disk costs the caching, not the read: chunks are served from memory', async (ctx) => {
    const t = await tempDir()
    cleanups.push(t.cleanup)
    try {
      await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', t.dir])
    } catch {
      ctx.skip() // no tmpfs mounts here (e.g. in a user namespace without CAP_SYS_ADMIN)
    }
    cleanups.push(async () => { await execFileP('umount', [t.dir]) })
    const { logger, lines } = recordingLogger()
    const cache = await openCache(tb, { dir: t.dir, logger })
    const chain = localChain(tb.dir)
    for (const r of tb.refs.slice(0, 10)) expect((await cache.read(r, 0, r.uncompressedSize, chain)).equals(tb.chunk(r.index))).toBe(true)
    const s = cache.stats()
    expect(s.writeErrors).toBeGreaterThan(0)
    expect(s.readyChunks).toBe(10 - s.writeErrors)
    expect(lines.some(l => l.msg.includes('serving it from memory') && (l.err as { message?: string } | undefined)?.message?.includes('ENOSPC') === true)).toBe(true)
    await cache.close()
  })

  it('rejects reads after close with NAIAD_CLOSED; close is safe twice', async () => {
    const chain = localChain(tb.dir)
    const cache = await openCache()
    await cache.read(ref(0), 0, 10, chain)
    await cache.close()
    await cache.close()
    await expectCode(cache.read(ref(0), 0, 10, chain), 'NAIAD_CLOSED')
  })
})

/**
 * A source that delivers a range in pieces, reporting progress, and waits for `release()` after
 * each piece; it can corrupt a byte or fail after some bytes.
 */
function steppedSource (name: string, opts: { piece: number, corruptAt?: number, failAfter?: number }): RangeSource & { release: () => void, waiting: () => boolean, fetches: number } {
  let wake: (() => void) | undefined
  const src = {
    name,
    kind: 'mirror' as const,
    fetches: 0,
    release: () => { const w = wake; wake = undefined; w?.() },
    waiting: () => wake !== undefined,
    healthy: () => true,
    close: async () => { src.release() },
    async fetch (_blobId: string, start: number, end: number, o: FetchOptions = {}): Promise<Buffer> {
      src.fetches++
      const len = end - start + 1
      const into = o.alloc !== undefined ? o.alloc(len) : Buffer.alloc(len)
      for (let pos = 0; pos < len;) {
        const n = Math.min(opts.piece, len - pos)
        tb.bytes.copy(into, pos, start + pos, start + pos + n)
        if (opts.corruptAt !== undefined && opts.corruptAt >= start + pos && opts.corruptAt < start + pos + n) into[opts.corruptAt - start] = (into[opts.corruptAt - start] as number) ^ 0xff
        pos += n
        if (opts.failAfter !== undefined && pos >= opts.failAfter) throw new NaiadError('NAIAD_REG_UNAVAILABLE', `${name}: cut off after ${pos} bytes`)
        o.onProgress?.(into, pos)
        if (pos < len) await new Promise<void>((resolve) => { wake = resolve })
      }
      return into
    }
  }
  return src
}

describe('BlobCache streaming', () => {
  it('decodes, verifies and serves the first chunks of a range while the rest is still arriving (shared buffers)', async () => {
    const src = steppedSource('stream', { piece: ref(3).compressedOffset + ref(3).compressedSize })
    const chain = new SourceChain({ sources: [src] })
    cleanups.push(async () => { await chain.close() })
    const t = await tempDir()
    cleanups.push(t.cleanup)
    const cache = new BlobCache({ buffers: new RangeBufferPool(1 << 20, 1024) }, { dir: t.dir, blob: tb.blob, maxRequestBytes: 1 << 20 })
    await cache.open()
    cleanups.push(async () => { await cache.close() })
    const all = tb.refs.map((_, i) => ref(i))
    const whole = cache.ensure(all, chain)
    await until(() => cache.isReady(3))
    // the first four chunks are in, the fetch is still going on
    expect(src.waiting()).toBe(true)
    expect([0, 1, 2, 3].map(i => cache.isReady(i))).toEqual([true, true, true, true])
    expect(cache.isReady(4)).toBe(false)
    expect((await cache.read(ref(2), 0, ref(2).uncompressedSize, chain)).equals(tb.chunk(2))).toBe(true)
    while (src.waiting() || all.some(r => !cache.isReady(r.index))) { src.release(); await new Promise(resolve => setTimeout(resolve, 5)) }
    await whole
    for (const r of all) expect((await cache.read(r, 0, r.uncompressedSize, chain)).equals(tb.chunk(r.index))).toBe(true)
    expect(src.fetches).toBe(1)
    expect(cache.stats()).toMatchObject({ requests: 1, chunksVerified: 16, digestFailures: 0, bytesFetched: { stream: ref(15).compressedOffset + ref(15).compressedSize - ref(0).compressedOffset } })
  })

  it('a range cut off midway keeps the chunks that arrived; the others fail and are fetched again later', async () => {
    const src = steppedSource('cut', { piece: ref(2).compressedOffset, failAfter: ref(4).compressedOffset })
    const chain = new SourceChain({ sources: [src] })
    cleanups.push(async () => { await chain.close() })
    const cache = await openCache(tb, { maxRequestBytes: 1 << 20 })
    const p = cache.ensure([0, 1, 2, 3, 4, 5].map(i => ref(i)), chain)
    await until(() => src.waiting())
    src.release()
    await expectCode(p, 'NAIAD_REG_UNAVAILABLE')
    expect([0, 1, 2, 3, 4, 5].map(i => cache.isReady(i))).toEqual([true, true, false, false, false, false])
    expect((await cache.read(ref(4), 0, 100, localChain(tb.dir))).equals(tb.chunk(4).subarray(0, 100))).toBe(true)
  })

  it('a corrupt chunk in a streamed range is fetched again from the next source; the others are kept', async () => {
    const src = steppedSource('bad-stream', { piece: 4096, corruptAt: ref(1).compressedOffset + 5 })
    const chain = new SourceChain({ sources: [src, origin(server)] })
    cleanups.push(async () => { await chain.close() })
    server.reset()
    const cache = await openCache(tb, { maxRequestBytes: 1 << 20 })
    const p = cache.ensure([0, 1, 2, 3].map(i => ref(i)), chain)
    while (src.waiting() || [0, 2, 3].some(i => !cache.isReady(i))) { src.release(); await new Promise(resolve => setTimeout(resolve, 5)) }
    await p
    for (const i of [0, 1, 2, 3]) expect((await cache.read(ref(i), 0, ref(i).uncompressedSize, chain)).equals(tb.chunk(i))).toBe(true)
    expect(cache.stats()).toMatchObject({ digestFailures: 1, badBytesFrom: { 'bad-stream': 1 } })
    expect(server.requests().map(r => r.range)).toEqual([`bytes=${ref(1).compressedOffset}-${ref(1).compressedOffset + ref(1).compressedSize - 1}`])
  })
})

describe('BlobCache persistence', () => {
  it('keeps ready chunks across close and reopen: nothing is fetched again', async () => {
    server.reset()
    const t = await tempDir()
    cleanups.push(t.cleanup)
    const chain = new SourceChain({ sources: [origin(server)] })
    const first = await openCache(tb, { dir: t.dir })
    await first.ensure([ref(0), ref(1), ref(2), ref(12)], chain)
    await first.close()
    const n = server.requests().length
    const again = await openCache(tb, { dir: t.dir })
    expect(again.stats().readyChunks).toBe(4)
    for (const i of [0, 1, 2, 12]) {
      expect(again.isReady(i)).toBe(true)
      expect((await again.read(ref(i), 0, 4096, chain)).equals(tb.chunk(i))).toBe(true)
    }
    expect(server.requests().length).toBe(n)
    expect(again.isReady(3)).toBe(false)
  })

  it('persists a ready bit only in a flush, after the data is synced', async () => {
    const chain = localChain(tb.dir)
    const cache = await openCache(tb, { flushIntervalMs: 60_000 })
    await cache.read(ref(4), 0, 1, chain)
    expect(cache.isReady(4)).toBe(true)
    const onDisk = async (): Promise<boolean> => {
      const d = decodeChunkMap(await readFile(cache.mapPath), tb.blob)
      if (!('bits' in d)) throw new Error(d.untrusted)
      return ((d.bits[0] as number) & (1 << 4)) !== 0
    }
    expect(await onDisk()).toBe(false)
    await cache.flush()
    expect(await onDisk()).toBe(true)
    expect(cache.stats().flushes).toBe(1)
  })

  it('flushes by itself flushIntervalMs after a change', async () => {
    const chain = localChain(tb.dir)
    const cache = await openCache(tb, { flushIntervalMs: 30 })
    await cache.read(ref(10), 0, 1, chain)
    await until(() => cache.stats().flushes === 1, 2000, 'a timed flush')
  })

  it('a cache file truncated behind its back: the lost chunk is fetched again, not an error', async () => {
    server.reset()
    const chain = new SourceChain({ sources: [origin(server)] })
    const { logger, lines } = recordingLogger()
    const cache = await openCache(tb, { logger })
    await cache.ensure([ref(14)], chain)
    await truncate(cache.dataPath, ref(14).uncompressedOffset)
    expect((await cache.read(ref(14), 0, 4096, chain)).equals(tb.chunk(14))).toBe(true)
    expect(server.requests()).toHaveLength(2)
    expect(lines.some(l => l.msg.includes('cached chunk lost') && l.chunkIndex === 14)).toBe(true)
    expect((await cache.read(ref(14), 0, 4096, chain)).equals(tb.chunk(14))).toBe(true)
    expect(server.requests()).toHaveLength(2)
  })

  it('discards a chunk map with a wrong magic, blob id or size, and starts empty', async () => {
    const local = localChain(tb.dir)
    const t = await tempDir()
    cleanups.push(t.cleanup)
    const seed = await openCache(tb, { dir: t.dir })
    await seed.ensure(tb.refs, local)
    await seed.close()
    const mapPath = join(t.dir, `${tb.blob.blobId}.chunk_map`)
    const good = await readFile(mapPath)
    expect(decodeChunkMap(good, tb.blob)).toHaveProperty('bits')

    const variants: Array<[string, Buffer]> = []
    const badMagic = Buffer.from(good)
    badMagic.write('XXXXXXXX', 0, 'latin1')
    variants.push(['magic', badMagic])
    const otherId = Buffer.from(good)
    encodeChunkMapHeader(tb2.blob).copy(otherId, 24, 24, 56)
    expect(otherId.subarray(24, 56).toString('hex')).toBe(tb2.blob.blobId)
    variants.push(['blob id', otherId])
    variants.push(['size', Buffer.concat([good, Buffer.alloc(1, 0xff)])])
    for (const [what, bytes] of variants) {
      await writeFile(mapPath, bytes)
      const { logger, lines } = recordingLogger()
      const c = await openCache(tb, { dir: t.dir, logger })
      expect(c.stats().readyChunks, what).toBe(0)
      expect(c.isReady(0), what).toBe(false)
      expect(lines.some(l => l.msg.includes('untrusted')), what).toBe(true)
      // the stale data is gone too, and the map is rewritten for this blob
      expect((await readFile(c.dataPath)).subarray(0, 4096).equals(Buffer.alloc(4096))).toBe(true)
      expect(decodeChunkMap(await readFile(mapPath), tb.blob)).toHaveProperty('bits')
      await c.close()
      // put the good map back and its data
      const s2 = await openCache(tb, { dir: t.dir })
      await s2.ensure(tb.refs, local)
      await s2.close()
    }
  })
})

describe('BlobCache integrity', () => {
  it('never serves a corrupted byte: fetched again from the next source, which is excluded no more', async () => {
    const bad = await startBlobServer(new Map([[tb.blob.blobId, tb.bytes]]))
    cleanups.push(bad.stop)
    const target = ref(3)
    bad.corruptAt = target.compressedOffset + 17
    server.reset()
    const mirror = new MirrorRangeSource({}, { url: bad.url, repository: 'test/app', origin: server.url })
    const chain = new SourceChain({ sources: [mirror, origin(server)] })
    cleanups.push(async () => { await mirror.close() })
    const { logger, lines } = recordingLogger()
    const cache = await openCache(tb, { logger })
    // chunks 2..4 in one request: 2 and 4 verify from the mirror, 3 is refetched from the origin
    await cache.ensure([ref(2), target, ref(4)], chain)
    expect(bad.requests()).toHaveLength(1)
    expect(server.requests()).toHaveLength(1)
    expect(server.requests()[0]?.range).toBe(`bytes=${target.compressedOffset}-${target.compressedOffset + target.compressedSize - 1}`)
    for (const r of [ref(2), target, ref(4)]) expect((await cache.read(r, 0, r.uncompressedSize, chain)).equals(tb.chunk(r.index))).toBe(true)
    const s = cache.stats()
    expect(s.digestFailures).toBe(1)
    expect(s.badBytesFrom).toEqual({ [mirror.name]: 1 })
    expect(s.chunksVerified).toBe(3)
    expect(s.bytesFetched).toEqual({ [mirror.name]: ref(4).compressedOffset + ref(4).compressedSize - ref(2).compressedOffset, origin: target.compressedSize })
    const warn = lines.find(l => l.msg.includes('failed verification'))
    expect(warn).toMatchObject({ level: 'warn', blobId: tb.blob.blobId, chunkIndex: 3, source: mirror.name })
  })

  it('all sources corrupt: NAIAD_FS_CHUNK_CORRUPT naming them, nothing cached or served', async () => {
    const a = await startBlobServer(new Map([[tb.blob.blobId, tb.bytes]]))
    const b = await startBlobServer(new Map([[tb.blob.blobId, tb.bytes]]))
    cleanups.push(a.stop, b.stop)
    const target = ref(6)
    a.corruptAt = target.compressedOffset
    b.corruptAt = target.compressedOffset + target.compressedSize - 1
    const chain = new SourceChain({ sources: [origin(a, 'origin-a'), origin(b, 'origin-b')] })
    const cache = await openCache()
    const err = await expectCode(cache.read(target, 0, 10, chain), 'NAIAD_FS_CHUNK_CORRUPT')
    expect(err.message).toContain('origin-a')
    expect(err.message).toContain('origin-b')
    expect(err.message).toContain(`chunk 6 of blob ${tb.blob.blobId}`)
    expect(cache.isReady(6)).toBe(false)
    expect(cache.stats()).toMatchObject({ digestFailures: 2, chunksVerified: 0, readyChunks: 0 })
    const data = await readFile(cache.dataPath)
    expect(data.subarray(target.uncompressedOffset, target.uncompressedOffset + target.uncompressedSize).equals(Buffer.alloc(target.uncompressedSize))).toBe(true)
    // a good source later: the chunk is served
    a.corruptAt = undefined
    expect((await cache.read(target, 0, 4096, chain)).equals(tb.chunk(6))).toBe(true)
  })

  it('a failing fetch names blob, chunk and every source; the next read tries again', async () => {
    const down = await startBlobServer(new Map([[tb.blob.blobId, tb.bytes]]))
    cleanups.push(down.stop)
    down.failStatus = 500
    const chain = new SourceChain({ sources: [origin(down)] })
    const cache = await openCache()
    const err = await expectCode(cache.read(ref(1), 0, 10, chain), 'NAIAD_REG_PROTOCOL')
    expect(err.message).toContain(`chunk 1 of blob ${tb.blob.blobId}`)
    expect(err.message).toContain('origin')
    expect(err.message).toContain('HTTP 500')
    down.failStatus = undefined
    expect((await cache.read(ref(1), 0, 4096, chain)).equals(tb.chunk(1))).toBe(true)
  })
})

describe('CacheManager', () => {
  it('shares one cache per blob between users and survives a restart', async () => {
    const t = await tempDir()
    cleanups.push(t.cleanup)
    server.reset()
    const chain = new SourceChain({ sources: [origin(server)] })
    const m = new CacheManager({}, { dir: t.dir })
    await m.open()
    const l1 = await m.acquire(tb.blob)
    const l2 = await m.acquire(tb.blob)
    expect(l1.cache).toBe(l2.cache)
    expect(m.inUse()).toEqual({ [tb.blob.blobId]: 2 })
    await l1.cache.ensure([ref(0), ref(1)], chain)
    await l1.release()
    await l1.release()
    expect(l2.cache.isOpen).toBe(true)
    await l2.release()
    expect(l2.cache.isOpen).toBe(false)
    await m.close()
    await m.close()

    const m2 = new CacheManager({}, { dir: t.dir })
    await m2.open()
    cleanups.push(async () => { await m2.close() })
    const l3 = await m2.acquire(tb.blob)
    const n = server.requests().length
    expect((await l3.cache.read(ref(1), 0, 4096, chain)).equals(tb.chunk(1))).toBe(true)
    expect(server.requests().length).toBe(n)
    await l3.release()
  })

  it('keeps a second daemon off the directory', async () => {
    const t = await tempDir()
    cleanups.push(t.cleanup)
    const m = new CacheManager({}, { dir: t.dir })
    await m.open()
    const other = new CacheManager({}, { dir: t.dir })
    const err = await expectCode(other.open(), 'NAIAD_FS_CACHE_LOCKED')
    expect(err.message).toContain(`pid ${process.pid}`)
    await m.close()
    // released: now it can
    const third = new CacheManager({}, { dir: t.dir })
    await third.open()
    await third.close()
  })

  it('evicts unused blobs, least recently used first, never one in use', async () => {
    const t = await tempDir()
    cleanups.push(t.cleanup)
    const b3 = await buildBlob({ chunks: 8, seed: 3 })
    const b4 = await buildBlob({ chunks: 8, seed: 4 })
    cleanups.push(b3.cleanup, b4.cleanup)
    const blobs = [tb2, b3, b4]
    let clock = 1_000_000
    const { logger, lines } = recordingLogger()
    // no quota yet: fill the cache with three blobs, used at t0 < t1 < t2
    const fill = new CacheManager({ now: () => clock }, { dir: t.dir })
    await fill.open()
    for (const b of blobs) {
      const chain = localChain(b.dir)
      const l = await fill.acquire(b.blob)
      await l.cache.ensure(b.refs, chain)
      clock += 1000
      await l.release()
    }
    const usage = await fill.usage()
    expect(usage.blobs.map(b => b.blobId)).toEqual(blobs.map(b => b.blob.blobId))
    const per = usage.blobs.map(b => b.bytes)
    await fill.close()

    // a quota for two of the three blobs
    const quota = usage.totalBytes - Math.min(...per) + 1
    const m = new CacheManager({ logger, now: () => clock }, { dir: t.dir, quotaBytes: quota, quotaCheckIntervalMs: 0 })
    // open() enforces the quota at once: the least recently used blob (tb2) goes
    await m.open()
    cleanups.push(async () => { await m.close() })
    const after = await m.usage()
    expect(after.totalBytes).toBeLessThanOrEqual(quota)
    expect(after.blobs.map(b => b.blobId)).toEqual([b3.blob.blobId, b4.blob.blobId])
    expect(after.evictions).toBe(1)
    expect(lines.some(l => l.msg.includes('evicted') && l.blobId === tb2.blob.blobId)).toBe(true)

    // now b3 is the least recently used, but in use: b4 is evicted instead
    const lease = await m.acquire(b3.blob)
    clock += 1000
    const c2 = localChain(tb2.dir)
    const l2 = await m.acquire(tb2.blob)
    await l2.cache.ensure(tb2.refs, c2)
    clock += 1000
    await l2.release() // enforces the quota: b4 (older than tb2, unused) goes; b3 stays (in use)
    const final = await m.usage()
    expect(final.blobs.map(b => b.blobId).sort()).toEqual([b3.blob.blobId, tb2.blob.blobId].sort())
    expect(existsSync(join(t.dir, `${b4.blob.blobId}.blob.data`))).toBe(false)
    expect(existsSync(join(t.dir, `${b4.blob.blobId}.chunk_map`))).toBe(false)
    // the one in use still reads
    const c3 = localChain(b3.dir)
    expect((await lease.cache.read(b3.refs[0] as ChunkRef, 0, 4096, c3)).equals(b3.chunk(0))).toBe(true)
    await lease.release()
    expect(await m.remove(b3.blob.blobId)).toBe(true)
    expect((await m.usage()).blobs.map(b => b.blobId)).toEqual([tb2.blob.blobId])
  })

  it('counts allocated bytes of sparse cache files, not their size', async () => {
    const t = await tempDir()
    cleanups.push(t.cleanup)
    const m = new CacheManager({}, { dir: t.dir })
    await m.open()
    cleanups.push(async () => { await m.close() })
    const big = { ...tb.blob, uncompressedSize: 1024 * 1024 * 1024 }
    const l = await m.acquire(big)
    expect((await stat(l.cache.dataPath)).size).toBe(1024 * 1024 * 1024)
    const u = await m.usage()
    expect(u.totalBytes).toBeLessThan(64 * 1024)
    expect(m.usageBytes()).toBe(u.totalBytes)
    expect(CHUNK_MAP_HEADER_SIZE).toBe(64)
    await l.release()
  })
})
