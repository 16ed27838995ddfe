/**
 * `naiad pull`: lazy-pulls an image into containerd through containerd's own services, the way
 * containerd 1.6's client unpacker (client.Pull with WithPullUnpack and the CRI plugin's
 * AppendInfoHandlerWrapper) does it, so that a remote snapshotter can skip layers:
 *
 * 1. a lease (expiring by itself after an hour) protects everything written until the image
 *    record and the config's snapshot GC label hold it;
 * 2. index (if any), manifest and config go to the content store with containerd's GC labels
 *    (`containerd.io/gc.ref.content.*`) and `containerd.io/distribution.source.<host>`;
 * 3. for each layer, chainID over the config's rootfs.diff_ids: Stat(chainID) → present;
 *    else Prepare(`extract-<nanos>-<rand> <chainID>`, parent chainID) with
 *    `containerd.io/snapshot.ref`, the layer's `containerd.io/snapshot/*` annotations and the
 *    four `containerd.io/snapshot/cri.*` labels. AlreadyExists → the snapshotter took the layer
 *    (it must then be found by Stat); otherwise the blob is downloaded into the content store,
 *    applied onto the mounts by containerd's diff service, its diff id checked, and committed as
 *    chainID;
 * 4. the config is labelled `containerd.io/gc.ref.snapshot.<snapshotter>` = top chainID, the
 *    image record created or updated, and the lease dropped.
 *
 * Afterwards `ctr -n NS run --snapshotter S REF …` finds the image unpacked (Stat of the top
 * chainID) and never needs the skipped layers' blobs.
 */
import { randomBytes } from 'node:crypto'
import { sha256 } from '../../lib/digest/index.ts'
import { NaiadError, throwIfAborted } from '../../lib/errors/index.ts'
import { isIndexMediaType, isManifestMediaType, parseImageConfig, parseIndex, parseManifest, selectManifest, isNydusIndexEntry, type Index, type Platform } from '../../lib/oci/index.ts'
import type { Logger } from '../../lib/log/index.ts'
import type { Containerd, LayerOutcome, PullDescriptor, PullProgress, PullSource, SnapshotMount } from './types.ts'

export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref'
export const LABEL_CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref'
export const LABEL_CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest'
export const LABEL_CRI_MANIFEST_DIGEST = 'containerd.io/snapshot/cri.manifest-digest'
export const LABEL_CRI_IMAGE_LAYERS = 'containerd.io/snapshot/cri.image-layers'
const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed'
const LABEL_GC_EXPIRE = 'containerd.io/gc.expire'
const SNAPSHOT_LABEL_PREFIX = 'containerd.io/snapshot/'
/** Layer blobs fetched at once (containerd's default max_concurrent_downloads is 3). */
const DOWNLOAD_WINDOW = 3
/** containerd's limit on one label (key + value), labels/validate.go. */
const MAX_LABEL_BYTES = 4096

export interface PullDeps {
  readonly containerd: Containerd
  readonly source: PullSource
  readonly log?: Logger
  readonly onProgress?: (e: PullProgress) => void
}

export interface PullOptions {
  /** The fully qualified reference (`host/repo:tag` or `@digest`): image name and cri.image-ref. */
  readonly reference: string
  /** Registry host, for `containerd.io/distribution.source.<host>`. */
  readonly registry: string
  /** Repository path, the value of the distribution source label. */
  readonly repository: string
  /** containerd snapshotter name (e.g. `nydus`). */
  readonly snapshotter: string
  /** Platform to pick from an index. */
  readonly platform: Platform
  readonly signal?: AbortSignal
}

export interface PullLayerResult {
  digest: string
  mediaType: string
  size: number
  chainId: string
  outcome: LayerOutcome
}

export interface PullResult {
  image: string
  /** Digest of the image record's target (index or manifest). */
  digest: string
  manifest: string
  config: string
  snapshotter: string
  /** Top chainID: the snapshot containers are prepared on. */
  chainId: string
  layers: PullLayerResult[]
  /** Layers not downloaded (present already or taken by the snapshotter as remote). */
  skipped: number
  downloaded: number
  /** Bytes fetched from the registry (manifests, config, layers). */
  bytesDownloaded: number
  durationMs: number
}

/** chainID(diff_ids[0..n]) as containerd computes it (identity.ChainIDs). */
export function chainIds (diffIds: readonly string[]): string[] {
  const out: string[] = []
  for (const d of diffIds) {
    const prev = out[out.length - 1]
    out.push(prev === undefined ? d : sha256(`${prev} ${d}`))
  }
  return out
}

