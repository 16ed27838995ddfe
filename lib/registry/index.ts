/**
 * @packageDocumentation
 * Moving images: an OCI distribution client on undici (`RegistryClient`: manifests, blobs with
 * Range, monolithic/chunked/mount uploads, bearer and Basic auth from docker's config.json and
 * credential helpers, redirects without leaking Authorization, retries with backoff, timeouts,
 * abort), and `ImageStore`, the interface the converter and fsdaemon use, implemented for a
 * registry repository and for an OCI image layout directory.
 *
 * @example
 *   const store = openImageStore('127.0.0.1:5000/app:v1', { plainHttp: 'loopback', logger })
 *   const desc = await store.resolve()
 *   const { bytes, mediaType } = await store.getManifest(desc)
 *   const part = await store.getBlob(layerDigest, { range: [0, 4095] })
 *   // plain HTTP: straight into a buffer (served: false → use getBlob)
 *   const got = await client.readBlobRange('app', layerDigest, 0, 4095, Buffer.alloc(4096))
 *   await store.close()
 */
export { RegistryClient, type RegistryClientDeps, type RegistryClientOptions, type AbortOptions, type BlobSource, type FetchedManifest, type GetBlobOptions, type PushBlobOptions, type PushBlobResult } from './client.ts'
export { Authenticator, parseWwwAuthenticate, repositoryScope, type Challenge } from './auth.ts'
export { DockerConfigCredentials, staticCredentials, hostKey, DOCKER_HUB_SERVER, type Credentials, type CredentialProvider, type DockerConfigCredentialsDeps, type DockerConfigCredentialsOptions } from './credentials.ts'
export { RegistryImageStore, defaultTarget, type ImageStore, type RegistryImageStoreDeps, type RegistryImageStoreOptions } from './store.ts'
export { LayoutImageStore, writeAtomic, type LayoutImageStoreDeps, type LayoutImageStoreOptions } from './layout.ts'
export { openImageStore, type OpenImageStoreOptions } from './open.ts'
export { parseRetryAfter, type HttpPolicy } from './http.ts'
export { DirectRangeReader, isDirectUrl, type DirectRangeOutcome, type DirectRangeReaderOptions, type DirectRangeRequest } from './direct-range.ts'
export { statusError, summarizeBody, safeUrl } from './errors.ts'
