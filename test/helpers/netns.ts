/**
 * Test and benchmark helpers for multi-host setups in Linux network namespaces (needs root, `ip`
 * and `tc` from iproute2):
 *
 * - `NetLab`: a switch namespace with a bridge, and hosts (one namespace each) plugged into it by
 *   veth pairs on a private 10.231.x.0/24 subnet, optionally rate-limited with `tc tbf` in both
 *   directions (host egress = its upload, switch egress towards it = its download). Every name
 *   starts with a per-run prefix (`nd<pid>`); `cleanupStale()` removes namespaces left by earlier
 *   runs whose process is gone; `destroy()` kills what was spawned and deletes every namespace
 *   (safe twice, and also attempted at process exit).
 * - `NetnsRegistry`: Debian's docker-registry inside a host's namespace, with blobs and images
 *   written straight into its filesystem storage (no upload over the network), and byte accounting
 *   from its own access log (combined log format: the response size per request).
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, openSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

const execFileP = promisify(execFile)

export const LAB_PREFIX_RE = /^nd(\d+)-/

/** True when running as root with `ip` and `tc` available (what network namespaces need). */
export function canUseNetns (): boolean {
  if (process.getuid?.() !== 0) return false
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' })
    execFileSync('tc', ['-V'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

async function run (cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 16 * 1024 * 1024 })
    return stdout
  } catch (err) {
    const e = err as { stderr?: string, message: string }
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr?.trim() ?? e.message}`)
  }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

export interface LabHost {
  name: string
  /** Network namespace name. */
  ns: string
  ip: string
  /** Interface inside the host namespace, and its peer inside the switch namespace. */
  dev: string
  swDev: string
}

export interface NetLabOptions {
  /** Default `nd<pid>`. Must match LAB_PREFIX_RE with its pid for stale cleanup to work. */
  prefix?: string
  /** Third octet of 10.231.x.0/24 (default derived from the pid). */
  subnet?: number
}

const labs = new Set<NetLab>()
let exitHook = false

export class NetLab {
  readonly prefix: string
  readonly subnet: number
  readonly hosts = new Map<string, LabHost>()
  /** tbf's queue, in ms of the link's rate: how long a packet may wait before it is dropped. */
  queueMs = 100
  private readonly children = new Set<ChildProcess>()
  private destroying: Promise<void> | undefined
  private created = false

  constructor (opts: NetLabOptions = {}) {
    this.prefix = opts.prefix ?? `nd${process.pid}`
    this.subnet = opts.subnet ?? (20 + (process.pid % 200))
    if (this.prefix.length > 9) throw new Error(`lab prefix ${this.prefix} too long for interface names`)
  }

  /** Deletes namespaces named `nd<pid>-…` whose pid is not a live process (left by crashed runs). */
  static async cleanupStale (): Promise<string[]> {
    const out = await run('ip', ['netns', 'list'])
    const removed: string[] = []
    for (const line of out.split('\n')) {
      const name = line.trim().split(/\s+/)[0] ?? ''
      const m = LAB_PREFIX_RE.exec(name)
      if (m === null) continue
      const pid = Number(m[1])
      if (pid !== process.pid && alive(pid)) continue
      if (pid === process.pid) continue
      for (const p of (await run('ip', ['netns', 'pids', name]).catch(() => '')).split('\n')) {
        const n = Number(p.trim())
        if (n > 0) { try { process.kill(n, 'SIGKILL') } catch {} }
      }
      await run('ip', ['netns', 'del', name]).catch(() => {})
      removed.push(name)
    }
    return removed
  }

  private get swNs (): string { return `${this.prefix}-sw` }
  private get bridge (): string { return `${this.prefix}br` }

  /** Creates the switch namespace and its bridge. */
  async create (): Promise<void> {
    if (this.created) return
    this.created = true
    labs.add(this)
    if (!exitHook) {
      exitHook = true
      process.once('exit', () => {
        for (const lab of labs) lab.destroySync()
      })
    }
    await run('ip', ['netns', 'add', this.swNs])
    await run('ip', ['-n', this.swNs, 'link', 'add', this.bridge, 'type', 'bridge'])
    await run('ip', ['-n', this.swNs, 'link', 'set', this.bridge, 'up'])
    await run('ip', ['-n', this.swNs, 'link', 'set', 'lo', 'up'])
  }

  /** Adds a host namespace on the bridge, with an address 10.231.<subnet>.<n>. */
  async addHost (name: string, opts: { rateMbit?: number } = {}): Promise<LabHost> {
    if (!/^[a-z0-9]{1,5}$/.test(name)) throw new Error(`host name ${name}: 1-5 lowercase letters or digits`)
    const n = this.hosts.size + 1
    const h: LabHost = { name, ns: `${this.prefix}-${name}`, ip: `10.231.${this.subnet}.${n}`, dev: `${this.prefix}${name}a`, swDev: `${this.prefix}${name}b` }
    await run('ip', ['netns', 'add', h.ns])
    this.hosts.set(name, h)
    await run('ip', ['link', 'add', h.dev, 'netns', h.ns, 'type', 'veth', 'peer', 'name', h.swDev, 'netns', this.swNs])
    await run('ip', ['-n', this.swNs, 'link', 'set', h.swDev, 'master', this.bridge])
    await run('ip', ['-n', this.swNs, 'link', 'set', h.swDev, 'up'])
    await run('ip', ['-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', h.dev])
    await run('ip', ['-n', h.ns, 'link', 'set', h.dev, 'up'])
    await run('ip', ['-n', h.ns, 'link', 'set', 'lo', 'up'])
    if (opts.rateMbit !== undefined) await this.setRate(name, opts.rateMbit)
    return h
  }

  host (name: string): LabHost {
    const h = this.hosts.get(name)
    if (h === undefined) throw new Error(`no host ${name}`)
    return h
  }

  /**
   * Limits a host's link to `mbit` in both directions with tbf (upload: its own egress; download:
   * the switch's egress towards it). `undefined` removes the limit.
   */
  async setRate (name: string, mbit: number | undefined, downMbit = mbit): Promise<void> {
    const h = this.host(name)
    for (const [ns, dev, rate] of [[h.ns, h.dev, mbit], [this.swNs, h.swDev, downMbit]] as const) {
      await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', dev, 'root']).catch(() => {})
      if (rate !== undefined) {
        // burst: at least one 10 ms worth of bytes, so tbf itself is not the bottleneck, and above
        // the veth's 64 KiB GSO packets (tbf splits a packet larger than its burst in software:
        // at 40 Mbit/s with a 64 KiB burst that cost 8x the softirq time of 100 Mbit/s)
        const burst = Math.max(192 * 1024, Math.ceil(rate * 1e6 / 8 / 100))
        await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', `${rate}mbit`, 'burst', String(burst), 'latency', `${this.queueMs}ms`])
      }
    }
  }

  /**
   * Bytes each host has sent and received so far, read from the switch side of its link in one
   * call (the switch receives what the host sends and sends what the host receives).
   */
  async linkBytes (): Promise<Map<string, { tx: number, rx: number }>> {
    const out = JSON.parse(await run('ip', ['-n', this.swNs, '-s', '-j', 'link', 'show'])) as Array<{ ifname: string, stats64?: { rx: { bytes: number }, tx: { bytes: number } } }>
    const bySw = new Map(out.map(l => [l.ifname, l.stats64]))
    const m = new Map<string, { tx: number, rx: number }>()
    for (const h of this.hosts.values()) {
      const st = bySw.get(h.swDev)
      if (st !== undefined) m.set(h.name, { tx: st.rx.bytes, rx: st.tx.bytes })
    }
    return m
  }

  /** Spawns `cmd args` inside a host's namespace; the child is killed by destroy(). */
  spawn (name: string, cmd: string, args: string[], opts: SpawnOptions & { logFile?: string } = {}): ChildProcess {
    const h = this.host(name)
    let stdio: SpawnOptions['stdio'] = opts.stdio ?? 'ignore'
    let fd: number | undefined
    if (opts.logFile !== undefined) {
      fd = openSync(opts.logFile, 'a')
      stdio = ['ignore', fd, fd]
    }
    const child = spawn('ip', ['netns', 'exec', h.ns, cmd, ...args], { ...opts, stdio })
    if (fd !== undefined) closeSync(fd)
    this.children.add(child)
    child.once('exit', () => this.children.delete(child))
    return child
  }

  /** Runs a command inside a host's namespace and returns its stdout. */
  async exec (name: string, cmd: string, args: string[]): Promise<string> {
    return await run('ip', ['netns', 'exec', this.host(name).ns, cmd, ...args])
  }

  /** GET a URL from inside a host's namespace (curl); undefined when it fails. */
  async curl (name: string, url: string, timeoutS = 2): Promise<string | undefined> {
    try {
      return await this.exec(name, 'curl', ['-sf', '--max-time', String(timeoutS), url])
    } catch {
      return undefined
    }
  }

  /** Polls a URL from inside a namespace until it answers 2xx. */
  async waitHttp (name: string, url: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (await this.curl(name, url, 1) !== undefined) return
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    throw new Error(`${url} (from ${name}) did not answer within ${timeoutMs} ms`)
  }

  /** Kills every spawned process and deletes every namespace. Safe twice. */
  async destroy (): Promise<void> {
    this.destroying ??= (async () => {
      await Promise.all([...this.children].map(async c => await killChild(c)))
      for (const h of this.hosts.values()) {
        for (const p of (await run('ip', ['netns', 'pids', h.ns]).catch(() => '')).split('\n')) {
          const n = Number(p.trim())
          if (n > 0) { try { process.kill(n, 'SIGKILL') } catch {} }
        }
        await run('ip', ['netns', 'del', h.ns]).catch(() => {})
      }
      if (this.created) await run('ip', ['netns', 'del', this.swNs]).catch(() => {})
      labs.delete(this)
    })()
    await this.destroying
  }

  /** Last-resort synchronous cleanup at process exit. */
  private destroySync (): void {
    for (const c of this.children) { try { c.kill('SIGKILL') } catch {} }
    for (const ns of [...[...this.hosts.values()].map(h => h.ns), this.swNs]) {
      try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }) } catch {}
    }
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
export async function killChild (c: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return
  const gone = new Promise<void>(resolve => c.once('exit', () => resolve()))
  c.kill(signal)
  const t = setTimeout(() => { try { c.kill('SIGKILL') } catch {} }, graceMs)
  await gone
  clearTimeout(t)
}

// ---- a registry in a namespace ----------------------------------------------------------------

export interface AccessLogEntry { method: string, path: string, status: number, bytes: number }

export class NetnsRegistry {
  readonly url: string
  readonly host: string
  private child: ChildProcess | undefined

  constructor (private readonly lab: NetLab, private readonly hostName: string, readonly dir: string, readonly port = 5000) {
    this.host = `${lab.host(hostName).ip}:${port}`
    this.url = `http://${this.host}`
  }

  private get storage (): string { return join(this.dir, 'data', 'docker', 'registry', 'v2') }
  private get logPath (): string { return join(this.dir, 'access.log') }

  /** Writes a blob into the registry's storage and links it into `repo`; returns its digest. */
  async addBlob (repo: string, bytes: Uint8Array): Promise<string> {
    const hex = createHash('sha256').update(bytes).digest('hex')
    const blobDir = join(this.storage, 'blobs', 'sha256', hex.slice(0, 2), hex)
    await mkdir(blobDir, { recursive: true })
    await writeFile(join(blobDir, 'data'), bytes)
    const link = join(this.storage, 'repositories', repo, '_layers', 'sha256', hex)
    await mkdir(link, { recursive: true })
    await writeFile(join(link, 'link'), `sha256:${hex}`)
    return `sha256:${hex}`
  }

  /** Writes a one-platform OCI image (given layer blobs) tagged `tag`; returns the manifest digest. */
  async addImage (repo: string, tag: string, layers: Array<{ digest: string, size: number }>): Promise<string> {
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map(l => l.digest) }, config: {} }))
    const configDigest = await this.addBlob(repo, config)
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layers.map(l => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: l.digest, size: l.size }))
    }))
    const hex = createHash('sha256').update(manifest).digest('hex')
    const blobDir = join(this.storage, 'blobs', 'sha256', hex.slice(0, 2), hex)
    await mkdir(blobDir, { recursive: true })
    await writeFile(join(blobDir, 'data'), manifest)
    const m = join(this.storage, 'repositories', repo, '_manifests')
    for (const d of [join(m, 'revisions', 'sha256', hex), join(m, 'tags', tag, 'current'), join(m, 'tags', tag, 'index', 'sha256', hex)]) {
      await mkdir(d, { recursive: true })
      await writeFile(join(d, 'link'), `sha256:${hex}`)
    }
    return `sha256:${hex}`
  }

  async start (): Promise<void> {
    await mkdir(join(this.dir, 'data'), { recursive: true })
    const cfg = join(this.dir, 'config.yml')
    await writeFile(cfg, [
      'version: 0.1',
      'log:',
      '  level: error',
      '  accesslog:',
      '    disabled: false',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(this.dir, 'data')}`,
      '  maintenance:',
      '    uploadpurging:',
      '      enabled: false',
      'http:',
      `  addr: ${this.host}`,
      `  secret: ${randomBytes(16).toString('hex')}`
    ].join('\n') + '\n')
    this.child = this.lab.spawn(this.hostName, '/usr/bin/docker-registry', ['serve', cfg], { logFile: this.logPath })
    await this.lab.waitHttp(this.hostName, `${this.url}/v2/`)
  }

  /** Requests the registry logged so far (a request is logged when it completes). */
  async accessLog (): Promise<AccessLogEntry[]> {
    const text = await readFile(this.logPath, 'utf8').catch(() => '')
    const out: AccessLogEntry[] = []
    for (const m of text.matchAll(/"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP\/[\d.]+" (\d{3}) (\d+|-)/g)) {
      out.push({ method: m[1] ?? '', path: m[2] ?? '', status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]) })
    }
    return out
  }

  /** Body bytes the registry served for GETs of one blob (or of every blob). */
  async blobBytes (digest?: string): Promise<number> {
    return (await this.accessLog()).filter(e => e.method === 'GET' && e.path.includes('/blobs/') && (digest === undefined || e.path.endsWith(digest))).reduce((n, e) => n + e.bytes, 0)
  }

  async stop (): Promise<void> {
    if (this.child !== undefined) await killChild(this.child)
  }
}
