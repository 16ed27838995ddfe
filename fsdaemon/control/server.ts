/**
 * The control API server (lib/fsdapi documents the routes): JSON over HTTP on a Unix socket,
 * created with mode 0600 in a 0700 directory; a stale socket file is replaced.
 */
import http from 'node:http'
import { chmod, mkdir, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { NaiadError, isNaiadError, toHttpStatus } from '../../lib/errors/index.ts'
import type { Logger } from '../../lib/log/index.ts'
import type { CachedBlobInfo, DaemonInfo, MountInfo, MountRequest } from '../../lib/fsdapi/index.ts'
import type { Credentials } from '../../lib/registry/credentials.ts'

/** What the control server needs from the daemon. */
export interface ControlTarget {
  info (): Promise<DaemonInfo>
  list (): Promise<MountInfo[]>
  mount (req: MountRequest): Promise<MountInfo>
  unmount (mountpoint: string): Promise<void>
  blobs (): Promise<CachedBlobInfo[]>
  /** Deletes an unused blob's cache (absent: no error); NAIAD_FS_BLOB_IN_USE while mounted. */
  removeBlob (blobId: string): Promise<void>
  metrics (): Promise<string>
}

const MAX_BODY = 1 << 20

function sendJson (res: http.ServerResponse, status: number, body: unknown): void {
  const data = Buffer.from(JSON.stringify(body))
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': data.length })
  res.end(data)
}

function sendError (res: http.ServerResponse, err: unknown): void {
  const e = isNaiadError(err) ? err : new NaiadError('NAIAD_INTERNAL', err instanceof Error ? err.message : String(err))
  sendJson(res, toHttpStatus(e), { error: e.toJSON() })
}

async function readBody (req: http.IncomingMessage): Promise<unknown> {
  const parts: Buffer[] = []
  let n = 0
  for await (const c of req) {
    n += (c as Buffer).length
    if (n > MAX_BODY) throw new NaiadError('NAIAD_CLI_USAGE', 'request body too large')
    parts.push(c as Buffer)
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as unknown
  } catch {
    throw new NaiadError('NAIAD_CLI_USAGE', 'request body is not JSON')
  }
}

function validateMountRequest (v: unknown): MountRequest {
  if (typeof v !== 'object' || v === null) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request must be a JSON object')
  const o = v as Record<string, unknown>
  const str = (k: string): string | undefined => {
    const x = o[k]
    if (x === undefined) return undefined
    if (typeof x !== 'string' || x === '') throw new NaiadError('NAIAD_CLI_USAGE', `mount request: ${k} must be a non-empty string`)
    return x
  }
  for (const k of Object.keys(o)) {
    if (!['mountpoint', 'image', 'bootstrap', 'blobDir', 'plainHttp', 'prefetch', 'labels', 'credentials'].includes(k)) throw new NaiadError('NAIAD_CLI_USAGE', `mount request: unknown field ${k}`)
  }
  const mountpoint = str('mountpoint')
  if (mountpoint === undefined || !mountpoint.startsWith('/')) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: mountpoint must be an absolute path')
  const image = str('image')
  const bootstrap = str('bootstrap')
  const blobDir = str('blobDir')
  if (image === undefined && bootstrap === undefined) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: give image, bootstrap with image, or bootstrap with blobDir')
  if (bootstrap !== undefined && (image === undefined) === (blobDir === undefined)) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: bootstrap needs exactly one of image (blobs from the registry) or blobDir (local blobs)')
  if (bootstrap !== undefined && !bootstrap.startsWith('/')) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: bootstrap must be an absolute path')
  if (image !== undefined && blobDir !== undefined) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: blobDir goes with bootstrap, not image')
  const prefetch = o['prefetch']
  if (prefetch !== undefined && typeof prefetch !== 'boolean' && prefetch !== 'all') throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: prefetch must be true, false or "all"')
  const plainHttp = o['plainHttp']
  if (plainHttp !== undefined && typeof plainHttp !== 'boolean') throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: plainHttp must be a boolean')
  const labels = o['labels']
  if (labels !== undefined && (typeof labels !== 'object' || labels === null || Object.values(labels).some(x => typeof x !== 'string'))) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: labels must map strings to strings')
  const credentials = validateCredentials(o['credentials'])
  if (credentials !== undefined && image === undefined) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: credentials go with image (blobs from the registry)')
  return {
    mountpoint,
    ...(credentials !== undefined ? { credentials } : {}),
    ...(image !== undefined ? { image } : {}),
    ...(bootstrap !== undefined ? { bootstrap } : {}),
    ...(blobDir !== undefined ? { blobDir } : {}),
    ...(plainHttp !== undefined ? { plainHttp } : {}),
    ...(prefetch !== undefined ? { prefetch } : {}),
    ...(labels !== undefined ? { labels: labels as Record<string, string> } : {})
  }
}

/** The registry credentials of a mount request; the error never quotes a value. */
function validateCredentials (v: unknown): Credentials | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: credentials must be an object')
  const out: Credentials = {}
  for (const [k, x] of Object.entries(v)) {
    if (!['username', 'password', 'identityToken', 'registryToken'].includes(k)) throw new NaiadError('NAIAD_CLI_USAGE', `mount request: unknown credentials field ${k}`)
    if (typeof x !== 'string' || x === '') throw new NaiadError('NAIAD_CLI_USAGE', `mount request: credentials.${k} must be a non-empty string`)
    out[k as keyof Credentials] = x
  }
  if ((out.username === undefined) !== (out.password === undefined)) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: credentials need both username and password, or neither')
  return Object.keys(out).length > 0 ? out : undefined
}

