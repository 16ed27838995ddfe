/**
 * Multi-host p2p in network namespaces (root only): a registry host, a scheduler host and five
 * peer hosts on a bridge, each link rate-limited with tc. The daemons are the real `naiad peer`
 * and `naiad scheduler` processes (dist/, built by `npm run build`), each reader a separate
 * process in its peer's namespace doing Range reads through that peer's mirror
 * (dist/bench/p2p/reader.js). The registry's own access log counts the bytes it served.
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import type { ChildProcess } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { haveRegistry } from '../helpers/registry.ts'
import { canUseNetns, killChild, NetLab, NetnsRegistry } from '../helpers/netns.ts'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const NAIAD = join(ROOT, 'dist/bin/naiad.js')
const READER = join(ROOT, 'dist/bench/p2p/reader.js')
const MiB = 1024 * 1024
const SIZE = 64 * MiB
const REPO = 'p2p/blob'
const PEERS = ['p1', 'p2', 'p3', 'p4']
const RATE = 200 // Mbit/s per link

const runnable = canUseNetns() && haveRegistry() && existsSync(NAIAD) && existsSync(READER)

interface ReadResult { ok: boolean, sha256: string, ms: number, errors: number, error?: string }

describe.skipIf(!runnable)('p2p across network namespaces', () => {
  let lab: NetLab
  let dir: string
  let registry: NetnsRegistry
  let scheduler: ChildProcess | undefined
  const peers = new Map<string, ChildProcess>()
  const blobs: Record<string, { digest: string, bytes: Buffer }> = {}

  const ip = (h: string): string => lab.host(h).ip
  const schedAddr = (): string => `${ip('sched')}:65010`

  async function startScheduler (): Promise<void> {
    const cfg = join(dir, 'scheduler.toml')
    await writeFile(cfg, [
      '[server]', `listen = "${schedAddr()}"`,
      '[metrics]', 'listen = "127.0.0.1:65011"',
      '[hosts]', 'ttl = "4s"', 'sweep_interval = "500ms"',
      '[scheduling]', 'blocklist_ttl = "10m"',
      '[shutdown]', 'grace = "1s"',
      '[log]', 'level = "info"'
    ].join('\n') + '\n')
    scheduler = lab.spawn('sched', process.execPath, [NAIAD, 'scheduler', '--config', cfg], { logFile: join(dir, 'scheduler.log') })
    await lab.waitHttp('sched', 'http://127.0.0.1:65011/healthz')
  }

  async function startPeer (h: string, o: { seed?: boolean, corrupt?: boolean } = {}): Promise<void> {
    const cfg = join(dir, `${h}.toml`)
    await writeFile(cfg, [
      '[host]', `id = "${h}"`, `ip = "${ip(h)}"`,
      '[mirror]', 'listen = "127.0.0.1:65001"',
      '[upload]', `listen = "${ip(h)}:65002"`,
      '[download]', 'piece_timeout = "3s"', 'wait_timeout = "10s"', 'read_ahead_pieces = 2',
      '[scheduler]', `address = "${schedAddr()}"`, 'connect_timeout = "1s"', 'heartbeat_interval = "1s"', 'retry_interval = "1s"',
      '[storage]', `dir = "${join(dir, 'store', h)}"`, 'quota = "2GiB"',
      '[shutdown]', 'grace = "1s"',
      '[log]', 'level = "info"',
      '[testing]', `fault_corrupt_uploads = ${o.corrupt === true}`
    ].join('\n') + '\n')
    const child = lab.spawn(h, process.execPath, [NAIAD, 'peer', '--config', cfg, ...(o.seed === true ? ['--seed'] : [])], { logFile: join(dir, `${h}.log`) })
    peers.set(h, child)
    await lab.waitHttp(h, 'http://127.0.0.1:65001/healthz')
  }

  async function read (h: string, digest: string, o: { order?: 'seq' | 'random', seed?: number, chunk?: number } = {}): Promise<ReadResult> {
    const out = await lab.exec(h, process.execPath, [READER, '--url', 'http://127.0.0.1:65001', '--origin', registry.url, '--repo', REPO, '--digest', digest, '--size', String(SIZE),
      '--chunk', String(o.chunk ?? MiB + 333), '--concurrency', '4', '--order', o.order ?? 'random', '--seed', String(o.seed ?? 1)])
    return JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as ReadResult
  }

  async function metric (h: string, url: string, name: string): Promise<number> {
    const text = await lab.curl(h, url) ?? ''
    let sum = 0
    for (const line of text.split('\n')) if (line.startsWith(name)) sum += Number(line.split(' ').at(-1))
    return sum
  }

  beforeAll(async () => {
    await NetLab.cleanupStale()
    lab = new NetLab()
    dir = await mkdtemp(join(tmpdir(), 'naiad-p2p-netns-'))
    await lab.create()
    await lab.addHost('reg', { rateMbit: RATE })
    await lab.addHost('sched', { rateMbit: RATE })
    for (const h of [...PEERS, 'p5']) await lab.addHost(h, { rateMbit: RATE })
    registry = new NetnsRegistry(lab, 'reg', join(dir, 'registry'))
    for (const name of ['shared', 'killed', 'corrupt', 'nosched']) {
      const bytes = randomBytes(SIZE)
      blobs[name] = { digest: await registry.addBlob(REPO, bytes), bytes }
    }
    await registry.addImage(REPO, 'killed', [{ digest: blobs['killed']?.digest ?? '', size: SIZE }])
    await registry.start()
    await startScheduler()
    await Promise.all(PEERS.map(async h => { await startPeer(h) }))
  })

  afterAll(async () => {
    await lab?.destroy()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('4 peers range-read the same 64 MiB blob: every reader gets the right bytes, the registry serves it about once', async () => {
    const b = blobs['shared'] as { digest: string }
    const results = await Promise.all(PEERS.map(async (h, i) => await read(h, b.digest, { seed: i + 1 })))
    for (const r of results) expect(r, JSON.stringify(r)).toMatchObject({ ok: true, sha256: b.digest, errors: 0 })
    const served = await registry.blobBytes(b.digest)
    console.log(`shared blob: registry served ${(served / SIZE).toFixed(3)} × the blob; reader times ${results.map(r => r.ms).join(', ')} ms`)
    expect(served).toBeGreaterThanOrEqual(SIZE)
    expect(served).toBeLessThanOrEqual(1.1 * SIZE)
    const fromPeers = await metric('p1', 'http://127.0.0.1:65001/metrics', 'naiad_p2p_peer_piece_bytes_total{source="peer"}') +
      await metric('p2', 'http://127.0.0.1:65001/metrics', 'naiad_p2p_peer_piece_bytes_total{source="peer"}')
    expect(fromPeers).toBeGreaterThan(0)
  })

  it('a parent killed mid-transfer: readers still finish with the right bytes', async () => {
    const b = blobs['killed'] as { digest: string }
    await startPeer('p5', { seed: true })
    // `naiad preheat` warms the seed (found through the scheduler) with the image's blob
    const out = await lab.exec('sched', process.execPath, [NAIAD, 'preheat', `${registry.host}/${REPO}:killed`, '--plain-http', '--scheduler', schedAddr(), '--timeout', '60s'])
    expect(out).toContain('preheated')
    expect(await registry.blobBytes(b.digest)).toBeLessThanOrEqual(1.1 * SIZE)
    // slow the seed's uplink so that transfers from it are in flight when it dies
    await lab.setRate('p5', 40, RATE)
    const reads = Promise.all(PEERS.map(async (h, i) => await read(h, b.digest, { order: 'seq', seed: i + 1, chunk: MiB })))
    await new Promise(resolve => setTimeout(resolve, 2500))
    const uploaded = await metric('p5', 'http://127.0.0.1:65001/metrics', 'naiad_p2p_peer_upload_bytes_total')
    expect(uploaded).toBeGreaterThan(0)
    await killChild(peers.get('p5') as ChildProcess, 'SIGKILL')
    const results = await reads
    for (const r of results) expect(r, JSON.stringify(r)).toMatchObject({ ok: true, sha256: b.digest, errors: 0 })
    const served = await registry.blobBytes(b.digest)
    console.log(`killed parent: the seed had uploaded ${uploaded} bytes; registry served ${(served / SIZE).toFixed(3)} × the blob in all (preheat included); reader times ${results.map(r => r.ms).join(', ')} ms`)
    expect(served).toBeLessThanOrEqual(2.1 * SIZE)
    await lab.setRate('p5', RATE)
  })

  it('a peer serving corrupt pieces is detected and blocklisted; readers still get the right bytes', async () => {
    const b = blobs['corrupt'] as { digest: string }
    // p5 comes back (same store: its pieces are re-announced) with the test-only fault enabled
    await startPeer('p5', { seed: true, corrupt: true })
    const pre = await lab.exec('p5', 'curl', ['-sf', '-X', 'POST', '-H', 'content-type: application/json', '--data', JSON.stringify({ origin: registry.url, repository: REPO, digest: b.digest }), 'http://127.0.0.1:65001/api/v1/preheat'])
    const { taskId } = JSON.parse(pre) as { taskId: string }
    for (let i = 0; i < 200; i++) {
      const st = JSON.parse(await lab.curl('p5', `http://127.0.0.1:65001/api/v1/tasks/${taskId}`) ?? '{}') as { verified?: boolean }
      if (st.verified === true) break
      await new Promise(resolve => setTimeout(resolve, 200))
    }
    const results = await Promise.all(PEERS.map(async (h, i) => await read(h, b.digest, { seed: i + 7 })))
    for (const r of results) expect(r, JSON.stringify(r)).toMatchObject({ ok: true, sha256: b.digest, errors: 0 })
    let mismatches = 0
    for (const h of PEERS) mismatches += await metric(h, 'http://127.0.0.1:65001/metrics', 'naiad_p2p_peer_piece_digest_mismatches_total')
    console.log(`corrupt peer: ${mismatches} mismatching pieces detected; registry served ${((await registry.blobBytes(b.digest)) / SIZE).toFixed(3)} × the blob (preheat included)`)
    expect(mismatches).toBeGreaterThanOrEqual(1)
    expect(await metric('sched', 'http://127.0.0.1:65011/metrics', 'naiad_p2p_scheduler_blocklisted_total{reason="digest_mismatch"}')).toBeGreaterThanOrEqual(1)
    expect(await metric('sched', 'http://127.0.0.1:65011/metrics', 'naiad_p2p_scheduler_blocklisted_hosts')).toBeGreaterThanOrEqual(1)
    await killChild(peers.get('p5') as ChildProcess)
  })

  it('with the scheduler down, peers fall back to the origin', async () => {
    const b = blobs['nosched'] as { digest: string }
    await killChild(scheduler as ChildProcess)
    const results = await Promise.all(PEERS.map(async (h, i) => await read(h, b.digest, { seed: i + 11 })))
    for (const r of results) expect(r, JSON.stringify(r)).toMatchObject({ ok: true, sha256: b.digest, errors: 0 })
    expect(await registry.blobBytes(b.digest)).toBeGreaterThanOrEqual(SIZE)
    let bts = 0
    for (const h of PEERS) bts += await metric(h, 'http://127.0.0.1:65001/metrics', 'naiad_p2p_peer_back_to_source_total{reason="no-scheduler"}')
    expect(bts).toBeGreaterThanOrEqual(4 * 16)
    // and when it is back, the peers announce themselves and what they hold again
    await startScheduler()
    let hosts = 0
    for (let i = 0; i < 50 && hosts < 4; i++) {
      hosts = await metric('sched', 'http://127.0.0.1:65011/metrics', 'naiad_p2p_scheduler_hosts')
      await new Promise(resolve => setTimeout(resolve, 200))
    }
    expect(hosts).toBe(4)
  })
})
