import { randomBytes } from 'node:crypto'
import { Readable } from 'node:stream'
import { afterEach, describe, expect, it } from 'vitest'
import { sha256, type Digest } from '../../../lib/digest/index.ts'
import { MediaType, canonicalJson } from '../../../lib/oci/index.ts'
import { RegistryClient, staticCredentials, type RegistryClientDeps, type RegistryClientOptions } from '../../../lib/registry/index.ts'
import { startFakeRegistry, type FakeRegistry, type FakeRegistryOptions } from '../../helpers/fake-registry.ts'

const started: Array<{ stop: () => Promise<void> }> = []
const clients: RegistryClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close()
  for (const s of started.splice(0)) await s.stop()
})

async function fake (opts: FakeRegistryOptions = {}): Promise<FakeRegistry> {
  const f = await startFakeRegistry(opts)
  started.push(f)
  return f
}

function client (f: { host: string }, deps: RegistryClientDeps = {}, opts: Partial<RegistryClientOptions> = {}): RegistryClient {
  const c = new RegistryClient(deps, { endpoint: f.host, plainHttp: true, retryBaseDelayMs: 5, retryMaxDelayMs: 3000, timeoutMs: 5000, ...opts })
  clients.push(c)
  return c
}

async function readAll (s: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of s) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

function manifestFor (config: Buffer, layers: Buffer[]): Buffer {
  return canonicalJson({
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: sha256(config), size: config.length },
    layers: layers.map(l => ({ mediaType: MediaType.OciLayerGzip, digest: sha256(l), size: l.length }))
  })
}

