/**
 * Registry authentication (distribution's token spec and Basic auth):
 *
 * 1. Requests go out without Authorization until the registry answers 401 with a
 *    `WWW-Authenticate` challenge; the challenge is remembered per origin, so later requests
 *    authorize up front.
 * 2. `Bearer realm=…,service=…,scope=…`: a token is fetched from the realm (GET with Basic
 *    credentials when known; an identity token is exchanged with the OAuth2 POST
 *    `grant_type=refresh_token`), cached per (realm, service, scopes) until `expires_in` (default
 *    60 s) minus a safety margin, and dropped when the registry rejects it — so an expired or
 *    revoked token costs one 401 and one re-fetch.
 * 3. `Basic realm=…`: username and password from the CredentialProvider.
 *
 * Tokens and credentials never appear in logs or error messages.
 */
import type { Logger } from '../log/index.ts'
import { NaiadError, throwIfAborted } from '../errors/index.ts'
import type { CredentialProvider, Credentials } from './credentials.ts'
import { readExcerpt, safeUrl, statusError } from './errors.ts'
import type { Authorizer, HttpResponse, SendOptions } from './http.ts'

export interface Challenge {
  /** Lower-cased scheme: `bearer`, `basic`. */
  scheme: string
  /** Parameters with lower-cased names. */
  params: Record<string, string>
}

const TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"
const PARAM_RE = new RegExp(`^\\s*(${TOKEN})\\s*=\\s*(?:"((?:[^"\\\\]|\\\\.)*)"|(${TOKEN}))\\s*(?:,|$)`)
const SCHEME_RE = new RegExp(`^\\s*,?\\s*(${TOKEN})(?:\\s+|$)`)

/** Parses `WWW-Authenticate` values (RFC 7235), possibly several challenges per value. */
export function parseWwwAuthenticate (value: string | string[] | undefined): Challenge[] {
  const values = value === undefined ? [] : Array.isArray(value) ? value : [value]
  const out: Challenge[] = []
  for (const v of values) {
    let rest = v
    while (rest.trim() !== '') {
      const m = SCHEME_RE.exec(rest)
      if (m === null) break
      const ch: Challenge = { scheme: (m[1] ?? '').toLowerCase(), params: {} }
      rest = rest.slice(m[0].length)
      for (;;) {
        const p = PARAM_RE.exec(rest)
        if (p === null) break
        ch.params[(p[1] ?? '').toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '')
        rest = rest.slice(p[0].length)
      }
      out.push(ch)
    }
  }
  return out
}

/** `repository:<name>:pull` or `…:pull,push`. */
export function repositoryScope (repository: string, actions: 'pull' | 'pull,push'): string {
  return `repository:${repository}:${actions}`
}

interface CachedToken { token: string, expiresAt: number }

export interface AuthenticatorDeps {
  credentials?: CredentialProvider
  logger: Logger
  /** Sends token requests (no Authorizer, retries on). */
  send: (opts: SendOptions) => Promise<HttpResponse>
  now?: () => number
}

export interface AuthenticatorOptions {
  /** The registry name credentials are looked up under (docker.io, host:port). */
  registry: string
  /** OAuth2 client_id sent with identity-token exchanges. */
  clientId?: string
}

/** Keep this much of a token's lifetime in reserve (at most 10% of it). */
const EXPIRY_MARGIN_MS = 5_000
const DEFAULT_TOKEN_TTL_S = 60

export class Authenticator implements Authorizer {
  private readonly deps: AuthenticatorDeps
  private readonly options: AuthenticatorOptions
  private readonly now: () => number
  private readonly challenges = new Map<string, Challenge>()
  private readonly tokens = new Map<string, CachedToken>()
  private readonly inflight = new Map<string, Promise<CachedToken>>()
  private creds: Promise<Credentials | undefined> | undefined

  constructor (deps: AuthenticatorDeps, options: AuthenticatorOptions) {
    this.deps = deps
    this.options = options
    this.now = deps.now ?? Date.now
  }

  /** Number of tokens fetched so far (for tests and metrics). */
  tokenFetches = 0

  private async credentials (signal?: AbortSignal): Promise<Credentials | undefined> {
    if (this.deps.credentials === undefined) return undefined
    // Shared by concurrent callers, so it runs without any one caller's signal (helpers have
    // their own timeout); each caller still stops waiting when its own signal aborts.
    const p = this.creds ??= this.deps.credentials.get(this.options.registry)
    p.catch(() => { if (this.creds === p) this.creds = undefined })
    return await abortable(p, signal)
  }

  async authorization (origin: string, scopes: readonly string[], signal?: AbortSignal): Promise<string | undefined> {
    const ch = this.challenges.get(origin)
    if (ch === undefined) return undefined
    if (ch.scheme === 'basic') {
      const c = await this.credentials(signal)
      return c?.username !== undefined && c.password !== undefined ? basic(c.username, c.password) : undefined
    }
    const c = await this.credentials(signal)
    if (c?.registryToken !== undefined) return `Bearer ${c.registryToken}`
    const t = await this.token(ch, scopes, c, signal)
    return `Bearer ${t.token}`
  }

