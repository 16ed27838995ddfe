/**
 * `naiad scheduler`: the SchedulerService behind a gRPC server, an HTTP listener for /metrics and
 * /healthz, and the periodic sweep. Construction does no I/O; `start()` binds, `close()` stops
 * (gracefully within `graceMs`, then forced) and is safe to call twice.
 */
import http from 'node:http'
import * as grpc from '@grpc/grpc-js'
import { NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import { SchedulerMetrics } from '../metrics.ts'
import { closeServer, formatAddress, listen, parseListen, type ListenAddress } from '../net.ts'
import { schedulerHandlers, schedulerService } from './grpc-server.ts'
import { SchedulerService, type SchedulerOptions } from './service.ts'

export interface SchedulerServerOptions extends SchedulerOptions {
  /** gRPC listener: `host:port` (port 0 picks one) or `unix:/path`. */
  listen: string
  /** HTTP listener for /metrics and /healthz; empty for none. */
  metricsListen?: string
  sweepIntervalMs?: number
  graceMs?: number
}

export interface SchedulerServerDeps {
  logger?: Logger
  metrics?: SchedulerMetrics
  now?: () => number
}

export class SchedulerServer {
  readonly service: SchedulerService
  readonly metrics: SchedulerMetrics
  private readonly log: Logger
  private readonly options: SchedulerServerOptions
  private server: grpc.Server | undefined
  private http: http.Server | undefined
  private timer: NodeJS.Timeout | undefined
  private closing: Promise<void> | undefined
  private started = false
  /** The bound gRPC address (after start). */
  address: string | undefined
  /** The bound metrics address (after start). */
  metricsAddress: ListenAddress | undefined

  constructor (deps: SchedulerServerDeps, options: SchedulerServerOptions) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.scheduler' })
    this.metrics = deps.metrics ?? new SchedulerMetrics()
    this.options = options
    parseListen(options.listen)
    if (options.metricsListen !== undefined && options.metricsListen !== '') parseListen(options.metricsListen)
    this.service = new SchedulerService({ logger: deps.logger ?? nullLogger(), metrics: this.metrics, ...(deps.now !== undefined ? { now: deps.now } : {}) }, options)
  }

  async start (): Promise<void> {
    if (this.closing !== undefined) throw new NaiadError('NAIAD_CLOSED', 'scheduler is closed')
    if (this.started) return
    this.started = true
    const server = new grpc.Server({ 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000, 'grpc.keepalive_permit_without_calls': 1, 'grpc.http2.min_ping_interval_without_data_ms': 5_000 })
    server.addService(schedulerService(), schedulerHandlers(this.service, this.log))
    const addr = parseListen(this.options.listen)
    const target = addr.kind === 'unix' ? `unix://${addr.path}` : `${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}`
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (err, p) => {
        if (err !== null) reject(new NaiadError('NAIAD_IO', `cannot listen on ${this.options.listen}: ${err.message}`, { cause: err }))
        else resolve(p)
      })
    })
    this.server = server
    this.address = addr.kind === 'unix' ? `unix:${addr.path}` : `${addr.host === '0.0.0.0' ? '127.0.0.1' : addr.host}:${port}`
    if (this.options.metricsListen !== undefined && this.options.metricsListen !== '') {
      const h = http.createServer((req, res) => { void this.serveHttp(req, res) })
      this.http = h
      this.metricsAddress = await listen(h, parseListen(this.options.metricsListen))
    }
    this.timer = setInterval(() => {
      try { this.service.sweep() } catch (err) { this.log.error({ err }, 'sweep failed') }
    }, this.options.sweepIntervalMs ?? 1000)
    this.timer.unref()
    this.log.info({ listen: this.address, metrics: this.metricsAddress !== undefined ? formatAddress(this.metricsAddress) : undefined }, 'scheduler listening')
  }

  private async serveHttp (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method === 'GET' && path === '/metrics') {
      const body = await this.metrics.registry.metrics()
      res.writeHead(200, { 'content-type': this.metrics.registry.contentType })
      res.end(body)
      return
    }
    if (req.method === 'GET' && path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end('ok\n')
      return
    }
    res.writeHead(404, { 'content-type': 'text/plain' })
    res.end('not found\n')
  }

  /** Stops: ends open streams, waits up to the grace period, forces the rest. Safe twice. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      if (this.timer !== undefined) clearInterval(this.timer)
      this.service.close()
      const server = this.server
      if (server !== undefined) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => { server.forceShutdown(); resolve() }, this.options.graceMs ?? 5000)
          t.unref()
          server.tryShutdown(() => { clearTimeout(t); resolve() })
        })
      }
      if (this.http !== undefined) await closeServer(this.http, 1000)
      this.log.info('scheduler stopped')
    })()
    await this.closing
  }
}
