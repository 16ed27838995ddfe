/**
 * `npm run demo`: the main job end to end on an embedded local stack, all on loopback in a temp
 * dir, torn down at the end:
 *
 *   registry (Debian's docker-registry, behind a proxy that counts the bytes it serves)
 *   scheduler ── peer A ── peer B                                (naiad p2p)
 *   node A: containerd ─ snapshotter (nydus) ─ fsdaemon → mirror = peer A
 *   node B: containerd ─ snapshotter (nydus) ─ fsdaemon → mirror = peer B
 *
 * It builds a sample image (busybox plus a large file the entrypoint never reads) with umoci,
 * pushes it, runs `naiad convert` into Nydus RAFS v6 and `naiad check`, then:
 *   1. node A, the normal way: `ctr images pull` + `ctr run` on containerd's overlayfs;
 *   2. node A, lazily: `naiad pull` + `ctr run --snapshotter nydus` (blobs via peer A, which
 *      fetches the pieces from the registry);
 *   3. node B, lazily: the same (peer B gets the pieces from peer A, not from the registry);
 * and prints time to first output and the bytes the registry and the peers served.
 *
 * `npm run demo -- --image REF [--plain-http]` does the same for a user's image: skopeo copies it
 * (this machine's platform; credentials from ~/.docker/config.json) into the local registry, so
 * the normal pull and the lazy ones read the same bytes through the same counting proxy; the
 * containers run the image's own command, and one still running 5 s after its first output (a
 * server) is killed there. `--keep` leaves the work dir (logs) in place.
 */
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { promisify } from 'node:util'
import { run } from '../bin/program.ts'
import { FsdClient } from '../lib/fsdapi/index.ts'
import { startContainerd, type RunningContainerd } from '../test/helpers/containerd.ts'
import { startNaiad, type Daemon } from '../test/helpers/daemon.ts'
import { buildImage, pushImage } from '../test/helpers/images.ts'
import { freePort, startCountingProxy, startRegistry } from '../test/helpers/registry.ts'

interface Captured { code: number, out: string, err: string }

/**
 * The containerd namespace of this run. runc keeps its state under /run/containerd/runc/<namespace>/<id>
 * whatever containerd's root is, so two demos at once (the tests run `demo` and `demo --image` side by
 * side) must not share a namespace: the second `ctr run` failed with "container with given ID already
 * exists".
 */
const NS = `naiad-demo-${process.pid}`

async function naiad (...argv: string[]): Promise<Captured> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

function say (s: string): void { process.stdout.write(s + '\n') }
const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`
const secs = (ms: number): string => `${(ms / 1000).toFixed(2)} s`

async function waitHttp (url: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try { if ((await fetch(url)).ok) return } catch {}
    if (Date.now() > deadline) throw new Error(`${url} did not answer in ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/**
 * `ctr run --rm IMAGE ID [CMD…]`: resolves with the time of the container's first output and all of
 * its output. With `stopAfterMs`, a container still running that long after its first output (a
 * server) is killed (SIGKILL to its task) and counts as done; without output in 120 s it fails.
 */
async function ctrRun (c: RunningContainerd, args: string[], t0: number, stopAfterMs?: number): Promise<{ firstMs: number, output: string, stopped: boolean }> {
  const id = args.filter(a => !a.startsWith('-'))[1] ?? ''
  return await new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/ctr', ['-a', c.address, '-n', NS, 'run', '--rm', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let firstMs = -1
    let out = ''
    let err = ''
    let stopped = false
    let stopTimer: NodeJS.Timeout | undefined
    const kill = (): void => { stopped = true; c.ctr(NS, ['tasks', 'kill', '-s', 'SIGKILL', id], 30_000).catch(() => { child.kill('SIGKILL') }) }
    const t = setTimeout(() => { if (firstMs < 0) child.kill('SIGKILL'); else kill() }, 120_000)
    child.stdout.on('data', (d: Buffer) => {
      if (firstMs < 0) {
        firstMs = Date.now() - t0
        if (stopAfterMs !== undefined) stopTimer = setTimeout(kill, stopAfterMs)
      }
      out += d.toString()
    })
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    child.on('error', reject)
    child.on('exit', (code) => {
      clearTimeout(t)
      clearTimeout(stopTimer)
      if (firstMs < 0) { reject(new Error(`ctr run ${args.join(' ')} printed nothing on stdout (exit ${String(code)}): ${err}\ncontainerd log:\n${c.log().slice(-3000)}`)); return }
      if (code !== 0 && !stopped) { reject(new Error(`ctr run ${args.join(' ')} exited ${String(code)}: ${err}\ncontainerd log:\n${c.log().slice(-3000)}`)); return }
      resolve({ firstMs, output: out, stopped })
    })
  })
}

