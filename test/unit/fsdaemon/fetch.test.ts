import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import http from 'node:http'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { FetchGate } from '../../../fsdaemon/fetch/gate.ts'
import { LocalDirRangeSource } from '../../../fsdaemon/fetch/local-source.ts'
import { MirrorRangeSource } from '../../../fsdaemon/fetch/mirror-source.ts'
import { RegistryRangeSource } from '../../../fsdaemon/fetch/registry-source.ts'
import { SourceChain } from '../../../fsdaemon/fetch/source-chain.ts'
import { BlobCache } from '../../../fsdaemon/cache/blob-cache.ts'
import { parseDigest } from '../../../lib/digest/index.ts'
import { RegistryClient } from '../../../lib/registry/index.ts'
import { REGISTRY_BIN, haveRegistry, startRegistry, type RunningRegistry } from '../../helpers/registry.ts'
import { startFakeRegistry } from '../../helpers/fake-registry.ts'
import { isOwnedBuffer } from '../../../fsdaemon/fetch/util.ts'
import { buildBlob, recordingLogger, startBlobServer, tempDir, until, type BlobServer, type TestBlob } from './cache-fixtures.ts'

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

let tb: TestBlob
let originSrv: BlobServer
let mirrorSrv: BlobServer

beforeAll(async () => {
  tb = await buildBlob({ chunks: 12 })
  const blobs = new Map([[tb.blob.blobId, tb.bytes]])
  originSrv = await startBlobServer(blobs)
  mirrorSrv = await startBlobServer(blobs)
})
afterAll(async () => {
  await originSrv.stop()
  await mirrorSrv.stop()
  await tb.cleanup()
})

function registrySource (srv: { host: string }, opts: { name?: string, retries?: number, timeoutMs?: number, clientRetries?: number } = {}): RegistryRangeSource {
  const client = new RegistryClient({}, { endpoint: srv.host, plainHttp: true, retries: opts.clientRetries ?? 0, retryBaseDelayMs: 5, timeoutMs: 5000 })
  cleanups.push(async () => { await client.close() })
  return new RegistryRangeSource({ store: { getBlob: async (d, o) => await client.getBlob('test/app', d, o) } }, {
    retries: opts.retries ?? 0,
    retryBaseDelayMs: 5,
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {})
  })
}

/** A registry source whose store reads ranges directly (plain HTTP), as RegistryImageStore's does. */
function directSource (srv: { host: string }, opts: { retries?: number } = {}): { src: RegistryRangeSource, client: RegistryClient } {
  const client = new RegistryClient({}, { endpoint: srv.host, plainHttp: true, retries: 0, retryBaseDelayMs: 5, timeoutMs: 5000 })
  cleanups.push(async () => { await client.close() })
  const src = new RegistryRangeSource({
    store: {
      getBlob: async (d, o) => await client.getBlob('test/app', d, o),
      readBlobRange: async (d, s, e, into, o) => await client.readBlobRange('test/app', d, s, e, into, o)
    }
  }, { retries: opts.retries ?? 0, retryBaseDelayMs: 5 })
  return { src, client }
}

/** A server answering every Range GET of the test blob with a 206 in chunked encoding (no Content-Length). */
async function chunkedRangeServer (): Promise<{ host: string, gets: () => number }> {
  let gets = 0
  const server = http.createServer((req, res) => {
    gets++
    const r = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')!
    const [a, b] = [Number(r[1]), Number(r[2])]
    res.writeHead(206, { 'content-range': `bytes ${a}-${b}/${tb.bytes.length}` })
    res.write(tb.bytes.subarray(a, a + 1))
    res.end(tb.bytes.subarray(a + 1, b + 1))
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  cleanups.push(async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) })
  return { host: `127.0.0.1:${(server.address() as { port: number }).port}`, gets: () => gets }
}

