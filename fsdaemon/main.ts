/**
 * The fsdaemon's composition root: reads the configuration (file, then flags), creates the root
 * logger, the chunk cache and the daemon, the control server, installs signal handlers, and runs
 * until SIGINT/SIGTERM (clean shutdown: every mount is unmounted; see docs/fsdaemon.md). A
 * SIGKILLed daemon leaves stale mounts behind; the next start detaches and remounts them.
 */
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { loadConfigFile } from '../lib/config/index.ts'
import { createLogger, type LogLevel } from '../lib/log/index.ts'
import { isNaiadError, toExitCode } from '../lib/errors/index.ts'
import { fsdConfigSchema, type FsdConfig } from './config.ts'
import { FsDaemon } from './daemon.ts'
import { ControlServer } from './control/server.ts'
import { CacheManager } from './cache/index.ts'
import { ChunkDecodePool } from '../lib/format/decode-pool.ts'
import { notifyReady, notifyStopping } from '../lib/systemd/index.ts'
import { holdersFile, parseFuseFds } from '../lib/fsdapi/failover.ts'

export interface FsdCliOptions {
  config?: string
  image?: string
  bootstrap?: string
  blobDir?: string
  mountpoint?: string
  plainHttp?: boolean
  socket?: string
  cacheDir?: string
  stateDir?: string
  prefetch?: boolean
  prefetchAll?: boolean
  mirror?: string[]
  logLevel?: LogLevel
  /** `<fd>:<hex(mountpoint)>`: FUSE connections of a dead predecessor (set by the launcher). */
  fuseFd?: string[]
}

export interface Io { stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream }

function version (): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

/** Applies command-line overrides to the configuration (flags win over the file). */
function withOverrides (cfg: FsdConfig, o: FsdCliOptions): FsdConfig {
  return {
    ...cfg,
    log: { level: o.logLevel ?? cfg.log.level },
    socket: { path: o.socket ?? cfg.socket.path },
    state: { dir: o.stateDir ?? cfg.state.dir },
    cache: { ...cfg.cache, dir: o.cacheDir ?? cfg.cache.dir },
    fetch: { ...cfg.fetch, plain_http: o.plainHttp === true ? true : cfg.fetch.plain_http },
    mirrors: o.mirror !== undefined ? o.mirror.map(url => ({ url, health_check_interval: 5000, pass_authorization: false })) : cfg.mirrors,
    prefetch: { ...cfg.prefetch, enable: o.prefetch === false ? false : cfg.prefetch.enable, all: o.prefetchAll === true ? true : cfg.prefetch.all }
  }
}

