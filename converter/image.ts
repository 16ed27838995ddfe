/**
 * The converter's view of a source image and a target image, over lib/registry's ImageStore (a
 * registry repository or an OCI layout). The target remembers the manifests it stored so the tag
 * can be pointed at one last.
 */
import type { Readable } from 'node:stream'
import type { ImageStore, BlobSource } from '../lib/registry/store.ts'
import type { Descriptor, Index, Manifest, Platform } from '../lib/oci/types.ts'
import { parseImageConfig, parseManifestOrIndex } from '../lib/oci/parse.ts'
import { formatPlatform, hostPlatform, isNydusIndexEntry, selectManifest } from '../lib/oci/platform.ts'
import { formatReference } from '../lib/oci/reference.ts'
import { canonicalJsonString } from '../lib/oci/canonical-json.ts'
import { NaiadError } from '../lib/errors/index.ts'
import type { Digest } from '../lib/digest/index.ts'

export function canonicalJson (v: unknown): string {
  return canonicalJsonString(v)
}

export function platformString (p: Platform): string {
  return formatPlatform(p)
}

async function collect (r: Readable, limit: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = []
  let n = 0
  for await (const c of r) {
    n += (c as Buffer).length
    if (n > limit) { r.destroy(); throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', `${what} is larger than ${limit} bytes`) }
    parts.push(c as Buffer)
  }
  return Buffer.concat(parts)
}

export type Root =
  | { kind: 'manifest', desc: Descriptor, manifest: Manifest }
  | { kind: 'index', desc: Descriptor, index: Index }

export class SourceImage {
  /** `role: 'nydus'` reads a converted image: in a merged index, its Nydus entries are used. */
  constructor (readonly store: ImageStore, readonly role: 'source' | 'nydus' = 'source') {}

  get name (): string { return formatReference(this.store.reference) }

  async root (signal?: AbortSignal): Promise<Root> {
    const m = await this.store.getManifest(undefined, signal !== undefined ? { signal } : {})
    const parsed = parseManifestOrIndex(m.bytes, m.mediaType)
    return parsed.kind === 'manifest' ? { kind: 'manifest', desc: m.descriptor, manifest: parsed.manifest } : { kind: 'index', desc: m.descriptor, index: parsed.index }
  }

  async manifestAt (desc: Descriptor, signal?: AbortSignal): Promise<Manifest> {
    const m = await this.store.getManifest(desc, signal !== undefined ? { signal } : {})
    const parsed = parseManifestOrIndex(m.bytes, m.mediaType)
    if (parsed.kind !== 'manifest') throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', `index entry ${desc.digest} is itself an index; nested indexes are not supported`)
    return parsed.manifest
  }

  /** A small blob (config) as bytes, verified. */
  async fetchBytes (desc: Descriptor, signal?: AbortSignal): Promise<Buffer> {
    return await collect(await this.store.getBlob(desc.digest, { size: desc.size, ...(signal !== undefined ? { signal } : {}) }), 64 << 20, `blob ${desc.digest}`)
  }

  /** A layer's compressed bytes as a stream (verified by the caller while converting). */
  async openBlob (desc: Descriptor, signal?: AbortSignal): Promise<Readable> {
    return await this.store.getBlob(desc.digest, { size: desc.size, ...(signal !== undefined ? { signal } : {}) })
  }

  async platformOf (manifest: Manifest, signal?: AbortSignal): Promise<Platform> {
    const c = parseImageConfig(await this.fetchBytes(manifest.config, signal))
    return { os: c.os, architecture: c.architecture, ...(c.variant !== undefined ? { variant: c.variant } : {}) }
  }

  /** 'default' means the host's platform. */
  selectPlatforms (index: Index, platforms: Platform[] | 'all' | 'default'): Descriptor[] {
    const nydus = this.role === 'source' ? 'exclude' : index.manifests.some(isNydusIndexEntry) ? 'only' : 'include'
    if (platforms === 'all') return selectManifest(index, 'all', { nydus })
    const wanted = platforms === 'default' ? [hostPlatform()] : platforms
    return wanted.flatMap(p => selectManifest(index, p, { nydus }))
  }
}

export class TargetImage {
  private readonly stored = new Map<string, { bytes: Uint8Array, mediaType: string }>()
  constructor (readonly store: ImageStore) {}

  get name (): string { return formatReference(this.store.reference) }

  async pushBlob (desc: Descriptor, source: BlobSource, signal?: AbortSignal): Promise<void> {
    await this.store.pushBlob(desc, source, signal !== undefined ? { signal } : {})
  }

  async putManifest (bytes: Uint8Array, mediaType: string, digest: Digest, signal?: AbortSignal): Promise<void> {
    await this.store.putManifest(bytes, mediaType, digest, signal !== undefined ? { signal } : {})
    this.stored.set(digest, { bytes, mediaType })
  }

  /** Points the target's tag at a manifest stored earlier (the very last step of a conversion). */
  async tag (desc: Descriptor, signal?: AbortSignal): Promise<void> {
    const m = this.stored.get(desc.digest)
    if (m === undefined) throw new NaiadError('NAIAD_INTERNAL', `tag: manifest ${desc.digest} was not stored first`)
    const ref = this.store.reference
    const tag = ref.tag ?? 'latest'
    if (ref.digest !== undefined && ref.tag === undefined) {
      if (ref.digest !== desc.digest) throw new NaiadError('NAIAD_CLI_USAGE', `target names digest ${ref.digest}, but the converted image is ${desc.digest}`, { hint: 'give the target a tag instead of a digest' })
      return
    }
    await this.store.putManifest(m.bytes, m.mediaType, tag, signal !== undefined ? { signal } : {})
  }
}