function mirrorSource (srv: BlobServer, opts: Partial<ConstructorParameters<typeof MirrorRangeSource>[1]> = {}, auth?: () => Promise<string | undefined>, logger?: ReturnType<typeof recordingLogger>['logger']): MirrorRangeSource {
  const m = new MirrorRangeSource({ ...(auth !== undefined ? { authorization: auth } : {}), ...(logger !== undefined ? { logger } : {}) }, { url: srv.url, repository: 'test/app', origin: 'https://registry.example:5000', ...opts })
  cleanups.push(async () => { await m.close() })
  return m
}

function reset (): void {
  for (const s of [originSrv, mirrorSrv]) {
    s.reset()
    s.failStatus = undefined
    s.errorSource = undefined
    s.healthy = true
    s.delayMs = 0
    s.corruptAt = undefined
    s.ignoreRange = false
    s.truncateAfter = undefined
    s.onRequest = undefined
  }
}

async function caught (p: Promise<unknown>): Promise<Error & { code?: string, details?: Record<string, unknown> }> {
  try {
    await p
  } catch (e) {
    return e as Error & { code?: string }
  }
  throw new Error('expected a rejection')
}

const id = (): string => tb.blob.blobId
const slice = (s: number, e: number): Buffer => tb.bytes.subarray(s, e + 1)

