/**
 * Test helpers around the real registry (Debian's `docker-registry`, distribution 2.8):
 *
 * - `startRegistry()` runs a private instance on 127.0.0.1 (free port, own temp storage, deletes
 *   enabled, optional htpasswd Basic auth) and waits until `/v2/` answers;
 * - `startCountingProxy(host)` puts a byte-counting HTTP proxy in front of any HTTP server, to
 *   measure how many bytes a registry served and which requests (with Range) it got;
 * - `buildUmociImage()` builds a small image (busybox-static, or given files) into an OCI layout
 *   with umoci; `skopeoCopy()` runs `skopeo copy` against a plain-HTTP registry.
 *
 * Everything started is stopped by `stop()` (safe twice) and, as a last resort, when the test
 * process exits.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, openSync } from 'node:fs'
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'

const execFileP = promisify(execFile)

export const REGISTRY_BIN = '/usr/bin/docker-registry'

/** True if the Debian docker-registry binary is installed. */
export function haveRegistry (): boolean {
  return existsSync(REGISTRY_BIN)
}

export interface StartRegistryOptions {
  /** Require HTTP Basic auth with this user (htpasswd file, bcrypt). */
  htpasswd?: { user: string, password: string }
  /** Registry log level (default warn); the log goes to `<dir>/registry.log`. */
  logLevel?: 'error' | 'warn' | 'info' | 'debug'
}

export interface RunningRegistry {
  /** `127.0.0.1:PORT` */
  host: string
  /** `http://127.0.0.1:PORT` */
  url: string
  /** Temp directory holding config, storage (`data/`) and `registry.log`. */
  dir: string
  pid: number
  /** Kills the registry (SIGTERM, then SIGKILL) and removes `dir`. Safe to call twice. */
  stop: () => Promise<void>
  /** Kills the registry process (SIGKILL) but keeps its storage: an outage. */
  kill: () => Promise<void>
  /** Starts the registry again on the same address with the same storage after kill(). */
  restart: () => Promise<void>
}

const children = new Set<ChildProcess>()
let exitHookInstalled = false
function trackChild (c: ChildProcess): void {
  children.add(c)
  c.once('exit', () => children.delete(c))
  if (!exitHookInstalled) {
    exitHookInstalled = true
    process.once('exit', () => { for (const ch of children) ch.kill('SIGKILL') })
  }
}

/** A free TCP port on 127.0.0.1 (bind to port 0 and release it). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      srv.close(() => {
        if (typeof addr === 'object' && addr !== null) resolve(addr.port)
        else reject(new Error('no port'))
      })
    })
  })
}

/**
 * An htpasswd line for `user`, bcrypt-hashed as distribution requires. Uses the system crypt(3)
 * through perl (libxcrypt supports `$2b$`), so apache2-utils' htpasswd is not needed.
 */
export async function htpasswdLine (user: string, password: string): Promise<string> {
  const alphabet = './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
  const bytes = randomBytes(21)
  // 22 salt characters; the last one carries only 2 significant bits, so pick it from ".Oeu".
  const salt = [...bytes].map(b => alphabet[b % 64]).join('') + '.Oeu'[bytes[0]! % 4]
  const { stdout } = await execFileP('perl', ['-e', 'print crypt($ARGV[0], $ARGV[1])', password, `$2b$05$${salt}`])
  if (!stdout.startsWith('$2b$05$') || stdout.length !== 60) throw new Error(`crypt(3) did not produce bcrypt: ${stdout.slice(0, 20)}`)
  return `${user}:${stdout}`
}

