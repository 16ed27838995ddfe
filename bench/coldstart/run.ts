/**
 * The cold-start benchmark: time from the start of the pull to the container's first output, for
 * the same image, with the registry reached through a `tc tbf` limit (default 100 Mbit/s each way)
 * in network namespaces:
 *
 *   (a) `ctr images pull --snapshotter overlayfs` + `ctr run --snapshotter overlayfs` of the OCI
 *       image (everything downloaded and unpacked before the container starts);
 *   (b) `naiad pull` + `ctr run --snapshotter nydus` of its `naiad convert`ed Nydus image (data
 *       layers skipped, the container reads what it needs through naiad's fsdaemon).
 *
 * The image: busybox, a small /etc/motd, and DATA (default 200 MiB) of random data in 8 files; the
 * entrypoint `cat /etc/motd` reads well under 10% of it. The registry runs in its own namespace;
 * containerd (private root and sockets), naiad's snapshotter and its fsdaemon, ctr and naiad pull
 * run in a "node" namespace (entered with nsenter --net, so mounts stay in the host's mount
 * namespace, where runc's shim sees them). Both runs start cold: nothing of either image is on
 * the node. Prints both times, the speed-up and the bytes the registry served.
 *
 *   npm run bench:coldstart -- [--size 200MiB] [--rate 100] [--json out.json] [--keep]
 *
 * Needs root, iproute2, nsenter, containerd 1.6 + runc, docker-registry, skopeo, umoci, FUSE and
 * a build (`npm run build`).
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, copyFileSync, cpSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'
import { parseSize } from '../../lib/config/index.ts'
import { startContainerd, unmountUnder, type RunningContainerd } from '../../test/helpers/containerd.ts'
import { NAIAD_BIN } from '../../test/helpers/daemon.ts'
import { buildImage, pushImage } from '../../test/helpers/images.ts'
import { canUseNetns, killChild, NetLab, NetnsRegistry } from '../../test/helpers/netns.ts'
import { startRegistry } from '../../test/helpers/registry.ts'

const exec = promisify(execFile)
const { values: a } = parseArgs({
  options: {
    size: { type: 'string', default: '200MiB' },
    rate: { type: 'string', default: '100' },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false }
  }
})
const DATA = parseSize(a.size) ?? 200 << 20
const RATE = Number(a.rate)
const NS = 'coldstart'
const FILES = 8

interface Phase { name: string, pullMs: number, firstOutputMs: number, output: string, registryBytes: number, registryBytesAtOutput: number }

function log (s: string): void { process.stderr.write(`[coldstart] ${s}\n`) }

/** Runs `argv` and resolves at its first stdout bytes (ms since `t0`) and at its exit. */
async function firstOutput (argv: string[], t0: number): Promise<{ atMs: number, output: string }> {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  let atMs = -1
  child.stdout.on('data', (c: Buffer) => { if (atMs < 0) atMs = Date.now() - t0; out += c.toString() })
  child.stderr.on('data', (c: Buffer) => { err += c.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  if (code !== 0 || atMs < 0) throw new Error(`${argv.join(' ')} exited ${code}: ${err.slice(-2000)}`)
  return { atMs, output: out }
}

async function main (): Promise<void> {
  if (!canUseNetns()) throw new Error('needs root with ip and tc (iproute2)')
  const base = await mkdtemp('/tmp/naiad-coldstart-')
  const lab = new NetLab()
  let ctd: RunningContainerd | undefined
  let snap: ChildProcess | undefined
  let registry: NetnsRegistry | undefined
  try {
    await NetLab.cleanupStale()
    // ---- the image, built and converted on a loopback registry, then moved into the lab ----
    log(`building a ${(DATA / 1048576).toFixed(0)} MiB image`)
    const img = buildImage({
      workDir: join(base, 'img'),
      cmd: ['/bin/busybox', 'cat', '/etc/motd'],
      layers: [
        (root) => {
          mkdirSync(join(root, 'bin'))
          copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'))
          chmodSync(join(root, 'bin', 'busybox'), 0o755)
          symlinkSync('busybox', join(root, 'bin', 'sh'))
          mkdirSync(join(root, 'etc'))
          writeFileSync(join(root, 'etc', 'motd'), 'hello from the cold-start image\n')
        },
        (root) => {
          mkdirSync(join(root, 'data'))
          for (let i = 0; i < FILES / 2; i++) writeFileSync(join(root, 'data', `a${i}.bin`), randomBytes(Math.floor(DATA / FILES)))
        },
        (root) => {
          mkdirSync(join(root, 'data'))
          for (let i = 0; i < FILES / 2; i++) writeFileSync(join(root, 'data', `b${i}.bin`), randomBytes(Math.floor(DATA / FILES)))
        }
      ]
    })
    const local = await startRegistry()
    pushImage(img, local.host, 'bench/coldstart:oci')
    log('converting with naiad convert')
    execFileSync(process.execPath, [NAIAD_BIN, 'convert', '--source', `${local.host}/bench/coldstart:oci`, '--target', `${local.host}/bench/coldstart:nydus`], { stdio: ['ignore', 'ignore', 'inherit'] })
    await local.kill()
    await lab.create()
    const reg = await lab.addHost('reg')
    const node = await lab.addHost('node', { rateMbit: RATE })
    registry = new NetnsRegistry(lab, 'reg', join(base, 'registry'))
    cpSync(join(local.dir, 'data'), join(base, 'registry', 'data'), { recursive: true })
    await local.stop()
    await registry.start()
    log(`registry ${registry.host} in namespace ${reg.ns}; node ${node.ip} limited to ${RATE} Mbit/s each way`)

    // ---- the node: snapshotter (+ fsdaemon) and containerd in the node's network namespace ----
    const wrap = ['nsenter', `--net=/run/netns/${node.ns}`]
    const cfg = join(base, 'snapshotter.toml')
    await writeFile(cfg, [
      '[root]', `dir = "${join(base, 'snapshots')}"`,
      '[socket]', `path = "${join(base, 'snap.sock')}"`,
      '[fsdaemon]', `socket = "${join(base, 'fsd.sock')}"`, `binary = "${NAIAD_BIN}"`, `cache_dir = "${join(base, 'fsd-cache')}"`,
      `state_dir = "${join(base, 'fsd-state')}"`, `log_file = "${join(base, 'fsd.log')}"`, 'plain_http = true'
    ].join('\n') + '\n')
    snap = spawn(wrap[0]!, [...wrap.slice(1), process.execPath, NAIAD_BIN, 'snapshotter', '--config', cfg, '--stop-fsdaemon', '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] })
    const deadline = Date.now() + 30_000
    while (!await exec('test', ['-S', join(base, 'snap.sock')]).then(() => true, () => false)) {
      if (Date.now() > deadline) throw new Error('the snapshotter did not start')
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    ctd = await startContainerd({ dir: join(base, 'ctd'), snapshotterSocket: join(base, 'snap.sock'), wrap })
    const ctr = ['ctr', '-a', ctd.address, '-n', NS]
    const ociRef = `${registry.host}/bench/coldstart:oci`
    const nydusRef = `${registry.host}/bench/coldstart:nydus`
    const served = async (): Promise<number> => (await registry!.accessLog()).reduce((n, e) => n + e.bytes, 0)
    const phases: Phase[] = []

    // (a) ctr images pull + ctr run on overlayfs
    log('(a) ctr images pull + ctr run --snapshotter overlayfs')
    let before = await served()
    let t0 = Date.now()
    // ctr fetches in its own process: it runs in the node's namespace, like naiad pull
    await exec(wrap[0]!, [...wrap.slice(1), ...ctr, 'images', 'pull', '--plain-http', '--snapshotter', 'overlayfs', ociRef], { maxBuffer: 64 << 20 })
    let pullMs = Date.now() - t0
    let first = await firstOutput([...ctr, 'run', '--rm', '--snapshotter', 'overlayfs', ociRef, 'cold-a'], t0)
    phases.push({ name: '(a) ctr pull + run, overlayfs', pullMs, firstOutputMs: first.atMs, output: first.output.trim(), registryBytes: await served() - before, registryBytesAtOutput: await served() - before })

    // (b) naiad pull + ctr run on nydus
    log('(b) naiad pull + ctr run --snapshotter nydus')
    before = await served()
    t0 = Date.now()
    const pulled = await exec(wrap[0]!, [...wrap.slice(1), process.execPath, NAIAD_BIN, 'pull', '--address', ctd.address, '--namespace', NS, '--plain-http', nydusRef])
    pullMs = Date.now() - t0
    log(`naiad pull:\n${pulled.stderr}${pulled.stdout}`)
    let atOutput = 0
    first = await firstOutput([...ctr, 'run', '--rm', '--snapshotter', 'nydus', nydusRef, 'cold-b'], t0)
    atOutput = await served() - before
    await new Promise((resolve) => setTimeout(resolve, 1000)) // let read-ahead settle
    phases.push({ name: '(b) naiad pull + run, nydus', pullMs, firstOutputMs: first.atMs, output: first.output.trim(), registryBytes: await served() - before, registryBytesAtOutput: atOutput })

    const result = {
      rateMbit: RATE,
      dataBytes: DATA,
      phases,
      speedup: phases[0]!.firstOutputMs / phases[1]!.firstOutputMs
    }
    const mb = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`
    process.stdout.write(`cold start, registry behind ${RATE} Mbit/s, image with ${mb(DATA)} of data; entrypoint: cat /etc/motd\n`)
    process.stdout.write('| run | pull done | first output | registry bytes (until output / total) |\n|---|---|---|---|\n')
    for (const p of phases) process.stdout.write(`| ${p.name} | ${(p.pullMs / 1000).toFixed(2)} s | ${(p.firstOutputMs / 1000).toFixed(2)} s | ${mb(p.registryBytesAtOutput)} / ${mb(p.registryBytes)} |\n`)
    process.stdout.write(`speed-up of (b) over (a): ${result.speedup.toFixed(1)}x\n`)
    if (a.json !== undefined) await writeFile(a.json, JSON.stringify(result, null, 2) + '\n')
  } finally {
    await ctd?.stop()
    if (snap !== undefined) await killChild(snap)
    await registry?.stop()
    await lab.destroy()
    await unmountUnder(base)
    if (a.keep !== true) await rm(base, { recursive: true, force: true })
    else log(`kept ${base}`)
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`[coldstart] failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exitCode = 1
})
