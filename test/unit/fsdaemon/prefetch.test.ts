import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { BlobCache } from '../../../fsdaemon/cache/blob-cache.ts'
import { FetchGate } from '../../../fsdaemon/fetch/gate.ts'
import { RegistryRangeSource } from '../../../fsdaemon/fetch/registry-source.ts'
import { SourceChain } from '../../../fsdaemon/fetch/source-chain.ts'
import { Prefetcher } from '../../../fsdaemon/prefetch/prefetcher.ts'
import { Throttle } from '../../../fsdaemon/prefetch/throttle.ts'
import type { ChunkFetcher, FetchOptions, FetchResult } from '../../../fsdaemon/types.ts'
import type { ChunkRef } from '../../../lib/format/types.ts'
import { RegistryClient } from '../../../lib/registry/index.ts'
import { buildBlob, recordingLogger, startBlobServer, tempDir, until, type BlobServer, type TestBlob } from './cache-fixtures.ts'

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

let tb: TestBlob
let srv: BlobServer

beforeAll(async () => {
  tb = await buildBlob({ chunks: 64 })
  srv = await startBlobServer(new Map([[tb.blob.blobId, tb.bytes]]))
})
afterAll(async () => {
  await srv.stop()
  await tb.cleanup()
})

function reset (): void {
  srv.reset()
  srv.delayMs = 0
  srv.failStatus = undefined
}

function chainFor (gate: FetchGate): SourceChain {
  const client = new RegistryClient({}, { endpoint: srv.host, plainHttp: true, retries: 0 })
  cleanups.push(async () => { await client.close() })
  return new SourceChain({ sources: [new RegistryRangeSource({ store: { getBlob: async (d, o) => await client.getBlob('test/app', d, o) } }, { retries: 0 })], gate })
}

async function openCache (): Promise<BlobCache> {
  const t = await tempDir()
  const c = new BlobCache({}, { dir: t.dir, blob: tb.blob })
  await c.open()
  cleanups.push(t.cleanup, async () => { await c.close() })
  return c
}

const ref = (i: number): ChunkRef => tb.refs[i] as ChunkRef
const refs = (...idx: number[]): ChunkRef[] => idx.map(ref)

/** The chunk indexes a Range request covered, from its Range header. */
function chunksOf (range: string | undefined): number[] {
  const m = /^bytes=(\d+)-(\d+)$/.exec(range ?? '')
  if (m === null) return []
  const s = Number(m[1])
  const e = Number(m[2])
  return tb.refs.filter(r => r.compressedOffset >= s && r.compressedOffset + r.compressedSize - 1 <= e).map(r => r.index)
}