async function waitForRegistry (url: string, child: ChildProcess, logPath: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const log = await readFile(logPath, 'utf8').catch(() => '')
      throw new Error(`docker-registry exited (${child.exitCode ?? child.signalCode}) before answering:\n${log.slice(-2000)}`)
    }
    const status = await new Promise<number>((resolve) => {
      const req = http.get(`${url}/v2/`, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
      req.on('error', () => resolve(0))
      req.setTimeout(1000, () => { req.destroy(); resolve(0) })
    })
    if (status === 200 || status === 401) return
    if (Date.now() > deadline) throw new Error(`docker-registry at ${url} did not answer /v2/ within ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/** Starts a private docker-registry on 127.0.0.1; see RunningRegistry. */
export async function startRegistry (opts: StartRegistryOptions = {}): Promise<RunningRegistry> {
  if (!haveRegistry()) throw new Error(`${REGISTRY_BIN} is not installed (apt-get install docker-registry)`)
  const dir = await mkdtemp(join(tmpdir(), 'naiad-registry-'))
  let lastErr: unknown
  // A free port can be taken between probing and binding; try a few.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort()
    const host = `127.0.0.1:${port}`
    const url = `http://${host}`
    const lines = [
      'version: 0.1',
      'log:',
      `  level: ${opts.logLevel ?? 'warn'}`,
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'data')}`,
      '  delete:',
      '    enabled: true',
      '  maintenance:',
      '    uploadpurging:',
      '      enabled: false',
      'http:',
      `  addr: ${host}`,
      `  secret: ${randomBytes(16).toString('hex')}`
    ]
    if (opts.htpasswd !== undefined) {
      await writeFile(join(dir, 'htpasswd'), `${await htpasswdLine(opts.htpasswd.user, opts.htpasswd.password)}\n`)
      lines.push('auth:', '  htpasswd:', '    realm: naiad-test', `    path: ${join(dir, 'htpasswd')}`)
    }
    const cfg = join(dir, 'config.yml')
    await writeFile(cfg, `${lines.join('\n')}\n`)
    const logPath = join(dir, 'registry.log')
    const logFd = openSync(logPath, 'a')
    const child = spawn(REGISTRY_BIN, ['serve', cfg], { stdio: ['ignore', logFd, logFd], detached: false })
    closeSync(logFd)
    trackChild(child)
    try {
      await waitForRegistry(url, child, logPath)
    } catch (err) {
      lastErr = err
      await killChild(child)
      continue
    }
    let stopping: Promise<void> | undefined
    let current = child
    const reg: RunningRegistry = {
      host,
      url,
      dir,
      pid: child.pid ?? -1,
      stop: async () => {
        stopping ??= (async () => {
          await killChild(current)
          await rm(dir, { recursive: true, force: true })
        })()
        await stopping
      },
      kill: async () => {
        if (current.exitCode !== null || current.signalCode !== null) return
        const gone = new Promise<void>(resolve => current.once('exit', () => resolve()))
        current.kill('SIGKILL')
        await gone
      },
      restart: async () => {
        const fd = openSync(logPath, 'a')
        const again = spawn(REGISTRY_BIN, ['serve', cfg], { stdio: ['ignore', fd, fd], detached: false })
        closeSync(fd)
        trackChild(again)
        current = again
        reg.pid = again.pid ?? -1
        await waitForRegistry(url, again, logPath)
      }
    }
    return reg
  }
  await rm(dir, { recursive: true, force: true })
  throw lastErr
}

/** SIGTERM by pid, SIGKILL after 3 s, resolves when the process is gone. */
async function killChild (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const gone = new Promise<void>(resolve => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const t = setTimeout(() => child.kill('SIGKILL'), 3000)
  await gone
  clearTimeout(t)
}

export interface ProxiedRequest {
  method: string
  path: string
  /** The Range header, if any. */
  range?: string
  /** The Content-Range header of the request (chunked upload PATCHes), if any. */
  contentRange?: string
  status?: number
  /** Response body bytes for this request. */
  bytes: number
}

export interface CountingProxy {
  /** `127.0.0.1:PORT` of the proxy. */
  host: string
  url: string
  /** Response body bytes the target served through the proxy so far. */
  bytesServed: () => number
  /** Requests seen so far, in arrival order. */
  requests: () => ProxiedRequest[]
  /** Zeroes the counters and forgets the requests. */
  reset: () => void
  /** Safe to call twice. */
  stop: () => Promise<void>
}

/**
 * An HTTP proxy on 127.0.0.1 in front of `targetHost` (`host:port`, plain HTTP) that counts the
 * response body bytes it relays and records each request. The Host header is passed through
 * unchanged, so registries build upload Locations that point back at the proxy.
 */
export async function startCountingProxy (targetHost: string): Promise<CountingProxy> {
  const [tHost, tPortStr] = targetHost.startsWith('[') ? [targetHost.slice(1, targetHost.indexOf(']')), targetHost.slice(targetHost.indexOf(']') + 2)] : targetHost.split(':') as [string, string | undefined]
  const tPort = Number(tPortStr ?? 80)
  const agent = new http.Agent({ keepAlive: true })
  let total = 0
  let log: ProxiedRequest[] = []
  const server = http.createServer((req, res) => {
    const entry: ProxiedRequest = { method: req.method ?? 'GET', path: req.url ?? '/', bytes: 0 }
    const range = req.headers['range']
    if (typeof range === 'string') entry.range = range
    const contentRange = req.headers['content-range']
    if (typeof contentRange === 'string') entry.contentRange = contentRange
    log.push(entry)
    const upstream = http.request({ host: tHost, port: tPort, method: req.method, path: req.url, headers: req.headers, agent }, (ures) => {
      entry.status = ures.statusCode ?? 0
      res.writeHead(ures.statusCode ?? 502, ures.rawHeaders)
      ures.on('data', (c: Buffer) => { total += c.length; entry.bytes += c.length })
      ures.pipe(res)
      ures.on('error', () => res.destroy())
    })
    upstream.on('error', () => { if (!res.headersSent) { res.writeHead(502); res.end() } else res.destroy() })
    req.pipe(upstream)
    res.on('close', () => { if (!res.writableFinished) upstream.destroy() })
  })
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()) })
  const addr = server.address() as net.AddressInfo
  const host = `127.0.0.1:${addr.port}`
  let stopping: Promise<void> | undefined
  return {
    host,
    url: `http://${host}`,
    bytesServed: () => total,
    requests: () => [...log],
    reset: () => { total = 0; log = [] },
    stop: async () => {
      stopping ??= new Promise<void>(resolve => {
        server.closeAllConnections()
        server.close(() => resolve())
        agent.destroy()
      })
      await stopping
    }
  }
}

