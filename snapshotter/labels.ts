/**
 * Snapshot label keys naiad reads or writes, and label validation. containerd forwards only keys
 * `containerd.io/snapshot.ref` and `containerd.io/snapshot/*` to a proxy snapshotter, so every key
 * of ours must start with `containerd.io/snapshot/`.
 */
import { NaiadError } from '../lib/errors/index.ts'
import type { Labels } from './snapshotter.ts'

/** Set by containerd's unpacker on Prepare: the ChainID the layer will be committed as. */
export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref'
/** Layer annotation (forwarded as label) of a Nydus data blob layer. */
export const LABEL_NYDUS_BLOB = 'containerd.io/snapshot/nydus-blob'
/** Layer annotation (forwarded as label) of the Nydus bootstrap layer. */
export const LABEL_NYDUS_BOOTSTRAP = 'containerd.io/snapshot/nydus-bootstrap'
/** Set by CRI (AppendInfoHandlerWrapper): the image reference, for registry access. */
export const LABEL_CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref'
/** stargz's image reference label (BuildKit, ctr-remote); the fallback when cri.image-ref is missing. */
export const LABEL_STARGZ_REFERENCE = 'containerd.io/snapshot/remote/stargz.reference'
/** Set by CRI: the layer digest. */
export const LABEL_CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest'

/** stargz's layer digest label (nerdctl, BuildKit); the fallback when cri.layer-digest is missing. */
export const LABEL_STARGZ_DIGEST = 'containerd.io/snapshot/remote/stargz.digest'

/** The layer digest named by a snapshot's labels (`sha256:…`): cri.layer-digest, then stargz.digest. */
export function layerDigestOf (labels: Labels): string | undefined {
  const v = labels[LABEL_CRI_LAYER_DIGEST] ?? labels[LABEL_STARGZ_DIGEST]
  return v === undefined || v === '' ? undefined : v
}

/** containerd's limit (labels/validate.go): key plus value at most 4096 bytes. */
export const MAX_LABEL_BYTES = 4096

export function validateLabels (labels: Labels | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  if (labels === undefined) return out
  for (const [k, v] of Object.entries(labels)) {
    if (k === '') throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', 'label key must not be empty')
    if (typeof v !== 'string') throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', `label ${k}: value must be a string`)
    const n = Buffer.byteLength(k) + Buffer.byteLength(v)
    if (n > MAX_LABEL_BYTES) throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', `label ${k}: key and value are ${n} bytes, more than ${MAX_LABEL_BYTES}`)
    out[k] = v
  }
  return out
}

/** True for the label value "true" (containerd's annotations are strings). */
export function isTrue (labels: Labels, key: string): boolean {
  return labels[key] === 'true'
}

/** The image reference named by a snapshot's labels: cri.image-ref, then stargz.reference. */
export function imageRefOf (labels: Labels): string | undefined {
  const v = labels[LABEL_CRI_IMAGE_REF] ?? labels[LABEL_STARGZ_REFERENCE]
  return v === undefined || v === '' ? undefined : v
}
