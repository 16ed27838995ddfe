/**
 * The registry-mirror endpoint for the fsdaemon (docs/mirror-contract.md):
 *
 * - `GET /v2/<repo>/blobs/<digest>` with `X-Naiad-Origin` (required) and optional `Range`,
 *   `X-Naiad-Priority`, `Authorization`: 206 with exactly the bytes of the range (200 with the
 *   whole blob without Range), streamed as they arrive; the status line is sent with the first
 *   byte, so a failure before it is a proper error status.
 * - `HEAD` of the same: the size in Content-Length.
 * - `GET /healthz`: `200 ok`. `GET /metrics`: Prometheus.
 * - Anything not content-addressed under /v2/ (manifests, tags, the API root): 400; mirrors never
 *   serve or cache those.
 * - Errors: 404 when the origin has no such blob, 416 for a range past the end, 400 for bad
 *   requests, 403 for an origin not allowed, 502/503/504 otherwise; `X-Naiad-Error-Source` says
 *   whether the origin or the peer failed.
 *
 * The requester's Authorization is handed to the engine for this node's own origin requests only.
 */
import type http from 'node:http'
import { isNaiadError, kindOf, NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { PeerMetrics } from '../metrics.ts'
import { parseRangeHeader } from '../protocol/index.ts'
import type { DownloadEngine, Priority } from './engine.ts'
import { sendError, writeChunk } from './http-util.ts'
import type { OriginPool } from './origin.ts'

const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/
const DIGEST_RE = /^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/

export interface MirrorDeps {
  logger?: Logger
  metrics?: PeerMetrics
  engine: DownloadEngine
  origin: OriginPool
  /** Extra routes (the peer's API), tried before 404. Returns true if it handled the request. */
  api?: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<boolean>
  healthy?: () => boolean
}

/** Where an error comes from, for X-Naiad-Error-Source. */
export function errorSource (err: unknown): 'origin' | 'peer' {
  if (!isNaiadError(err)) return 'peer'
  if (err.code.startsWith('NAIAD_REG_')) return 'origin'
  const cause = err.cause
  if (err.code === 'NAIAD_P2P_PIECE_UNAVAILABLE' && isNaiadError(cause) && cause.code.startsWith('NAIAD_REG_')) return 'origin'
  return 'peer'
}

/** The mirror's HTTP status for an error (contract: 404, 416, 400, 403, else 502/503/504). */
export function mirrorStatus (err: unknown): number {
  const inner = isNaiadError(err) && err.code === 'NAIAD_P2P_PIECE_UNAVAILABLE' && isNaiadError(err.cause) ? err.cause : err
  if (isNaiadError(inner)) {
    switch (inner.code) {
      case 'NAIAD_REG_NOT_FOUND': return 404
      case 'NAIAD_P2P_RANGE_NOT_SATISFIABLE': return 416
      case 'NAIAD_P2P_BAD_REQUEST': case 'NAIAD_DIGEST_INVALID': case 'NAIAD_DIGEST_UNSUPPORTED': case 'NAIAD_REF_INVALID': return 400
      case 'NAIAD_P2P_ORIGIN_NOT_ALLOWED': return 403
      default: break
    }
  }
  const kind = kindOf(inner)
  if (kind === 'DeadlineExceeded') return 504
  if (kind === 'Unavailable' || kind === 'ResourceExhausted') return 503
  return 502
}

export class MirrorHandler {
  private readonly log: Logger

  constructor (private readonly deps: MirrorDeps) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.mirror' })
  }

  readonly handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const started = Date.now()
    res.on('finish', () => { this.deps.metrics?.mirrorRequests.inc({ method: req.method ?? '', status: String(res.statusCode) }) })
    void this.route(req, res).catch((err: unknown) => {
      this.log.warn({ err }, 'mirror request failed')
      sendError(res, 500, err)
    }).finally(() => {
      this.log.debug({ method: req.method, path: req.url?.slice(0, 200), status: res.statusCode, durationMs: Date.now() - started }, 'mirror request')
    })
  }

  private async route (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    if (path === '/healthz' && (req.method === 'GET' || req.method === 'HEAD')) {
      const ok = this.deps.healthy?.() ?? true
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' })
      res.end(ok ? 'ok\n' : 'unavailable\n')
      return
    }
    if (path === '/metrics' && req.method === 'GET' && this.deps.metrics !== undefined) {
      const body = await this.deps.metrics.registry.metrics()
      res.writeHead(200, { 'content-type': this.deps.metrics.registry.contentType })
      res.end(body)
      return
    }
    if (path === '/v2' || path.startsWith('/v2/')) {
      const m = /^\/v2\/(.+)\/blobs\/([^/]+)$/.exec(path)
      if (m === null || (req.method !== 'GET' && req.method !== 'HEAD')) {
        this.refuse(res, `${req.method ?? ''} ${path.slice(0, 120)} is not a content-addressed blob request; mirrors never serve or cache manifests, tags or tokens`)
        return
      }
      await this.serveBlob(req, res, m[1] ?? '', m[2] ?? '')
      return
    }
    if (this.deps.api !== undefined && await this.deps.api(req, res)) return
    sendError(res, 404, new NaiadError('NAIAD_P2P_BAD_REQUEST', `no route ${req.method ?? ''} ${path.slice(0, 100)}`), { 'x-naiad-error-source': 'peer' })
  }

  private refuse (res: http.ServerResponse, message: string): void {
    sendError(res, 400, new NaiadError('NAIAD_P2P_BAD_REQUEST', message), { 'x-naiad-error-source': 'peer' })
  }

  private async serveBlob (req: http.IncomingMessage, res: http.ServerResponse, repository: string, digest: string): Promise<void> {
    if (!REPO_RE.test(repository)) { this.refuse(res, `bad repository name ${JSON.stringify(repository.slice(0, 100))}`); return }
    if (!DIGEST_RE.test(digest)) { this.refuse(res, `${JSON.stringify(digest.slice(0, 100))} is not a sha256 or sha512 digest; only content-addressed blobs are served`); return }
    const originHeader = req.headers['x-naiad-origin']
    if (typeof originHeader !== 'string' || originHeader === '') { this.refuse(res, 'X-Naiad-Origin is required (scheme://host[:port] of the origin registry)'); return }
    const prioHeader = req.headers['x-naiad-priority']
    const priority: Priority = prioHeader === 'prefetch' ? 'prefetch' : 'ondemand'
    const authorization = typeof req.headers.authorization === 'string' ? req.headers.authorization : undefined
    const ac = new AbortController()
    res.on('close', () => { if (!res.writableFinished) ac.abort(new NaiadError('NAIAD_ABORTED', 'the reader went away')) })
    let origin: string
    try {
      origin = this.deps.origin.check(originHeader)
    } catch (err) {
      sendError(res, mirrorStatus(err), err, { 'x-naiad-error-source': 'peer' })
      return
    }
    let handle
    try {
      handle = await this.deps.engine.acquire(digest, { origin, repository, ...(authorization !== undefined ? { authorization } : {}) }, { signal: ac.signal })
    } catch (err) {
      if (!ac.signal.aborted) sendError(res, mirrorStatus(err), err, { 'x-naiad-error-source': errorSource(err) })
      return
    }
    try {
      const size = handle.size
      if (req.method === 'HEAD') {
        res.writeHead(200, { 'content-length': String(size), 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream', 'docker-content-digest': digest })
        res.end()
        return
      }
      const range = parseRangeHeader(typeof req.headers.range === 'string' ? req.headers.range : undefined, size)
      if (range === 'unsatisfiable') {
        sendError(res, 416, new NaiadError('NAIAD_P2P_RANGE_NOT_SATISFIABLE', `range ${String(req.headers.range).slice(0, 60)} starts past the end of the ${size}-byte blob`), { 'content-range': `bytes */${size}`, 'x-naiad-error-source': 'peer' })
        return
      }
      const first = range?.first ?? 0
      const last = range?.last ?? size - 1
      const headers: Record<string, string> = {
        'content-type': 'application/octet-stream',
        'content-length': String(size === 0 ? 0 : last - first + 1),
        'accept-ranges': 'bytes',
        'docker-content-digest': digest
      }
      if (range !== undefined) headers['content-range'] = `bytes ${first}-${last}/${size}`
      const status = range !== undefined ? 206 : 200
      if (size === 0) { res.writeHead(status, headers); res.end(); return }
      await this.deps.engine.read(handle, first, last, async (chunk) => {
        if (!res.headersSent) res.writeHead(status, headers)
        await writeChunk(res, chunk, ac.signal)
      }, { signal: ac.signal, priority })
      res.end()
    } catch (err) {
      if (ac.signal.aborted) { res.destroy(); return }
      this.log.warn({ err, digest, repository }, 'blob request failed')
      sendError(res, mirrorStatus(err), err, { 'x-naiad-error-source': errorSource(err) })
    } finally {
      handle.release()
    }
  }
}
