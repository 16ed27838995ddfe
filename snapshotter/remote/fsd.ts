/**
 * RemoteFilesystem over the fsdaemon's control API (lib/fsdapi), with the fsdaemon's supervision:
 * one fsdaemon per node (docs/decisions/0003-fsdaemon-per-node.md) serves every image's FUSE
 * mount. When its control socket does not answer, the snapshotter starts it as
 * `naiad fsd --socket … [--config …] [--cache-dir …] [--state-dir …]`, detached in its own session
 * (setsid) with its output appended to a log file, so that it outlives the snapshotter: a
 * snapshotter restart or kill -9 never disturbs running containers. A restarted fsdaemon remounts
 * what its state file records (fsdaemon/state.ts); the snapshotter re-checks its own mounts on
 * start and on every prepare.
 *
 * close() leaves the fsdaemon running unless `stopOnClose` (tests, `--stop-fsdaemon`): then it is
 * sent SIGTERM, which unmounts everything it serves.
 */
import { spawn } from 'node:child_process'
import { mkdirSync, openSync, closeSync, existsSync, readFileSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { holdersFile, launchCommand, parseHolders } from '../../lib/fsdapi/failover.ts'
import { NaiadError, hasCode, throwIfAborted } from '../../lib/errors/index.ts'
import type { Logger } from '../../lib/log/index.ts'
import type { Credentials } from '../../lib/registry/credentials.ts'
import type { ImageCredentials, RemoteFilesystem, RemoteImage, RemoteOptions } from './filesystem.ts'

export interface FsdRemoteOptions {
  /** Control socket of the fsdaemon. */
  readonly socket: string
  /** Start the fsdaemon when the socket does not answer. */
  readonly start: boolean
  /** The naiad entry point to start (`.js`: run with this Node; else executed directly). */
  readonly binary: string
  /** fsdaemon config file ('' = its default). */
  readonly config: string
  readonly cacheDir: string
  readonly stateDir: string
  /** Where the started fsdaemon's output is appended. */
  readonly logFile: string
  readonly startTimeoutMs: number
  /** Plain HTTP to every registry (default: loopback registries only). */
  readonly plainHttp: boolean
  /** Stop the fsdaemon on close (tests). */
  readonly stopOnClose: boolean
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** True while `pid` runs (a zombie, dead but not yet reaped by its parent, counts as gone). */
function pidAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

export class FsdRemoteFilesystem implements RemoteFilesystem {
  readonly #log: Logger
  readonly #o: FsdRemoteOptions
  readonly #client: FsdClient
  /** For questions that must not hold up a prepare or the start-up (daemon, list). */
  readonly #quick: FsdClient
  #starting: Promise<void> | undefined
  #lastPid: number | undefined
  #closed: Promise<void> | undefined
  /** Restarts a started fsdaemon that died (it adopts the FUSE connections of running containers). */
  #watchdog: NodeJS.Timeout | undefined
  readonly #credentials: ImageCredentials | undefined
  /** The credentials last given to each mount by this process (memory only). */
  readonly #given = new Map<string, Credentials | undefined>()

  constructor (deps: { log: Logger, credentials?: ImageCredentials }, options: FsdRemoteOptions) {
    this.#log = deps.log.child({ component: 'snapshotter.fsd' })
    this.#credentials = deps.credentials
    this.#o = options
    this.#client = new FsdClient({ socketPath: options.socket, timeoutMs: 120_000 })
    this.#quick = new FsdClient({ socketPath: options.socket, timeoutMs: 5000 })
  }

  /** Makes sure an fsdaemon answers on the socket, starting one if allowed. Returns its pid. */
  async ensure (signal?: AbortSignal): Promise<number> {
    try {
      const info = await this.#quick.daemon(signal)
      this.#lastPid = info.pid
      this.#watch()
      return info.pid
    } catch (err) {
      if (!hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) throw err
      if (!this.#o.start) throw err
      // only when nobody listens: a daemon that is merely slow must not get a second one beside it
      const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code
      if (code !== 'ECONNREFUSED' && code !== 'ENOENT') throw err
    }
    this.#starting ??= this.#start(signal).finally(() => { this.#starting = undefined })
    await this.#starting
    this.#watch()
    return this.#lastPid ?? -1
  }

  /**
   * Supervision: once an fsdaemon was started or found, a dead one is replaced within a second or
   * two, not at the next prepare, so that the FUSE connections its holders keep alive are adopted
   * while running containers wait for their reads (lib/fsdapi/failover.ts).
   */
  #watch (): void {
    if (!this.#o.start || this.#watchdog !== undefined || this.#closed !== undefined) return
    this.#watchdog = setInterval(() => {
      const pid = this.#lastPid
      if (pid === undefined || pidAlive(pid) || this.#starting !== undefined || this.#closed !== undefined) return
      this.#log.warn({ pid }, 'the fsdaemon died (or handed over); starting a new one, which adopts the FUSE connections of running containers')
      this.#lastPid = undefined
      this.ensure().catch((err: unknown) => { this.#log.error({ err }, 'restarting the fsdaemon failed; the next prepare tries again') })
    }, 1000)
    this.#watchdog.unref()
  }

  async #start (signal?: AbortSignal): Promise<void> {
    const bin = this.#o.binary
    if (bin === '' || !existsSync(bin)) throw new NaiadError('NAIAD_SNAP_FSD_START', `cannot start the fsdaemon: naiad entry point ${bin === '' ? '(unknown)' : bin} does not exist`)
    const args = ['fsd', '--socket', this.#o.socket]
    if (this.#o.config !== '') args.push('--config', this.#o.config)
    if (this.#o.cacheDir !== '') args.push('--cache-dir', this.#o.cacheDir)
    if (this.#o.stateDir !== '') args.push('--state-dir', this.#o.stateDir)
    if (this.#o.plainHttp) args.push('--plain-http')
    const [node, nodeArgv] = bin.endsWith('.js') || bin.endsWith('.mjs') ? [process.execPath, [bin, ...args]] : [bin, args]
    // through the failover launcher: the new daemon adopts the FUSE connections of a dead one
    const { cmd, args: argv } = launchCommand(this.#o.socket, node, nodeArgv)
    mkdirSync(dirname(this.#o.logFile), { recursive: true, mode: 0o700 })
    const fd = openSync(this.#o.logFile, 'a', 0o600)
    let exited: string | undefined
    try {
      // detached: setsid(2), so the daemon survives the snapshotter (and its process group) dying
      const child = spawn(cmd, argv, { detached: true, stdio: ['ignore', fd, fd] })
      child.once('exit', (code, sig) => { exited = `exited (${String(code ?? sig)})` })
      child.once('error', (err) => { exited = `could not be run: ${err.message}` })
      child.unref()
      this.#log.info({ pid: child.pid, cmd: node, args: nodeArgv, failoverLauncher: cmd !== node, logFile: this.#o.logFile }, 'started the fsdaemon')
    } finally {
      closeSync(fd)
    }
    const deadline = Date.now() + this.#o.startTimeoutMs
    const probe = new FsdClient({ socketPath: this.#o.socket, timeoutMs: 2000 })
    for (;;) {
      throwIfAborted(signal)
      try {
        const info = await probe.daemon(signal)
        this.#lastPid = info.pid
        return
      } catch (err) {
        if (!hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) throw err
      }
      if (exited !== undefined) throw new NaiadError('NAIAD_SNAP_FSD_START', `the fsdaemon ${exited} before its socket ${this.#o.socket} answered; see ${this.#o.logFile}`)
      if (Date.now() > deadline) throw new NaiadError('NAIAD_SNAP_FSD_START', `the fsdaemon did not answer on ${this.#o.socket} within ${this.#o.startTimeoutMs} ms; see ${this.#o.logFile}`)
      await sleep(50)
    }
  }

  async mount (mountpoint: string, image: RemoteImage, opts: RemoteOptions = {}): Promise<void> {
    await this.ensure(opts.signal)
    const credentials = this.#credentials?.get(image.image)
    await this.#client.mount({
      mountpoint,
      bootstrap: image.bootstrap,
      image: image.image,
      ...(this.#o.plainHttp ? { plainHttp: true } : {}),
      ...(image.labels !== undefined ? { labels: { ...image.labels } } : {}),
      ...(credentials !== undefined ? { credentials } : {})
    }, opts.signal)
    this.#given.set(mountpoint, credentials)
  }

  async refresh (mountpoint: string, image: RemoteImage, opts: RemoteOptions = {}): Promise<void> {
    const credentials = this.#credentials?.get(image.image)
    const had = this.#given.get(mountpoint)
    if (credentials === undefined || (had !== undefined && had.username === credentials.username && had.password === credentials.password && had.identityToken === credentials.identityToken && had.registryToken === credentials.registryToken)) return
    // the same request again: the fsdaemon keeps the mount and takes the new credentials
    await this.mount(mountpoint, image, opts)
    this.#log.info({ mountpoint, image: image.image }, 'gave the image mount its current registry credentials (values not logged)')
  }

  async alive (mountpoint: string, opts: RemoteOptions = {}): Promise<boolean> {
    let mounts
    try {
      mounts = await this.#quick.list(opts.signal)
    } catch (err) {
      if (hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) return false
      throw err
    }
    if (!mounts.some((m) => m.mountpoint === mountpoint)) return false
    if (this.#lastPid === undefined) {
      // a daemon started before this snapshotter: supervise it from now on
      try {
        this.#lastPid = (await this.#quick.daemon(opts.signal)).pid
        this.#watch()
      } catch {}
    }
    try {
      // the snapshotter serves no FUSE mount itself, so stat through the kernel is safe here
      await stat(mountpoint)
      return true
    } catch {
      return false
    }
  }

  /** The mounts of a running fsdaemon; none (and no daemon started) when it does not answer. */
  async list (opts: RemoteOptions = {}): Promise<Array<{ mountpoint: string, labels: Readonly<Record<string, string>> }>> {
    try {
      return (await this.#quick.list(opts.signal)).map((m) => ({ mountpoint: m.mountpoint, labels: m.labels }))
    } catch (err) {
      if (hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) return []
      throw err
    }
  }

  async releaseBlobs (blobIds: readonly string[], opts: RemoteOptions = {}): Promise<string[]> {
    const released: string[] = []
    for (const id of blobIds) {
      try {
        await this.#quick.removeBlob(id, opts.signal)
        released.push(id)
      } catch (err) {
        // in use by a mount of another image, or no fsdaemon (its quota handles it later)
        if (hasCode(err, 'NAIAD_FS_BLOB_IN_USE') || hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) continue
        throw err
      }
    }
    return released
  }

  async cachedBytes (blobId: string, opts: RemoteOptions = {}): Promise<number | undefined> {
    try {
      return (await this.#quick.blobs(opts.signal)).find((b) => b.blobId === blobId)?.bytes ?? 0
    } catch (err) {
      if (hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) return undefined
      throw err
    }
  }

  async unusedBlobs (opts: RemoteOptions = {}): Promise<string[]> {
    try {
      return (await this.#quick.blobs(opts.signal)).filter((b) => b.users === 0).map((b) => b.blobId)
    } catch (err) {
      if (hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) return []
      throw err
    }
  }

  async unmount (mountpoint: string, opts: RemoteOptions = {}): Promise<void> {
    this.#given.delete(mountpoint)
    try {
      await this.#client.unmount(mountpoint, opts.signal)
    } catch (err) {
      if (hasCode(err, 'NAIAD_FS_NOT_MOUNTED')) return
      throw err
    }
  }

  async close (): Promise<void> {
    this.#closed ??= (async () => {
      clearInterval(this.#watchdog)
      if (!this.#o.stopOnClose) return
      let pid = this.#lastPid
      try {
        pid = (await new FsdClient({ socketPath: this.#o.socket, timeoutMs: 2000 }).daemon()).pid
      } catch {}
      if (pid === undefined || !pidAlive(pid)) return
      this.#log.info({ pid }, 'stopping the fsdaemon (stop on exit)')
      try { process.kill(pid, 'SIGTERM') } catch {}
      for (let i = 0; i < 300 && pidAlive(pid); i++) await sleep(50)
      if (pidAlive(pid)) {
        this.#log.warn({ pid }, 'the fsdaemon did not stop in 15 s; killing it')
        try { process.kill(pid, 'SIGKILL') } catch {}
        for (let i = 0; i < 100 && pidAlive(pid); i++) await sleep(50)
        // its holders would keep the mounts' connections waiting for a successor: end them
        try {
          for (const h of parseHolders(readFileSync(holdersFile(this.#o.socket), 'utf8'))) {
            try { process.kill(-h.pid, 'SIGKILL') } catch {}
          }
        } catch {}
      }
      this.#log.info({ pid, stopped: !pidAlive(pid) }, 'fsdaemon stopped')
    })()
    await this.#closed
  }
}