export async function runFsd (o: FsdCliOptions, io: Io): Promise<number> {
  let cfg: FsdConfig
  try {
    cfg = withOverrides(o.config !== undefined ? await loadConfigFile(fsdConfigSchema, o.config, true) : await loadConfigFile(fsdConfigSchema, '/etc/naiad/fsd.toml', false), o)
  } catch (err) {
    io.stderr.write(isNaiadError(err) ? `naiad: ${err.code}: ${err.message}\nhint: ${err.hint}\n` : `naiad: ${String(err)}\n`)
    return toExitCode(err)
  }
  const standalone = o.mountpoint !== undefined
  if (standalone && (o.image === undefined) === (o.bootstrap === undefined)) {
    io.stderr.write('naiad: NAIAD_CLI_USAGE: --mountpoint needs exactly one of --image or --bootstrap\n')
    return 2
  }
  if (o.bootstrap !== undefined && o.blobDir === undefined) {
    io.stderr.write('naiad: NAIAD_CLI_USAGE: --bootstrap needs --blob-dir\n')
    return 2
  }
  const log = createLogger({ service: 'fsdaemon', level: cfg.log.level, destination: io.stdout as never, base: { version: version() } })
  const decoder = new ChunkDecodePool({ workers: cfg.fetch.decoder_threads > 0 ? cfg.fetch.decoder_threads : Math.min(4, Math.max(1, availableParallelism() - 1)) })
  const cache = new CacheManager({ logger: log.child({ component: 'cache' }), decoder }, { dir: cfg.cache.dir, quotaBytes: cfg.cache.quota, flushIntervalMs: cfg.cache.flush_interval, maxRequestBytes: cfg.fetch.max_request_size })
  let fuseFds: Map<string, number>
  try {
    fuseFds = parseFuseFds(o.fuseFd ?? [])
  } catch (err) {
    io.stderr.write(`naiad: NAIAD_CLI_USAGE: ${(err as Error).message}\n`)
    return 2
  }
  // the node daemon (control socket, no standalone mount) keeps its FUSE connections alive across
  // its own crashes (lib/fsdapi/failover.ts)
  const failover = standalone ? {} : { holdersFile: holdersFile(cfg.socket.path), fuseFds }
  const daemon = new FsDaemon({ log, cache, version: version() }, cfg, failover)
  const control = !standalone || o.socket !== undefined ? new ControlServer({ target: { info: async () => await daemon.daemonInfo(), list: async () => await daemon.list(), mount: async (r) => await daemon.mount(r), unmount: async (m) => { await daemon.unmount(m) }, blobs: async () => await daemon.cachedBlobs(), removeBlob: async (id) => { await daemon.removeBlob(id) }, metrics: async () => { await daemon.refreshUsage(); return await daemon.metrics.text() } }, log: log.child({ component: 'control' }) }, { socketPath: cfg.socket.path }) : undefined
  let stopping: Promise<void> | undefined
  const stop = (signal: string): Promise<void> => {
    stopping ??= (async () => {
      log.info({ signal }, 'shutting down: unmounting every mount')
      await notifyStopping('fsdaemon stopping: unmounting', { log })
      await control?.close()
      await daemon.close()
      await decoder.close()
      log.info('stopped')
    })()
    return stopping
  }
  let done!: () => void
  const finished = new Promise<void>((resolve) => { done = resolve })
  const onSignal = (sig: string): void => { stop(sig).then(done, done) }
  process.once('SIGINT', () => { onSignal('SIGINT') })
  process.once('SIGTERM', () => { onSignal('SIGTERM') })
  // Handover (upgrades, `naiad fsctl handover`): exit without unmounting. Every mount's FUSE
  // connection stays with its holder, the kernel queues the mounts' requests, and the next daemon
  // (the snapshotter's watchdog or systemd starts it through the failover launcher, from the
  // files on disk: the new version) adopts them; what this one had read but not answered is
  // resent. Exactly a crash, with the cache's chunk maps flushed first. Nothing else is closed
  // first: with the control socket gone and this process still alive, a supervisor could start
  // the next daemon, which would leave the mounts to this live one, about to end.
  process.on('SIGUSR2', () => {
    if (standalone) {
      log.warn({ signal: 'SIGUSR2' }, 'handover ignored: a standalone mount has no FUSE holder, it would break')
      return
    }
    if (stopping !== undefined) return
    stopping = (async () => {
      log.info({ signal: 'SIGUSR2', mounts: (await daemon.list()).length }, 'handing over: leaving every mount to its FUSE holder for the next daemon (not unmounting)')
      await Promise.race([cache.flush(), new Promise((resolve) => setTimeout(resolve, 5000))])
      log.info('handed over; ending the process')
    })()
    // As a crash would: the FUSE reader threads are blocked in read(2) on /dev/fuse, which only an
    // unmount ends, and process.exit() waits for every thread (it would hang here).
    stopping.finally(() => { process.kill(process.pid, 'SIGKILL') }).catch(() => {})
  })
  try {
    await daemon.start()
    await control?.start()
    if (standalone) {
      const info = await daemon.mount({
        mountpoint: o.mountpoint!,
        ...(o.image !== undefined ? { image: o.image } : {}),
        ...(o.bootstrap !== undefined ? { bootstrap: o.bootstrap, blobDir: o.blobDir! } : {}),
        ...(o.plainHttp === true ? { plainHttp: true } : {}),
        prefetch: o.prefetch === false ? false : o.prefetchAll === true ? 'all' : true
      })
      log.info({ mountpoint: info.mountpoint, files: info.files }, 'ready')
    } else {
      log.info({ socket: cfg.socket.path }, 'ready')
      await notifyReady(`fsdaemon ready: ${cfg.socket.path}`, { log })
    }
  } catch (err) {
    log.error({ err }, 'fsdaemon failed to start')
    await stop('startup failure')
    return toExitCode(err)
  }
  await finished
  return 0
}