describe('RegistryClient against the fake registry (no auth)', () => {
  it('reads manifests by tag and digest, with HEAD resolution', async () => {
    const f = await fake()
    const layer = randomBytes(1000)
    const m = manifestFor(Buffer.from('{}'), [layer])
    const d = f.addManifest('app', m, MediaType.OciManifest, 'v1')
    const c = client(f)
    const byTag = await c.getManifest('app', 'v1')
    expect(byTag.bytes.equals(m)).toBe(true)
    expect(byTag.descriptor).toEqual({ mediaType: MediaType.OciManifest, digest: d, size: m.length })
    const byDigest = await c.getManifest('app', d)
    expect(byDigest.descriptor.digest).toBe(d)
    expect(await c.headManifest('app', 'v1')).toEqual({ mediaType: MediaType.OciManifest, digest: d, size: m.length })
    const accept = f.requests.find(r => r.method === 'GET' && r.path.endsWith('/manifests/v1'))?.headers['accept']
    for (const mt of [MediaType.OciManifest, MediaType.OciIndex, MediaType.DockerManifest, MediaType.DockerManifestList]) expect(accept).toContain(mt)
    await expect(c.getManifest('app', 'nope')).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
    await expect(c.headManifest('app', 'nope')).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
  })

  it('detects a manifest whose bytes do not match the requested digest', async () => {
    const f = await fake()
    const m = manifestFor(Buffer.from('{}'), [])
    const d = f.addManifest('app', m, MediaType.OciManifest)
    f.fault({ method: 'GET', path: `/manifests/${d}`, corrupt: true })
    await expect(client(f).getManifest('app', d)).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
  })

  it('reads whole blobs verified, ranges exactly, and sizes with HEAD', async () => {
    const f = await fake()
    const data = randomBytes(300_000)
    const d = f.addBlob('app', data)
    const c = client(f)
    expect(await c.statBlob('app', d)).toBe(data.length)
    expect(await c.statBlob('app', sha256('missing'))).toBeUndefined()
    expect((await readAll(await c.getBlob('app', d))).equals(data)).toBe(true)
    expect((await readAll(await c.getBlob('app', d, { range: [1000, 1999] }))).equals(data.subarray(1000, 2000))).toBe(true)
    expect((await readAll(await c.getBlob('app', d, { range: [299_990, 400_000] }))).equals(data.subarray(299_990))).toBe(true)
    const rangeReq = f.requests.filter(r => r.headers.range !== undefined).map(r => r.headers.range)
    expect(rangeReq).toEqual(['bytes=1000-1999', 'bytes=299990-400000'])
    await expect(c.getBlob('app', sha256('missing'))).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
    await expect(c.getBlob('app', d, { range: [400_000, 400_001] })).rejects.toMatchObject({ code: 'NAIAD_REG_PROTOCOL' })
    await expect(c.getBlob('app', d, { size: 5 })).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
  })

  it('fails a corrupted blob with NAIAD_DIGEST_MISMATCH at the end of the stream', async () => {
    const f = await fake()
    const data = randomBytes(50_000)
    const d = f.addBlob('app', data)
    f.fault({ method: 'GET', path: '/blobs/', corrupt: true })
    const s = await client(f).getBlob('app', d)
    await expect(readAll(s)).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
  })

  it('refuses a 200 answer to a Range request', async () => {
    const f = await fake({ ignoreRange: true })
    const d = f.addBlob('app', randomBytes(1000))
    await expect(client(f).getBlob('app', d, { range: [0, 9] })).rejects.toMatchObject({ code: 'NAIAD_REG_RANGE_UNSUPPORTED' })
  })

  it('pushes blobs monolithically, in chunks, by mount, and skips existing ones', async () => {
    const f = await fake()
    const small = randomBytes(10_000)
    const big = randomBytes(5 * 1024 * 1024 + 123)
    const c = client(f, {}, { chunkSize: 1024 * 1024, monolithicMaxBytes: 64 * 1024 })
    const ds = sha256(small)
    const db = sha256(big)
    expect((await c.pushBlob('app', { digest: ds, size: small.length }, small)).outcome).toBe('uploaded')
    expect(f.blob('app', ds)?.equals(small)).toBe(true)
    expect(f.requests.filter(r => r.method === 'PATCH')).toHaveLength(0)

    f.clearRequests()
    const r = await c.pushBlob('app', { digest: db, size: big.length }, () => Readable.from([big.subarray(0, 777_777), big.subarray(777_777)]))
    expect(r.outcome).toBe('uploaded')
    expect(f.blob('app', db)?.equals(big)).toBe(true)
    const patches = f.requests.filter(r => r.method === 'PATCH')
    expect(patches).toHaveLength(6)
    expect(patches.map(p => p.headers['content-range'])).toEqual([
      '0-1048575', '1048576-2097151', '2097152-3145727', '3145728-4194303', '4194304-5242879', `5242880-${big.length - 1}`
    ])

    f.clearRequests()
    expect((await c.pushBlob('app', { digest: db, size: big.length }, big)).outcome).toBe('exists')
    expect(f.requests.map(r => r.method)).toEqual(['HEAD'])

    expect((await c.pushBlob('other', { digest: db, size: big.length }, big, { mountFrom: ['nothere', 'app'] })).outcome).toBe('mounted')
    expect(f.blob('other', db)?.equals(big)).toBe(true)
    // The failed mount's upload session was cancelled, the second mount succeeded.
    expect(f.requests.filter(r => r.method === 'DELETE')).toHaveLength(1)
  })

  it('refuses to upload content that does not match the descriptor', async () => {
    const f = await fake()
    const data = randomBytes(2000)
    const c = client(f, {}, { chunkSize: 512, monolithicMaxBytes: 100 })
    const wrong = sha256('something else') as Digest
    await expect(c.pushBlob('app', { digest: wrong, size: data.length }, data)).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    await expect(c.pushBlob('app', { digest: wrong, size: data.length }, () => Readable.from([data]))).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    await expect(c.pushBlob('app', { digest: sha256(data), size: 10 }, () => Readable.from([data]))).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    expect(f.blob('app', wrong)).toBeUndefined()
    // The streamed attempts opened sessions and cancelled them.
    expect(f.requests.filter(r => r.method === 'DELETE').length).toBeGreaterThanOrEqual(1)
  })

  it('restarts an upload whose PATCH hit a connection reset', async () => {
    const f = await fake()
    const data = randomBytes(3000)
    const c = client(f, {}, { chunkSize: 1000, monolithicMaxBytes: 100 })
    f.fault({ method: 'PATCH', reset: true })
    let sources = 0
    const r = await c.pushBlob('app', { digest: sha256(data), size: data.length }, () => { sources++; return Readable.from([data]) })
    expect(r.outcome).toBe('uploaded')
    expect(sources).toBe(2)
    expect(f.blob('app', sha256(data))?.equals(data)).toBe(true)
  })

  it('puts manifests by tag and digest and lists tags', async () => {
    const f = await fake()
    const c = client(f)
    const m = manifestFor(Buffer.from('{}'), [])
    const desc = await c.putManifest('app', 'v1', m, MediaType.OciManifest)
    expect(desc).toEqual({ mediaType: MediaType.OciManifest, digest: sha256(m), size: m.length })
    expect(f.manifest('app', 'v1')?.mediaType).toBe(MediaType.OciManifest)
    await c.putManifest('app', sha256(m), m, MediaType.OciManifest)
    await expect(c.putManifest('app', sha256('x'), m, MediaType.OciManifest)).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    await expect(c.putManifest('app', 'v2', Buffer.from('{"schemaVersion":2}'), MediaType.OciManifest)).rejects.toMatchObject({ code: 'NAIAD_OCI_BAD_MANIFEST' })
    await c.putManifest('app', 'v3', m, MediaType.OciManifest)
    expect(await c.listTags('app')).toEqual(['v1', 'v3'])
  })

  it('validates names and ranges before sending anything', async () => {
    const f = await fake()
    const c = client(f)
    await expect(c.getManifest('Bad/Name', 'v1')).rejects.toMatchObject({ code: 'NAIAD_REF_INVALID' })
    await expect(c.getManifest('app', 'bad tag')).rejects.toMatchObject({ code: 'NAIAD_REF_INVALID' })
    await expect(c.getBlob('app', sha256('x'), { range: [5, 2] })).rejects.toMatchObject({ code: 'NAIAD_INTERNAL' })
    expect(f.requests).toHaveLength(0)
  })
})

