/**
 * The snapshotter's composition root: reads the configuration (file, then flags), creates the
 * logger, the local snapshotter and the gRPC server, and runs until SIGINT/SIGTERM, then stops
 * accepting, drains and closes the metadata store. Snapshot data and metadata persist across
 * restarts; nothing is mounted by the snapshotter itself (containerd mounts what it returns).
 */
import { join } from 'node:path'
import { loadConfigFile } from '../lib/config/index.ts'
import { isNaiadError, toExitCode } from '../lib/errors/index.ts'
import { createLogger, type LogLevel } from '../lib/log/index.ts'
import { snapshotterConfigSchema, type SnapshotterConfig } from './config.ts'
import { SnapshotsServer } from './grpc/service.ts'
import { LocalSnapshotter } from './local/overlay.ts'
import { FsdRemoteFilesystem } from './remote/fsd.ts'
import { RegistryMaterializer } from './remote/materialize.ts'
import { notifyReady } from '../lib/systemd/index.ts'
import { CriKeychain } from './cri/keychain.ts'
import { CriImageProxy } from './cri/proxy.ts'

export const DEFAULT_CONFIG = '/etc/naiad/snapshotter.toml'

export interface SnapshotterCliOptions {
  config?: string
  root?: string
  socket?: string
  logLevel?: LogLevel
  /** Stop the fsdaemon on exit ([fsdaemon] stop_on_exit). */
  stopFsdaemon?: boolean
}

export interface Io { stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream }

export function withOverrides (cfg: SnapshotterConfig, o: SnapshotterCliOptions): SnapshotterConfig {
  return {
    ...cfg,
    log: { level: o.logLevel ?? cfg.log.level },
    root: { dir: o.root ?? cfg.root.dir },
    socket: { ...cfg.socket, path: o.socket ?? cfg.socket.path },
    fsdaemon: { ...cfg.fsdaemon, stop_on_exit: o.stopFsdaemon === true ? true : cfg.fsdaemon.stop_on_exit }
  }
}

/** Runs the daemon until a signal (or `stopSignal` aborts); returns the exit code. */
export async function runSnapshotter (o: SnapshotterCliOptions, io: Io, stopSignal?: AbortSignal): Promise<number> {
  let cfg: SnapshotterConfig
  try {
    cfg = withOverrides(o.config !== undefined ? await loadConfigFile(snapshotterConfigSchema, o.config, true) : await loadConfigFile(snapshotterConfigSchema, DEFAULT_CONFIG, false), o)
  } catch (err) {
    io.stderr.write(isNaiadError(err) ? `naiad: ${err.code}: ${err.message}\nhint: ${err.hint}\n` : `naiad: ${String(err)}\n`)
    return toExitCode(err)
  }
  const log = createLogger({ service: 'snapshotter', level: cfg.log.level, destination: io.stdout as never })
  const f = cfg.fsdaemon
  const k = cfg.cri_keychain
  const keychain = k.enable ? new CriKeychain({ ttlMs: k.ttl }) : undefined
  const proxy = keychain !== undefined ? new CriImageProxy({ keychain, log }, { socket: k.socket, mode: k.mode, upstream: k.image_service_address }) : undefined
  const credentials = keychain !== undefined ? { credentials: keychain } : {}
  const remote = f.enable
    ? new FsdRemoteFilesystem({ log, ...credentials }, {
      socket: f.socket,
      start: f.start,
      binary: f.binary !== '' ? f.binary : (process.argv[1] ?? ''),
      config: f.config,
      cacheDir: f.cache_dir,
      stateDir: f.state_dir,
      logFile: f.log_file !== '' ? f.log_file : join(cfg.root.dir, 'fsdaemon.log'),
      startTimeoutMs: f.start_timeout,
      plainHttp: f.plain_http,
      stopOnClose: f.stop_on_exit
    })
    : undefined
  const materializer = cfg.fallback.materialize ? new RegistryMaterializer({ log, ...credentials }, { plainHttp: f.plain_http }) : undefined
  const snapshotter = new LocalSnapshotter({ log, ...(remote !== undefined ? { remote } : {}), ...(materializer !== undefined ? { materializer } : {}) }, { root: cfg.root.dir })
  const server = new SnapshotsServer({ snapshotter, log }, { socket: cfg.socket.path, mode: cfg.socket.mode })
  let stopping: Promise<void> | undefined
  const stop = async (reason: string): Promise<void> => {
    stopping ??= (async () => {
      log.info({ reason }, 'shutting down')
      await proxy?.close()
      await server.close()
      await snapshotter.close()
      log.info('stopped')
    })()
    await stopping
  }
  let done!: () => void
  const finished = new Promise<void>((resolve) => { done = resolve })
  const onStop = (reason: string): void => { stop(reason).then(done, done) }
  const onSigint = (): void => { onStop('SIGINT') }
  const onSigterm = (): void => { onStop('SIGTERM') }
  process.once('SIGINT', onSigint)
  process.once('SIGTERM', onSigterm)
  stopSignal?.addEventListener('abort', () => { onStop('abort') }, { once: true })
  try {
    await snapshotter.cleanup()
    await snapshotter.recover()
    await server.start()
    await proxy?.start()
    log.info({ socket: cfg.socket.path, root: cfg.root.dir, ...(proxy !== undefined ? { criImageSocket: k.socket } : {}) }, 'ready')
    await notifyReady(`snapshotter ready: ${cfg.socket.path}`, { log })
  } catch (err) {
    log.error({ err }, 'snapshotter failed to start')
    io.stderr.write(isNaiadError(err) ? `naiad: ${err.code}: ${err.message}\nhint: ${err.hint}\n` : `naiad: ${String(err)}\n`)
    await stop('startup failure')
    process.off('SIGINT', onSigint)
    process.off('SIGTERM', onSigterm)
    return toExitCode(err)
  }
  await finished
  process.off('SIGINT', onSigint)
  process.off('SIGTERM', onSigterm)
  return 0
}
