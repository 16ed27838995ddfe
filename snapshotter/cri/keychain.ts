/**
 * The CRI keychain: registry credentials the kubelet hands to containerd with each
 * `runtime.v1.ImageService/PullImage` (image pull secrets, credential providers), seen by naiad's
 * ImageService proxy (proxy.ts) on their way through. containerd never passes credentials to a
 * snapshotter (containerd#3731), so without this a lazily pulled private image could be pulled
 * but its blobs could not be read later. Same idea as nydus-snapshotter's and stargz's CRI
 * keychains.
 *
 * Kept in memory only: never written to disk, never logged (log lines name the registry and
 * repository, never a value). After a snapshotter restart, credentials come back with the next
 * PullImage of the image; mounts made before keep theirs (the fsdaemon holds them and refreshes
 * tokens itself). Entries expire after `ttlMs` (default 24 h) so a revoked secret is not kept forever.
 */
import { parseReference } from '../../lib/oci/reference.ts'
import { hostKey, type Credentials } from '../../lib/registry/index.ts'

/** CRI's AuthConfig (k8s.io/cri-api runtime.v1), as decoded by the proxy (camelCase). */
export interface CriAuthConfig {
  username?: string
  password?: string
  /** base64 `user:password` */
  auth?: string
  serverAddress?: string
  identityToken?: string
  registryToken?: string
}

/** CRI AuthConfig → lib/registry Credentials; undefined when it carries nothing usable. */
export function credentialsFromAuthConfig (a: CriAuthConfig | null | undefined): Credentials | undefined {
  if (a === null || a === undefined) return undefined
  let username = a.username ?? ''
  let password = a.password ?? ''
  if ((username === '' || password === '') && a.auth !== undefined && a.auth !== '') {
    const decoded = Buffer.from(a.auth, 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon > 0) { username = decoded.slice(0, colon); password = decoded.slice(colon + 1) }
  }
  const c: Credentials = {}
  if (username !== '' && password !== '') { c.username = username; c.password = password }
  if (a.identityToken !== undefined && a.identityToken !== '') c.identityToken = a.identityToken
  if (a.registryToken !== undefined && a.registryToken !== '') c.registryToken = a.registryToken
  return Object.keys(c).length > 0 ? c : undefined
}

interface Entry { creds: Credentials, expires: number }

function repoKey (ref: string): { host: string, repo: string } | undefined {
  try {
    const r = parseReference(ref)
    if (r.kind !== 'registry') return undefined
    const host = hostKey(r.registry)
    return { host, repo: `${host}/${r.repository}` }
  } catch {
    return undefined
  }
}

export interface CriKeychainOptions {
  /** How long credentials are kept after the last PullImage that carried them (default 24 h). */
  ttlMs?: number
  now?: () => number
}

export class CriKeychain {
  private readonly byRepo = new Map<string, Entry>()
  private readonly byHost = new Map<string, Entry>()
  private readonly ttlMs: number
  private readonly now: () => number

  constructor (opts: CriKeychainOptions = {}) {
    this.ttlMs = opts.ttlMs ?? 24 * 3600_000
    this.now = opts.now ?? Date.now
  }

  /**
   * Records the credentials of a PullImage of `image`. The entry is keyed by the image's
   * repository and by the registry (AuthConfig.server_address if given, else the image's host).
   * Returns false when nothing was recorded (no usable credentials, or not a registry reference).
   */
  remember (image: string, auth: CriAuthConfig | null | undefined): boolean {
    const creds = credentialsFromAuthConfig(auth)
    const k = repoKey(image)
    if (creds === undefined || k === undefined) return false
    const e = { creds, expires: this.now() + this.ttlMs }
    this.byRepo.set(k.repo, e)
    const server = auth?.serverAddress !== undefined && auth.serverAddress !== '' ? hostKey(auth.serverAddress) : k.host
    // credentials given for one registry never answer for another
    if (server === k.host) this.byHost.set(k.host, e)
    return true
  }

  /** Credentials for an image reference: its repository's, else its registry's; undefined if none. */
  get (image: string): Credentials | undefined {
    const k = repoKey(image)
    if (k === undefined) return undefined
    const now = this.now()
    for (const [map, key] of [[this.byRepo, k.repo], [this.byHost, k.host]] as const) {
      const e = map.get(key)
      if (e === undefined) continue
      if (e.expires <= now) { map.delete(key); continue }
      return e.creds
    }
    return undefined
  }

  /** Number of live entries (repositories), for metrics and tests; values are never exposed. */
  get size (): number { return this.byRepo.size }

  clear (): void { this.byRepo.clear(); this.byHost.clear() }
}