describe('transport: scheme, retries, timeouts, aborts', () => {
  it('uses HTTPS unless plain HTTP is asked for', () => {
    const mk = (endpoint: string, plainHttp?: boolean | 'loopback'): string => new RegistryClient({}, { endpoint, ...(plainHttp !== undefined ? { plainHttp } : {}) }).baseUrl
    expect(mk('127.0.0.1:5000')).toBe('https://127.0.0.1:5000')
    expect(mk('localhost:5000', false)).toBe('https://localhost:5000')
    expect(mk('reg.example.com', true)).toBe('http://reg.example.com')
    expect(mk('127.0.0.1:5000', 'loopback')).toBe('http://127.0.0.1:5000')
    expect(mk('localhost', 'loopback')).toBe('http://localhost')
    expect(mk('[::1]:5000', 'loopback')).toBe('http://[::1]:5000')
    expect(mk('reg.example.com', 'loopback')).toBe('https://reg.example.com')
    expect(() => mk('https://x')).toThrow(expect.objectContaining({ code: 'NAIAD_REF_INVALID' }) as Error)
  })

  it('retries 503 and connection resets, then succeeds', async () => {
    const f = await fake()
    const d = f.addBlob('app', Buffer.from('hello'))
    f.fault({ method: 'HEAD', status: 503, times: 2 })
    f.fault({ method: 'GET', reset: true, times: 2 })
    const c = client(f)
    expect(await c.statBlob('app', d)).toBe(5)
    expect((await readAll(await c.getBlob('app', d))).toString()).toBe('hello')
    expect(f.requests.filter(r => r.method === 'HEAD')).toHaveLength(3)
    expect(f.requests.filter(r => r.method === 'GET')).toHaveLength(3)
  })

  it('honours Retry-After on 429', async () => {
    const f = await fake()
    const d = f.addBlob('app', Buffer.from('x'))
    f.fault({ status: 429, retryAfter: '1' })
    const t0 = Date.now()
    expect(await client(f).statBlob('app', d)).toBe(1)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950)
  })

  it('gives up with NAIAD_REG_UNAVAILABLE after the retries', async () => {
    const f = await fake()
    f.fault({ status: 503, times: 100 })
    const c = client(f, {}, { retries: 2 })
    const err = await c.statBlob('app', sha256('x')).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'NAIAD_REG_UNAVAILABLE' })
    expect((err as Error).message).toMatch(/HTTP 503 from HEAD .* after 3 attempts/)
    expect(f.requests).toHaveLength(3)

    f.clearFaults()
    f.fault({ reset: true, times: 100 })
    await expect(c.statBlob('app', sha256('x'))).rejects.toMatchObject({ code: 'NAIAD_REG_UNAVAILABLE' })
  })

  it('quotes a short, redacted excerpt of large error bodies', async () => {
    const f = await fake()
    f.fault({ method: 'GET', status: 500, body: `upstream said Authorization: Bearer tok.en.value ${'z'.repeat(100_000)}` })
    const err = await client(f).getManifest('app', 'v1').catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'NAIAD_REG_PROTOCOL' })
    expect((err as Error).message).toMatch(/HTTP 500 from GET .*: upstream said Authorization: Bearer \[REDACTED\] z+…$/)
    expect((err as Error).message.length).toBeLessThan(500)
  })

  it('refuses manifests larger than 4 MiB', async () => {
    const f = await fake()
    f.addManifest('app', Buffer.alloc(4 * 1024 * 1024 + 1, 0x20), MediaType.OciManifest, 'huge')
    await expect(client(f).getManifest('app', 'huge')).rejects.toMatchObject({ code: 'NAIAD_REG_PROTOCOL' })
  })

  it('maps a refused connection to NAIAD_REG_UNAVAILABLE', async () => {
    const f = await fake()
    const host = f.host
    await f.stop()
    const c = client({ host }, {}, { retries: 1 })
    const err = await c.ping().catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'NAIAD_REG_UNAVAILABLE' })
    expect((err as Error).message).toMatch(/ECONNREFUSED/)
  })

  it('times out waiting for headers (NAIAD_REG_TIMEOUT) and for a stalled body', async () => {
    const f = await fake()
    const d = f.addBlob('app', randomBytes(100_000))
    f.fault({ method: 'HEAD', delayMs: 2000 })
    const c = client(f, {}, { timeoutMs: 200, retries: 0 })
    await expect(c.statBlob('app', d)).rejects.toMatchObject({ code: 'NAIAD_REG_TIMEOUT' })
    f.fault({ method: 'GET', stallAfter: 1000 })
    const s = await c.getBlob('app', d)
    await expect(readAll(s)).rejects.toMatchObject({ code: 'NAIAD_REG_TIMEOUT' })
  })

  it('aborts before a request and in the middle of a download', async () => {
    const f = await fake()
    const data = randomBytes(200_000)
    const d = f.addBlob('app', data)
    const c = client(f)
    const pre = new AbortController()
    pre.abort()
    await expect(c.getBlob('app', d, { signal: pre.signal })).rejects.toMatchObject({ name: 'AbortError' })

    f.fault({ method: 'GET', stallAfter: 10_000 })
    const ac = new AbortController()
    const s = await c.getBlob('app', d, { signal: ac.signal })
    let got = 0
    const done = (async () => { for await (const chunk of s) { got += (chunk as Buffer).length; if (got > 0) ac.abort() } })()
    await expect(done).rejects.toMatchObject({ name: 'AbortError' })
    expect(got).toBeGreaterThan(0)
    expect(got).toBeLessThan(data.length)

    // Aborting a backoff sleep stops the retries at once.
    f.fault({ status: 503, times: 100 })
    const slow = client(f, {}, { retryBaseDelayMs: 10_000, retryMaxDelayMs: 10_000 })
    const ac2 = new AbortController()
    setTimeout(() => ac2.abort(), 100)
    const t0 = Date.now()
    await expect(slow.statBlob('app', d, { signal: ac2.signal })).rejects.toMatchObject({ name: 'AbortError' })
    expect(Date.now() - t0).toBeLessThan(3000)
  })

  it("keeps the signal's own reason: AbortSignal.timeout gives a TimeoutError, also during backoff", async () => {
    const f = await fake()
    const d = f.addBlob('app', randomBytes(100_000))
    f.fault({ status: 503, times: 100 })
    const slow = client(f, {}, { retryBaseDelayMs: 10_000, retryMaxDelayMs: 10_000 })
    await expect(slow.statBlob('app', d, { signal: AbortSignal.timeout(100) })).rejects.toMatchObject({ name: 'TimeoutError' })
    f.clearFaults()
    f.fault({ method: 'GET', stallAfter: 1000 })
    const s = await client(f).getBlob('app', d, { signal: AbortSignal.timeout(300) })
    await expect(readAll(s)).rejects.toMatchObject({ name: 'TimeoutError' })
  })

  it('is closed after close(), which is safe twice', async () => {
    const f = await fake()
    const c = new RegistryClient({}, { endpoint: f.host, plainHttp: true })
    await c.ping()
    await c.close()
    await c.close()
    await expect(c.ping()).rejects.toMatchObject({ code: 'NAIAD_CLOSED' })
  })
})