function isLayerType (mt: string): boolean {
  // containerd images.IsLayerType: OCI layer types (any application/vnd.oci.image.layer.* incl.
  // nydus blobs) and Docker schema2 layer types
  return mt.startsWith('application/vnd.oci.image.layer.') || /^application\/vnd\.docker\.image\.rootfs\.(diff|foreign\.diff)\.tar(\.gzip)?$/.test(mt)
}

/**
 * The `cri.image-layers` value: this and the following layers' digests, comma-separated, cut
 * where the label would pass containerd's 4096-byte limit (as AppendInfoHandlerWrapper does).
 */
export function imageLayersLabel (layers: readonly PullDescriptor[]): string {
  let v = ''
  for (const l of layers) {
    if (!isLayerType(l.mediaType)) continue
    const item = v === '' ? l.digest : `,${l.digest}`
    if (LABEL_CRI_IMAGE_LAYERS.length + v.length + item.length > MAX_LABEL_BYTES) break
    v += item
  }
  return v
}

/** The labels of the unpack Prepare for layer `i` (snapshot.ref, annotations, cri.*). */
export function layerLabels (reference: string, manifestDigest: string, layers: readonly PullDescriptor[], i: number, chainId: string): Record<string, string> {
  const layer = layers[i]!
  const labels: Record<string, string> = {}
  for (const [k, v] of Object.entries(layer.annotations ?? {})) {
    if (k.startsWith(SNAPSHOT_LABEL_PREFIX)) labels[k] = v
  }
  if (isLayerType(layer.mediaType)) {
    labels[LABEL_CRI_IMAGE_REF] = reference
    labels[LABEL_CRI_LAYER_DIGEST] = layer.digest
    labels[LABEL_CRI_IMAGE_LAYERS] = imageLayersLabel(layers.slice(i))
    labels[LABEL_CRI_MANIFEST_DIGEST] = manifestDigest
  }
  labels[LABEL_SNAPSHOT_REF] = chainId
  return labels
}

function brief (d: PullDescriptor): PullDescriptor {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size }
}