  async onUnauthorized (origin: string, wwwAuthenticate: string | string[] | undefined, _scopes: readonly string[], sent: string | undefined, signal?: AbortSignal): Promise<boolean> {
    const all = parseWwwAuthenticate(wwwAuthenticate)
    const ch = all.find(c => c.scheme === 'bearer') ?? all.find(c => c.scheme === 'basic')
    if (ch === undefined) return false
    if (ch.scheme === 'bearer' && (ch.params['realm'] === undefined || ch.params['realm'] === '')) return false
    const known = this.challenges.get(origin)
    this.challenges.set(origin, ch)
    // ask the provider again: the credentials may have changed (a rotated secret, new ones given to a mount)
    this.creds = undefined
    if (ch.scheme === 'basic') {
      if (sent?.startsWith('Basic ') === true) return false
      const c = await this.credentials(signal)
      return c?.username !== undefined && c.password !== undefined
    }
    if (sent?.startsWith('Bearer ') === true) {
      const c = await this.credentials(signal)
      // A registry token from the config cannot be refreshed.
      if (c?.registryToken !== undefined && sent === `Bearer ${c.registryToken}`) return false
      const token = sent.slice('Bearer '.length)
      let dropped = false
      for (const [k, t] of this.tokens) {
        if (t.token === token) { this.tokens.delete(k); dropped = true }
      }
      this.deps.logger.debug({ origin, dropped }, 'registry rejected the bearer token; fetching a new one')
      // If the token was not ours any more (already replaced), trying again is still worthwhile.
      return true
    }
    return known === undefined || known.scheme !== ch.scheme || sent === undefined
  }

  private async token (ch: Challenge, scopes: readonly string[], creds: Credentials | undefined, signal?: AbortSignal): Promise<CachedToken> {
    const realm = ch.params['realm'] ?? ''
    const service = ch.params['service'] ?? ''
    const sorted = [...new Set(scopes.length > 0 ? scopes : (ch.params['scope'] ?? '').split(' ').filter(s => s !== ''))].sort()
    const key = `${realm}\n${service}\n${sorted.join(' ')}`
    const cached = this.tokens.get(key)
    if (cached !== undefined && cached.expiresAt > this.now()) return cached
    let p = this.inflight.get(key)
    if (p === undefined) {
      p = this.fetchToken(realm, service, sorted, creds).then(t => {
        if (this.tokens.size >= 256) {
          const now = this.now()
          for (const [k, v] of this.tokens) if (v.expiresAt <= now) this.tokens.delete(k)
        }
        this.tokens.set(key, t)
        return t
      }).finally(() => { this.inflight.delete(key) })
      this.inflight.set(key, p)
    }
    return await abortable(p, signal)
  }

  /** Fetches a token; shared by concurrent callers, so it takes no caller's signal. */
  private async fetchToken (realm: string, service: string, scopes: string[], creds: Credentials | undefined): Promise<CachedToken> {
    let url: URL
    try {
      url = new URL(realm)
    } catch (err) {
      throw new NaiadError('NAIAD_REG_PROTOCOL', `the registry's token realm ${JSON.stringify(realm.slice(0, 200))} is not a URL`, { cause: err })
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new NaiadError('NAIAD_REG_PROTOCOL', `the registry's token realm uses unsupported scheme ${url.protocol}`)
    }
    this.tokenFetches++
    const what = `token for ${scopes.join(' ') || 'registry'} from ${safeUrl(url)}`
    let res: HttpResponse
    if (creds?.identityToken !== undefined) {
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: this.options.clientId ?? 'naiad' })
      if (service !== '') form.set('service', service)
      if (scopes.length > 0) form.set('scope', scopes.join(' '))
      res = await this.deps.send({
        method: 'POST', url, what, redirect: false, body: Buffer.from(form.toString()),
        headers: { 'content-type': 'application/x-www-form-urlencoded' }
      })
    } else {
      if (service !== '') url.searchParams.set('service', service)
      for (const s of scopes) url.searchParams.append('scope', s)
      const headers: Record<string, string> = {}
      if (creds?.username !== undefined && creds.password !== undefined) headers['authorization'] = basic(creds.username, creds.password)
      res = await this.deps.send({ method: 'GET', url, what, headers, redirect: true })
    }
    if (res.status !== 200) {
      const excerpt = await readExcerpt(res.body)
      throw statusError(res.status, excerpt, what, creds?.identityToken !== undefined ? 'POST' : 'GET', url, res.attempts)
    }
    let body: { token?: unknown, access_token?: unknown, expires_in?: unknown }
    try {
      body = JSON.parse(await res.body.text()) as typeof body
    } catch (err) {
      throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: the token endpoint answered with something that is not JSON`, { cause: new Error((err as Error).name) })
    }
    const token = typeof body.token === 'string' && body.token !== '' ? body.token : typeof body.access_token === 'string' ? body.access_token : ''
    if (token === '') throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: the token endpoint's answer has no token`)
    const ttlMs = (typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_TTL_S) * 1000
    const margin = Math.min(EXPIRY_MARGIN_MS, ttlMs / 10)
    this.deps.logger.debug({ realm: safeUrl(url), service, scopes, expiresInMs: ttlMs }, 'fetched registry token')
    return { token, expiresAt: this.now() + ttlMs - margin }
  }
}

/** Waits for `p`, or rejects with the signal's reason as soon as it aborts. */
async function abortable<T> (p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return await p
  throwIfAborted(signal)
  return await new Promise<T>((resolve, reject) => {
    const onAbort = (): void => { reject(signal.reason instanceof Error ? signal.reason : new DOMException('aborted', 'AbortError')) }
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v) },
      (e: unknown) => { signal.removeEventListener('abort', onAbort); reject(e) }
    )
  })
}

function basic (user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}
