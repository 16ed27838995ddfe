/**
 * An in-process fake OCI registry on 127.0.0.1 (node:http) for unit tests of registry clients.
 * It implements enough of the distribution spec to be useful, and makes failure easy:
 *
 * - manifests (GET/HEAD/PUT/DELETE by tag or digest), tags list;
 * - blobs: HEAD, GET with Range (206 + Content-Range), uploads (POST, PATCH with Content-Range,
 *   PUT ?digest=, single-POST monolithic, cross-repository mount, DELETE of a session);
 * - auth: `bearer` (a token endpoint at /token issuing short-lived, scoped tokens; Basic
 *   credentials or an identity token via the OAuth2 POST; `revokeTokens()` to make the server
 *   reject tokens the client still thinks valid) or `basic`;
 * - `redirectBlobsTo`: blob GETs answer 307 to another fake's `/_storage/<digest>?sig=…`
 *   (object-storage style: no auth there, requests recorded with their headers);
 * - faults, matched by method and path, each for N requests: a status (503, 429 with
 *   Retry-After…), a connection reset, a delay before answering, a corrupted or truncated body, a
 *   body that stalls after some bytes.
 *
 * Every request is recorded (method, path, headers) in `requests`.
 * It is a test double: not spec-complete, not fast, never for production.
 */
import { randomUUID } from 'node:crypto'
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { sha256, type Digest } from '../../lib/digest/index.ts'

export type { Digest } from '../../lib/digest/index.ts'

/** sha256 digest of some bytes (re-exported for tests that build content). */
export function digestOf (b: Uint8Array | string): Digest {
  return sha256(b)
}

export interface BearerAuth {
  type: 'bearer'
  /** Credentials the token endpoint accepts (Basic); without them only anonymous tokens. */
  username?: string
  password?: string
  /** Refresh token accepted by POST /token (grant_type=refresh_token). */
  identityToken?: string
  /** Lifetime of issued tokens (default 60 s); the server enforces it. */
  tokenTtlSeconds?: number
  /** Anonymous token requests get pull access (default false: no access at all). */
  anonymousPull?: boolean
  service?: string
}

export interface BasicAuth {
  type: 'basic'
  username: string
  password: string
}

export interface Fault {
  /** Which requests: method and a substring or RegExp of the path (without query). Default all. */
  method?: string
  path?: string | RegExp
  /** How many matching requests it applies to (default 1). */
  times?: number
  /** Answer with this status (JSON error body). */
  status?: number
  /** Retry-After header for `status`. */
  retryAfter?: string
  /** Body for `status` (default: a distribution JSON error naming the fault). */
  body?: string
  /** Reset the TCP connection instead of answering. */
  reset?: boolean
  /** Wait this long before handling the request (alone: a slow server; long: a timeout). */
  delayMs?: number
  /** Flip bytes in a blob GET body (content no longer matches its digest). */
  corrupt?: boolean
  /** Send full headers but only this many body bytes, then destroy the connection. */
  truncateAfter?: number
  /** Send this many body bytes, then stall (no more data, connection kept) until it closes. */
  stallAfter?: number
}

export interface RecordedRequest {
  method: string
  /** Path without the query. */
  path: string
  /** Path with the query. */
  url: string
  headers: IncomingHttpHeaders
}

export interface FakeRegistryOptions {
  auth?: BearerAuth | BasicAuth
  /** Redirect blob GETs to this other fake (its /_storage route serves them without auth). */
  redirectBlobsTo?: FakeRegistry
  /** Answer Range requests with 200 and the whole blob (a registry without Range support). */
  ignoreRange?: boolean
}

export interface FakeRegistry {
  /** `127.0.0.1:PORT` */
  readonly host: string
  /** `http://127.0.0.1:PORT` */
  readonly url: string
  readonly requests: RecordedRequest[]
  /** Tokens issued by /token so far. */
  readonly tokensIssued: number
  /** Adds a blob to a repository; returns its digest. */
  addBlob: (repo: string, bytes: Uint8Array | string) => Digest
  /** Adds a manifest under its digest and, if given, a tag; returns its digest. */
  addManifest: (repo: string, bytes: Uint8Array | string, mediaType: string, tag?: string) => Digest
  /** Adds a blob to the un-authenticated /_storage route (what redirects point at). */
  addStorageBlob: (bytes: Uint8Array) => Digest
  blob: (repo: string, digest: string) => Buffer | undefined
  manifest: (repo: string, ref: string) => { bytes: Buffer, mediaType: string, digest: Digest } | undefined
  /** Queues a fault. */
  fault: (f: Fault) => void
  clearFaults: () => void
  /** Makes every token issued so far invalid (the client sees 401 and must re-authenticate). */
  revokeTokens: () => void
  /** Forgets recorded requests. */
  clearRequests: () => void
  /** Closes the server and all connections; safe twice. */
  stop: () => Promise<void>
}

