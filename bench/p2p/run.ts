/**
 * The p2p distribution benchmark: N = 4, 8, 16 peer hosts in network namespaces (plus a registry
 * host and a scheduler host), every link limited with `tc tbf` (default 100 Mbit/s each way), all
 * reading the same blob (default 256 MiB) with Range requests through their peer's mirror. For each
 * N it prints the total time (until the last reader has the whole blob, verified), the registry's
 * bytes ÷ the blob size, the lower bound T ≥ max(S/O, S/D, N·S/(O + N·U)) and the time of N direct
 * pulls from the registry in the same setup.
 *
 *   npm run bench:p2p -- [--peers 4,8,16] [--size 256MiB] [--rate 100] [--queue-ms 100] [--order seq|random]
 *                        [--chunk 1MiB] [--concurrency 4] [--skip-direct] [--json out.json]
 *                        [--origin-read-ahead K] [--parent-selection score|ring] [--cpu-prof DIR (profiles peers p1 and p9 and the reader of p1)]
 *
 * `--transfers`: runs the peers at log level debug and prints, per peer, the transfers in flight, each
 * transfer's rate, the wait for an assignment and the sources (bench/p2p/transfers.ts).
 * `--queue-ms`: tbf's queue on every link (ms of its rate). `--verbose` adds per-peer sources, CPU
 * use, the scheduler's assignments and a timeline of the origin link's use and the peers' mean
 * download rate per 5 s (from the switch's counters).
 *
 * Needs root, iproute2, docker-registry and a build (`npm run build`).
 */
import { randomBytes } from 'node:crypto'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { parseSize } from '../../lib/config/index.ts'
import { canUseNetns, killChild, NetLab, NetnsRegistry } from '../../test/helpers/netns.ts'
import { parsePieceLines, transferStats } from './transfers.ts'

const ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const NAIAD = join(ROOT, 'dist/bin/naiad.js')
const READER = join(ROOT, 'dist/bench/p2p/reader.js')
const REPO = 'bench/blob'

const { values: a } = parseArgs({
  options: {
    peers: { type: 'string', default: '4,8,16' },
    size: { type: 'string', default: '256MiB' },
    rate: { type: 'string', default: '100' },
    'queue-ms': { type: 'string', default: '100' },
    order: { type: 'string', default: 'seq' },
    chunk: { type: 'string', default: '1MiB' },
    concurrency: { type: 'string', default: '4' },
    'piece-length': { type: 'string', default: '4MiB' },
    'read-ahead': { type: 'string' },
    'concurrent-pieces': { type: 'string' },
    'upload-concurrent': { type: 'string' },
    'skip-direct': { type: 'boolean', default: false },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
    'log-level': { type: 'string', default: 'warn' },
    'origin-per-task': { type: 'string' },
    'parent-selection': { type: 'string' },
    'origin-per-peer': { type: 'string' },
    'origin-read-ahead': { type: 'string' },
    'cpu-prof': { type: 'string' },
    'peer-node-options': { type: 'string' },
    transfers: { type: 'boolean', default: false }
  }
})

interface ReadResult { ok: boolean, ms: number, errors: number, cpuMs?: number, error?: string }

interface Row {
  n: number
  sizeBytes: number
  rateMbit: number
  p2pSeconds: number
  registryRatio: number
  boundSeconds: number
  ratioToBound: number
  directSeconds: number | undefined
  directRegistryRatio: number | undefined
  readersOk: boolean
  slowestReader: number
  fastestReader: number
}

/** A TOML line for a tuning flag, or nothing to keep the daemon's default. */
function opt (key: string, v: string | undefined): string[] {
  return v === undefined ? [] : [`${key} = ${Number(v)}`]
}

const S = parseSize(a.size) ?? 0
const RATE = Number(a.rate)
const BPS = RATE * 1e6 / 8

/** /proc/stat's first line: user nice system idle iowait irq softirq steal (ticks of 10 ms). */
async function cpuTicks (): Promise<number[]> {
  return (await readFile('/proc/stat', 'utf8')).split('\n')[0]?.trim().split(/\s+/).slice(1, 9).map(Number) ?? []
}

function bound (n: number): number {
  const O = BPS
  const U = BPS
  const D = BPS
  return Math.max(S / O, S / D, n * S / (O + n * U))
}

