/**
 * `naiad convert`: OCIv1 image → Nydus RAFS v6 lazy image.
 *
 * Per platform manifest: each source layer streams through digest check → decompression →
 * diff_id check → tar reader → merged tree (whiteouts applied) while its file contents stream into
 * one Nydus data blob (chunked, deduplicated against earlier layers and the chunk dict,
 * compressed). Then one merged bootstrap is written for the whole image, packed into the bootstrap
 * layer, and everything is pushed: blobs first, then config, then the manifest, and the tag last
 * (an index's tag only after every platform manifest), so a failure never leaves a half image
 * behind a tag. The same input gives the same digests.
 */
import { createReadStream } from 'node:fs'
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { NaiadError, throwIfAborted } from '../lib/errors/index.ts'
import { sha256, type Digest } from '../lib/digest/index.ts'
import type { Logger } from '../lib/log/index.ts'
import { BlobWriter } from '../lib/format/blob.ts'
import { writeBootstrap } from '../lib/format/bootstrap.ts'
import { newInode, type BlobInfo, type ChunkRef, type Compressor, type ChunkDigester, type Inode } from '../lib/format/types.ts'
import { readTar } from '../lib/tar/reader.ts'
import { MediaType, Annotation } from '../lib/oci/media-types.ts'
import type { Descriptor, ImageConfig, Manifest, Platform } from '../lib/oci/types.ts'
import { parseImageConfig } from '../lib/oci/parse.ts'
import { MergedTree, walk } from './tree.ts'
import { layerTarBytes } from './layers.ts'
import { buildBootstrapLayer } from '../lib/nydus/bootstrap-layer.ts'
import { canonicalJson, platformString, type SourceImage, type TargetImage } from './image.ts'
import { compilePatterns } from './prefetch.ts'
import type { ChunkDict } from './chunkdict.ts'

export interface ConvertOptions {
  chunkSize: number
  compressor: Compressor
  digester: ChunkDigester
  /** Prefetch patterns (paths or globs, one per line, as for nydusify --prefetch-patterns). */
  prefetchPatterns?: string[]
  chunkDict?: ChunkDict
  /** Scratch directory for blob files (defaults to a temp dir, removed afterwards). */
  workDir?: string
  signal?: AbortSignal
  onProgress?: (e: ProgressEvent) => void
}

export type ProgressEvent =
  | { type: 'layer-start', platform: string, index: number, count: number, digest: Digest, size: number }
  | { type: 'layer-progress', platform: string, index: number, bytes: number }
  | { type: 'layer-done', platform: string, index: number, blobDigest: Digest | null, chunks: number, uncompressed: number }
  | { type: 'push', what: string, digest: Digest, size: number }

export interface PlatformSummary {
  platform: string
  sourceManifest: Digest
  manifest: Digest
  bootstrap: Digest
  blobs: Array<{ digest: Digest, size: number, chunks: number, sourceLayer: Digest | null }>
  files: number
  /** Uncompressed bytes of file content in the source layers. */
  sourceBytes: number
  /** Chunks referenced by files vs unique chunks stored: the dedup ratio is chunkRefs / uniqueChunks. */
  chunkRefs: number
  uniqueChunks: number
  /** Chunks taken from the chunk dict instead of stored. */
  dictChunks: number
  blobBytes: number
}

export interface ConvertResult {
  source: string
  target: string
  /** The digest the target tag points at (manifest, or index for multi-platform). */
  digest: Digest
  mediaType: string
  platforms: PlatformSummary[]
  durationMs: number
}

interface PendingBlob {
  blob: BlobInfo
  path: string
  meta: Buffer
  sourceLayer: Digest | null
  /** For chunk-dict blobs: where to copy from. */
  fromDict?: boolean
}

