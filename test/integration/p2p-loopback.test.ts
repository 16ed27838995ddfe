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
import { RegistryClient } from '../../lib/registry/index.ts'
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
      mirror: { listen: '127.0.0.1:0' },
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
})
