/**
 * Origin access for the peer: one RegistryClient per origin with this node's credentials (docker
 * config.json), and short-lived clients carrying a requester's own Authorization for that
 * requester's origin fetches. Whatever credentials are used, they go only to the origin
 * (RegistryClient drops them on cross-origin redirects); they are never logged, never sent to
 * other peers or the scheduler, and requester credentials live only in memory.
 */
import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'
import type { Digest } from '../../lib/digest/index.ts'
import { isNaiadError, NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import { RegistryClient, type CredentialProvider, type Credentials } from '../../lib/registry/index.ts'

/** What a mirror request says about the origin. */
export interface OriginContext {
  /** `scheme://host[:port]` (X-Naiad-Origin). */
  origin: string
  repository: string
  /** The requester's Authorization header for the origin, if any. Memory only. */
  authorization?: string
}

export interface OriginPoolDeps {
  logger?: Logger
  /** This node's credentials (default: none, anonymous). */
  credentials?: CredentialProvider
}

export interface OriginPoolOptions {
  timeoutMs: number
  retries: number
  /** Allowed origins (`https://host[:port]`); empty allows any. */
  allowedOrigins?: readonly string[]
  /** Idle requester clients are closed after this long (default 5 min). */
  requesterTtlMs?: number
}

/** Parses and normalizes X-Naiad-Origin; NAIAD_P2P_BAD_REQUEST if it is not `http(s)://host[:port]`. */
export function parseOrigin (s: string): { origin: string, endpoint: string, plainHttp: boolean } {
  let u: URL
  try {
    u = new URL(s)
  } catch {
    throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `X-Naiad-Origin is not a URL: ${JSON.stringify(s.slice(0, 200))}`)
  }
  if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.username !== '' || u.password !== '' || (u.pathname !== '/' && u.pathname !== '') || u.search !== '' || u.hash !== '') {
    throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `X-Naiad-Origin must be scheme://host[:port]: ${JSON.stringify(s.slice(0, 200))}`)
  }
  return { origin: u.origin, endpoint: u.host, plainHttp: u.protocol === 'http:' }
}

/** Credentials from an Authorization header: Bearer → registry token, Basic → user/password. */
export function credentialsFromAuthorization (h: string): Credentials | undefined {
  const m = /^\s*(Bearer|Basic)\s+(\S+)\s*$/i.exec(h)
  if (m === null) return undefined
  if ((m[1] ?? '').toLowerCase() === 'bearer') return { registryToken: m[2] ?? '' }
  const decoded = Buffer.from(m[2] ?? '', 'base64').toString('utf8')
  const i = decoded.indexOf(':')
  if (i < 0) return undefined
  return { username: decoded.slice(0, i), password: decoded.slice(i + 1) }
}

interface RequesterClient { client: RegistryClient, lastUsed: number }

export class OriginPool {
  private readonly log: Logger
  private readonly nodeClients = new Map<string, RegistryClient>()
  private readonly requesterClients = new Map<string, RequesterClient>()
  private readonly allowed: Set<string> | undefined
  private timer: NodeJS.Timeout | undefined
  private closed = false