/** Pulls `opts.reference` into containerd; see the module comment. */
export async function pullImage (deps: PullDeps, opts: PullOptions): Promise<PullResult> {
  const { containerd: ctd, source } = deps
  const started = Date.now()
  const signal = opts.signal
  let bytesDownloaded = 0
  const dist = { [`containerd.io/distribution.source.${opts.registry}`]: opts.repository }

  // containerd first: an unreachable socket is reported before any registry traffic
  await ctd.getImage(opts.reference, { ...(signal !== undefined ? { signal } : {}) })

  // ---- resolve (before any containerd write) ----
  const top = await source.getManifest(undefined, { signal })
  bytesDownloaded += top.bytes.length
  let index: { desc: PullDescriptor, bytes: Buffer, doc: Index } | undefined
  let manifestDesc: PullDescriptor
  let manifestBytes: Buffer
  if (isIndexMediaType(top.mediaType)) {
    const doc = parseIndex(top.bytes, top.mediaType)
    // prefer a Nydus manifest of a merged index (the snapshotter can serve it lazily)
    let picked: PullDescriptor
    try {
      picked = selectManifest(doc, opts.platform, { nydus: 'only' })[0]!
    } catch {
      picked = selectManifest(doc, opts.platform, { nydus: 'exclude' })[0]!
    }
    index = { desc: top.descriptor, bytes: top.bytes, doc }
    const m = await source.getManifest(picked, { signal })
    bytesDownloaded += m.bytes.length
    manifestDesc = { ...brief(m.descriptor), mediaType: m.mediaType }
    manifestBytes = m.bytes
  } else if (isManifestMediaType(top.mediaType)) {
    manifestDesc = { ...brief(top.descriptor), mediaType: top.mediaType }
    manifestBytes = top.bytes
  } else {
    throw new NaiadError('NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE', `${opts.reference} is a ${top.mediaType}, not an image manifest or index`)
  }
  const manifest = parseManifest(manifestBytes, manifestDesc.mediaType)
  const configDesc = brief(manifest.config)
  const configStream = await source.getBlob(configDesc.digest, { signal, size: configDesc.size })
  const configChunks: Buffer[] = []
  for await (const c of configStream) configChunks.push(c as Buffer)
  const configBytes = Buffer.concat(configChunks)
  bytesDownloaded += configBytes.length
  const config = parseImageConfig(configBytes)
  const diffIds = config.rootfs.diff_ids
  const layers: PullDescriptor[] = manifest.layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size, ...(l.annotations !== undefined ? { annotations: l.annotations } : {}) }))
  if (diffIds.length !== layers.length) {
    throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', `${opts.reference}: the manifest has ${layers.length} layers but the config lists ${diffIds.length} diff ids`)
  }
  if (layers.length === 0) throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', `${opts.reference}: the image has no layers`)
  const chains = chainIds(diffIds)
  const topChain = chains[chains.length - 1]!
  // a merged index may offer an OCI manifest first for the same platform: name the chosen
  // manifest so containerd (ctr run) looks at the one that was unpacked
  const target = index !== undefined && !index.doc.manifests.some(isNydusIndexEntry) ? brief(index.desc) : manifestDesc
  deps.onProgress?.({ type: 'resolved', reference: opts.reference, digest: target.digest, mediaType: target.mediaType, layers: layers.length })

  // ---- lease ----
  const leaseId = `naiad-pull-${Date.now()}-${randomBytes(4).toString('hex')}`
  const expire = new Date(Date.now() + 3600_000).toISOString().replace(/\.\d+Z$/, 'Z')
  const lease = await ctd.createLease(leaseId, { [LABEL_GC_EXPIRE]: expire }, { signal })
  const call = { lease, ...(signal !== undefined ? { signal } : {}) }
  // downloads ahead of their layer stop when the pull fails or is aborted
  const aborter = new AbortController()
  const onAbort = (): void => { aborter.abort(signal?.reason) }
  signal?.addEventListener('abort', onAbort, { once: true })
  const inner = { lease, signal: aborter.signal }
  const results: PullLayerResult[] = []
  try {
    // ---- metadata blobs ----
    const putBlob = async (desc: PullDescriptor, bytes: Buffer, labels: Record<string, string>): Promise<void> => {
      const have = await ctd.contentInfo(desc.digest, call)
      if (have !== undefined) await ctd.setContentLabels(desc.digest, labels, call)
      else await ctd.writeContent(brief(desc), async () => bytes, labels, call)
    }
    await putBlob(configDesc, configBytes, { ...dist })
    const manifestLabels: Record<string, string> = { ...dist, 'containerd.io/gc.ref.content.config': configDesc.digest }
    layers.forEach((l, i) => { manifestLabels[`containerd.io/gc.ref.content.l.${i}`] = l.digest })
    await putBlob(manifestDesc, manifestBytes, manifestLabels)
    if (index !== undefined && target.digest === index.desc.digest) {
      const indexLabels: Record<string, string> = { ...dist }
      index.doc.manifests.forEach((m, i) => { if (m.digest === manifestDesc.digest) indexLabels[`containerd.io/gc.ref.content.m.${i}`] = m.digest })
      await putBlob(index.desc, index.bytes, indexLabels)
    }

    // ---- layers ----
    // Layer blobs that must be downloaded are fetched into the content store ahead of their
    // apply, up to DOWNLOAD_WINDOW at a time from the first layer that needed one on (as
    // containerd's unpacker starts fetching layers[i:] after the first non-remote layer).
    const downloads = new Map<string, Promise<boolean>>() // by digest: an image may repeat a layer
    const fetchBlob = async (i: number): Promise<boolean> => {
      const layer = layers[i]!
      let p = downloads.get(layer.digest)
      if (p === undefined) {
        p = (async (): Promise<boolean> => {
          const blobLabels = { ...dist, [LABEL_UNCOMPRESSED]: diffIds[i]! }
          if (await ctd.contentInfo(layer.digest, inner) !== undefined) {
            await ctd.setContentLabels(layer.digest, blobLabels, inner)
            return false
          }
          let n = 0
          const r = await ctd.writeContent(brief(layer), async () => {
            const s = await source.getBlob(layer.digest, { signal: aborter.signal, size: layer.size })
            s.on('data', (c: Buffer) => { n += c.length })
            return s
          }, blobLabels, inner)
          bytesDownloaded += n
          return r === 'written'
        })()
        p.catch(() => {}) // awaited (and reported) by the layer that needs it
        downloads.set(layer.digest, p)
      }
      return await p
    }

    const unpackLayer = async (i: number): Promise<LayerOutcome> => {
      const layer = layers[i]!
      const chainId = chains[i]!
      const parent = i === 0 ? '' : chains[i - 1]!
      if (await ctd.statSnapshot(opts.snapshotter, chainId, call)) return 'present'
      const labels = layerLabels(opts.reference, manifestDesc.digest, layers, i, chainId)
      let mounts: SnapshotMount[] | 'exists' | undefined
      let key = ''
      for (let attempt = 0; attempt < 3 && mounts === undefined; attempt++) {
        key = `extract-${process.hrtime.bigint()}-${randomBytes(6).toString('base64url')} ${chainId}`
        mounts = await ctd.prepareSnapshot(opts.snapshotter, key, parent, labels, call)
        if (mounts === 'exists') {
          if (await ctd.statSnapshot(opts.snapshotter, chainId, call)) return 'remote'
          // AlreadyExists on our random key (or a remote snapshot that vanished): try again
          deps.log?.warn({ key, chainId }, 'prepare answered AlreadyExists but the chain id is not there; retrying')
          mounts = undefined
        }
      }
      if (mounts === undefined || mounts === 'exists') {
        throw new NaiadError('NAIAD_PULL_CONTAINERD', `layer ${i + 1} (${layer.digest}): the ${opts.snapshotter} snapshotter answered AlreadyExists for ${chainId} but containerd cannot find that snapshot`)
      }
      try {
        for (let j = i + 1; j < Math.min(layers.length, i + DOWNLOAD_WINDOW); j++) fetchBlob(j).catch(() => {}) // awaited by layer j if it needs it
        const downloaded = await fetchBlob(i)
        let applied: string
        try {
          applied = await ctd.applyLayer(brief(layer), mounts, call)
        } catch (err) {
          throw new NaiadError('NAIAD_PULL_APPLY', `layer ${i + 1} (${layer.digest}, ${layer.mediaType}): containerd could not apply it onto the ${opts.snapshotter} snapshot: ${(err as Error).message}`, { cause: err })
        }
        if (applied !== diffIds[i]) {
          throw new NaiadError('NAIAD_PULL_DIFF_ID_MISMATCH', `layer ${i + 1} (${layer.digest}) unpacked to ${applied}, but the image config says ${diffIds[i]!}`)
        }
        const c = await ctd.commitSnapshot(opts.snapshotter, chainId, key, labels, call)
        if (c === 'exists') await ctd.removeSnapshot(opts.snapshotter, key, call).catch(() => {})
        return downloaded ? 'downloaded' : 'applied'
      } catch (err) {
        await ctd.removeSnapshot(opts.snapshotter, key, { lease }).catch(() => {})
        throw err
      }
    }

    for (let i = 0; i < layers.length; i++) {
      throwIfAborted(signal)
      const layer = layers[i]!
      const t0 = Date.now()
      const outcome = await unpackLayer(i)
      results.push({ digest: layer.digest, mediaType: layer.mediaType, size: layer.size, chainId: chains[i]!, outcome })
      deps.onProgress?.({ type: 'layer', index: i, count: layers.length, digest: layer.digest, size: layer.size, outcome, durationMs: Date.now() - t0 })
    }
    if (!await ctd.statSnapshot(opts.snapshotter, topChain, call)) {
      throw new NaiadError('NAIAD_PULL_CONTAINERD', `after unpacking, the ${opts.snapshotter} snapshotter has no snapshot ${topChain}`)
    }

    // ---- GC root, image record ----
    await ctd.setContentLabels(configDesc.digest, { [`containerd.io/gc.ref.snapshot.${opts.snapshotter}`]: topChain }, call)
    const action = await ctd.putImage(opts.reference, target, {}, call)
    deps.onProgress?.({ type: 'image', name: opts.reference, action })
  } finally {
    signal?.removeEventListener('abort', onAbort)
    aborter.abort(new NaiadError('NAIAD_ABORTED', 'the pull ended'))
    await ctd.deleteLease(lease).catch((err: unknown) => { deps.log?.warn({ err, lease }, 'could not delete the pull lease; it expires by itself') })
  }
  const skipped = results.filter((r) => r.outcome === 'present' || r.outcome === 'remote').length
  return {
    image: opts.reference,
    digest: target.digest,
    manifest: manifestDesc.digest,
    config: configDesc.digest,
    snapshotter: opts.snapshotter,
    chainId: topChain,
    layers: results,
    skipped,
    downloaded: results.filter((r) => r.outcome === 'downloaded').length,
    bytesDownloaded,
    durationMs: Date.now() - started
  }
}
