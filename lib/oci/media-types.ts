/**
 * Media types and annotation keys: OCI image spec v1.1, Docker image manifest v2 schema 2, and the
 * Nydus conventions (containerd/nydus-snapshotter pkg/converter/constant.go).
 */
import { NaiadError } from '../errors/index.ts'

export const MediaType = Object.freeze({
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  /** Deprecated by OCI 1.1 but still seen in the wild. */
  OciLayerNondistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  OciLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  OciLayerNondistributableZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  OciEmpty: 'application/vnd.oci.empty.v1+json',

  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerLayerZstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  DockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  /** Docker schema 1: never supported, named so the error can say what it is. */
  DockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  DockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',

  /** A Nydus RAFS data blob used as a manifest layer (not a tar). */
  NydusBlob: 'application/vnd.oci.image.layer.nydus.blob.v1',
  /** `artifactType` of Nydus manifests in a merged index (newer nydusify / acceleration-service). */
  NydusManifestArtifact: 'application/vnd.nydus.image.manifest.v1+json',
  /** Config media type of Nydus manifests in a merged index, so plain containerd skips them. */
  NydusConfig: 'application/vnd.nydus.image.config.v1+json'
} as const)

export type KnownMediaType = typeof MediaType[keyof typeof MediaType]

export const Annotation = Object.freeze({
  /** On index.json entries of an OCI image layout: the tag. */
  RefName: 'org.opencontainers.image.ref.name',
  Created: 'org.opencontainers.image.created',
  /** `"true"` on each Nydus data blob layer. */
  NydusBlob: 'containerd.io/snapshot/nydus-blob',
  /** `"true"` on the Nydus bootstrap layer (the last layer, a tar with image/image.boot). */
  NydusBootstrap: 'containerd.io/snapshot/nydus-bootstrap',
  /** `"6"` for RAFS v6 (on the bootstrap layer, and on the manifest from acceleration-service). */
  NydusFsVersion: 'containerd.io/snapshot/nydus-fs-version',
  /** On a Nydus blob layer: the digest of the source OCI layer (`--oci-ref`). */
  NydusRef: 'containerd.io/snapshot/nydus-ref',
  NydusEncryptedBlob: 'containerd.io/snapshot/nydus-encrypted-blob',
  NydusSourceDigest: 'containerd.io/snapshot/nydus-source-digest',
  NydusSourceReference: 'containerd.io/snapshot/nydus-source-reference',
  /** The uncompressed digest (diff id) of a layer, converter-internal in containerd. */
  Uncompressed: 'containerd.io/uncompressed',
  /** Docker buildx marks attestation manifests in an index with this (value `attestation-manifest`). */
  DockerReferenceType: 'vnd.docker.reference.type'
} as const)

/** `platform.os.features` entry of Nydus manifests in a merged index (older nydusify). */
export const NYDUS_REMOTE_IMAGE_FEATURE = 'nydus.remoteimage.v1'

/** Accept header value for manifest requests: every manifest and index type we read. */
export const MANIFEST_ACCEPT: readonly string[] = Object.freeze([
  MediaType.OciManifest, MediaType.OciIndex, MediaType.DockerManifest, MediaType.DockerManifestList
])

export function isManifestMediaType (mt: string): mt is typeof MediaType.OciManifest | typeof MediaType.DockerManifest {
  return mt === MediaType.OciManifest || mt === MediaType.DockerManifest
}

export function isIndexMediaType (mt: string): mt is typeof MediaType.OciIndex | typeof MediaType.DockerManifestList {
  return mt === MediaType.OciIndex || mt === MediaType.DockerManifestList
}

export function isConfigMediaType (mt: string): boolean {
  return mt === MediaType.OciConfig || mt === MediaType.DockerConfig || mt === MediaType.NydusConfig
}

export type LayerCompression = 'none' | 'gzip' | 'zstd'

const LAYER_COMPRESSION: Readonly<Record<string, LayerCompression>> = Object.freeze({
  [MediaType.OciLayer]: 'none',
  [MediaType.OciLayerGzip]: 'gzip',
  [MediaType.OciLayerZstd]: 'zstd',
  [MediaType.OciLayerNondistributable]: 'none',
  [MediaType.OciLayerNondistributableGzip]: 'gzip',
  [MediaType.OciLayerNondistributableZstd]: 'zstd',
  [MediaType.DockerLayer]: 'none',
  [MediaType.DockerLayerGzip]: 'gzip',
  [MediaType.DockerLayerZstd]: 'zstd',
  [MediaType.DockerForeignLayerGzip]: 'gzip'
})

/** True for tar layer media types (any compression); false for Nydus blobs and anything else. */
export function isTarLayerMediaType (mt: string): boolean {
  return Object.hasOwn(LAYER_COMPRESSION, mt)
}

/**
 * The compression of a tar layer from its media type. Throws NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE for
 * anything that is not a tar layer (including Nydus blobs, which are not tars).
 */
export function layerCompression (mt: string): LayerCompression {
  const c = LAYER_COMPRESSION[mt]
  if (c === undefined) {
    throw new NaiadError('NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE', `layer media type ${JSON.stringify(mt.slice(0, 200))} is not a tar layer`, { details: { mediaType: mt } })
  }
  return c
}

/** Strips parameters and whitespace from a Content-Type value: `a/b; charset=utf-8` → `a/b`. */
export function baseMediaType (contentType: string): string {
  const i = contentType.indexOf(';')
  return (i === -1 ? contentType : contentType.slice(0, i)).trim().toLowerCase()
}

// RFC 6838 restricted names, as the OCI descriptor spec requires for mediaType.
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/

/** True if `s` is syntactically a media type (type/subtype, RFC 6838 characters). */
export function isMediaTypeSyntax (s: string): boolean {
  return MEDIA_TYPE_RE.test(s)
}
