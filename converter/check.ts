/**
 * `naiad check --source REF --target REF`: proves a converted image holds exactly the source's
 * filesystem. The source's layers are applied (whiteouts included) and every file hashed; the
 * target's manifest is checked against the Nydus rules (data blobs annotated, bootstrap layer last,
 * diff_ids, runtime config unchanged, every bootstrap blob listed in the manifest); then the
 * bootstrap is parsed and every file's content is read back through lib/format (each chunk
 * decompressed and verified against its digest) and hashed. Exit 0 only on an exact match.
 */
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Digest } from '../lib/digest/index.ts'
import { NaiadError, throwIfAborted } from '../lib/errors/index.ts'
import { BlobReader, fileBlobSource, type FileBlobSource } from '../lib/format/blob.ts'
import { Bootstrap } from '../lib/format/bootstrap.ts'
import { newInode, type Inode } from '../lib/format/types.ts'
import { readTar } from '../lib/tar/reader.ts'
import { Annotation, MediaType } from '../lib/oci/media-types.ts'
import { parseImageConfig } from '../lib/oci/parse.ts'
import { formatPlatform, matchPlatform, parsePlatform } from '../lib/oci/platform.ts'
import type { Descriptor, Manifest, Platform } from '../lib/oci/types.ts'
import { canonicalJsonString } from '../lib/oci/canonical-json.ts'
import { readBootstrapLayer } from '../lib/nydus/bootstrap-layer.ts'
import { compareTrees, type Difference } from './compare.ts'
import { layerTarBytes } from './layers.ts'
import { MergedTree, walk } from './tree.ts'
import type { SourceImage } from './image.ts'

export interface CheckPlatformResult {
  platform: string
  entries: number
  files: number
  bytes: number
  manifestProblems: string[]
  differences: Difference[]
}

export interface CheckResult {
  ok: boolean
  source: string
  target: string
  platforms: CheckPlatformResult[]
}

/** The source image's merged filesystem with the sha256 of each file. */
export async function sourceTree (src: SourceImage, manifest: Manifest, signal?: AbortSignal): Promise<{ root: Inode, hashes: Map<Inode, string>, bytes: number }> {
  const config = parseImageConfig(await src.fetchBytes(manifest.config, signal))
  const tree = new MergedTree()
  const hashes = new Map<Inode, string>()
  let bytes = 0
  for (let i = 0; i < manifest.layers.length; i++) {
    const layer = manifest.layers[i]!
    tree.beginLayer()
    const raw = await src.openBlob(layer, signal)
    const diffId = config.rootfs.diff_ids[i]
    for await (const e of readTar(layerTarBytes(raw, { mediaType: layer.mediaType, digest: layer.digest, size: layer.size, ...(diffId !== undefined ? { diffId } : {}), ...(signal !== undefined ? { signal } : {}) }))) {
      if (e.header.type === 'file') {
        const h = createHash('sha256')
        for await (const c of e.body()) { h.update(c); bytes += c.length }
        const inode = newInode('file')
        hashes.set(inode, h.digest('hex'))
        tree.apply(e.header, inode)
      } else {
        await e.skip()
        tree.apply(e.header)
      }
    }
  }
  return { root: tree.root, hashes, bytes }
}

function manifestRules (srcConfig: unknown, tgtManifest: Manifest, tgtConfig: ReturnType<typeof parseImageConfig>, bootstrap: Bootstrap): string[] {
  const problems: string[] = []
  const layers = tgtManifest.layers
  const last = layers[layers.length - 1]
  if (last === undefined || last.annotations?.[Annotation.NydusBootstrap] !== 'true') problems.push(`the last layer is not annotated ${Annotation.NydusBootstrap}: "true"`)
  if (last !== undefined && last.annotations?.[Annotation.NydusFsVersion] !== '6') problems.push(`the bootstrap layer's ${Annotation.NydusFsVersion} is not "6"`)
  layers.slice(0, -1).forEach((l, i) => {
    if (l.mediaType !== MediaType.NydusBlob) problems.push(`layer ${i} (${l.digest}) has media type ${l.mediaType}, not ${MediaType.NydusBlob}`)
    if (l.annotations?.[Annotation.NydusBlob] !== 'true') problems.push(`layer ${i} (${l.digest}) is not annotated ${Annotation.NydusBlob}: "true"`)
  })
  if (tgtConfig.rootfs.diff_ids.length !== layers.length) problems.push(`config has ${tgtConfig.rootfs.diff_ids.length} diff_ids for ${layers.length} layers`)
  if (canonicalJsonString((srcConfig as { config?: unknown }).config ?? {}) !== canonicalJsonString(tgtConfig.config ?? {})) problems.push('the runtime config (config.config) differs from the source')
  const inManifest = new Set(layers.map(l => l.digest as string))
  for (const b of bootstrap.blobs) {
    if (!inManifest.has(`sha256:${b.blobId}`)) problems.push(`bootstrap blob ${b.blobId} is not a layer of the manifest`)
  }
  return problems
}