describe('MirrorRangeSource', () => {
  it('sends the mirror contract: registry blob path, Range, X-Naiad-Origin, X-Naiad-Priority; no Authorization unless told', async () => {
    reset()
    const m = mirrorSource(mirrorSrv, {}, async () => 'Bearer secret-token')
    expect(m.name).toBe(`mirror:${mirrorSrv.url}`)
    expect(m.kind).toBe('mirror')
    expect((await m.fetch(id(), 10, 99)).equals(slice(10, 99))).toBe(true)
    expect((await m.fetch(id(), 100, 100, { priority: 'prefetch' })).equals(slice(100, 100))).toBe(true)
    const [a, b] = mirrorSrv.requests()
    expect(a).toMatchObject({ method: 'GET', path: `/v2/test/app/blobs/sha256:${id()}`, range: 'bytes=10-99' })
    expect(a?.headers['x-naiad-origin']).toBe('https://registry.example:5000')
    expect(a?.headers['x-naiad-priority']).toBe('ondemand')
    expect(a?.headers.authorization).toBeUndefined()
    expect(b?.headers['x-naiad-priority']).toBe('prefetch')

    const withAuth = mirrorSource(mirrorSrv, { sendAuthorization: true }, async () => 'Bearer secret-token')
    await withAuth.fetch(id(), 0, 0)
    expect(mirrorSrv.requests()[2]?.headers.authorization).toBe('Bearer secret-token')
  })

  it('reads ranges straight into the buffer it is given; a mirror whose 206 the direct read cannot take is read through undici from then on', async () => {
    reset()
    const m = mirrorSource(mirrorSrv)
    const given: Buffer[] = []
    const got = await m.fetch(id(), 5, 4004, { alloc: (n) => { const b = Buffer.alloc(n); given.push(b); return b } })
    expect(got.equals(slice(5, 4004))).toBe(true)
    expect(got).toBe(given[0])
    expect(m.stats().directReads).toBe(1)
    // errors keep their mapping (the direct read does not take the 404; undici's answer is mapped)
    mirrorSrv.failStatus = 404
    expect((await caught(m.fetch(id(), 0, 9))).code).toBe('NAIAD_REG_NOT_FOUND')
    expect(m.stats()).toMatchObject({ directReads: 1, consecutiveFailures: 0 })

    // a mirror answering 206 in chunks (no Content-Length)
    const chunked = await chunkedRangeServer()
    const c = new MirrorRangeSource({}, { url: `http://${chunked.host}`, repository: 'test/app', origin: 'http://127.0.0.1:5000' })
    cleanups.push(async () => { await c.close() })
    expect((await c.fetch(id(), 0, 99)).equals(slice(0, 99))).toBe(true)
    expect((await c.fetch(id(), 100, 199)).equals(slice(100, 199))).toBe(true)
    expect(chunked.gets()).toBe(3)
    expect(c.stats().directReads).toBe(0)
  })

  it('keeps a path prefix of the mirror URL', async () => {
    reset()
    const m = new MirrorRangeSource({}, { url: `${mirrorSrv.url}/`, repository: 'test/app', origin: 'http://127.0.0.1:5000' })
    cleanups.push(async () => { await m.close() })
    await m.fetch(id(), 0, 9)
    expect(mirrorSrv.requests()[0]?.path).toBe(`/v2/test/app/blobs/sha256:${id()}`)
    expect(() => new MirrorRangeSource({}, { url: 'ftp://x', repository: 'a', origin: 'http://o' })).toThrow(/mirror URL/)
    expect(() => new MirrorRangeSource({}, { url: 'http://x', repository: 'a', origin: 'o:5000' })).toThrow(/origin/)
  })

  it('maps answers to codes: 503 Unavailable with the error source, 404 NotFound, 200 to a Range, short bodies, timeouts', async () => {
    reset()
    const m = mirrorSource(mirrorSrv, { timeoutMs: 200, failureThreshold: 100 })
    mirrorSrv.failStatus = 503
    mirrorSrv.errorSource = 'peer'
    let e = await caught(m.fetch(id(), 0, 9))
    expect(e.code).toBe('NAIAD_REG_UNAVAILABLE')
    expect(e.message).toContain('X-Naiad-Error-Source: peer')
    reset()
    e = await caught(m.fetch('0'.repeat(64), 0, 9))
    expect(e.code).toBe('NAIAD_REG_NOT_FOUND')
    mirrorSrv.ignoreRange = true
    e = await caught(m.fetch(id(), 0, 9))
    expect(e.code).toBe('NAIAD_REG_RANGE_UNSUPPORTED')
    reset()
    mirrorSrv.truncateAfter = 5
    e = await caught(m.fetch(id(), 0, 99))
    expect(e.code).toBe('NAIAD_REG_UNAVAILABLE')
    reset()
    mirrorSrv.delayMs = 1000
    const t0 = Date.now()
    e = await caught(m.fetch(id(), 0, 9))
    expect(e.code).toBe('NAIAD_REG_TIMEOUT')
    expect(Date.now() - t0).toBeLessThan(900)
    const ac = new AbortController()
    const p = m.fetch(id(), 0, 9, { signal: ac.signal })
    ac.abort()
    expect((await caught(p)).name).toBe('AbortError')
  })

  it('goes unhealthy after N consecutive failures; relayed 404s do not count; a passing check heals it', async () => {
    reset()
    const m = mirrorSource(mirrorSrv, { failureThreshold: 2 })
    await caught(m.fetch('0'.repeat(64), 0, 9))
    await caught(m.fetch('0'.repeat(64), 0, 9))
    expect(m.healthy()).toBe(true)
    mirrorSrv.failStatus = 502
    await caught(m.fetch(id(), 0, 9))
    expect(m.healthy()).toBe(true)
    await caught(m.fetch(id(), 0, 9))
    expect(m.healthy()).toBe(false)
    expect(m.stats()).toMatchObject({ healthy: false, consecutiveFailures: 2, markedUnhealthy: 1 })
    mirrorSrv.healthy = false
    expect(await m.check()).toBe(false)
    expect(m.healthy()).toBe(false)
    mirrorSrv.healthy = true
    expect(await m.check()).toBe(true)
    expect(m.healthy()).toBe(true)
  })
})