async function runOne (n: number): Promise<Row> {
  const lab = new NetLab()
  const dir = await mkdtemp(join(tmpdir(), 'naiad-bench-p2p-'))
  const children: ChildProcess[] = []
  try {
    lab.queueMs = Number(a['queue-ms'])
    await lab.create()
    await lab.addHost('reg', { rateMbit: RATE })
    await lab.addHost('sched', { rateMbit: RATE })
    const names = Array.from({ length: n }, (_, i) => `p${i + 1}`)
    for (const h of names) await lab.addHost(h, { rateMbit: RATE })
    const registry = new NetnsRegistry(lab, 'reg', join(dir, 'registry'))
    const digest = await registry.addBlob(REPO, randomBytes(S))
    await registry.start()
    const read = async (h: string, url: string, origin?: string): Promise<ReadResult> => {
      const prof = a['cpu-prof'] !== undefined && h === 'p1' && origin !== undefined ? ['--cpu-prof', '--cpu-prof-dir', a['cpu-prof'], '--cpu-prof-name', 'reader-p1.cpuprofile'] : []
      const out = await lab.exec(h, process.execPath, [...prof, READER, '--url', url, '--repo', REPO, '--digest', digest, '--size', String(S),
        '--chunk', String(parseSize(a.chunk)), '--concurrency', a.concurrency, '--order', a.order, '--seed', h.slice(1), ...(origin !== undefined ? ['--origin', origin] : [])])
      return JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as ReadResult
    }

    let directSeconds: number | undefined
    let directRegistryRatio: number | undefined
    if (!a['skip-direct']) {
      const before = await registry.blobBytes(digest)
      const t0 = performance.now()
      const rs = await Promise.all(names.map(async h => await read(h, registry.url)))
      directSeconds = (performance.now() - t0) / 1000
      directRegistryRatio = (await registry.blobBytes(digest) - before) / S
      if (!rs.every(r => r.ok)) throw new Error(`direct pulls failed: ${JSON.stringify(rs.filter(r => !r.ok).slice(0, 2))}`)
      process.stderr.write(`N=${n}: ${n} direct pulls took ${directSeconds.toFixed(1)} s\n`)
    }

    const sched = lab.host('sched')
    const scfg = join(dir, 'scheduler.toml')
    await writeFile(scfg, ['[server]', `listen = "${sched.ip}:65010"`, '[metrics]', 'listen = "127.0.0.1:65011"', '[scheduling]', ...opt('origin_concurrency_per_task', a['origin-per-task']), ...opt('origin_permits_per_peer', a['origin-per-peer']), ...(a['parent-selection'] !== undefined ? [`parent_selection = "${a['parent-selection']}"`] : []), '[log]', 'level = "warn"'].join('\n') + '\n')
    children.push(lab.spawn('sched', process.execPath, [NAIAD, 'scheduler', '--config', scfg], { logFile: join(dir, 'scheduler.log') }))
    await lab.waitHttp('sched', 'http://127.0.0.1:65011/healthz')
    await Promise.all(names.map(async h => {
      const ip = lab.host(h).ip
      const cfg = join(dir, `${h}.toml`)
      await writeFile(cfg, [
        '[host]', `id = "${h}"`, `ip = "${ip}"`,
        '[mirror]', 'listen = "127.0.0.1:65001"',
        '[upload]', `listen = "${ip}:65002"`, ...opt('max_concurrent', a['upload-concurrent']),
        '[download]', `piece_length = "${a['piece-length']}"`, ...opt('read_ahead_pieces', a['read-ahead']), ...opt('concurrent_pieces', a['concurrent-pieces']), ...opt('origin_read_ahead_pieces', a['origin-read-ahead']),
        '[scheduler]', `address = "${sched.ip}:65010"`, 'heartbeat_interval = "1s"',
        '[storage]', `dir = "${join(dir, 'store', h)}"`, 'quota = "4GiB"',
        '[log]', `level = "${a.transfers ? 'debug' : a['log-level']}"`
      ].join('\n') + '\n')
      const prof = a['cpu-prof'] !== undefined && (h === 'p1' || h === 'p9') ? ['--cpu-prof', '--cpu-prof-dir', a['cpu-prof'], '--cpu-prof-name', `peer-${h}.cpuprofile`] : []
      const nodeOpts = a['peer-node-options']?.split(' ').filter(x => x !== '') ?? []
      children.push(lab.spawn(h, process.execPath, [...nodeOpts, ...prof, NAIAD, 'peer', '--config', cfg], { logFile: join(dir, `${h}.log`) }))
      await lab.waitHttp(h, 'http://127.0.0.1:65001/healthz')
    }))
    await new Promise(resolve => setTimeout(resolve, 1500))
    const before = await registry.blobBytes(digest)
    const stat0 = await cpuTicks()
    const t0 = performance.now()
    // Timeline (--verbose): every second, the registry's upload and the peers' downloads, from the
    // switch's counters, to see whether the origin link is kept busy and where the tail is.
    const samples: Array<{ t: number, reg: number, peers: number }> = []
    let sampling = a.verbose
    const sampler = (async () => {
      while (sampling) {
        const m = await lab.linkBytes().catch(() => undefined)
        if (m !== undefined) samples.push({ t: (performance.now() - t0) / 1000, reg: m.get('reg')?.tx ?? 0, peers: names.reduce((x, h) => x + (m.get(h)?.rx ?? 0), 0) })
        await new Promise(resolve => setTimeout(resolve, 1000))
      }
    })()
    const rs = await Promise.all(names.map(async h => await read(h, 'http://127.0.0.1:65001', registry.url)))
    const p2pSeconds = (performance.now() - t0) / 1000
    sampling = false
    await sampler
    const stat1 = await cpuTicks()
    await new Promise(resolve => setTimeout(resolve, 500))
    const registryRatio = (await registry.blobBytes(digest) - before) / S
    if (a.verbose) {
      const get = (text: string, name: string): number => { let sum = 0; for (const l of text.split('\n')) if (l.startsWith(name)) sum += Number(l.split(' ').at(-1)); return sum }
      for (const h of names) {
        const t = await lab.curl(h, 'http://127.0.0.1:65001/metrics') ?? ''
        const mb = (x: number): string => (x / 1024 / 1024).toFixed(0)
        process.stderr.write(`  ${h}: origin ${mb(get(t, 'naiad_p2p_peer_piece_bytes_total{source="origin"}'))} MiB, peers ${mb(get(t, 'naiad_p2p_peer_piece_bytes_total{source="peer"}'))} MiB, uploaded ${mb(get(t, 'naiad_p2p_peer_upload_bytes_total'))} MiB, busy refusals ${get(t, 'naiad_p2p_peer_upload_rejected_total{reason="busy"}')}, parent failures ${get(t, 'naiad_p2p_peer_parent_failures_total')}, reader ${((rs[names.indexOf(h)]?.ms ?? 0) / 1000).toFixed(1)} s\n`)
      }
      const cpu = async (pid: number | undefined): Promise<number> => {
        const f = (await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')).split(') ')[1]?.split(' ') ?? []
        return (Number(f[11] ?? 0) + Number(f[12] ?? 0)) / 100
      }
      const peerCpu = await Promise.all(children.slice(1).map(async c => await cpu(c.pid)))
      const d = stat1.map((v, i) => (v - (stat0[i] ?? 0)) / 100)
      process.stderr.write(`  machine cpu seconds during the reads (every process, 2 cores = ${(2 * p2pSeconds).toFixed(0)}): user ${((d[0] ?? 0) + (d[1] ?? 0)).toFixed(0)}, system ${(d[2] ?? 0).toFixed(0)}, softirq ${(d[6] ?? 0).toFixed(0)}, idle ${(d[3] ?? 0).toFixed(0)}, steal ${(d[7] ?? 0).toFixed(0)}\n`)
      process.stderr.write(`  cpu seconds: scheduler ${(await cpu(children[0]?.pid)).toFixed(1)}, peers ${peerCpu.reduce((x, y) => x + y, 0).toFixed(1)} (max ${Math.max(...peerCpu).toFixed(1)}), readers ${(rs.reduce((x, r) => x + (r.cpuMs ?? 0), 0) / 1000).toFixed(1)}\n`)
      if (samples.length > 1) {
        // per 5 s window: the origin link's use (share of its rate) and the peers' mean download rate
        const line: string[] = []
        let prev = samples[0]!
        for (const smp of samples) {
          if (smp.t - prev.t < 5 && smp !== samples.at(-1)) continue
          const dt = smp.t - prev.t
          line.push(`${prev.t.toFixed(0)}-${smp.t.toFixed(0)}s origin ${(100 * (smp.reg - prev.reg) / dt / BPS).toFixed(0)}% peers ${(100 * (smp.peers - prev.peers) / dt / BPS / n).toFixed(0)}%`)
          prev = smp
        }
        process.stderr.write(`  links (share of ${RATE} Mbit/s; peers: mean download): ${line.join(', ')}\n`)
      }
      const st = await lab.curl('sched', 'http://127.0.0.1:65011/metrics') ?? ''
      process.stderr.write(`  scheduler: assignments parents ${get(st, 'naiad_p2p_scheduler_assignments_total{action="parents"}')}, back_to_source ${get(st, 'naiad_p2p_scheduler_assignments_total{action="back_to_source"}')}, wait ${get(st, 'naiad_p2p_scheduler_assignments_total{action="wait"}')} (${['no_source', 'no_usable_holder', 'copying', 'slots', 'predecessor'].map(r => `${r} ${get(st, `naiad_p2p_scheduler_waits_total{reason="${r}"}`)}`).join(', ')})\n`)
    }
    if (a.transfers) {
      const pieceBytes = parseSize(a['piece-length']) ?? 4 * 1024 * 1024
      const full = Number(a['concurrent-pieces'] ?? 4)
      process.stderr.write(`  transfers per peer (from the debug logs): pieces, transfers in flight (mean; share of the time with >= ${full}), Mbit/s per transfer, wait for an assignment and then for a transfer slot per piece, from the origin, from the ring predecessor\n`)
      for (const h of names) {
        const s = transferStats(parsePieceLines(await readFile(join(dir, `${h}.log`), 'utf8').catch(() => '')), h, names, pieceBytes, full)
        if (s === undefined) continue
        process.stderr.write(`    ${h}: ${s.pieces} pieces in ${s.spanSeconds.toFixed(0)} s, in flight ${s.meanInFlight.toFixed(2)} (${(100 * s.shareFull).toFixed(0)} %), ${s.meanTransferMbit.toFixed(1)} Mbit/s each, wait ${s.meanPlanSeconds.toFixed(1)} + ${s.meanSlotSeconds.toFixed(1)} s, origin ${s.fromOrigin}, predecessor ${s.fromPredecessor}\n`)
      }
    }
    const b = bound(n)
    process.stderr.write(`N=${n}: p2p took ${p2pSeconds.toFixed(1)} s (bound ${b.toFixed(1)} s), registry ${registryRatio.toFixed(3)}×\n`)
    if (a.keep) process.stderr.write(`  logs kept in ${dir}\n`)
    return {
      n,
      sizeBytes: S,
      rateMbit: RATE,
      p2pSeconds,
      registryRatio,
      boundSeconds: b,
      ratioToBound: p2pSeconds / b,
      directSeconds,
      directRegistryRatio,
      readersOk: rs.every(r => r.ok),
      slowestReader: Math.max(...rs.map(r => r.ms)) / 1000,
      fastestReader: Math.min(...rs.map(r => r.ms)) / 1000
    }
  } finally {
    for (const c of children) await killChild(c)
    await lab.destroy()
    if (!a.keep) await rm(dir, { recursive: true, force: true })
  }
}