interface Upload { repo: string, parts: Buffer[], size: number }
interface Token { scopes: Set<string>, expiresAt: number, revoked: boolean }
interface ActiveFault extends Fault { left: number }

function errorBody (code: string, message: string): string {
  return JSON.stringify({ errors: [{ code, message, detail: null }] })
}

const REPO = '([a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)'
const RE_MANIFEST = new RegExp(`^/v2/${REPO}/manifests/([^/]+)$`)
const RE_BLOB = new RegExp(`^/v2/${REPO}/blobs/(sha256:[0-9a-f]{64})$`)
const RE_UPLOADS = new RegExp(`^/v2/${REPO}/blobs/uploads/$`)
const RE_UPLOAD = new RegExp(`^/v2/${REPO}/blobs/uploads/([0-9a-f-]+)$`)
const RE_TAGS = new RegExp(`^/v2/${REPO}/tags/list$`)

async function readBody (req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of req) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

/** Starts a fake registry; see the module comment. */
export async function startFakeRegistry (opts: FakeRegistryOptions = {}): Promise<FakeRegistry> {
  const blobs = new Map<string, Map<string, Buffer>>()
  const manifests = new Map<string, Map<string, { bytes: Buffer, mediaType: string }>>()
  const tags = new Map<string, Map<string, string>>()
  const storage = new Map<string, Buffer>()
  const uploads = new Map<string, Upload>()
  const tokens = new Map<string, Token>()
  const requests: RecordedRequest[] = []
  let faults: ActiveFault[] = []
  let tokensIssued = 0
  const sockets = new Set<Socket>()
  const timers = new Set<NodeJS.Timeout>()
  // Filled in once the server listens (the handlers only run after that).
  const me: { self?: FakeRegistry } = {}

  const repoMap = <T>(m: Map<string, Map<string, T>>, repo: string): Map<string, T> => {
    let r = m.get(repo)
    if (r === undefined) { r = new Map(); m.set(repo, r) }
    return r
  }

  const sleep = async (ms: number): Promise<void> => await new Promise(resolve => {
    const t = setTimeout(() => { timers.delete(t); resolve() }, ms)
    timers.add(t)
  })

  const takeFault = (method: string, path: string): ActiveFault | undefined => {
    for (const f of faults) {
      if (f.left <= 0) continue
      if (f.method !== undefined && f.method !== method) continue
      if (f.path !== undefined && !(typeof f.path === 'string' ? path.includes(f.path) : f.path.test(path))) continue
      f.left--
      return f
    }
    return undefined
  }

  const send = (res: ServerResponse, status: number, body: string | Buffer = '', headers: Record<string, string | number> = {}): void => {
    const b = typeof body === 'string' ? Buffer.from(body) : body
    res.writeHead(status, { 'docker-distribution-api-version': 'registry/2.0', 'content-length': b.length, ...(b.length > 0 && headers['content-type'] === undefined ? { 'content-type': 'application/json' } : {}), ...headers })
    res.end(b)
  }

  const challenge = (res: ServerResponse, scope: string | undefined, error?: string): void => {
    const a = opts.auth
    if (a?.type === 'basic') {
      send(res, 401, errorBody('UNAUTHORIZED', 'authentication required'), { 'www-authenticate': 'Basic realm="fake-registry"' })
      return
    }
    const service = (a as BearerAuth).service ?? 'fake-registry'
    let v = `Bearer realm="${me.self?.url ?? ''}/token",service="${service}"`
    if (scope !== undefined) v += `,scope="${scope}"`
    if (error !== undefined) v += `,error="${error}"`
    send(res, 401, errorBody('UNAUTHORIZED', 'authentication required'), { 'www-authenticate': v })
  }

  const basicOk = (h: string | undefined, user: string | undefined, password: string | undefined): boolean => {
    if (h === undefined || !h.startsWith('Basic ') || user === undefined) return false
    return Buffer.from(h.slice(6), 'base64').toString('utf8') === `${user}:${password ?? ''}`
  }

  /** Checks auth for `repo`+`action`; answers 401 and returns false if not allowed. */
  const authorize = (req: IncomingMessage, res: ServerResponse, repo: string | undefined, action: 'pull' | 'push'): boolean => {
    const a = opts.auth
    if (a === undefined) return true
    const h = req.headers.authorization
    if (a.type === 'basic') {
      if (basicOk(h, a.username, a.password)) return true
      challenge(res, undefined)
      return false
    }
    const scope = repo === undefined ? undefined : `repository:${repo}:${action === 'pull' ? 'pull' : 'pull,push'}`
    if (h === undefined || !h.startsWith('Bearer ')) { challenge(res, scope); return false }
    const t = tokens.get(h.slice(7))
    if (t === undefined || t.revoked || t.expiresAt < Date.now()) { challenge(res, scope, 'invalid_token'); return false }
    if (repo !== undefined && !t.scopes.has(`${repo}:${action}`)) { challenge(res, scope, 'insufficient_scope'); return false }
    return true
  }

  const issueToken = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const a = opts.auth
    if (a?.type !== 'bearer') { send(res, 404, errorBody('NOT_FOUND', 'no token endpoint')); return }
    let scopes: string[] = url.searchParams.getAll('scope')
    let authed = false
    if (req.method === 'POST') {
      const form = new URLSearchParams((await readBody(req)).toString('utf8'))
      if (form.get('grant_type') !== 'refresh_token' || a.identityToken === undefined || form.get('refresh_token') !== a.identityToken) {
        send(res, 401, JSON.stringify({ error: 'invalid_grant' }))
        return
      }
      scopes = (form.get('scope') ?? '').split(' ').filter(s => s !== '')
      authed = true
    } else {
      const h = req.headers.authorization
      if (h !== undefined) {
        if (!basicOk(h, a.username, a.password)) { send(res, 401, JSON.stringify({ details: 'incorrect username or password' })); return }
        authed = true
      }
    }
    const granted = new Set<string>()
    for (const s of scopes.flatMap(x => x.split(' '))) {
      const m = /^repository:([^:]+):(.+)$/.exec(s)
      if (m === null) continue
      for (const action of (m[2] ?? '').split(',')) {
        if (authed || (a.anonymousPull === true && action === 'pull')) granted.add(`${m[1]}:${action}`)
      }
    }
    const ttl = a.tokenTtlSeconds ?? 60
    const token = `fake-${++tokensIssued}-${randomUUID()}`
    tokens.set(token, { scopes: granted, expiresAt: Date.now() + ttl * 1000, revoked: false })
    const body = req.method === 'POST'
      ? { access_token: token, expires_in: ttl, scope: [...granted].join(' ') }
      : { token, access_token: token, expires_in: ttl, issued_at: new Date().toISOString() }
    send(res, 200, JSON.stringify(body))
  }

  const serveBytes = (req: IncomingMessage, res: ServerResponse, data: Buffer, fault: ActiveFault | undefined, headers: Record<string, string>): void => {
    let body = data
    let status = 200
    const extra: Record<string, string | number> = { ...headers, 'accept-ranges': 'bytes' }
    const range = req.headers.range
    if (range !== undefined && opts.ignoreRange !== true) {
      const m = /^bytes=(\d+)-(\d*)$/.exec(range)
      const start = Number(m?.[1])
      const end = m?.[2] === '' || m?.[2] === undefined ? data.length - 1 : Math.min(Number(m[2]), data.length - 1)
      if (m === null || start >= data.length || end < start) {
        send(res, 416, errorBody('RANGE_INVALID', 'range not satisfiable'), { 'content-range': `bytes */${data.length}` })
        return
      }
      body = data.subarray(start, end + 1)
      status = 206
      extra['content-range'] = `bytes ${start}-${end}/${data.length}`
    }
    if (fault?.corrupt === true && body.length > 0) {
      body = Buffer.from(body)
      body[0] = (body[0] ?? 0) ^ 0xff
    }
    if (req.method === 'HEAD') {
      res.writeHead(status, { 'content-length': body.length, 'content-type': 'application/octet-stream', ...extra })
      res.end()
      return
    }
    res.writeHead(status, { 'content-length': body.length, 'content-type': 'application/octet-stream', ...extra })
    const cut = fault?.truncateAfter ?? fault?.stallAfter
    if (cut !== undefined) {
      res.write(body.subarray(0, cut))
      if (fault?.truncateAfter !== undefined) setImmediate(() => res.socket?.destroy())
      return
    }
    res.end(body)
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const method = req.method ?? 'GET'
    const url = new URL(req.url ?? '/', 'http://fake')
    const path = url.pathname
    requests.push({ method, path, url: `${path}${url.search}`, headers: { ...req.headers } })
    const fault = takeFault(method, path)
    if (fault?.delayMs !== undefined) await sleep(fault.delayMs)
    if (fault?.reset === true) {
      req.socket.resetAndDestroy()
      return
    }
    if (fault?.status !== undefined) {
      send(res, fault.status, fault.body ?? errorBody('FAULT', `injected ${fault.status}`), fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {})
      return
    }

    if (path === '/token') { await issueToken(req, res, url); return }

    if (path.startsWith('/_storage/')) {
      const data = storage.get(path.slice('/_storage/'.length))
      if (data === undefined || url.searchParams.get('sig') === null) { send(res, 404, 'NoSuchKey'); return }
      serveBytes(req, res, data, fault, {})
      return
    }

    if (path === '/v2/' || path === '/v2') {
      if (!authorize(req, res, undefined, 'pull')) return
      send(res, 200, '{}')
      return
    }

    let m = RE_MANIFEST.exec(path)
    if (m !== null) {
      const repo = m[1] as string
      const ref = decodeURIComponent(m[2] as string)
      const action = method === 'GET' || method === 'HEAD' ? 'pull' : 'push'
      if (!authorize(req, res, repo, action)) return
      const ms = repoMap(manifests, repo)
      if (method === 'PUT') {
        const body = await readBody(req)
        const d = digestOf(body)
        if (ref.startsWith('sha256:') && ref !== d) { send(res, 400, errorBody('DIGEST_INVALID', 'digest mismatch')); return }
        ms.set(d, { bytes: body, mediaType: (req.headers['content-type'] ?? '').split(';')[0] ?? '' })
        if (!ref.startsWith('sha256:')) repoMap(tags, repo).set(ref, d)
        send(res, 201, '', { location: `/v2/${repo}/manifests/${d}`, 'docker-content-digest': d })
        return
      }
      const d = ref.startsWith('sha256:') ? ref : repoMap(tags, repo).get(ref)
      const entry = d === undefined ? undefined : ms.get(d)
      if (d === undefined || entry === undefined) { send(res, 404, errorBody('MANIFEST_UNKNOWN', 'manifest unknown')); return }
      if (method === 'DELETE') { ms.delete(d); send(res, 202); return }
      let bytes = entry.bytes
      if (fault?.corrupt === true) { bytes = Buffer.from(bytes); bytes[bytes.length - 2] = 0x20 }
      const headers = { 'content-type': entry.mediaType, 'docker-content-digest': d, 'content-length': bytes.length }
      if (method === 'HEAD') { res.writeHead(200, headers); res.end(); return }
      res.writeHead(200, headers)
      res.end(bytes)
      return
    }

    m = RE_BLOB.exec(path)
    if (m !== null) {
      const repo = m[1] as string
      const d = m[2] as string
      if (!authorize(req, res, repo, method === 'DELETE' ? 'push' : 'pull')) return
      const data = repoMap(blobs, repo).get(d)
      if (data === undefined) { send(res, method === 'HEAD' ? 404 : 404, method === 'HEAD' ? '' : errorBody('BLOB_UNKNOWN', 'blob unknown to registry')); return }
      if (method === 'GET' && opts.redirectBlobsTo !== undefined) {
        opts.redirectBlobsTo.addStorageBlob(data)
        send(res, 307, '', { location: `${opts.redirectBlobsTo.url}/_storage/${d}?sig=${randomUUID()}` })
        return
      }
      serveBytes(req, res, data, fault, { 'docker-content-digest': d })
      return
    }

    m = RE_UPLOADS.exec(path)
    if (m !== null && method === 'POST') {
      const repo = m[1] as string
      if (!authorize(req, res, repo, 'push')) return
      const mount = url.searchParams.get('mount')
      const from = url.searchParams.get('from')
      if (mount !== null && from !== null) {
        const src = repoMap(blobs, from).get(mount)
        const t = req.headers.authorization !== undefined && opts.auth?.type === 'bearer' ? tokens.get(req.headers.authorization.slice(7)) : undefined
        const mayPull = opts.auth?.type !== 'bearer' || t?.scopes.has(`${from}:pull`) === true
        if (src !== undefined && mayPull) {
          repoMap(blobs, repo).set(mount, src)
          send(res, 201, '', { location: `/v2/${repo}/blobs/${mount}`, 'docker-content-digest': mount })
          return
        }
      }
      const body = await readBody(req)
      const digest = url.searchParams.get('digest')
      if (digest !== null) {
        if (digestOf(body) !== digest) { send(res, 400, errorBody('DIGEST_INVALID', 'digest mismatch')); return }
        repoMap(blobs, repo).set(digest, body)
        send(res, 201, '', { location: `/v2/${repo}/blobs/${digest}`, 'docker-content-digest': digest })
        return
      }
      const id = randomUUID()
      uploads.set(id, { repo, parts: [], size: 0 })
      send(res, 202, '', { location: `/v2/${repo}/blobs/uploads/${id}?_state=s0`, range: '0-0', 'docker-upload-uuid': id })
      return
    }

    m = RE_UPLOAD.exec(path)
    if (m !== null) {
      const repo = m[1] as string
      const id = m[2] as string
      if (!authorize(req, res, repo, 'push')) return
      const up = uploads.get(id)
      if (up === undefined || up.repo !== repo) { send(res, 404, errorBody('BLOB_UPLOAD_UNKNOWN', 'blob upload unknown')); return }
      if (method === 'DELETE') { uploads.delete(id); send(res, 204); return }
      if (method === 'GET') { send(res, 204, '', { range: `0-${Math.max(0, up.size - 1)}`, location: `/v2/${repo}/blobs/uploads/${id}` }); return }
      const body = await readBody(req)
      if (method === 'PATCH') {
        const cr = req.headers['content-range']
        if (cr !== undefined) {
          const cm = /^(\d+)-(\d+)$/.exec(cr)
          if (cm === null || Number(cm[1]) !== up.size || Number(cm[2]) - Number(cm[1]) + 1 !== body.length) {
            send(res, 416, errorBody('BLOB_UPLOAD_INVALID', `bad content-range ${cr} at ${up.size}`))
            return
          }
        }
        up.parts.push(body)
        up.size += body.length
        send(res, 202, '', { location: `/v2/${repo}/blobs/uploads/${id}?_state=s${up.size}`, range: `0-${up.size - 1}`, 'docker-upload-uuid': id })
        return
      }
      if (method === 'PUT') {
        if (body.length > 0) { up.parts.push(body); up.size += body.length }
        const all = Buffer.concat(up.parts)
        const digest = url.searchParams.get('digest')
        if (digest === null || digestOf(all) !== digest) { send(res, 400, errorBody('DIGEST_INVALID', 'provided digest did not match uploaded content')); return }
        uploads.delete(id)
        repoMap(blobs, repo).set(digest, all)
        send(res, 201, '', { location: `/v2/${repo}/blobs/${digest}`, 'docker-content-digest': digest })
        return
      }
    }

    m = RE_TAGS.exec(path)
    if (m !== null && method === 'GET') {
      const repo = m[1] as string
      if (!authorize(req, res, repo, 'pull')) return
      send(res, 200, JSON.stringify({ name: repo, tags: [...repoMap(tags, repo).keys()].sort() }))
      return
    }

    send(res, 404, errorBody('NOT_FOUND', `no route for ${method} ${path}`))
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, errorBody('FAKE_BUG', String(err)))
      else res.destroy()
    })
  })
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()) })
  const port = (server.address() as AddressInfo).port
  let stopping: Promise<void> | undefined

  const self: FakeRegistry = {
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    requests,
    get tokensIssued () { return tokensIssued },
    addBlob (repo, bytes) {
      const b = Buffer.from(bytes)
      const d = digestOf(b)
      repoMap(blobs, repo).set(d, b)
      return d
    },
    addManifest (repo, bytes, mediaType, tag) {
      const b = Buffer.from(bytes)
      const d = digestOf(b)
      repoMap(manifests, repo).set(d, { bytes: b, mediaType })
      if (tag !== undefined) repoMap(tags, repo).set(tag, d)
      return d
    },
    addStorageBlob (bytes) {
      const d = digestOf(bytes)
      storage.set(d, Buffer.from(bytes))
      return d
    },
    blob: (repo, digest) => blobs.get(repo)?.get(digest),
    manifest (repo, ref) {
      const d = ref.startsWith('sha256:') ? ref : tags.get(repo)?.get(ref)
      const e = d === undefined ? undefined : manifests.get(repo)?.get(d)
      return e === undefined || d === undefined ? undefined : { ...e, digest: d as Digest }
    },
    fault (f) { faults.push({ ...f, left: f.times ?? 1 }) },
    clearFaults () { faults = [] },
    revokeTokens () { for (const t of tokens.values()) t.revoked = true },
    clearRequests () { requests.length = 0 },
    async stop () {
      stopping ??= new Promise<void>(resolve => {
        for (const t of timers) clearTimeout(t)
        timers.clear()
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      })
      await stopping
    }
  }
  me.self = self
  return self
}