describe('SourceChain', () => {
  it('mirror unhealthy → the origin serves; healthy again → back to the mirror (periodic /healthz)', async () => {
    reset()
    const { logger, lines } = recordingLogger()
    const mirror = mirrorSource(mirrorSrv, { healthIntervalMs: 20, failureThreshold: 2 }, undefined, logger)
    const chain = new SourceChain({ sources: [mirror, registrySource(originSrv)], logger })
    mirror.start()
    mirror.start()
    expect(await chain.fetchRange(id(), 0, 99)).toMatchObject({ source: mirror.name })
    mirrorSrv.healthy = false
    await until(() => !mirror.healthy(), 3000, 'mirror unhealthy')
    const before = mirrorSrv.requests().length
    const r = await chain.fetchRange(id(), 100, 199)
    expect(r.source).toBe('origin')
    expect(r.data.equals(slice(100, 199))).toBe(true)
    expect(mirrorSrv.requests().length).toBe(before)
    expect(lines.some(l => l.msg.includes('mirror unhealthy') && l.level === 'warn')).toBe(true)
    mirrorSrv.healthy = true
    await until(() => mirror.healthy(), 3000, 'mirror healthy again')
    expect(await chain.fetchRange(id(), 200, 299)).toMatchObject({ source: mirror.name })
    const st = chain.stats()
    expect(st[mirror.name]).toMatchObject({ kind: 'mirror', healthy: true, requests: 2, bytes: 200, errors: 0, skipped: 1 })
    expect(st['origin']).toMatchObject({ kind: 'origin', requests: 1, bytes: 100, errors: 0 })
    // close stops the health checks
    await mirror.close()
    const checks = mirrorSrv.healthChecks
    await new Promise(resolve => setTimeout(resolve, 80))
    expect(mirrorSrv.healthChecks).toBe(checks)
    expect(mirror.healthy()).toBe(false)
  })

  it('falls back in order on errors and counts them per source', async () => {
    reset()
    mirrorSrv.failStatus = 503
    const mirror = mirrorSource(mirrorSrv)
    const chain = new SourceChain({ sources: [mirror, registrySource(originSrv)] })
    const r = await chain.fetchRange(id(), 5, 10)
    expect(r).toMatchObject({ source: 'origin' })
    expect(r.data.equals(slice(5, 10))).toBe(true)
    expect(chain.stats()[mirror.name]).toMatchObject({ requests: 1, errors: 1 })
    expect(chain.stats()[mirror.name]?.lastError).toContain('HTTP 503')
  })

  it('skips excluded sources; with none left: NAIAD_FS_SOURCES_EXHAUSTED', async () => {
    reset()
    const mirror = mirrorSource(mirrorSrv)
    const chain = new SourceChain({ sources: [mirror, registrySource(originSrv)] })
    expect(await chain.fetchRange(id(), 0, 9, { exclude: new Set([mirror.name]) })).toMatchObject({ source: 'origin' })
    expect(mirrorSrv.requests()).toHaveLength(0)
    const e = await caught(chain.fetchRange(id(), 0, 9, { exclude: new Set([mirror.name, 'origin']) }))
    expect(e.code).toBe('NAIAD_FS_SOURCES_EXHAUSTED')
    expect(e.message).toContain('excluded')
  })

  it('when every source fails: the last code, a message naming blob, range and each cause', async () => {
    reset()
    mirrorSrv.failStatus = 503
    mirrorSrv.errorSource = 'origin'
    originSrv.failStatus = 503
    const mirror = mirrorSource(mirrorSrv)
    const chain = new SourceChain({ sources: [mirror, registrySource(originSrv)] })
    const e = await caught(chain.fetchRange(id(), 1000, 1999))
    expect(e.code).toBe('NAIAD_REG_UNAVAILABLE')
    expect(e.message).toContain(`blob ${id()} bytes 1000-1999`)
    expect(e.message).toContain(`${mirror.name}: NAIAD_REG_UNAVAILABLE`)
    expect(e.message).toContain('origin: NAIAD_REG_UNAVAILABLE')
    expect(e.details?.['causes']).toHaveLength(2)
    // a missing blob stays NotFound
    reset()
    const nf = await caught(chain.fetchRange('f'.repeat(64), 0, 9))
    expect(nf.code).toBe('NAIAD_REG_NOT_FOUND')
  })

  it('tries an unhealthy source as a last resort', async () => {
    reset()
    const mirror = mirrorSource(mirrorSrv, { failureThreshold: 1 })
    mirrorSrv.healthy = false
    await mirror.check()
    expect(mirror.healthy()).toBe(false)
    originSrv.failStatus = 503
    const chain = new SourceChain({ sources: [mirror, registrySource(originSrv)] })
    expect(await chain.fetchRange(id(), 0, 9)).toMatchObject({ source: mirror.name })
    // serving a request is proof enough: healthy again
    expect(mirror.healthy()).toBe(true)
    await mirror.check()
    expect(mirror.healthy()).toBe(false)
    const strict = new SourceChain({ sources: [mirror, registrySource(originSrv)] }, { tryUnhealthy: false })
    const e = await caught(strict.fetchRange(id(), 0, 9))
    expect(e.message).toContain('skipped: unhealthy')
  })

  it('holds the gate open for on-demand fetches only', async () => {
    reset()
    originSrv.delayMs = 100
    const gate = new FetchGate({}, { quietMs: 0 })
    const chain = new SourceChain({ sources: [registrySource(originSrv)], gate })
    const p = chain.fetchRange(id(), 0, 9)
    expect(gate.inFlight).toBe(1)
    let idle = false
    const waiting = gate.idle().then(() => { idle = true })
    await new Promise(resolve => setTimeout(resolve, 30))
    expect(idle).toBe(false)
    await p
    await waiting
    expect(gate.inFlight).toBe(0)
    const q = chain.fetchRange(id(), 0, 9, { priority: 'prefetch' })
    expect(gate.inFlight).toBe(0)
    await q
  })
})