if (!canUseNetns()) {
  process.stderr.write('bench:p2p needs root, iproute2 (ip, tc) and network namespaces\n')
  process.exit(1)
}
await NetLab.cleanupStale()
const rows: Row[] = []
for (const n of a.peers.split(',').map(Number)) rows.push(await runOne(n))

const mib = (S / 1024 / 1024).toFixed(0)
const lines = [
  `p2p distribution of one ${mib} MiB blob, every link ${RATE} Mbit/s (tbf), reads: ${a.order} ${a.chunk} ranges × ${a.concurrency}, pieces ${a['piece-length']}`,
  '',
  '| N | p2p total (s) | registry bytes ÷ blob | lower bound (s) | p2p ÷ bound | N direct pulls (s) | direct registry ÷ blob | readers ok |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map(r => `| ${r.n} | ${r.p2pSeconds.toFixed(1)} | ${r.registryRatio.toFixed(3)} | ${r.boundSeconds.toFixed(1)} | ${r.ratioToBound.toFixed(2)} | ${r.directSeconds?.toFixed(1) ?? '-'} | ${r.directRegistryRatio?.toFixed(2) ?? '-'} | ${r.readersOk ? 'yes' : 'NO'} |`)
]
process.stdout.write(lines.join('\n') + '\n')
if (a.json !== undefined) await writeFile(a.json, JSON.stringify(rows, null, 2) + '\n')
