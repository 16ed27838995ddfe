/**
 * A private containerd 1.6 (Debian package) for tests: its own root, state, gRPC and ttrpc
 * sockets under a temp directory, naiad's snapshotter registered as the `nydus` proxy plugin,
 * and optionally the CRI plugin with `snapshotter = "nydus"` and
 * `disable_snapshot_annotations = false` (the CRI lazy-pull path). `stop()` kills running
 * containers (SIGKILL), stops containerd by pid, unmounts everything under the directory and
 * removes runc's per-namespace state dirs it created (only if empty). `ctr()` never reads stdin.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, rmdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)
export const CONTAINERD_BIN = '/usr/bin/containerd'
export const CTR_BIN = '/usr/bin/ctr'

/** True if containerd and ctr are installed. */
export function haveContainerd (): boolean {
  return existsSync(CONTAINERD_BIN) && existsSync(CTR_BIN) && existsSync('/usr/bin/runc')
}

export interface StartContainerdOptions {
  /** Directory for root, state, sockets and config (created if needed; not removed by stop()). */
  dir: string
  /** naiad snapshotter socket registered as proxy plugin `nydus` (omit for none). */
  snapshotterSocket?: string
  /** Enable the CRI plugin (snapshotter nydus, snapshot annotations on). */
  cri?: boolean
  /** Command prefix that execs containerd, e.g. `['nsenter', '--net=/run/netns/x']` (benchmarks). */
  wrap?: string[]
}

export interface RunningContainerd {
  /** containerd's gRPC socket. */
  address: string
  dir: string
  pid: number
  /** containerd's output so far. */
  log: () => string
  /** Runs `ctr -a <address> -n <ns> …` (stdin closed); rejects with ctr's stderr and the log tail. */
  ctr: (ns: string, args: string[], timeoutMs?: number) => Promise<string>
  /** Stops containers, containerd, unmounts under dir. Safe twice. */
  stop: () => Promise<void>
}

async function waitUntil (what: string, fn: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await fn().catch(() => false)) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Unmounts every mount under `dir` (deepest first, lazily). */
export async function unmountUnder (dir: string): Promise<void> {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => (l.split(' ')[1] ?? '').replace(/\\040/g, ' ')).filter((m) => m.startsWith(dir + '/')).sort().reverse()
  for (const m of mounts) await run('umount', ['-l', m]).catch(() => {})
}

/** Starts a private containerd; see the module comment. */
export async function startContainerd (opts: StartContainerdOptions): Promise<RunningContainerd> {
  const dir = opts.dir
  await mkdir(join(dir, 'root'), { recursive: true })
  await mkdir(join(dir, 'state'), { recursive: true })
  const address = join(dir, 'c.sock')
  const lines = [
    'version = 2',
    `root = "${join(dir, 'root')}"`,
    `state = "${join(dir, 'state')}"`,
    ...(opts.cri === true ? [] : ['disabled_plugins = ["io.containerd.grpc.v1.cri"]']),
    '[grpc]',
    `  address = "${address}"`,
    '[ttrpc]',
    `  address = "${join(dir, 'c.ttrpc.sock')}"`,
    '[debug]',
    '  level = "info"',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = "${join(dir, 'opt')}"`
  ]
  if (opts.cri === true) {
    await mkdir(join(dir, 'cni', 'bin'), { recursive: true })
    await mkdir(join(dir, 'cni', 'conf'), { recursive: true })
    lines.push(
      '[plugins."io.containerd.grpc.v1.cri"]',
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      '  enable_selinux = false',
      '  [plugins."io.containerd.grpc.v1.cri".containerd]',
      '    snapshotter = "nydus"',
      '    disable_snapshot_annotations = false',
      '  [plugins."io.containerd.grpc.v1.cri".cni]',
      `    bin_dir = "${join(dir, 'cni', 'bin')}"`,
      `    conf_dir = "${join(dir, 'cni', 'conf')}"`
    )
  }
  if (opts.snapshotterSocket !== undefined) {
    lines.push('[proxy_plugins.nydus]', '  type = "snapshot"', `  address = "${opts.snapshotterSocket}"`)
  }
  await writeFile(join(dir, 'config.toml'), lines.join('\n') + '\n')
  let log = ''
  const argv = [...(opts.wrap ?? []), CONTAINERD_BIN, '--config', join(dir, 'config.toml')]
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout?.on('data', (c: Buffer) => { log += c.toString() })
  child.stderr?.on('data', (c: Buffer) => { log += c.toString() })
  const namespaces = new Set<string>()
  const onExit = (): void => { child.kill('SIGKILL') }
  process.once('exit', onExit)

  const ctr = async (ns: string, args: string[], timeoutMs = 90_000): Promise<string> => {
    namespaces.add(ns)
    try {
      return (await run(CTR_BIN, ['-a', address, '-n', ns, ...args], { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024 })).stdout
    } catch (err) {
      const e = err as { stderr?: string, stdout?: string }
      throw new Error(`ctr -n ${ns} ${args.join(' ')}: ${e.stderr ?? String(err)}${e.stdout !== undefined && e.stdout !== '' ? `\nstdout: ${e.stdout.slice(-2000)}` : ''}\ncontainerd log:\n${log.slice(-3000)}`)
    }
  }

  let stopped: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        // kill whatever still runs (a test that failed half-way), then drop the tasks
        for (const ns of namespaces) {
          const tasks = await run(CTR_BIN, ['-a', address, '-n', ns, 'tasks', 'ls', '-q'], { timeout: 10_000 }).then((r) => r.stdout.split('\n').filter((l) => l !== ''), () => [])
          for (const t of tasks) {
            await run(CTR_BIN, ['-a', address, '-n', ns, 'tasks', 'kill', '-s', 'SIGKILL', t], { timeout: 10_000 }).catch(() => {})
            await run(CTR_BIN, ['-a', address, '-n', ns, 'tasks', 'rm', '-f', t], { timeout: 10_000 }).catch(() => {})
          }
          const ctrs = await run(CTR_BIN, ['-a', address, '-n', ns, 'containers', 'ls', '-q'], { timeout: 10_000 }).then((r) => r.stdout.split('\n').filter((l) => l !== ''), () => [])
          if (ctrs.length > 0) await run(CTR_BIN, ['-a', address, '-n', ns, 'containers', 'rm', ...ctrs], { timeout: 10_000 }).catch(() => {})
        }
        const exited = new Promise((resolve) => child.once('exit', resolve))
        child.kill('SIGTERM')
        const t = setTimeout(() => { child.kill('SIGKILL') }, 10_000)
        await exited
        clearTimeout(t)
      }
      process.off('exit', onExit)
      await unmountUnder(dir)
      // runc keeps per-namespace state under /run/containerd/runc whatever containerd's state is
      for (const ns of namespaces) await rmdir(`/run/containerd/runc/${ns}`).catch(() => {})
    })()
    await stopped
  }

  try {
    await waitUntil('containerd', async () => { await run(CTR_BIN, ['-a', address, 'version'], { timeout: 5000 }); return true }, 30_000)
  } catch (err) {
    await stop()
    throw new Error(`${(err as Error).message}\ncontainerd log:\n${log.slice(-3000)}`)
  }
  return { address, dir, pid: child.pid ?? -1, log: () => log, ctr, stop }
}
