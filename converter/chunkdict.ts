/**
 * A chunk dictionary: an existing Nydus image (ours or nydusify's) whose chunks a conversion reuses
 * instead of storing them again (`--chunk-dict REF`). A chunk whose digest is in the dictionary
 * points at the dictionary's blob; that blob then joins the converted image's blob table and
 * manifest (mounted across repositories when the registry allows, else copied).
 */
import type { BlobInfo, ChunkDigester, ChunkRef } from '../lib/format/types.ts'
import type { ImageStore } from '../lib/registry/store.ts'
import type { Descriptor } from '../lib/oci/types.ts'
import { formatReference } from '../lib/oci/reference.ts'
import { loadNydusBootstrap } from '../lib/nydus/image.ts'
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