describe('Prefetcher', () => {
  it('fetches the prefetch table files first, in order, then the rest by blob offset', async () => {
    reset()
    const gate = new FetchGate()
    const chain = chainFor(gate)
    const cache = await openCache()
    const { logger, lines } = recordingLogger()
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chain, gate, logger }, {
      files: [{ path: '/bin/app', chunks: refs(40, 41, 42, 43) }, { path: '/etc/conf', chunks: refs(5, 6, 7, 41) }],
      rest: () => tb.refs,
      concurrency: 1,
      batchBytes: 1
    })
    expect(p.stats().state).toBe('idle')
    p.start()
    const st = await p.wait()
    const order = srv.requests().flatMap(r => chunksOf(r.range))
    const rest = tb.refs.map(r => r.index).filter(i => ![40, 41, 42, 43, 5, 6, 7].includes(i))
    expect(order).toEqual([40, 41, 42, 43, 5, 6, 7, ...rest])
    expect(st).toMatchObject({ state: 'done', files: 2, chunksTotal: 64, chunksDone: 64, chunksFetched: 64, chunksSkipped: 0, chunksFailed: 0 })
    expect(st.bytesFetched).toBe(tb.refs.reduce((n, r) => n + r.compressedSize, 0))
    for (const r of tb.refs) expect(cache.isReady(r.index)).toBe(true)
    expect(lines.some(l => l.msg === 'prefetch done')).toBe(true)
  })

  it('with concurrency, every request of the files phase comes before the rest; batches merge', async () => {
    reset()
    const gate = new FetchGate()
    const cache = await openCache()
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chainFor(gate), gate }, {
      files: [{ chunks: refs(60, 61, 62, 63) }, { chunks: refs(0, 1) }],
      rest: tb.refs,
      concurrency: 4
    })
    p.start()
    await p.wait()
    const reqs = srv.requests().map(r => chunksOf(r.range))
    expect(reqs[0]).toEqual([60, 61, 62, 63])
    expect(reqs[1]).toEqual([0, 1])
    expect(reqs.slice(2).flat().sort((a, b) => a - b)).toEqual(Array.from({ length: 58 }, (_, i) => i + 2))
    // 1 MiB batches: the rest of this small blob goes in one merged request
    expect(reqs.length).toBe(3)
  })

  it('skips chunks that are ready already', async () => {
    reset()
    const gate = new FetchGate()
    const chain = chainFor(gate)
    const cache = await openCache()
    await cache.ensure(refs(0, 1, 2, 10), chain)
    srv.reset()
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chain, gate }, { files: [{ chunks: refs(0, 1, 2, 3) }, { chunks: refs(10, 11) }] })
    p.start()
    const st = await p.wait()
    expect(st).toMatchObject({ chunksTotal: 6, chunksSkipped: 4, chunksFetched: 2, chunksDone: 6 })
    expect(srv.requests().flatMap(r => chunksOf(r.range)).sort((a, b) => a - b)).toEqual([3, 11])
  })

  it('keeps to the bandwidth limit: n bytes take at least n / limit', async () => {
    reset()
    const gate = new FetchGate()
    const cache = await openCache()
    const total = tb.refs.reduce((n, r) => n + r.compressedSize, 0)
    const limit = Math.ceil(total / 0.6) // 600 ms worth
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chainFor(gate), gate }, { files: [{ chunks: tb.refs }], concurrency: 4, batchBytes: 8192, bandwidthBytesPerSec: limit })
    const t0 = Date.now()
    p.start()
    const st = await p.wait()
    const took = Date.now() - t0
    expect(st.chunksFetched).toBe(64)
    expect(took).toBeGreaterThanOrEqual(570)
    expect(took).toBeLessThan(3000)
  })

  it('Throttle: reservations add up across callers', async () => {
    let now = 0
    const t = new Throttle({ now: () => now }, { bytesPerSec: 1000 })
    const t0 = Date.now()
    await Promise.all([t.reserve(50), t.reserve(50)])
    expect(Date.now() - t0).toBeGreaterThanOrEqual(90)
    now = 10_000
    const t1 = Date.now()
    await t.reserve(0)
    expect(Date.now() - t1).toBeLessThan(50)
    expect(new Throttle({}, { bytesPerSec: 0 }).unlimited).toBe(true)
  })

  it('an on-demand read during a big slow prefetch returns long before the prefetch is half done', async () => {
    reset()
    srv.delayMs = 30
    const gate = new FetchGate()
    const chain = chainFor(gate)
    const cache = await openCache()
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chain, gate }, { files: [{ chunks: tb.refs }], concurrency: 2, batchBytes: 1 })
    p.start()
    await until(() => p.stats().chunksFetched >= 4, 5000, 'prefetch under way')
    const target = ref(63) // the last chunk the prefetch would get to
    const t0 = Date.now()
    const data = await cache.read(target, 0, target.uncompressedSize, chain)
    const took = Date.now() - t0
    const at = p.stats()
    expect(data.equals(tb.chunk(63))).toBe(true)
    expect(at.chunksDone).toBeLessThan(32)
    // one request's latency plus at most the prefetch requests already in flight
    expect(took).toBeLessThan(200)
    await p.close()
    expect(p.stats().state).toBe('stopped')
    expect(p.stats().yieldedToReads).toBeGreaterThanOrEqual(0)
  })

  it('waits for on-demand fetches before starting a batch', async () => {
    reset()
    srv.delayMs = 150
    const gate = new FetchGate({}, { quietMs: 0 })
    const chain = chainFor(gate)
    const cache = await openCache()
    const read = cache.read(ref(0), 0, 10, chain) // on-demand, in flight for 150 ms
    await until(() => srv.requests().length === 1, 2000, 'the read in flight')
    srv.delayMs = 0
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chain, gate }, { files: [{ chunks: refs(1, 2) }], concurrency: 1 })
    p.start()
    await new Promise(resolve => setTimeout(resolve, 60))
    expect(srv.requests()).toHaveLength(1) // prefetch has not started a request yet
    await read
    const st = await p.wait()
    expect(st).toMatchObject({ chunksFetched: 2, yieldedToReads: 1 })
    const [first, second] = srv.requests()
    expect(second!.at).toBeGreaterThanOrEqual(first!.at + 140)
  })

  it('prefetch errors are logged and counted, never thrown, and never fail reads that joined them', async () => {
    reset()
    const gate = new FetchGate()
    const chain = chainFor(gate)
    let prefetchTries = 0
    const failPrefetch: ChunkFetcher = {
      async fetchRange (blobId: string, start: number, end: number, opts: FetchOptions & { exclude?: ReadonlySet<string> } = {}): Promise<FetchResult> {
        if (opts.priority === 'prefetch') {
          prefetchTries++
          await new Promise(resolve => setTimeout(resolve, 100))
          throw Object.assign(new Error('mirror exploded'), { code: 'ECONNRESET' })
        }
        return await chain.fetchRange(blobId, start, end, opts)
      }
    }
    const cache = await openCache()
    const { logger, lines } = recordingLogger()
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: failPrefetch, gate, logger }, { files: [{ path: '/a', chunks: refs(0, 1, 2, 3) }], concurrency: 2, batchBytes: 1 })
    p.start()
    // chunks 0 and 1 are being prefetched (and will fail): reads join those fetches
    await until(() => prefetchTries === 2, 2000, 'two prefetch fetches in flight')
    const reads = await Promise.all(refs(0, 1).map(async r => await cache.read(r, 0, r.uncompressedSize, failPrefetch)))
    reads.forEach((b, i) => expect(b.equals(tb.chunk(i))).toBe(true))
    const st = await p.wait()
    expect(st.state).toBe('done')
    expect(st.chunksDone).toBe(4)
    expect(st.chunksFailed).toBeGreaterThanOrEqual(2)
    expect(st.chunksFailed + st.chunksSkipped + st.chunksFetched).toBe(4)
    const warn = lines.find(l => l.level === 'warn' && l.msg.includes('prefetch of chunks failed'))
    expect(warn).toMatchObject({ path: '/a', blobId: tb.blob.blobId })
    expect(cache.isReady(0) && cache.isReady(1)).toBe(true)
  })

  it('a dead source: every chunk counted failed, the prefetch finishes, later reads work', async () => {
    reset()
    srv.failStatus = 503
    const gate = new FetchGate()
    const chain = chainFor(gate)
    const cache = await openCache()
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chain, gate }, { files: [{ chunks: refs(0, 1, 2) }], rest: refs(3, 4) })
    p.start()
    const st = await p.wait()
    expect(st).toMatchObject({ state: 'done', chunksTotal: 5, chunksFailed: 5, chunksFetched: 0 })
    srv.failStatus = undefined
    expect((await cache.read(ref(4), 0, 4096, chain)).equals(tb.chunk(4))).toBe(true)
  })

  it('stops on close() and on its signal; close is safe twice', async () => {
    reset()
    srv.delayMs = 20
    const gate = new FetchGate()
    const chain = chainFor(gate)
    const cache = await openCache()
    const p = new Prefetcher({ cacheFor: () => cache, fetcher: chain, gate }, { files: [{ chunks: tb.refs }], concurrency: 1, batchBytes: 1 })
    p.start()
    await until(() => p.stats().chunksFetched >= 2, 5000, 'prefetch under way')
    await p.close()
    await p.close()
    // a request already sent may still arrive and complete (it fills the cache); nothing new starts
    await new Promise(resolve => setTimeout(resolve, 60))
    const n = srv.requests().length
    await new Promise(resolve => setTimeout(resolve, 100))
    expect(srv.requests().length).toBe(n)
    expect(p.stats()).toMatchObject({ state: 'stopped' })
    expect(p.stats().chunksFetched).toBeLessThan(64)

    const ac = new AbortController()
    const q = new Prefetcher({ cacheFor: () => cache, fetcher: chain, gate }, { files: [{ chunks: tb.refs }], concurrency: 1, batchBytes: 1, signal: ac.signal })
    q.start()
    ac.abort()
    expect((await q.wait()).state).toBe('stopped')
    const never = new Prefetcher({ cacheFor: () => cache, fetcher: chain }, { files: [] })
    await never.close()
    never.start()
    expect(never.stats().state).toBe('stopped')
  })
})