async function peerBytes (mirrorPort: number): Promise<{ origin: number, peer: number }> {
  const text = await (await fetch(`http://127.0.0.1:${mirrorPort}/metrics`)).text()
  const get = (source: string): number => Number(new RegExp(`naiad_p2p_peer_piece_bytes_total\\{source="${source}"\\} (\\S+)`).exec(text)?.[1] ?? 0)
  return { origin: get('origin'), peer: get('peer') }
}

function sampleLayers (): Array<(root: string) => void> {
  return [
    (root) => {
      mkdirSync(join(root, 'bin'))
      copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'))
      chmodSync(join(root, 'bin', 'busybox'), 0o755)
      for (const l of ['sh', 'cat', 'ls', 'wc', 'echo', 'uname']) symlinkSync('busybox', join(root, 'bin', l))
    },
    (root) => {
      // a large file the entrypoint never reads: what lazy loading does not download
      mkdirSync(join(root, 'data'))
      writeFileSync(join(root, 'data', 'model.bin'), randomBytes(48 << 20))
      for (let i = 0; i < 200; i++) writeFileSync(join(root, 'data', `part-${i}.txt`), `part ${i}\n`.repeat(50))
    },
    (root) => {
      mkdirSync(join(root, 'app'))
      writeFileSync(join(root, 'app', 'greeting'), 'hello from a lazy image\n')
    }
  ]
}

interface Node {
  name: string
  peer: Daemon
  mirrorPort: number
  snapshotter: Daemon
  fsdSocket: string
  containerd: RunningContainerd
}

