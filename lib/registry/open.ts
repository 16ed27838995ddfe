/**
 * `openImageStore`: the composition helper that turns a reference string into an ImageStore —
 * a RegistryImageStore (with its own RegistryClient, closed with the store) for
 * `host/repo[:tag][@digest]`, a LayoutImageStore for `oci:<dir>[:tag]`. No I/O happens here.
 */
import type { Dispatcher } from 'undici'
import type { Logger } from '../log/index.ts'
import { parseReference, type ImageReference } from '../oci/reference.ts'
import { RegistryClient, type RegistryClientOptions } from './client.ts'
import { DockerConfigCredentials, staticCredentials, type CredentialProvider, type Credentials } from './credentials.ts'
import { LayoutImageStore } from './layout.ts'
import { RegistryImageStore, type ImageStore } from './store.ts'

export interface OpenImageStoreOptions extends Omit<RegistryClientOptions, 'endpoint' | 'registry'> {
  /**
   * Where credentials come from: a provider, a fixed `Credentials` for this registry, or
   * (default) docker's config.json (DOCKER_CONFIG honoured) with its credential helpers.
   */
  credentials?: CredentialProvider | Credentials
  logger?: Logger
  dispatcher?: Dispatcher
  /** Environment for the default docker config lookup (default process.env). */
  env?: Record<string, string | undefined>
}

function isProvider (c: CredentialProvider | Credentials): c is CredentialProvider {
  return typeof (c as { get?: unknown }).get === 'function'
}

/** Opens a store for `ref` (a reference string or a parsed reference). */
export function openImageStore (ref: string | ImageReference, options: OpenImageStoreOptions = {}): ImageStore {
  const reference = typeof ref === 'string' ? parseReference(ref) : ref
  const { credentials, logger, dispatcher, env, ...clientOptions } = options
  if (reference.kind === 'layout') {
    return new LayoutImageStore(logger !== undefined ? { logger } : {}, { reference })
  }
  let provider: CredentialProvider
  if (credentials === undefined) provider = new DockerConfigCredentials({ ...(logger !== undefined ? { logger } : {}), ...(env !== undefined ? { env } : {}) })
  else if (isProvider(credentials)) provider = credentials
  else provider = staticCredentials({ [reference.registry]: credentials })
  const client = new RegistryClient({
    credentials: provider,
    ...(logger !== undefined ? { logger } : {}),
    ...(dispatcher !== undefined ? { dispatcher } : {})
  }, { ...clientOptions, endpoint: reference.endpoint, registry: reference.registry })
  return new RegistryImageStore({ client }, { reference, ownsClient: true })
}
