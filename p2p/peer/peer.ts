/**
 * `naiad peer`: the composition of one node's p2p daemon — piece store, origin pool, scheduler
 * client, download engine, the mirror listener (fsdaemon → peer), the upload listener
 * (peers → peer) and an optional metrics listener. Construction does no I/O; `start()` loads the
 * store (re-verifying pieces), starts heart-beating (which re-announces the pieces on disk) and
 * binds the listeners; `close()` stops accepting, lets in-flight requests finish within the grace
 * period, then tears everything down. `close()` is safe to call twice.
 */
import http from 'node:http'
import { hostname as osHostname, networkInterfaces } from 'node:os'
import { NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import { DockerConfigCredentials, type CredentialProvider } from '../../lib/registry/index.ts'
import type { PeerConfig } from '../config.ts'
import { PeerMetrics } from '../metrics.ts'
import { closeServer, formatAddress, listen, parseListen, type ListenAddress } from '../net.ts'
import { isTaskId, taskIdFor, type HostInfo } from '../protocol/index.ts'
import { DownloadEngine, type TaskStatus } from './engine.ts'
import { readBody, sendError } from './http-util.ts'
import { MirrorHandler, mirrorStatus } from './mirror.ts'
import { OriginPool } from './origin.ts'
import { PieceStore } from './piece-store.ts'
import { SchedulerClient } from './scheduler-client.ts'
import { UploadHandler } from './upload.ts'

export interface PeerDeps {
  logger?: Logger
  metrics?: PeerMetrics
  /** This node's registry credentials (default: docker config.json per `origin.docker_config`). */
  credentials?: CredentialProvider
}

export interface PeerOverrides {
  /** `--seed` */
  seed?: boolean
}

/** The first non-internal IPv4 address of this machine, or 127.0.0.1. */
export function defaultIp (): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address
  }
  return '127.0.0.1'
}

interface PreheatJob { promise: Promise<TaskStatus>, error?: string, done: boolean }

export class Peer {
  readonly metrics: PeerMetrics
  readonly seed: boolean
  private readonly log: Logger
  private readonly store: PieceStore
  private readonly origin: OriginPool
  private readonly engine: DownloadEngine
  private readonly scheduler: SchedulerClient | undefined
  private readonly upload: UploadHandler
  private readonly mirror: MirrorHandler
  private readonly jobs = new Map<string, PreheatJob>()
  private host: HostInfo
  private mirrorServer: http.Server | undefined
  private uploadServer: http.Server | undefined
  private metricsServer: http.Server | undefined
  private closing: Promise<void> | undefined
  private started = false
  mirrorAddress: ListenAddress | undefined
  uploadAddress: ListenAddress | undefined
  metricsAddress: ListenAddress | undefined