describe('LocalDirRangeSource', () => {
  it('preads exact ranges; a missing blob is NAIAD_FS_BLOB_NOT_FOUND; past the end NAIAD_FMT_TRUNCATED', async () => {
    const src = new LocalDirRangeSource({}, { dir: tb.dir })
    cleanups.push(async () => { await src.close() })
    expect(src.name).toBe(`local:${tb.dir}`)
    expect((await src.fetch(id(), 0, tb.bytes.length - 1)).equals(tb.bytes)).toBe(true)
    expect((await src.fetch(id(), 77, 77)).equals(slice(77, 77))).toBe(true)
    expect((await caught(src.fetch('a'.repeat(64), 0, 1))).code).toBe('NAIAD_FS_BLOB_NOT_FOUND')
    expect((await caught(src.fetch(id(), 0, tb.bytes.length))).code).toBe('NAIAD_FMT_TRUNCATED')
    expect((await caught(src.fetch('../etc/passwd', 0, 1))).code).toBe('NAIAD_INTERNAL')
    await src.close()
    await src.close()
    expect((await caught(src.fetch(id(), 0, 1))).code).toBe('NAIAD_CLOSED')
  })
})

describe('RegistryRangeSource', () => {
  it('retries a body cut off mid-stream and HTTP 500; gives up with a code after its retries', async () => {
    reset()
    let n = 0
    originSrv.truncateAfter = 10
    originSrv.onRequest = () => { if (++n === 2) originSrv.truncateAfter = undefined }
    const src = registrySource(originSrv, { retries: 2 })
    expect((await src.fetch(id(), 0, 999)).equals(slice(0, 999))).toBe(true)
    expect(originSrv.requests()).toHaveLength(2)

    reset()
    originSrv.failStatus = 500
    const e = await caught(src.fetch(id(), 0, 9))
    expect(e.code).toBe('NAIAD_REG_PROTOCOL')
    expect(originSrv.requests()).toHaveLength(3)

    reset()
    originSrv.failStatus = 404
    expect((await caught(src.fetch(id(), 0, 9))).code).toBe('NAIAD_REG_NOT_FOUND')
    expect(originSrv.requests()).toHaveLength(1)
  })

  it('reads ranges straight into the buffer it is given; a failed direct read or another answer than 206 goes through the HTTP client', async () => {
    reset()
    const given: Buffer[] = []
    const alloc = (n: number): Buffer => { const b = Buffer.alloc(n); given.push(b); return b }
    const { src } = directSource(originSrv, { retries: 1 })
    const got = await src.fetch(id(), 100, 5099, { alloc })
    expect(got.equals(slice(100, 5099))).toBe(true)
    expect(got).toBe(given[0])
    expect(isOwnedBuffer(got)).toBe(true)
    expect(src.directStats).toEqual({ served: 1, failed: 0 })
    expect(originSrv.requests()).toHaveLength(1)

    // the direct read is cut off: the client's request (into the same buffer) serves it
    reset()
    let n = 0
    originSrv.truncateAfter = 10
    originSrv.onRequest = () => { if (++n === 2) originSrv.truncateAfter = undefined }
    const again = await src.fetch(id(), 0, 999, { alloc })
    expect(again.equals(slice(0, 999))).toBe(true)
    expect(again).toBe(given[1])
    expect(given).toHaveLength(2)
    expect(src.directStats).toEqual({ served: 1, failed: 1 })
    expect(originSrv.requests()).toHaveLength(2)

    // a 404 is not served directly; the client maps it (direct reads stay on)
    reset()
    originSrv.failStatus = 404
    expect((await caught(src.fetch(id(), 0, 9))).code).toBe('NAIAD_REG_NOT_FOUND')
    expect(originSrv.requests()).toHaveLength(2)
    reset()
    expect((await src.fetch(id(), 0, 9)).equals(slice(0, 9))).toBe(true)
    expect(src.directStats.served).toBe(2)
    expect(originSrv.requests()).toHaveLength(1)

    // a server without Range support: the direct read is not served, the client refuses the 200
    reset()
    originSrv.ignoreRange = true
    expect((await caught(src.fetch(id(), 0, 9))).code).toBe('NAIAD_REG_RANGE_UNSUPPORTED')
  })

  it('turns direct reads off for a registry that redirects blobs or answers ranges chunked, and for a store that cannot read directly', async () => {
    const storage = await startFakeRegistry()
    const f = await startFakeRegistry({ redirectBlobsTo: storage })
    cleanups.push(async () => { await f.stop(); await storage.stop() })
    const data = Buffer.from(tb.bytes)
    f.addBlob('test/app', data)
    const { src } = directSource(f)
    for (let k = 0; k < 3; k++) expect((await src.fetch(id(), k * 10, k * 10 + 9)).equals(data.subarray(k * 10, k * 10 + 10))).toBe(true)
    // one direct try (307), then only the client's requests, which follow the redirect
    const gets = f.requests.filter(r => r.method === 'GET' && r.path.includes('/blobs/'))
    expect(gets).toHaveLength(4)
    expect(storage.requests).toHaveLength(3)
    expect(src.directStats).toEqual({ served: 0, failed: 0 })

    // a registry answering ranges chunked: one direct try, then the client only
    const chunked = await chunkedRangeServer()
    const { src: viaChunked } = directSource(chunked)
    for (let k = 0; k < 3; k++) expect((await viaChunked.fetch(id(), k * 10, k * 10 + 9)).equals(slice(k * 10, k * 10 + 9))).toBe(true)
    expect(chunked.gets()).toBe(4)
    expect(viaChunked.directStats).toEqual({ served: 0, failed: 0 })

    const https = new RegistryClient({}, { endpoint: '127.0.0.1:1' })
    const never = new RegistryRangeSource({ store: { getBlob: async () => { throw new Error('unused') }, readBlobRange: async (d, s, e, into, o) => await https.readBlobRange('a', d, s, e, into, o) } }, { retries: 0 })
    await expect(never.fetch(id(), 0, 9)).rejects.toThrow('unused')
    await expect(never.fetch(id(), 0, 9)).rejects.toThrow('unused')
  })

  it('enforces a per-request deadline: NAIAD_REG_TIMEOUT', async () => {
    reset()
    originSrv.delayMs = 2000
    const src = registrySource(originSrv, { timeoutMs: 150 })
    const t0 = Date.now()
    const e = await caught(src.fetch(id(), 0, 9))
    expect(e.code).toBe('NAIAD_REG_TIMEOUT')
    expect(Date.now() - t0).toBeLessThan(1500)
  })

  const withRegistry = haveRegistry() ? it : it.skip
  withRegistry('reads ranges from the real docker-registry; registry down → clear error; back up → works again', async () => {
    const reg: RunningRegistry = await startRegistry()
    cleanups.push(reg.stop)
    const client = new RegistryClient({}, { endpoint: reg.host, plainHttp: true, retries: 1, retryBaseDelayMs: 10, timeoutMs: 5000 })
    cleanups.push(async () => { await client.close() })
    const digest = parseDigest(`sha256:${id()}`)
    await client.pushBlob('naiad/fsd', { digest, size: tb.bytes.length }, tb.bytes)
    const src = new RegistryRangeSource({ store: { getBlob: async (d, o) => await client.getBlob('naiad/fsd', d, o) } }, { location: `${reg.host}/naiad/fsd`, retries: 1, retryBaseDelayMs: 10 })
    const ranges: Array<[number, number]> = [[0, 0], [0, 4095], [123, 4567], [tb.bytes.length - 100, tb.bytes.length - 1]]
    for (const [s, e] of ranges) expect((await src.fetch(id(), s, e)).equals(slice(s, e))).toBe(true)

    // through a cache: chunk reads verified against their digests
    const t = await tempDir()
    cleanups.push(t.cleanup)
    const cache = new BlobCache({}, { dir: t.dir, blob: tb.blob })
    await cache.open()
    cleanups.push(async () => { await cache.close() })
    const chain = new SourceChain({ sources: [src] })
    const r0 = tb.refs[0]!
    expect((await cache.read(r0, 0, r0.uncompressedSize, chain)).equals(tb.chunk(0))).toBe(true)

    // the registry goes away: a clear error naming the registry
    process.kill(reg.pid, 'SIGKILL')
    await until(() => { try { process.kill(reg.pid, 0); return false } catch { return true } }, 5000, 'registry gone')
    const e = await caught(src.fetch(id(), 0, 99))
    expect(e.code).toBe('NAIAD_REG_UNAVAILABLE')
    expect(e.message).toContain(reg.host)
    const r1 = tb.refs[1]!
    const ce = await caught(cache.read(r1, 0, 10, chain))
    expect(ce.code).toBe('NAIAD_REG_UNAVAILABLE')
    expect(ce.message).toContain(`chunk 1 of blob ${id()}`)
    expect(cache.isReady(1)).toBe(false)

    // it comes back (same address, same storage)
    const again = await restartRegistry(reg)
    cleanups.push(async () => { again.kill('SIGKILL'); await new Promise(resolve => again.once('exit', resolve)) })
    expect((await src.fetch(id(), 0, 99)).equals(slice(0, 99))).toBe(true)
    expect((await cache.read(r1, 0, r1.uncompressedSize, chain)).equals(tb.chunk(1))).toBe(true)
  })
})

/** Runs docker-registry again with the config startRegistry wrote; resolves once /v2/ answers. */
async function restartRegistry (reg: RunningRegistry): Promise<ChildProcess> {
  const fd = openSync(join(reg.dir, 'registry.log'), 'a')
  const child = spawn(REGISTRY_BIN, ['serve', join(reg.dir, 'config.yml')], { stdio: ['ignore', fd, fd] })
  closeSync(fd)
  const deadline = Date.now() + 15_000
  for (;;) {
    const status = await new Promise<number>(resolve => {
      const req = http.get(`${reg.url}/v2/`, res => { res.resume(); resolve(res.statusCode ?? 0) })
      req.on('error', () => resolve(0))
    })
    if (status === 200) return child
    if (Date.now() > deadline || child.exitCode !== null) throw new Error('docker-registry did not come back')
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}
