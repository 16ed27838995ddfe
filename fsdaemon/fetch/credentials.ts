/**
 * A mount's registry credentials: the ones its mount request carried (the snapshotter passes
 * what the CRI handed over with the pull), else the daemon's own (docker config.json). Given
 * credentials live in memory only and answer only for the image's registry; a later mount request
 * for the same image may replace them (a rotated pull secret): the registry client asks again
 * after the registry rejects what it sent (lib/registry/auth.ts).
 */
import { hostKey, type CredentialProvider, type Credentials } from '../../lib/registry/credentials.ts'

export class MountCredentials implements CredentialProvider {
  #given: Credentials | undefined
  readonly #registry: string
  readonly #fallback: CredentialProvider

  constructor (deps: { fallback: CredentialProvider }, options: { registry: string, given?: Credentials }) {
    this.#fallback = deps.fallback
    this.#registry = hostKey(options.registry)
    this.#given = options.given
  }

  /** True when the mount request gave credentials (the daemon's own are not used then). */
  get given (): boolean { return this.#given !== undefined }

  replace (c: Credentials): void { this.#given = c }

  async get (registry: string, opts: { signal?: AbortSignal } = {}): Promise<Credentials | undefined> {
    if (this.#given !== undefined && hostKey(registry) === this.#registry) return this.#given
    return await this.#fallback.get(registry, opts)
  }

  /**
   * The Authorization value handed to a mirror on this node with `pass_authorization` (the
   * mirror uses it for its own origin requests, docs/mirror-contract.md): Basic for a user and
   * password, Bearer for a registry token; undefined when there is nothing it could use.
   */
  async authorization (signal?: AbortSignal): Promise<string | undefined> {
    const c = await this.get(this.#registry, signal !== undefined ? { signal } : {})
    if (c === undefined) return undefined
    if (c.registryToken !== undefined) return `Bearer ${c.registryToken}`
    if (c.username !== undefined && c.password !== undefined) return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`
    return undefined
  }
}