  constructor (deps: PeerDeps, private readonly config: PeerConfig, overrides: PeerOverrides = {}) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.peer' })
    this.metrics = deps.metrics ?? new PeerMetrics()
    this.seed = overrides.seed ?? config.seed.enabled
    parseListen(config.mirror.listen)
    parseListen(config.upload.listen)
    const ip = config.host.ip !== '' ? config.host.ip : defaultIp()
    const name = config.host.hostname !== '' ? config.host.hostname : osHostname()
    this.host = {
      id: config.host.id !== '' ? config.host.id : `${name}-${ip}`,
      hostname: name,
      ip,
      uploadPort: config.upload.port,
      seed: this.seed,
      uploadRateLimit: config.upload.rate_limit,
      uploadConcurrency: config.upload.max_concurrent
    }
    const logger = deps.logger ?? nullLogger()
    this.store = new PieceStore({ logger, metrics: this.metrics, onEvict: (id) => { this.engine.onEvicted(id) } }, { dir: config.storage.dir, quota: config.storage.quota })
    const credentials = deps.credentials ?? new DockerConfigCredentials({ logger }, config.origin.docker_config !== '' ? { configPath: config.origin.docker_config } : {})
    this.origin = new OriginPool({ logger, credentials }, { timeoutMs: config.origin.timeout, retries: config.origin.retries, allowedOrigins: config.mirror.allowed_origins })
    if (config.scheduler.address !== '') {
      this.scheduler = new SchedulerClient({
        logger,
        metrics: this.metrics,
        host: () => this.host,
        heldTasks: () => this.engine.heldTasks(),
        activeUploads: () => this.upload.activeUploads
      }, {
        address: config.scheduler.address,
        connectTimeoutMs: config.scheduler.connect_timeout,
        heartbeatIntervalMs: config.scheduler.heartbeat_interval,
        retryIntervalMs: config.scheduler.retry_interval
      })
    }
    this.engine = new DownloadEngine({ logger, metrics: this.metrics, store: this.store, origin: this.origin, ...(this.scheduler !== undefined ? { scheduler: this.scheduler } : {}), hostId: this.host.id }, {
      pieceLength: config.download.piece_length,
      concurrentPieces: config.download.concurrent_pieces,
      readAheadPieces: config.download.read_ahead_pieces,
      originReadAheadPieces: config.download.origin_read_ahead_pieces,
      memoryPieces: config.download.memory_pieces,
      prefetch: config.download.prefetch,
      pieceTimeoutMs: config.download.piece_timeout,
      waitTimeoutMs: config.download.wait_timeout,
      maxAttempts: config.download.max_attempts,
      schedulerRetryMs: config.scheduler.retry_interval
    })
    const api = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<boolean> => await this.api(req, res)
    this.upload = new UploadHandler({ logger, metrics: this.metrics, store: this.store, inflight: (id, n) => this.engine.inflight(id, n), stallTimeoutMs: config.download.piece_timeout, api: async (req, res) => this.seed && config.seed.accept_preheat ? await api(req, res) : false }, {
      maxConcurrent: config.upload.max_concurrent,
      rateLimit: config.upload.rate_limit,
      faultCorruptUploads: config.testing.fault_corrupt_uploads
    })
    this.mirror = new MirrorHandler({ logger, metrics: this.metrics, engine: this.engine, origin: this.origin, api })
  }

  get hostInfo (): HostInfo { return this.host }

  async start (): Promise<void> {
    if (this.closing !== undefined) throw new NaiadError('NAIAD_CLOSED', 'peer is closed')
    if (this.started) return
    this.started = true
    await this.store.open()
    const up = http.createServer({ keepAliveTimeout: 30_000 }, this.upload.handle)
    this.uploadServer = up
    this.uploadAddress = await listen(up, parseListen(this.config.upload.listen))
    if (this.host.uploadPort === 0 && this.uploadAddress.kind === 'tcp') this.host = { ...this.host, uploadPort: this.uploadAddress.port }
    this.scheduler?.start()
    const mirror = http.createServer({ keepAliveTimeout: 30_000 }, this.mirror.handle)
    this.mirrorServer = mirror
    this.mirrorAddress = await listen(mirror, parseListen(this.config.mirror.listen))
    if (this.config.metrics.listen !== '') {
      const ms = http.createServer((req, res) => {
        if ((req.url ?? '').split('?')[0] === '/metrics') {
          void this.metrics.registry.metrics().then(body => { res.writeHead(200, { 'content-type': this.metrics.registry.contentType }); res.end(body) })
        } else { res.writeHead(404); res.end() }
      })
      this.metricsServer = ms
      this.metricsAddress = await listen(ms, parseListen(this.config.metrics.listen))
    }
    this.log.info({
      hostId: this.host.id,
      ip: this.host.ip,
      seed: this.seed,
      mirror: formatAddress(this.mirrorAddress),
      upload: formatAddress(this.uploadAddress),
      scheduler: this.config.scheduler.address === '' ? '(none: origin only)' : this.config.scheduler.address,
      storage: this.config.storage.dir,
      quota: this.config.storage.quota,
      pieceLength: this.config.download.piece_length
    }, 'peer started')
  }

  /** `POST /api/v1/preheat` and `GET /api/v1/tasks/<taskId>`. */
  private async api (req: http.IncomingMessage, res: http.ServerResponse): Promise<boolean> {
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    if (path === '/api/v1/preheat' && req.method === 'POST') {
      try {
        const body = JSON.parse(await readBody(req)) as { origin?: unknown, repository?: unknown, digest?: unknown }
        if (typeof body.origin !== 'string' || typeof body.repository !== 'string' || typeof body.digest !== 'string') {
          throw new NaiadError('NAIAD_P2P_BAD_REQUEST', 'preheat needs {"origin", "repository", "digest"}')
        }
        const taskId = this.preheat(body.origin, body.repository, body.digest)
        const json = JSON.stringify({ taskId }) + '\n'
        res.writeHead(202, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) })
        res.end(json)
      } catch (err) {
        sendError(res, err instanceof SyntaxError ? 400 : mirrorStatus(err), err)
      }
      return true
    }
    const m = /^\/api\/v1\/tasks\/([^/]+)$/.exec(path)
    if (m !== null && req.method === 'GET') {
      const id = m[1] ?? ''
      if (!isTaskId(id)) { sendError(res, 400, new NaiadError('NAIAD_P2P_BAD_REQUEST', 'not a task id')); return true }
      const job = this.jobs.get(id)
      const json = JSON.stringify({ ...this.engine.status(id), ...(job !== undefined ? { preheat: job.done ? (job.error !== undefined ? 'failed' : 'done') : 'running', ...(job.error !== undefined ? { error: job.error } : {}) } : {}) }) + '\n'
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) })
      res.end(json)
      return true
    }
    return false
  }

  /** Starts downloading a whole blob in the background (with this node's credentials). */
  preheat (origin: string, repository: string, digest: string): string {
    if (this.closing !== undefined) throw new NaiadError('NAIAD_CLOSED', 'peer is closed')
    const o = this.origin.check(origin)
    const taskId = taskIdFor(digest, this.config.download.piece_length)
    const existing = this.jobs.get(taskId)
    if (existing !== undefined && !existing.done) return taskId
    const promise = this.engine.downloadAll(digest, { origin: o, repository })
    const job: PreheatJob = { promise, done: false }
    this.jobs.set(taskId, job)
    promise.then(() => { job.done = true }, (err: unknown) => {
      job.done = true
      job.error = err instanceof Error ? err.message : String(err)
      this.log.warn({ err, digest }, 'preheat failed')
    })
    return taskId
  }

  /** Graceful stop (see the module comment). Safe twice. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      const grace = this.config.shutdown.grace
      await Promise.all([
        this.mirrorServer !== undefined ? closeServer(this.mirrorServer, grace) : undefined,
        this.uploadServer !== undefined ? closeServer(this.uploadServer, grace) : undefined,
        this.metricsServer !== undefined ? closeServer(this.metricsServer, 0) : undefined
      ])
      await this.engine.close()
      await this.scheduler?.close()
      await this.origin.close()
      await this.store.close()
      this.log.info('peer stopped')
    })()
    await this.closing
  }
}
