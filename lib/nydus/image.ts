/**
 * Reading Nydus images from a store: find the manifest (host platform in an index), its bootstrap
 * layer (the last layer annotated containerd.io/snapshot/nydus-bootstrap), and parse the bootstrap.
 * Used by the converter (chunk dicts, inspect, check) and the fsdaemon (mounting an image).
 */
import type { Readable } from 'node:stream'
import { Bootstrap } from '../format/bootstrap.ts'
import type { ImageStore } from '../registry/store.ts'
import { Annotation } from '../oci/media-types.ts'
import { parseManifestOrIndex } from '../oci/parse.ts'
import { hostPlatform, isNydusIndexEntry, selectManifest } from '../oci/platform.ts'
import { formatReference } from '../oci/reference.ts'
import type { Descriptor, Manifest } from '../oci/types.ts'
import { NaiadError } from '../errors/index.ts'
import { readBootstrapLayer } from './bootstrap-layer.ts'

async function collect (r: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of r) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

/**
 * Finds a Nydus image's manifest (for this host's platform; in a merged index, the Nydus entry)
 * and its bootstrap layer.
 */
export async function nydusManifest (store: ImageStore, signal?: AbortSignal): Promise<{ desc: Descriptor, manifest: Manifest, bootstrapLayer: Descriptor }> {
  const opt = signal !== undefined ? { signal } : {}
  const top = await store.getManifest(undefined, opt)
  let parsed = parseManifestOrIndex(top.bytes, top.mediaType)
  let desc = top.descriptor
  if (parsed.kind === 'index') {
    const nydus = parsed.index.manifests.some(isNydusIndexEntry) ? 'only' : 'include'
    const [pick] = selectManifest(parsed.index, hostPlatform(), { nydus })
    if (pick === undefined) throw new NaiadError('NAIAD_OCI_NO_PLATFORM', 'no manifest for this platform')
    const m = await store.getManifest(pick, opt)
    parsed = parseManifestOrIndex(m.bytes, m.mediaType)
    desc = m.descriptor
  }
  if (parsed.kind !== 'manifest') throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', 'nested index')
  const manifest = parsed.manifest
  const boot = [...manifest.layers].reverse().find(l => l.annotations?.[Annotation.NydusBootstrap] === 'true')
  if (boot === undefined) throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', `${formatReference(store.reference)} is not a Nydus image: no layer is annotated ${Annotation.NydusBootstrap}`)
  return { desc, manifest, bootstrapLayer: boot }
}

export async function loadNydusBootstrap (store: ImageStore, signal?: AbortSignal): Promise<{ bootstrap: Bootstrap, raw: Buffer, blobMetas: Map<string, Buffer>, manifest: Manifest, desc: Descriptor }> {
  const { manifest, bootstrapLayer, desc } = await nydusManifest(store, signal)
  const layer = await collect(await store.getBlob(bootstrapLayer.digest, { size: bootstrapLayer.size, ...(signal !== undefined ? { signal } : {}) }))
  const { bootstrap: raw, blobMetas } = await readBootstrapLayer(layer)
  return { bootstrap: Bootstrap.parse(raw), raw, blobMetas, manifest, desc }
}