async function collect (r: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of r) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

/** Reads every file of a converted image through lib/format and hashes it. */
async function targetTree (tgt: SourceImage, manifest: Manifest, work: string, signal?: AbortSignal): Promise<{ root: Inode, hashes: Map<Inode, string>, bootstrap: Bootstrap }> {
  const bootLayer = manifest.layers[manifest.layers.length - 1]
  if (bootLayer === undefined) throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', 'the converted manifest has no layers')
  const layerBytes = await collect(await tgt.openBlob(bootLayer, signal))
  const { bootstrap: raw } = await readBootstrapLayer(layerBytes)
  const bootstrap = Bootstrap.parse(raw)
  const root = bootstrap.toTree()
  const sources = new Map<string, FileBlobSource>()
  try {
    for (const b of bootstrap.blobs) {
      throwIfAborted(signal)
      const path = join(work, b.blobId)
      const desc: Descriptor = { mediaType: MediaType.NydusBlob, digest: `sha256:${b.blobId}` as Digest, size: b.compressedSize }
      await pipeline(await tgt.openBlob(desc, signal), createWriteStream(path))
      sources.set(b.blobId, await fileBlobSource(path))
    }
    const hashes = new Map<Inode, string>()
    for (const [, inode] of walk(root)) {
      if (inode.type !== 'file' || hashes.has(inode)) continue
      const h = createHash('sha256')
      let left = inode.size
      for (const c of inode.chunks) {
        const src = sources.get(c.blob.blobId)
        if (src === undefined) throw new NaiadError('NAIAD_FMT_CORRUPT', `chunk of blob ${c.blob.blobId} which is not in the blob table`)
        const data = BlobReader.decodeChunk(c, await src.read(c.compressedOffset, c.compressedSize, signal !== undefined ? { signal } : {}))
        const take = Math.min(left, data.length)
        h.update(data.subarray(0, take))
        left -= take
      }
      if (left !== 0) throw new NaiadError('NAIAD_FMT_CORRUPT', `file of ${inode.size} bytes has chunks for only ${inode.size - left}`)
      hashes.set(inode, h.digest('hex'))
    }
    return { root, hashes, bootstrap }
  } finally {
    for (const s of sources.values()) await s.close()
  }
}

async function manifestFor (img: SourceImage, platform: Platform | undefined, signal?: AbortSignal): Promise<{ manifest: Manifest, desc: Descriptor, platform: string }[]> {
  const root = await img.root(signal)
  if (root.kind === 'manifest') return [{ manifest: root.manifest, desc: root.desc, platform: formatPlatform(await img.platformOf(root.manifest, signal)) }]
  const picks = img.selectPlatforms(root.index, platform !== undefined ? [platform] : 'all')
  const out = []
  for (const d of picks) out.push({ manifest: await img.manifestAt(d, signal), desc: d, platform: d.platform !== undefined ? formatPlatform(d.platform) : 'unknown' })
  return out
}

export async function checkImage (src: SourceImage, tgt: SourceImage, opts: { platform?: string, signal?: AbortSignal } = {}): Promise<CheckResult> {
  const signal = opts.signal
  const want = opts.platform !== undefined && opts.platform !== 'all' ? parsePlatform(opts.platform) : undefined
  const targets = await manifestFor(tgt, want, signal)
  const work = await mkdtemp(join(tmpdir(), 'naiad-check-'))
  const results: CheckPlatformResult[] = []
  try {
    for (const t of targets) {
      const plat = parsePlatform(t.platform)
      const sources = await manifestFor(src, plat, signal)
      const s = sources.find(x => matchPlatform(plat, parsePlatform(x.platform))) ?? sources[0]
      if (s === undefined) throw new NaiadError('NAIAD_OCI_NO_PLATFORM', `the source has no ${t.platform} manifest`)
      const srcConfig = JSON.parse((await src.fetchBytes(s.manifest.config, signal)).toString('utf8')) as unknown
      const tgtConfig = parseImageConfig(await tgt.fetchBytes(t.manifest.config, signal))
      const a = await sourceTree(src, s.manifest, signal)
      const b = await targetTree(tgt, t.manifest, work, signal)
      const problems = manifestRules(srcConfig, t.manifest, tgtConfig, b.bootstrap)
      const differences = compareTrees({ root: a.root, contentHash: (i) => a.hashes.get(i) }, { root: b.root, contentHash: (i) => b.hashes.get(i) })
      let entries = 0
      let files = 0
      for (const [, inode] of walk(a.root)) { entries++; if (inode.type === 'file') files++ }
      results.push({ platform: t.platform, entries, files, bytes: a.bytes, manifestProblems: problems, differences })
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
  return { ok: results.every(r => r.manifestProblems.length === 0 && r.differences.length === 0), source: src.name, target: tgt.name, platforms: results }
}