  constructor (private readonly deps: OriginPoolDeps, private readonly options: OriginPoolOptions) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.origin' })
    const list = (options.allowedOrigins ?? []).map(o => parseOrigin(o).origin)
    this.allowed = list.length > 0 ? new Set(list) : undefined
  }

  /** Validates an origin against the allow list (NAIAD_P2P_ORIGIN_NOT_ALLOWED). */
  check (origin: string): string {
    const o = parseOrigin(origin).origin
    if (this.allowed !== undefined && !this.allowed.has(o)) throw new NaiadError('NAIAD_P2P_ORIGIN_NOT_ALLOWED', `origin ${o} is not in [mirror] allowed_origins`)
    return o
  }

  private makeClient (origin: string, credentials: CredentialProvider | undefined): RegistryClient {
    const o = parseOrigin(origin)
    return new RegistryClient({ logger: this.log, ...(credentials !== undefined ? { credentials } : {}) }, {
      endpoint: o.endpoint,
      plainHttp: o.plainHttp,
      timeoutMs: this.options.timeoutMs,
      retries: this.options.retries,
      retryBaseDelayMs: 100,
      retryMaxDelayMs: 2000,
      userAgent: 'naiad-p2p/0.1'
    })
  }

  private nodeClient (origin: string): RegistryClient {
    let c = this.nodeClients.get(origin)
    if (c === undefined) {
      c = this.makeClient(origin, this.deps.credentials)
      this.nodeClients.set(origin, c)
    }
    return c
  }

  private requesterClient (origin: string, authorization: string): RegistryClient | undefined {
    const creds = credentialsFromAuthorization(authorization)
    if (creds === undefined) return undefined
    const key = `${origin}\n${createHash('sha256').update(authorization).digest('hex')}`
    let rc = this.requesterClients.get(key)
    if (rc === undefined) {
      rc = { client: this.makeClient(origin, { get: async () => creds }), lastUsed: Date.now() }
      this.requesterClients.set(key, rc)
      this.startSweeper()
    }
    rc.lastUsed = Date.now()
    return rc.client
  }

  private startSweeper (): void {
    if (this.timer !== undefined || this.closed) return
    const ttl = this.options.requesterTtlMs ?? 300_000
    this.timer = setInterval(() => {
      const now = Date.now()
      for (const [k, rc] of this.requesterClients) {
        if (rc.lastUsed + ttl < now) {
          this.requesterClients.delete(k)
          void rc.client.close()
        }
      }
    }, Math.min(ttl, 60_000))
    this.timer.unref()
  }

  /**
   * Runs `fn` with the requester's credentials first (if any), then with the node's when the
   * requester's are refused (401/403).
   */
  private async withClient<T> (ctx: OriginContext, fn: (c: RegistryClient) => Promise<T>): Promise<T> {
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', 'origin pool is closed')
    const origin = this.check(ctx.origin)
    const rc = ctx.authorization !== undefined && ctx.authorization !== '' ? this.requesterClient(origin, ctx.authorization) : undefined
    if (rc !== undefined) {
      try {
        return await fn(rc)
      } catch (err) {
        if (!(isNaiadError(err) && (err.code === 'NAIAD_REG_UNAUTHORIZED' || err.code === 'NAIAD_REG_DENIED'))) throw err
        this.log.debug({ origin, repository: ctx.repository }, 'requester credentials refused by the origin; trying the node\'s')
      }
    }
    return await fn(this.nodeClient(origin))
  }

  /** The blob's size (HEAD); NAIAD_REG_NOT_FOUND if the origin does not have it. */
  async size (ctx: OriginContext, digest: Digest, opts: { signal?: AbortSignal } = {}): Promise<number> {
    const n = await this.withClient(ctx, async c => await c.statBlob(ctx.repository, digest, opts))
    if (n === undefined) throw new NaiadError('NAIAD_REG_NOT_FOUND', `the origin ${ctx.origin} has no blob ${digest} in ${ctx.repository}`)
    return n
  }

  /** Bytes `[first, last]` of the blob, streamed. */
  async range (ctx: OriginContext, digest: Digest, first: number, last: number, opts: { signal?: AbortSignal } = {}): Promise<Readable> {
    return await this.withClient(ctx, async c => await c.getBlob(ctx.repository, digest, { range: [first, last], ...(opts.signal !== undefined ? { signal: opts.signal } : {}) }))
  }

  /** Closes every client. Safe twice. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    const all = [...this.nodeClients.values(), ...[...this.requesterClients.values()].map(r => r.client)]
    this.nodeClients.clear()
    this.requesterClients.clear()
    await Promise.all(all.map(async c => { await c.close() }))
  }
}
