/**
 * The p2p peer and scheduler in one process on 127.0.0.1, against the real docker-registry: the
 * mirror contract (headers, statuses, ranges), piece sharing between peers, origin protection,
 * fallbacks, restart re-announcement, eviction. Multi-host behaviour under real network conditions
 * is in p2p-netns.test.ts.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { request } from 'undici'
import { validateConfig } from '../../lib/config/index.ts'
import { sha256, type Digest } from '../../lib/digest/index.ts'
import { RegistryClient, staticCredentials } from '../../lib/registry/index.ts'
import { createLogger } from '../../lib/log/index.ts'
import { startFakeRegistry } from '../helpers/fake-registry.ts'
import { peerConfigSchema } from '../../p2p/config.ts'
import { Peer } from '../../p2p/peer/peer.ts'
import { SchedulerServer } from '../../p2p/scheduler/server.ts'
import { SchedulerAdmin } from '../../p2p/peer/scheduler-client.ts'
import { taskIdFor } from '../../p2p/protocol/index.ts'
import { haveRegistry, startCountingProxy, startRegistry, type CountingProxy, type RunningRegistry } from '../helpers/registry.ts'

const MiB = 1024 * 1024
const REPO = 'p2p/test'

describe.skipIf(!haveRegistry())('p2p on loopback', () => {
  let registry: RunningRegistry
  let proxy: CountingProxy
  let dir: string
  let scheduler: SchedulerServer
  const peers: Peer[] = []
  let origin: string

  async function pushBlob (bytes: Buffer): Promise<Digest> {
    const c = new RegistryClient({}, { endpoint: registry.host, plainHttp: true })
    const digest = sha256(bytes)
    await c.pushBlob(REPO, { digest, size: bytes.length }, bytes)
    await c.close()
    return digest
  }

  async function startPeer (name: string, extra: Record<string, unknown> = {}, schedulerAddress?: string): Promise<Peer> {
    const cfg = validateConfig(peerConfigSchema, {
      host: { id: name, ip: '127.0.0.1' },
      mirror: { listen: '127.0.0.1:0', ...(extra['mirror'] as object ?? {}) },
      upload: { listen: '127.0.0.1:0', ...(extra['upload'] as object ?? {}) },
      download: { piece_length: '1MiB', piece_timeout: '5s', wait_timeout: '5s', ...(extra['download'] as object ?? {}) },
      scheduler: { address: schedulerAddress ?? scheduler.address ?? '', connect_timeout: '1s', heartbeat_interval: '500ms', retry_interval: '500ms' },
      storage: { dir: join(dir, name), quota: '1GiB', ...(extra['storage'] as object ?? {}) },
      testing: extra['testing'] ?? {},
      shutdown: { grace: '1s' }
    })
    const p = new Peer({}, cfg)
    await p.start()
    peers.push(p)
    return p
  }

  function mirrorUrl (p: Peer): string {
    const a = p.mirrorAddress
    if (a?.kind !== 'tcp') throw new Error('no mirror')
    return `http://127.0.0.1:${a.port}`
  }

  async function get (p: Peer, digest: string, range?: string, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, body: Buffer }> {
    const res = await request(`${mirrorUrl(p)}/v2/${REPO}/blobs/${digest}`, { headers: { 'x-naiad-origin': origin, ...(range !== undefined ? { range } : {}), ...headers } })
    const body = Buffer.from(await res.body.arrayBuffer())
    return { status: res.statusCode, headers: res.headers, body }
  }

  async function waitVerified (p: Peer, taskId: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      const st = await (await request(`${mirrorUrl(p)}/api/v1/tasks/${taskId}`)).body.json() as { verified: boolean, downloading: boolean }
      if (st.verified && !st.downloading) return
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    throw new Error(`task ${taskId} not verified`)
  }

  beforeAll(async () => {
    registry = await startRegistry()
    proxy = await startCountingProxy(registry.host)
    origin = proxy.url
    dir = await mkdtemp(join(tmpdir(), 'naiad-p2p-'))
    scheduler = new SchedulerServer({}, { listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', hostTtlMs: 3000, sweepIntervalMs: 200 })
    await scheduler.start()
  })

  afterAll(async () => {
    for (const p of peers) await p.close()
    await scheduler?.close()
    await proxy?.stop()
    await registry?.stop()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('serves ranges of a blob from three peers, fetching each piece from the origin once', async () => {
    const blob = randomBytes(10 * MiB + 12345)
    const digest = await pushBlob(blob)
    const [a, b, c] = [await startPeer('a'), await startPeer('b'), await startPeer('c')]
    proxy.reset()
    const r1 = await get(a, digest, 'bytes=100-2000000')
    expect(r1.status).toBe(206)
    expect(r1.headers['content-range']).toBe(`bytes 100-2000000/${blob.length}`)
    expect(r1.body.equals(blob.subarray(100, 2000001))).toBe(true)
    const all = await Promise.all([a, b, c].map(async p => await get(p, digest)))
    for (const r of all) {
      expect(r.status).toBe(200)
      expect(createHash('sha256').update(r.body).digest('hex')).toBe(digest.slice(7))
    }
    const originBlobBytes = proxy.requests().filter(q => q.path.includes('/blobs/') && q.method === 'GET').reduce((n, q) => n + q.bytes, 0)
    expect(originBlobBytes).toBeLessThanOrEqual(blob.length * 1.1)
    expect(Number((await b.metrics.pieceBytes.get()).values.find(v => v.labels.source === 'peer')?.value ?? 0)).toBeGreaterThan(0)
    const admin = new SchedulerAdmin({ address: scheduler.address as string })
    const st = await admin.statTask(taskIdFor(digest, MiB))
    admin.close()
    expect(st?.contentLength).toBe(blob.length)
    expect(st?.holders.length).toBe(3)
  })

  it('origin read-ahead: a peer sent to the origin keeps the next pieces coming from it (bounded), and never fetches what another peer holds', async () => {
    const blob = randomBytes(12 * MiB)
    const digest = await pushBlob(blob)
    const originGets = (): Array<{ first: number, bytes: number }> => proxy.requests().filter(q => q.path.includes(digest) && q.method === 'GET').map(q => ({ first: Number(/bytes=(\d+)-/.exec(q.range ?? '')?.[1] ?? 0), bytes: q.bytes }))
    const settle = async (): Promise<void> => {
      let last = -1
      for (let i = 0; i < 100; i++) {
        await new Promise(resolve => setTimeout(resolve, 100))
        const n = originGets().reduce((x, q) => x + q.bytes, 0)
        if (n === last) return
        last = n
      }
    }
    // b already holds piece 4 (and nothing else) when a starts reading
    const b = await startPeer('ora-b', { download: { read_ahead_pieces: 0, origin_read_ahead_pieces: 0 } })
    const a = await startPeer('ora-a', { download: { read_ahead_pieces: 0, origin_read_ahead_pieces: 3 } })
    proxy.reset()
    expect((await get(b, digest, `bytes=${4 * MiB}-${4 * MiB + 99}`)).status).toBe(206)
    await settle()
    expect(originGets().map(q => q.first)).toEqual([4 * MiB])
    proxy.reset()
    // a reads 100 bytes of piece 2 only: it is sent to the origin for piece 2, then keeps the
    // pieces up to 3 beyond it coming from the origin (3 and 5: 4 is held by b), and no more
    const r = await get(a, digest, `bytes=${2 * MiB}-${2 * MiB + 99}`)
    expect(r.body.equals(blob.subarray(2 * MiB, 2 * MiB + 100))).toBe(true)
    await settle()
    expect(originGets().map(q => q.first / MiB).sort((x, y) => x - y)).toEqual([2, 3, 5])
    expect(originGets().reduce((x, q) => x + q.bytes, 0)).toBe(3 * MiB)
    // reading on extends it: the rest of the blob comes from the origin once, piece 4 from b
    const all = await get(a, digest)
    expect(createHash('sha256').update(all.body).digest('hex')).toBe(digest.slice(7))
    await settle()
    const firsts = originGets().map(q => q.first / MiB).sort((x, y) => x - y)
    expect(new Set(firsts).size).toBe(firsts.length)
    expect(firsts).not.toContain(4)
    expect(originGets().reduce((x, q) => x + q.bytes, 0)).toBe(11 * MiB)
  })

  it('follows the mirror contract: HEAD, suffix ranges, 416, 400 for non-blobs, 404 from the origin, healthz, metrics', async () => {
    const blob = randomBytes(3 * MiB + 7)
    const digest = await pushBlob(blob)
    const p = await startPeer('contract')
    const head = await request(`${mirrorUrl(p)}/v2/${REPO}/blobs/${digest}`, { method: 'HEAD', headers: { 'x-naiad-origin': origin } })
    await head.body.dump()
    expect(head.statusCode).toBe(200)
    expect(head.headers['content-length']).toBe(String(blob.length))
    const suffix = await get(p, digest, 'bytes=-10')
    expect(suffix.status).toBe(206)
    expect(suffix.headers['content-range']).toBe(`bytes ${blob.length - 10}-${blob.length - 1}/${blob.length}`)
    expect(suffix.body.equals(blob.subarray(blob.length - 10))).toBe(true)
    const open = await get(p, digest, `bytes=${blob.length - 5}-`)
    expect(open.body.equals(blob.subarray(blob.length - 5))).toBe(true)
    const past = await get(p, digest, `bytes=${blob.length}-`)
    expect(past.status).toBe(416)
    expect(past.headers['content-range']).toBe(`bytes */${blob.length}`)
    const multi = await get(p, digest, 'bytes=0-1,5-6')
    expect(multi.status).toBe(400)
    for (const path of [`/v2/${REPO}/manifests/latest`, `/v2/${REPO}/manifests/${digest}`, '/v2/', `/v2/${REPO}/tags/list`, `/v2/${REPO}/blobs/latest`]) {
      const r = await request(`${mirrorUrl(p)}${path}`, { headers: { 'x-naiad-origin': origin } })
      await r.body.dump()
      expect(r.statusCode, path).toBe(400)
      expect(r.headers['x-naiad-error-source']).toBe('peer')
    }
    const put = await request(`${mirrorUrl(p)}/v2/${REPO}/blobs/${digest}`, { method: 'PUT', body: 'x', headers: { 'x-naiad-origin': origin } })
    await put.body.dump()
    expect(put.statusCode).toBe(400)
    const noOrigin = await request(`${mirrorUrl(p)}/v2/${REPO}/blobs/${digest}`)
    await noOrigin.body.dump()
    expect(noOrigin.statusCode).toBe(400)
    const missing = await get(p, sha256('nothing here'), 'bytes=0-9')
    expect(missing.status).toBe(404)
    expect(missing.headers['x-naiad-error-source']).toBe('origin')
    const health = await request(`${mirrorUrl(p)}/healthz`)
    expect(health.statusCode).toBe(200)
    expect(await health.body.text()).toBe('ok\n')
    const metrics = await request(`${mirrorUrl(p)}/metrics`)
    const text = await metrics.body.text()
    expect(text).toContain('naiad_p2p_peer_piece_bytes_total{source="origin"}')
    expect(text).toContain('naiad_p2p_peer_mirror_requests_total')
    const sm = scheduler.metricsAddress
    if (sm?.kind !== 'tcp') throw new Error('no scheduler metrics')
    const smText = await (await request(`http://127.0.0.1:${sm.port}/metrics`)).body.text()
    expect(smText).toContain('naiad_p2p_scheduler_assignments_total{action="back_to_source"}')
  })

  it('refuses origins outside allowed_origins', async () => {
    const p = await startPeer('allow', { mirror: { allowed_origins: ['https://registry.example'] } })
    const r = await get(p, sha256('x'), 'bytes=0-1')
    expect(r.status).toBe(403)
  })

  it('a corrupt parent is detected, blocklisted cluster-wide, and readers still get the right bytes', async () => {
    const blob = randomBytes(6 * MiB)
    const digest = await pushBlob(blob)
    const bad = await startPeer('bad', { testing: { fault_corrupt_uploads: true } })
    const pre = await request(`${mirrorUrl(bad)}/api/v1/preheat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ origin, repository: REPO, digest }) })
    expect(pre.statusCode).toBe(202)
    const { taskId } = await pre.body.json() as { taskId: string }
    await waitVerified(bad, taskId)
    const good = await startPeer('good')
    const r = await get(good, digest)
    expect(r.status).toBe(200)
    expect(r.body.equals(blob)).toBe(true)
    expect((await good.metrics.digestMismatches.get()).values[0]?.value).toBeGreaterThanOrEqual(1)
    const admin = new SchedulerAdmin({ address: scheduler.address as string })
    const hosts = await admin.listHosts(false)
    admin.close()
    expect(hosts.find(h => h.host.id === 'bad')?.blocklistedUntil).toBeGreaterThan(Date.now())
  })

  it('without a reachable scheduler every piece comes from the origin and readers are served', async () => {
    const blob = randomBytes(3 * MiB)
    const digest = await pushBlob(blob)
    const lonely = await startPeer('lonely', {}, '127.0.0.1:1')
    const r = await get(lonely, digest, 'bytes=1000-3000000')
    expect(r.status).toBe(206)
    expect(r.body.equals(blob.subarray(1000, 3000001))).toBe(true)
    let bts = 0
    for (let i = 0; i < 50 && bts < 3; i++) {
      bts = (await lonely.metrics.backToSource.get()).values.find(v => v.labels.reason === 'no-scheduler')?.value ?? 0
      if (bts < 3) await new Promise(resolve => setTimeout(resolve, 20))
    }
    expect(bts).toBeGreaterThanOrEqual(3)
  })

  it('a scheduler that goes away mid-download: the rest comes from the origin', async () => {
    const blob = randomBytes(8 * MiB)
    const digest = await pushBlob(blob)
    const s2 = new SchedulerServer({}, { listen: '127.0.0.1:0', graceMs: 100 })
    await s2.start()
    const p = await startPeer('orphan', {}, s2.address)
    const first = await get(p, digest, 'bytes=0-1000')
    expect(first.body.equals(blob.subarray(0, 1001))).toBe(true)
    await s2.close()
    const rest = await get(p, digest)
    expect(rest.body.equals(blob)).toBe(true)
  })

  it('pieces on disk are announced again after a restart and served to others', async () => {
    const blob = randomBytes(4 * MiB)
    const digest = await pushBlob(blob)
    const r1 = await startPeer('restart')
    expect((await get(r1, digest)).body.equals(blob)).toBe(true)
    await r1.close()
    peers.splice(peers.indexOf(r1), 1)
    const r2 = await startPeer('restart')
    const admin = new SchedulerAdmin({ address: scheduler.address as string })
    let holders: string[] = []
    for (let i = 0; i < 50; i++) {
      holders = (await admin.statTask(taskIdFor(digest, MiB)))?.holders.map(h => h.hostId) ?? []
      if (holders.includes('restart')) break
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    admin.close()
    expect(holders).toContain('restart')
    proxy.reset()
    const other = await startPeer('after-restart')
    expect((await get(other, digest)).body.equals(blob)).toBe(true)
    expect(proxy.requests().filter(q => q.method === 'GET' && q.path.includes('/blobs/')).reduce((n, q) => n + q.bytes, 0)).toBe(0)
    void r2
  })

  it('evicts least recently used blobs beyond the quota and tells the scheduler', async () => {
    const a = randomBytes(2 * MiB)
    const b = randomBytes(2 * MiB)
    const da = await pushBlob(a)
    const db = await pushBlob(b)
    const p = await startPeer('small', { storage: { quota: '3MiB' } })
    expect((await get(p, da)).body.equals(a)).toBe(true)
    await waitVerified(p, taskIdFor(da, MiB))
    expect((await get(p, db)).body.equals(b)).toBe(true)
    await waitVerified(p, taskIdFor(db, MiB))
    expect((await p.metrics.evictions.get()).values[0]?.value).toBe(1)
    const admin = new SchedulerAdmin({ address: scheduler.address as string })
    let holders: string[] = ['small']
    for (let i = 0; i < 50 && holders.includes('small'); i++) {
      holders = (await admin.statTask(taskIdFor(da, MiB)))?.holders.map(h => h.hostId) ?? []
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    admin.close()
    expect(holders).not.toContain('small')
    // still readable: fetched again
    expect((await get(p, da, 'bytes=0-99')).body.equals(a.subarray(0, 100))).toBe(true)
  })
})

describe('p2p on loopback: streaming and credentials (fake registry)', () => {
  let dir: string
  const peers: Peer[] = []
  const logs: string[] = []
  const sink = { write: (s: string) => { logs.push(s) } }

  async function peer (name: string, o: { scheduler?: string, upload?: object, credentials?: boolean } = {}): Promise<Peer> {
    const cfg = validateConfig(peerConfigSchema, {
      host: { id: name, ip: '127.0.0.1' },
      mirror: { listen: '127.0.0.1:0' },
      upload: { listen: '127.0.0.1:0', ...(o.upload ?? {}) },
      download: { piece_length: '1MiB', piece_timeout: '10s', read_ahead_pieces: 0 },
      scheduler: { address: o.scheduler ?? '', connect_timeout: '1s', heartbeat_interval: '500ms' },
      storage: { dir: join(dir, name), quota: '1GiB' },
      shutdown: { grace: '100ms' }
    })
    const p = new Peer({ logger: createLogger({ service: 'p2p-peer', level: 'trace', destination: sink }), credentials: staticCredentials({}) }, cfg)
    await p.start()
    peers.push(p)
    return p
  }

  const url = (p: Peer): string => `http://127.0.0.1:${(p.mirrorAddress as { port: number }).port}`

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'naiad-p2p-fake-'))
  })

  afterAll(async () => {
    for (const p of peers) await p.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('streams origin bytes as they arrive: the first bytes of a range do not wait for the whole piece', async () => {
    const fake = await startFakeRegistry()
    try {
      const blob = randomBytes(2 * MiB)
      const digest = fake.addBlob('a/b', blob)
      fake.fault({ method: 'GET', path: '/blobs/', stallAfter: 300_000, times: 10 })
      const p = await peer('stall')
      const t0 = Date.now()
      const res = await request(`${url(p)}/v2/a/b/blobs/${digest}`, { headers: { 'x-naiad-origin': fake.url, range: 'bytes=0-99999' } })
      const body = Buffer.from(await res.body.arrayBuffer())
      expect(res.statusCode).toBe(206)
      expect(body.equals(blob.subarray(0, 100000))).toBe(true)
      // the piece (1 MiB) never completes: the origin stalls after 300 kB
      expect(Date.now() - t0).toBeLessThan(5000)
    } finally {
      await fake.stop()
    }
  })

  it('streams verified blocks from a slow parent before its piece is complete', async () => {
    const s = new SchedulerServer({}, { listen: '127.0.0.1:0', graceMs: 100 })
    await s.start()
    const fake = await startFakeRegistry()
    try {
      const blob = randomBytes(MiB)
      const digest = fake.addBlob('a/b', blob)
      const parent = await peer('slow-parent', { scheduler: s.address as string, upload: { rate_limit: '256KiB' } })
      expect((await request(`${url(parent)}/v2/a/b/blobs/${digest}`, { headers: { 'x-naiad-origin': fake.url } })).statusCode).toBe(200)
      await new Promise(resolve => setTimeout(resolve, 300))
      const child = await peer('child', { scheduler: s.address as string })
      const t0 = Date.now()
      const res = await request(`${url(child)}/v2/a/b/blobs/${digest}`, { headers: { 'x-naiad-origin': fake.url, range: 'bytes=0-999' } })
      const body = Buffer.from(await res.body.arrayBuffer())
      const ms = Date.now() - t0
      expect(body.equals(blob.subarray(0, 1000))).toBe(true)
      // the whole piece takes 4 s at 256 KiB/s; its first 256 KiB block about 1 s
      expect(ms).toBeLessThan(2500)
      expect(fake.requests.filter(r => r.method === 'GET' && r.path.includes('/blobs/')).length).toBe(1)
    } finally {
      await fake.stop()
      await s.close()
    }
  })

  it('uses the requester\'s Authorization for the origin only, and never logs it', async () => {
    const s = new SchedulerServer({ logger: createLogger({ service: 'p2p-scheduler', level: 'trace', destination: sink }) }, { listen: '127.0.0.1:0', graceMs: 100 })
    await s.start()
    const fake = await startFakeRegistry({ auth: { type: 'basic', username: 'alice', password: 'hunter2-very-secret' } })
    try {
      const blob = randomBytes(MiB + 10)
      const digest = fake.addBlob('priv/img', blob)
      const p = await peer('authd', { scheduler: s.address as string })
      const token = Buffer.from('alice:hunter2-very-secret').toString('base64')
      const ok = await request(`${url(p)}/v2/priv/img/blobs/${digest}`, { headers: { 'x-naiad-origin': fake.url, range: 'bytes=0-99', authorization: `Basic ${token}` } })
      expect(ok.statusCode).toBe(206)
      expect(Buffer.from(await ok.body.arrayBuffer()).equals(blob.subarray(0, 100))).toBe(true)
      const other = fake.addBlob('priv/img', randomBytes(1000))
      const denied = await request(`${url(p)}/v2/priv/img/blobs/${other}`, { headers: { 'x-naiad-origin': fake.url, range: 'bytes=0-99' } })
      await denied.body.dump()
      expect(denied.statusCode).toBe(502)
      expect(denied.headers['x-naiad-error-source']).toBe('origin')
      const all = logs.join('')
      expect(all.length).toBeGreaterThan(0)
      expect(all).not.toContain('hunter2-very-secret')
      expect(all).not.toContain(token)
      expect(fake.requests.filter(r => r.headers.authorization !== undefined).every(r => r.path.startsWith('/v2/priv/img/'))).toBe(true)
    } finally {
      await fake.stop()
      await s.close()
    }
  })
})
