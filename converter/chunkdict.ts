/**
 * A chunk dictionary: an existing Nydus image (ours or nydusify's) whose chunks a conversion reuses
 * instead of storing them again (`--chunk-dict REF`). A chunk whose digest is in the dictionary
 * points at the dictionary's blob; that blob then joins the converted image's blob table and
 * manifest (mounted across repositories when the registry allows, else copied).
 */
import type { Readable } from 'node:stream'
import { Bootstrap } from '../lib/format/bootstrap.ts'
import type { BlobInfo, ChunkDigester, ChunkRef } from '../lib/format/types.ts'
import type { ImageStore } from '../lib/registry/store.ts'
import { Annotation } from '../lib/oci/media-types.ts'
import { parseManifestOrIndex } from '../lib/oci/parse.ts'
import { hostPlatform, selectManifest } from '../lib/oci/platform.ts'
import { formatReference } from '../lib/oci/reference.ts'
import type { Descriptor, Manifest } from '../lib/oci/types.ts'
import { NaiadError } from '../lib/errors/index.ts'
import { readBootstrapLayer } from './bootstrap-layer.ts'
import { walk } from './tree.ts'
import type { TargetImage } from './image.ts'

export interface ChunkDict {
  name: string
  digester: ChunkDigester
  chunkSize: number
  /** hex digest → chunk */
  chunks: Map<string, ChunkRef>
  blobs: BlobInfo[]
  blobMetas: Map<string, Buffer>
  copyBlobTo (dst: TargetImage, desc: Descriptor, signal?: AbortSignal): Promise<void>
}

async function collect (r: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of r) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

/** Finds a Nydus image's manifest (host platform) and its bootstrap layer. */
export async function nydusManifest (store: ImageStore, signal?: AbortSignal): Promise<{ desc: Descriptor, manifest: Manifest, bootstrapLayer: Descriptor }> {
  const opt = signal !== undefined ? { signal } : {}
  const top = await store.getManifest(undefined, opt)
  let parsed = parseManifestOrIndex(top.bytes, top.mediaType)
  let desc = top.descriptor
  if (parsed.kind === 'index') {
    const [pick] = selectManifest(parsed.index, hostPlatform())
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

export async function loadChunkDict (store: ImageStore, signal?: AbortSignal): Promise<ChunkDict> {
  const { bootstrap, blobMetas } = await loadNydusBootstrap(store, signal)
  const chunks = new Map<string, ChunkRef>()
  for (const [, inode] of walk(bootstrap.toTree())) {
    for (const c of inode.chunks) {
      const k = c.digest.toString('hex')
      if (!chunks.has(k)) chunks.set(k, c)
    }
  }
  const repo = store.reference.kind === 'registry' ? store.reference.repository : undefined
  return {
    name: formatReference(store.reference),
    digester: bootstrap.digester,
    chunkSize: bootstrap.chunkSize,
    chunks,
    blobs: bootstrap.blobs,
    blobMetas,
    async copyBlobTo (dst, desc, sig) {
      const sameRegistry = store.reference.kind === 'registry' && dst.store.reference.kind === 'registry' && store.reference.registry === dst.store.reference.registry
      await dst.store.pushBlob(desc, async () => await store.getBlob(desc.digest, { size: desc.size, ...(sig !== undefined ? { signal: sig } : {}) }), {
        ...(sameRegistry && repo !== undefined ? { mountFrom: [repo] } : {}),
        ...(sig !== undefined ? { signal: sig } : {})
      })
    }
  }
}