export interface BuildImageOptions {
  /** OCI layout directory to create (or add to). */
  layoutDir: string
  tag?: string
  /** Put busybox-static in /bin (with /bin/sh → busybox); default true. */
  busybox?: boolean
  /** More files: path inside the image → content. */
  files?: Record<string, string | Uint8Array>
  /** Image config Cmd (default /bin/sh when busybox is in). */
  cmd?: string
}

/**
 * Builds a one-layer image with umoci (init, new, unpack --rootless, add files, repack, config)
 * into `layoutDir` under `tag` (default latest). Needs umoci, and busybox-static unless
 * `busybox: false`.
 */
export async function buildUmociImage (opts: BuildImageOptions): Promise<void> {
  const tag = opts.tag ?? 'latest'
  const image = `${opts.layoutDir}:${tag}`
  const work = await mkdtemp(join(tmpdir(), 'naiad-umoci-'))
  try {
    if (!existsSync(join(opts.layoutDir, 'oci-layout'))) await execFileP('umoci', ['init', '--layout', opts.layoutDir])
    await execFileP('umoci', ['new', '--image', image])
    const bundle = join(work, 'bundle')
    await execFileP('umoci', ['unpack', '--rootless', '--image', image, bundle])
    const rootfs = join(bundle, 'rootfs')
    if (opts.busybox ?? true) {
      await mkdir(join(rootfs, 'bin'), { recursive: true })
      await copyFile('/usr/bin/busybox', join(rootfs, 'bin', 'busybox'))
      await chmod(join(rootfs, 'bin', 'busybox'), 0o755)
      await symlink('busybox', join(rootfs, 'bin', 'sh'))
    }
    for (const [p, content] of Object.entries(opts.files ?? {})) {
      const dest = join(rootfs, p)
      await mkdir(dirname(dest), { recursive: true })
      await writeFile(dest, content)
    }
    await execFileP('umoci', ['repack', '--image', image, bundle])
    const cmd = opts.cmd ?? ((opts.busybox ?? true) ? '/bin/sh' : undefined)
    if (cmd !== undefined) await execFileP('umoci', ['config', '--image', image, '--config.cmd', cmd])
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

/**
 * `skopeo copy` between two transports (`oci:DIR:TAG`, `docker://HOST/REPO:TAG`) with TLS checks
 * off for plain-HTTP registries. `creds` is `user:password` for both sides' registries.
 */
export async function skopeoCopy (src: string, dest: string, opts: { creds?: string, extraArgs?: string[] } = {}): Promise<void> {
  const args = ['--insecure-policy', 'copy', '--quiet']
  if (src.startsWith('docker://')) args.push('--src-tls-verify=false')
  if (dest.startsWith('docker://')) args.push('--dest-tls-verify=false')
  if (opts.creds !== undefined) {
    if (src.startsWith('docker://')) args.push('--src-creds', opts.creds)
    if (dest.startsWith('docker://')) args.push('--dest-creds', opts.creds)
  }
  args.push(...(opts.extraArgs ?? []), src, dest)
  await execFileP('skopeo', args, { maxBuffer: 16 * 1024 * 1024 })
}