/** Converts one image manifest; pushes its blobs and manifest (by digest). */
async function convertManifest (src: SourceImage, dst: TargetImage, manifestDesc: Descriptor, manifest: Manifest, platform: string, opts: ConvertOptions, work: string, log: Logger): Promise<{ desc: Descriptor, summary: PlatformSummary }> {
  const configBytes = await src.fetchBytes(manifest.config, opts.signal)
  const config: ImageConfig = parseImageConfig(configBytes)
  const diffIds = config.rootfs.diff_ids
  if (diffIds.length !== manifest.layers.length) {
    throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', `config has ${diffIds.length} diff_ids but the manifest has ${manifest.layers.length} layers`)
  }
  for (const l of manifest.layers) {
    if (l.mediaType === MediaType.NydusBlob || l.annotations?.[Annotation.NydusBootstrap] !== undefined) {
      throw new NaiadError('NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE', `source ${src.name} is already a Nydus image`, { hint: 'convert the original OCI image instead' })
    }
  }
  const dedup = new Map<string, ChunkRef>()
  const dictBlobs = new Set<BlobInfo>()
  if (opts.chunkDict !== undefined) {
    if (opts.chunkDict.digester !== opts.digester || opts.chunkDict.chunkSize !== opts.chunkSize) {
      throw new NaiadError('NAIAD_FMT_OPTION', `chunk dict uses ${opts.chunkDict.digester} digests and ${opts.chunkDict.chunkSize}-byte chunks; this conversion uses ${opts.digester} and ${opts.chunkSize}`, { hint: 'convert with the chunk dict\'s --digest and --chunk-size' })
    }
    for (const [k, v] of opts.chunkDict.chunks) dedup.set(k, v)
    for (const b of opts.chunkDict.blobs) dictBlobs.add(b)
  }
  const tree = new MergedTree()
  const blobs: PendingBlob[] = []
  let files = 0
  let sourceBytes = 0
  let chunkRefs = 0
  for (let i = 0; i < manifest.layers.length; i++) {
    throwIfAborted(opts.signal)
    const layer = manifest.layers[i]!
    opts.onProgress?.({ type: 'layer-start', platform, index: i, count: manifest.layers.length, digest: layer.digest, size: layer.size })
    const blobPath = join(work, `${platform.replace(/\//g, '_')}-layer${i}.blob`)
    const writer = new BlobWriter({ path: blobPath, chunkSize: opts.chunkSize, compressor: opts.compressor, digester: opts.digester, dedup })
    tree.beginLayer()
    const compressed = await src.openBlob(layer, opts.signal)
    let seen = 0
    const counted = async function * (): AsyncGenerator<Buffer> {
      for await (const c of layerTarBytes(compressed, { mediaType: layer.mediaType, digest: layer.digest, size: layer.size, diffId: diffIds[i]!, ...(opts.signal !== undefined ? { signal: opts.signal } : {}) })) {
        seen += c.length
        opts.onProgress?.({ type: 'layer-progress', platform, index: i, bytes: seen })
        yield c
      }
    }
    try {
      for await (const entry of readTar(counted())) {
        const h = entry.header
        if (h.type === 'file') {
          const inode = newInode('file')
          inode.chunks = await writer.addFile(entry.body(), h.size, opts.signal !== undefined ? { signal: opts.signal } : undefined)
          files++
          sourceBytes += h.size
          chunkRefs += inode.chunks.length
          try {
            tree.apply(h, inode)
          } catch (err) {
            throw withLayer(err, layer.digest)
          }
        } else {
          await entry.skip()
          try { tree.apply(h) } catch (err) { throw withLayer(err, layer.digest) }
        }
      }
    } catch (err) {
      await writer.abort().catch(() => {})
      throw withLayer(err, layer.digest)
    }
    const { blob, blobMeta } = await writer.finish()
    if (blob.chunkCount > 0) {
      blobs.push({ blob, path: blobPath, meta: blobMeta, sourceLayer: layer.digest })
    } else {
      await rm(blobPath, { force: true })
    }
    opts.onProgress?.({ type: 'layer-done', platform, index: i, blobDigest: blob.chunkCount > 0 ? `sha256:${blob.blobId}` as Digest : null, chunks: blob.chunkCount, uncompressed: seen })
    log.debug({ digest: layer.digest, chunks: blob.chunkCount, bytes: seen }, 'layer converted')
  }

  // Blobs of the image: every layer blob that stores chunks, then the chunk-dict blobs that
  // surviving files actually reference.
  const used = new Set<BlobInfo>()
  for (const [, inode] of walk(tree.root)) for (const c of inode.chunks) used.add(c.blob)
  const dictUsed = [...dictBlobs].filter(b => used.has(b))
  const blobInfos = [...blobs.map(b => b.blob), ...dictUsed]
  let dictChunks = 0
  if (dictUsed.length > 0) {
    const seenChunk = new Set<ChunkRef>()
    for (const [, inode] of walk(tree.root)) for (const c of inode.chunks) if (dictBlobs.has(c.blob) && !seenChunk.has(c)) { seenChunk.add(c); dictChunks++ }
  }
  const prefetch = selectPrefetch(tree.root, opts.prefetchPatterns)
  const bootstrap = writeBootstrap(tree.root, blobInfos, { chunkSize: opts.chunkSize, compressor: opts.compressor, digester: opts.digester, prefetch })
  const metas = [...blobs.map(b => ({ blobId: b.blob.blobId, meta: b.meta })), ...dictUsed.flatMap(b => {
    const m = opts.chunkDict?.blobMetas.get(b.blobId)
    return m !== undefined ? [{ blobId: b.blobId, meta: m }] : []
  })]
  const bootLayer = await buildBootstrapLayer(bootstrap, metas)

  // push: blobs, bootstrap layer, config; then the manifest (by digest)
  const layers: Descriptor[] = []
  for (const b of blobs) {
    const size = (await stat(b.path)).size
    const d: Descriptor = { mediaType: MediaType.NydusBlob, digest: `sha256:${b.blob.blobId}` as Digest, size, annotations: { [Annotation.NydusBlob]: 'true' } }
    await dst.pushBlob(d, () => createReadStream(b.path), opts.signal)
    opts.onProgress?.({ type: 'push', what: 'blob', digest: d.digest, size })
    layers.push(d)
  }
  for (const b of dictUsed) {
    const d: Descriptor = { mediaType: MediaType.NydusBlob, digest: `sha256:${b.blobId}` as Digest, size: b.compressedSize, annotations: { [Annotation.NydusBlob]: 'true' } }
    await opts.chunkDict!.copyBlobTo(dst, d, opts.signal)
    opts.onProgress?.({ type: 'push', what: 'dict blob', digest: d.digest, size: d.size })
    layers.push(d)
  }
  const bootDesc: Descriptor = {
    mediaType: MediaType.OciLayerGzip,
    digest: bootLayer.digest,
    size: bootLayer.data.length,
    annotations: { [Annotation.NydusBootstrap]: 'true', [Annotation.NydusFsVersion]: '6', [Annotation.Uncompressed]: bootLayer.diffId }
  }
  await dst.pushBlob(bootDesc, bootLayer.data, opts.signal)
  opts.onProgress?.({ type: 'push', what: 'bootstrap', digest: bootDesc.digest, size: bootDesc.size })
  layers.push(bootDesc)

  const newConfig: ImageConfig = {
    ...config,
    rootfs: { type: 'layers', diff_ids: layers.map(l => l === bootDesc ? bootLayer.diffId : l.digest) },
    history: [
      ...(config.history ?? []).map(h => ({ ...h, empty_layer: true })),
      ...layers.map(l => ({ created_by: l === bootDesc ? 'naiad convert: nydus bootstrap layer (RAFS v6)' : `naiad convert: nydus data blob ${l.digest}`, comment: 'naiad', ...(config.created !== undefined ? { created: config.created } : {}) }))
    ]
  }
  const configOut = Buffer.from(canonicalJson(newConfig))
  const configDesc: Descriptor = { mediaType: MediaType.OciConfig, digest: sha256(configOut), size: configOut.length }
  await dst.pushBlob(configDesc, configOut, opts.signal)
  const manifestOut = Buffer.from(canonicalJson({
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: configDesc,
    layers,
    annotations: {
      [Annotation.NydusFsVersion]: '6',
      [Annotation.NydusSourceDigest]: manifestDesc.digest,
      'io.naiad.converter': `chunk-size=${opts.chunkSize},compressor=${opts.compressor},digest=${opts.digester}`
    }
  }))
  const desc: Descriptor = { mediaType: MediaType.OciManifest, digest: sha256(manifestOut), size: manifestOut.length }
  await dst.putManifest(manifestOut, MediaType.OciManifest, desc.digest, opts.signal)
  const uniqueChunks = blobs.reduce((n, b) => n + b.blob.chunkCount, 0)
  return {
    desc,
    summary: {
      platform,
      sourceManifest: manifestDesc.digest,
      manifest: desc.digest,
      bootstrap: bootDesc.digest,
      blobs: layers.filter(l => l !== bootDesc).map((l) => {
        const p = blobs.find(b => `sha256:${b.blob.blobId}` === l.digest)
        return { digest: l.digest, size: l.size, chunks: p?.blob.chunkCount ?? 0, sourceLayer: p?.sourceLayer ?? null }
      }),
      files,
      sourceBytes,
      chunkRefs,
      uniqueChunks,
      dictChunks,
      blobBytes: layers.filter(l => l !== bootDesc).reduce((n, l) => n + l.size, 0)
    }
  }
}