async function main (): Promise<number> {
  const args = process.argv.slice(2)
  const userImage = args.includes('--image') ? args[args.indexOf('--image') + 1] : undefined
  const plain = args.includes('--plain-http') ? ['--plain-http'] : []
  const keep = args.includes('--keep')
  const unknown = args.filter((a, i) => !['--image', '--plain-http', '--keep'].includes(a) && args[i - 1] !== '--image')
  if ((args.includes('--image') && (userImage === undefined || userImage.startsWith('-'))) || unknown.length > 0) {
    process.stderr.write(`usage: npm run demo [-- --image REF [--plain-http]] [--keep]${unknown.length > 0 ? ` (unknown argument ${unknown[0]!})` : ' (--image needs an image reference)'}\n`)
    return 2
  }
  const work = mkdtempSync(join(tmpdir(), 'naiad-demo-'))
  const teardown: Array<() => Promise<unknown>> = []
  say(`naiad demo — work dir ${work}`)
  try {
    const reg = await startRegistry()
    teardown.push(async () => { await reg.stop() })
    const proxy = await startCountingProxy(reg.host)
    teardown.push(async () => { await proxy.stop() })
    say(`registry:   docker-registry on ${reg.host} (pid ${reg.pid}); counted through ${proxy.host}`)

    let source: string
    let cmd: string[] = []
    if (userImage === undefined) {
      say('image:      building a 3-layer sample image with umoci + busybox-static (48 MiB the entrypoint never reads)')
      const img = buildImage({ workDir: join(work, 'img'), layers: sampleLayers(), cmd: ['/bin/sh', '-c', 'cat /app/greeting; echo "$(ls /data | wc -l) files in /data"'] })
      pushImage(img, reg.host, 'demo/sample:latest')
      source = `${proxy.host}/demo/sample:latest`
      cmd = []
    } else {
      // into the local registry, so that the normal pull is counted like the lazy ones
      say(`image:      copying ${userImage} (${process.arch}) into the local registry with skopeo`)
      await promisify(execFile)('skopeo', ['copy', '--quiet', ...(plain.length > 0 ? ['--src-tls-verify=false'] : []), '--dest-tls-verify=false',
        `docker://${userImage}`, `docker://${reg.host}/demo/source:latest`], { timeout: 600_000, maxBuffer: 16 << 20 })
      source = `${proxy.host}/demo/source:latest`
    }
    const target = `${proxy.host}/demo/sample:nydus`
    say(`convert:    ${source} -> ${target}`)
    const c = await naiad('convert', '--source', source, '--target', target, '--output', 'json', '--plain-http')
    if (c.code !== 0) { process.stderr.write(c.err); return c.code }
    const r = JSON.parse(c.out) as { durationMs: number, platforms: Array<{ platform: string, files: number, sourceBytes: number, chunkRefs: number, uniqueChunks: number, blobBytes: number, blobs: unknown[] }> }
    say('check:      rebuilding the source filesystem and reading every file back through lib/format …')
    const k = await naiad('check', '--source', source, '--target', target, '--plain-http')
    process.stdout.write(k.out.split('\n').map(l => l === '' ? l : '            ' + l).join('\n'))
    if (k.code !== 0) { process.stderr.write(k.err); say('demo FAILED: check found differences'); return k.code }

    // the p2p network: a scheduler and two peers
    const schedPort = await freePort()
    const schedMetrics = await freePort()
    writeFileSync(join(work, 'scheduler.toml'), `[server]\nlisten = "127.0.0.1:${schedPort}"\n[metrics]\nlisten = "127.0.0.1:${schedMetrics}"\n[shutdown]\ngrace = "1s"\n`)
    const scheduler = startNaiad(['scheduler', '--config', join(work, 'scheduler.toml')])
    teardown.push(async () => await scheduler.stop())
    await waitHttp(`http://127.0.0.1:${schedMetrics}/healthz`)
    say(`scheduler:  127.0.0.1:${schedPort} (pid ${scheduler.pid})`)

    const nodes: Node[] = []
    for (const name of ['a', 'b']) {
      const dir = join(work, `node-${name}`)
      mkdirSync(dir)
      const mirrorPort = await freePort()
      const uploadPort = await freePort()
      writeFileSync(join(dir, 'peer.toml'), [
        '[host]', `id = "node-${name}"`, 'ip = "127.0.0.1"',
        '[mirror]', `listen = "127.0.0.1:${mirrorPort}"`,
        '[upload]', `listen = "127.0.0.1:${uploadPort}"`,
        '[scheduler]', `address = "127.0.0.1:${schedPort}"`, 'heartbeat_interval = "500ms"',
        '[storage]', `dir = "${join(dir, 'p2p')}"`,
        '[shutdown]', 'grace = "1s"'
      ].join('\n') + '\n')
      const peer = startNaiad(['peer', '--config', join(dir, 'peer.toml')])
      teardown.push(async () => await peer.stop())
      await waitHttp(`http://127.0.0.1:${mirrorPort}/healthz`)
      const fsdSocket = join(dir, 'fsd.sock')
      writeFileSync(join(dir, 'fsd.toml'), [
        '[socket]', `path = "${fsdSocket}"`,
        '[state]', `dir = "${join(dir, 'fsd-state')}"`,
        '[cache]', `dir = "${join(dir, 'cache')}"`,
        '[prefetch]', 'enable = false',
        '[[mirrors]]', `url = "http://127.0.0.1:${mirrorPort}"`, 'health_check_interval = "1s"'
      ].join('\n') + '\n')
      const snapSocket = join(dir, 'snapshotter.sock')
      writeFileSync(join(dir, 'snapshotter.toml'), [
        '[root]', `dir = "${join(dir, 'snapshots')}"`,
        '[socket]', `path = "${snapSocket}"`,
        '[fsdaemon]', `socket = "${fsdSocket}"`, `config = "${join(dir, 'fsd.toml')}"`, 'stop_on_exit = true', 'plain_http = true'
      ].join('\n') + '\n')
      const snapshotter = startNaiad(['snapshotter', '--config', join(dir, 'snapshotter.toml')])
      teardown.push(async () => await snapshotter.stop(20_000))
      await snapshotter.waitFor('ready', 30_000)
      const containerd = await startContainerd({ dir: join(dir, 'containerd'), snapshotterSocket: snapSocket })
      teardown.push(async () => { await containerd.stop() })
      await containerd.ctr(NS, ['namespaces', 'create', NS]) // and stop() cleans up this namespace's tasks and runc state
      say(`node ${name}:     containerd (pid ${containerd.pid}) + naiad snapshotter (pid ${snapshotter.pid}) + peer on 127.0.0.1:${mirrorPort} (pid ${peer.pid})`)
      nodes.push({ name, peer, mirrorPort, snapshotter, fsdSocket, containerd })
    }
    const [a, b] = nodes as [Node, Node]

    // 1. the normal way, on node A
    const normalRef = source
    const stopAfter = userImage === undefined ? undefined : 5_000
    let bytes0 = proxy.bytesServed()
    let t0 = Date.now()
    say(`\nnormal:     ctr images pull + ctr run on overlayfs (node a) …`)
    await a.containerd.ctr(NS, ['images', 'pull', '--plain-http', normalRef], 300_000)
    const normal = await ctrRun(a.containerd, [normalRef, 'demo-normal', ...cmd], t0, stopAfter)
    const normalBytes = proxy.bytesServed() - bytes0
    process.stdout.write(normal.output.split('\n').map(l => l === '' ? l : '            | ' + l).join('\n'))

    // 2. and 3. lazily, on node A then node B
    const lazy: Array<{ node: string, ms: number, pullMs: number, registry: number, peers: number, output: string }> = []
    for (const n of [a, b]) {
      say(`lazy:       naiad pull + ctr run --snapshotter nydus (node ${n.name}) …`)
      bytes0 = proxy.bytesServed()
      t0 = Date.now()
      const p = await naiad('pull', '--address', n.containerd.address, '--namespace', NS, '--plain-http', target)
      if (p.code !== 0) { process.stderr.write(p.err); return p.code }
      const pullMs = Date.now() - t0
      const out = await ctrRun(n.containerd, ['--snapshotter', 'nydus', target, `demo-lazy-${n.name}`, ...cmd], t0, stopAfter)
      process.stdout.write(out.output.split('\n').map(l => l === '' ? l : '            | ' + l).join('\n'))
      const registry = proxy.bytesServed() - bytes0
      const mounts = await new FsdClient({ socketPath: n.fsdSocket }).list()
      const peers = (await peerBytes(n.mirrorPort)).peer
      lazy.push({ node: n.name, ms: out.firstMs, pullMs, registry, peers, output: out.output })
      if (mounts.length === 0) throw new Error(`node ${n.name}: the fsdaemon serves no mount: the container did not run lazily`)
    }

    say('')
    say('| platform | files | file bytes | chunks referenced | chunks stored | data blobs | blob bytes | convert time |')
    say('|---|---|---|---|---|---|---|---|')
    for (const p of r.platforms) {
      say(`| ${p.platform} | ${p.files} | ${mib(p.sourceBytes)} | ${p.chunkRefs} | ${p.uniqueChunks} | ${p.blobs.length} | ${mib(p.blobBytes)} | ${secs(r.durationMs)} |`)
    }
    say('')
    say('| run | pull | time to first output | bytes from the registry | bytes from other peers |')
    say('|---|---|---|---|---|')
    say(`| node a, ctr images pull + run (overlayfs) | full download | ${secs(normal.firstMs)} | ${mib(normalBytes)} | – |`)
    for (const l of lazy) say(`| node ${l.node}, naiad pull + run (nydus) | ${secs(l.pullMs)} | ${secs(l.ms)} | ${mib(l.registry)} | ${mib(l.peers)} |`)
    say('')
    const same = lazy.every(l => l.output === normal.output)
    const summary = `node b took ${mib(lazy[1]!.registry)} from the registry and ${mib(lazy[1]!.peers)} from peer a`
    if (same) {
      say(`demo OK: the lazy containers printed what the normal one printed; ${summary}`)
      return 0
    }
    if (userImage !== undefined) {
      // a user's command may print times, ids or addresses: every container started and printed
      say(`demo OK: every container ran and printed (the outputs differ between runs: the image's command prints something run-specific); ${summary}`)
      return 0
    }
    say('demo FAILED: the lazy containers printed something else')
    return 1
  } finally {
    for (const t of teardown.reverse()) await t().catch((err: unknown) => { process.stderr.write(`teardown: ${String(err)}\n`) })
    if (!keep) rmSync(work, { recursive: true, force: true })
  }
}

process.exitCode = await main()