export class ControlServer {
  private server: http.Server | undefined
  private closed: Promise<void> | undefined

  constructor (private readonly deps: { target: ControlTarget, log: Logger }, private readonly opts: { socketPath: string }) {}

  async start (): Promise<void> {
    if (Buffer.byteLength(this.opts.socketPath) > 107) throw new NaiadError('NAIAD_CFG_INVALID', `socket path ${this.opts.socketPath} is longer than the 107 bytes a Unix socket allows`)
    await mkdir(dirname(this.opts.socketPath), { recursive: true, mode: 0o700 })
    await rm(this.opts.socketPath, { force: true })
    const server = http.createServer((req, res) => { this.handle(req, res).catch((err: unknown) => { sendError(res, err) }) })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.opts.socketPath, () => { server.off('error', reject); resolve() })
    })
    await chmod(this.opts.socketPath, 0o600)
  }

  private async handle (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fsd')
    const t = this.deps.target
    const route = `${req.method ?? 'GET'} ${url.pathname}`
    this.deps.log.debug({ route }, 'control request')
    const blob = /^DELETE \/api\/v1\/blobs\/([^/]*)$/.exec(route)
    if (blob !== null) {
      const id = decodeURIComponent(blob[1] ?? '')
      if (!/^[0-9a-f]{64}$/.test(id)) throw new NaiadError('NAIAD_CLI_USAGE', 'DELETE /api/v1/blobs/<blob id>: the blob id is 64 lowercase hex characters')
      await t.removeBlob(id)
      res.writeHead(204).end()
      return
    }
    switch (route) {
      case 'GET /api/v1/blobs': sendJson(res, 200, await t.blobs()); return
      case 'GET /api/v1/daemon': sendJson(res, 200, await t.info()); return
      case 'GET /api/v1/mounts': sendJson(res, 200, await t.list()); return
      case 'POST /api/v1/mounts': sendJson(res, 200, await t.mount(validateMountRequest(await readBody(req)))); return
      case 'DELETE /api/v1/mounts': {
        const mp = url.searchParams.get('mountpoint')
        if (mp === null || mp === '') throw new NaiadError('NAIAD_CLI_USAGE', 'DELETE /api/v1/mounts needs ?mountpoint=')
        await t.unmount(mp)
        res.writeHead(204).end()
        return
      }
      case 'GET /metrics': {
        const text = await t.metrics()
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text)
        return
      }
      default:
        sendJson(res, 404, { error: { code: 'NAIAD_CLI_USAGE', kind: 'NotFound', message: `no route ${route}`, hint: 'see lib/fsdapi for the routes' } })
    }
  }

  /** Stops accepting and closes the socket. Safe to call twice. */
  async close (): Promise<void> {
    this.closed ??= (async () => {
      const s = this.server
      if (s === undefined) return
      s.closeAllConnections()
      await new Promise<void>((resolve) => { s.close(() => { resolve() }) })
      await rm(this.opts.socketPath, { force: true })
    })()
    await this.closed
  }
}