function withLayer (err: unknown, digest: Digest): unknown {
  if (err instanceof NaiadError && !err.message.includes(digest)) {
    return new NaiadError(err.code, `layer ${digest}: ${err.message}`, { cause: err.cause, hint: err.hint, ...(err.details !== undefined ? { details: err.details } : {}) })
  }
  return err
}

function selectPrefetch (root: Inode, patterns: string[] | undefined): Inode[] {
  if (patterns === undefined || patterns.length === 0) return []
  const match = compilePatterns(patterns)
  const out: Inode[] = []
  const seen = new Set<Inode>()
  for (const [path, inode] of walk(root)) {
    if (inode.type !== 'file' || seen.has(inode)) continue
    if (match('/' + path.map(c => c.toString('utf8')).join('/'))) { seen.add(inode); out.push(inode) }
  }
  return out
}

/** Converts `src` (an image or index) and pushes the result to `dst`, tagging last. */
export async function convertImage (src: SourceImage, dst: TargetImage, platforms: Platform[] | 'all' | 'default', opts: ConvertOptions, log: Logger): Promise<ConvertResult> {
  const t0 = Date.now()
  const work = opts.workDir ?? await mkdtemp(join(tmpdir(), 'naiad-convert-'))
  if (opts.workDir !== undefined) await mkdir(opts.workDir, { recursive: true })
  try {
    const root = await src.root(opts.signal)
    if (root.kind === 'manifest') {
      const plat = platformString(await src.platformOf(root.manifest, opts.signal))
      const { desc, summary } = await convertManifest(src, dst, root.desc, root.manifest, plat, opts, work, log)
      await dst.tag(desc, opts.signal)
      return { source: src.name, target: dst.name, digest: desc.digest, mediaType: desc.mediaType, platforms: [summary], durationMs: Date.now() - t0 }
    }
    const selected = src.selectPlatforms(root.index, platforms)
    if (platforms !== 'all' && selected.length === 1) {
      // one platform asked for (or the host's): a plain manifest, as nydusify --platform does
      const m = selected[0]!
      const manifest = await src.manifestAt(m, opts.signal)
      const { desc, summary } = await convertManifest(src, dst, m, manifest, m.platform !== undefined ? platformString(m.platform) : 'unknown', opts, work, log)
      await dst.tag(desc, opts.signal)
      return { source: src.name, target: dst.name, digest: desc.digest, mediaType: desc.mediaType, platforms: [summary], durationMs: Date.now() - t0 }
    }
    const entries: Descriptor[] = []
    const summaries: PlatformSummary[] = []
    for (const m of selected) {
      const manifest = await src.manifestAt(m, opts.signal)
      const plat = m.platform !== undefined ? platformString(m.platform) : 'unknown'
      const { desc, summary } = await convertManifest(src, dst, m, manifest, plat, opts, work, log)
      entries.push({ ...desc, ...(m.platform !== undefined ? { platform: m.platform } : {}) })
      summaries.push(summary)
    }
    const indexOut = Buffer.from(canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: entries, annotations: { [Annotation.NydusFsVersion]: '6', [Annotation.NydusSourceDigest]: root.desc.digest } }))
    const desc: Descriptor = { mediaType: MediaType.OciIndex, digest: sha256(indexOut), size: indexOut.length }
    await dst.putManifest(indexOut, MediaType.OciIndex, desc.digest, opts.signal)
    await dst.tag(desc, opts.signal)
    return { source: src.name, target: dst.name, digest: desc.digest, mediaType: desc.mediaType, platforms: summaries, durationMs: Date.now() - t0 }
  } finally {
    if (opts.workDir === undefined) await rm(work, { recursive: true, force: true })
  }
}