describe('auth', () => {
  it('runs the bearer token flow with Basic credentials and reuses the token', async () => {
    const f = await fake({ auth: { type: 'bearer', username: 'alice', password: 'pw-1', service: 'svc' } })
    const d = f.addBlob('app', Buffer.from('data'))
    const c = client(f, { credentials: staticCredentials({ [f.host]: { username: 'alice', password: 'pw-1' } }) })
    expect(await c.statBlob('app', d)).toBe(4)
    expect((await readAll(await c.getBlob('app', d))).toString()).toBe('data')
    expect(f.tokensIssued).toBe(1)
    const tokenReq = f.requests.find(r => r.path === '/token')
    expect(tokenReq?.url).toContain('service=svc')
    expect(tokenReq?.url).toContain('scope=repository%3Aapp%3Apull')
    expect(tokenReq?.headers.authorization).toBe(`Basic ${Buffer.from('alice:pw-1').toString('base64')}`)
    // First request unauthenticated (401), then token, then the rest carry it.
    expect(f.requests.map(r => `${r.method} ${r.path.replace(/sha256:.*/, 'D')} ${r.headers.authorization?.split(' ')[0] ?? '-'}`)).toEqual([
      'HEAD /v2/app/blobs/D -', 'GET /token Basic', 'HEAD /v2/app/blobs/D Bearer', 'GET /v2/app/blobs/D Bearer'
    ])
  })

  it('re-authenticates when the registry rejects a token it issued (revoked/expired)', async () => {
    const f = await fake({ auth: { type: 'bearer', username: 'u', password: 'p' } })
    const d = f.addBlob('app', Buffer.from('x'))
    const c = client(f, { credentials: staticCredentials({ [f.host]: { username: 'u', password: 'p' } }) })
    await c.statBlob('app', d)
    expect(f.tokensIssued).toBe(1)
    f.revokeTokens()
    expect(await c.statBlob('app', d)).toBe(1)
    expect(f.tokensIssued).toBe(2)
  })

  it('refreshes a token when it expires', async () => {
    const f = await fake({ auth: { type: 'bearer', username: 'u', password: 'p', tokenTtlSeconds: 1 } })
    const d = f.addBlob('app', Buffer.from('x'))
    const c = client(f, { credentials: staticCredentials({ [f.host]: { username: 'u', password: 'p' } }) })
    await c.statBlob('app', d)
    await new Promise(resolve => setTimeout(resolve, 1100))
    expect(await c.statBlob('app', d)).toBe(1)
    expect(f.tokensIssued).toBe(2)
    // The client knew the token had expired: no 401 round trip for the second call.
    expect(f.requests.filter(r => r.path.includes('/blobs/')).length).toBe(3)
  })

  it('fetches a token with push scope for uploads, and pull scope for mount sources', async () => {
    const f = await fake({ auth: { type: 'bearer', username: 'u', password: 'p' } })
    const data = Buffer.from('layer')
    f.addBlob('base', data)
    const c = client(f, { credentials: staticCredentials({ [f.host]: { username: 'u', password: 'p' } }) })
    const r = await c.pushBlob('app', { digest: sha256(data), size: data.length }, data, { mountFrom: ['base'] })
    expect(r.outcome).toBe('mounted')
    const scopes = new URL(`http://x${f.requests.find(q => q.path === '/token')?.url ?? ''}`).searchParams.getAll('scope')
    expect(scopes.sort()).toEqual(['repository:app:pull,push', 'repository:base:pull'])
  })

  it('maps refused credentials and insufficient anonymous access to NAIAD_REG_UNAUTHORIZED', async () => {
    const f = await fake({ auth: { type: 'bearer', username: 'u', password: 'p', anonymousPull: true } })
    const d = f.addBlob('app', Buffer.from('x'))
    const bad = client(f, { credentials: staticCredentials({ [f.host]: { username: 'u', password: 'wrong' } }) })
    await expect(bad.statBlob('app', d)).rejects.toMatchObject({ code: 'NAIAD_REG_UNAUTHORIZED' })
    const anon = client(f)
    expect(await anon.statBlob('app', d)).toBe(1)
    await expect(anon.putManifest('app', 'v1', manifestFor(Buffer.from('{}'), []), MediaType.OciManifest)).rejects.toMatchObject({ code: 'NAIAD_REG_UNAUTHORIZED' })
  })

  it('exchanges an identity token with the OAuth2 POST', async () => {
    const f = await fake({ auth: { type: 'bearer', identityToken: 'refresh-xyz' } })
    const d = f.addBlob('app', Buffer.from('x'))
    const c = client(f, { credentials: staticCredentials({ [f.host]: { identityToken: 'refresh-xyz' } }) })
    expect(await c.statBlob('app', d)).toBe(1)
    const t = f.requests.find(r => r.path === '/token')
    expect(t?.method).toBe('POST')
  })

  it('uses Basic auth when challenged for it, and sends it up front afterwards', async () => {
    const f = await fake({ auth: { type: 'basic', username: 'bob', password: 'hunter2' } })
    const d = f.addBlob('app', Buffer.from('x'))
    const c = client(f, { credentials: staticCredentials({ [f.host]: { username: 'bob', password: 'hunter2' } }) })
    expect(await c.statBlob('app', d)).toBe(1)
    expect(await c.statBlob('app', d)).toBe(1)
    expect(f.requests.map(r => r.headers.authorization === undefined ? '-' : 'Basic')).toEqual(['-', 'Basic', 'Basic'])
    const bad = client(f, { credentials: staticCredentials({ [f.host]: { username: 'bob', password: 'nope' } }) })
    await expect(bad.statBlob('app', d)).rejects.toMatchObject({ code: 'NAIAD_REG_UNAUTHORIZED' })
    await expect(client(f).statBlob('app', d)).rejects.toMatchObject({ code: 'NAIAD_REG_UNAUTHORIZED' })
  })

  it('reads ranges directly with the token it holds; a 401 (no token yet, or revoked) is left to getBlob, which gets one', async () => {
    const f = await fake({ auth: { type: 'bearer', username: 'u', password: 'p' } })
    const data = randomBytes(100_000)
    const d = f.addBlob('app', data)
    const c = client(f, { credentials: staticCredentials({ [f.host]: { username: 'u', password: 'p' } }) }, { userAgent: 'naiad/direct-test' })
    const into = Buffer.alloc(1000)
    expect(await c.readBlobRange('app', d, 0, 999, into)).toMatchObject({ served: false, status: 401, stop: false })
    expect((await readAll(await c.getBlob('app', d, { range: [0, 999] }))).equals(data.subarray(0, 1000))).toBe(true)
    expect(await c.readBlobRange('app', d, 1000, 1999, into)).toEqual({ served: true })
    expect(into.equals(data.subarray(1000, 2000))).toBe(true)
    const direct = f.requests.at(-1)
    expect(direct?.headers.authorization).toMatch(/^Bearer /)
    expect(direct?.headers['user-agent']).toBe('naiad/direct-test')
    expect(direct?.headers.range).toBe('bytes=1000-1999')
    expect(f.tokensIssued).toBe(1)
    f.revokeTokens()
    expect(await c.readBlobRange('app', d, 0, 999, into)).toMatchObject({ served: false, status: 401 })
    await expect(c.readBlobRange('app', d, 5, 4, into)).rejects.toMatchObject({ code: 'NAIAD_INTERNAL' })
    await expect(c.readBlobRange('bad name!', d, 0, 999, into)).rejects.toMatchObject({ code: 'NAIAD_REF_INVALID' })
  })

  it('never reads directly over HTTPS or through an injected dispatcher', async () => {
    const f = await fake()
    const d = f.addBlob('app', randomBytes(100))
    const tls = new RegistryClient({}, { endpoint: f.host })
    clients.push(tls)
    expect(await tls.readBlobRange('app', d, 0, 9, Buffer.alloc(10))).toEqual({ served: false, status: 0, reason: 'https', stop: true })
    expect(f.requests).toHaveLength(0)
  })

  it('follows blob redirects to another host without sending Authorization there', async () => {
    const storage = await fake()
    const f = await fake({ auth: { type: 'bearer', username: 'u', password: 'p' }, redirectBlobsTo: storage })
    const data = randomBytes(10_000)
    const d = f.addBlob('app', data)
    const c = client(f, { credentials: staticCredentials({ [f.host]: { username: 'u', password: 'p' } }) })
    expect((await readAll(await c.getBlob('app', d))).equals(data)).toBe(true)
    expect((await readAll(await c.getBlob('app', d, { range: [10, 19] }))).equals(data.subarray(10, 20))).toBe(true)
    const onRegistry = f.requests.filter(r => r.method === 'GET' && r.path.includes('/blobs/'))
    expect(onRegistry.at(-1)?.headers.authorization).toMatch(/^Bearer /)
    expect(storage.requests).toHaveLength(2)
    for (const r of storage.requests) {
      expect(r.headers.authorization).toBeUndefined()
      expect(r.path).toBe(`/_storage/${d}`)
    }
    expect(storage.requests[1]?.headers.range).toBe('bytes=10-19')
  })
})
