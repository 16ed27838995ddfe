/**
 * @packageDocumentation
 * OCI image model: media types and annotation keys (OCI, Docker schema 2, Nydus), typed
 * descriptors, manifests, indexes and configs with validating parsers, platforms and index
 * selection, image references (registry and `oci:` layout), and canonical JSON for writing
 * documents deterministically. Pure functions; no I/O. lib/registry moves these documents.
 *
 * @example
 *   const ref = parseReference('busybox:1.36')        // docker.io/library/busybox:1.36
 *   const doc = parseManifestOrIndex(bytes, contentType)
 *   if (doc.kind === 'index') [desc] = selectManifest(doc.index, parsePlatform('linux/arm64'))
 */
export * from './media-types.ts'
export type * from './types.ts'
export { parseManifest, parseIndex, parseManifestOrIndex, parseImageConfig, validateDescriptor, MAX_MANIFEST_BYTES } from './parse.ts'
export { parsePlatform, formatPlatform, normalizePlatform, matchPlatform, hostPlatform, selectManifest, isNydusIndexEntry, type SelectOptions } from './platform.ts'
export {
  parseReference, parseRegistryReference, formatReference, registryEndpoint, isValidTag,
  DOCKER_HUB, DOCKER_HUB_ENDPOINT, DEFAULT_TAG,
  type ImageReference, type RegistryReference, type LayoutReference
} from './reference.ts'
export { canonicalJson, canonicalJsonString } from './canonical-json.ts'
