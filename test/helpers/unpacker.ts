/**
 * Drives a Snapshotter exactly as containerd 1.6's unpacker (pkg/unpack, remote-snapshot labels as
 * the CRI plugin sends them) does for one image, without containerd: for each layer, Stat(chainID);
 * Prepare("extract-… <chainID>", parent, labels) with the layer's containerd.io/snapshot/*
 * annotations, containerd.io/snapshot.ref and the four cri.* labels; on AlreadyExists, List with the
 * filter `labels."containerd.io/snapshot.ref"==<chainID>,parent=="<parent>"` must find it; otherwise
 * the layer blob is applied into the returned mounts (real mount + tar) and committed with the same
 * labels. All mounting and extracting runs in child processes (async).
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Digest } from '../../lib/digest/index.ts'
import { hasCode } from '../../lib/errors/index.ts'
import { parseManifestOrIndex } from '../../lib/oci/parse.ts'
import { openImageStore } from '../../lib/registry/open.ts'
import type { Mount, Snapshotter } from '../../snapshotter/snapshotter.ts'

const exec = promisify(execFile)

export interface NydusLayer {
  digest: Digest
  size: number
  mediaType: string
  annotations: Record<string, string>
  diffId: string
}

export interface NydusImage {
  /** Where blobs are fetched from for applying (not the reference given to the snapshotter). */
  source: string
  manifestDigest: string
  layers: NydusLayer[]
}

/** The manifest, config diff_ids and layer annotations of an image in a registry. */
export async function fetchNydusImage (ref: string): Promise<NydusImage> {
  const store = openImageStore(ref, { plainHttp: true })
  try {
    const m = await store.getManifest()
    const parsed = parseManifestOrIndex(m.bytes, m.mediaType)
    if (parsed.kind !== 'manifest') throw new Error(`${ref} is an index`)
    const parts: Buffer[] = []
    for await (const c of await store.getBlob(parsed.manifest.config.digest)) parts.push(c as Buffer)
    const config = JSON.parse(Buffer.concat(parts).toString('utf8')) as { rootfs: { diff_ids: string[] } }
    return {
      source: ref,
      manifestDigest: m.descriptor.digest,
      layers: parsed.manifest.layers.map((l, i) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType, annotations: { ...(l.annotations ?? {}) }, diffId: config.rootfs.diff_ids[i] as string }))
    }
  } finally {
    await store.close()
  }
}

export function chainIds (diffIds: string[]): string[] {
  const out: string[] = []
  for (const d of diffIds) {
    const prev = out[out.length - 1]
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`)
  }
  return out
}

/** Mounts containerd-style mounts at `target` (created); returns the unmount. */
export async function mountAll (mounts: readonly Mount[], target: string): Promise<() => Promise<void>> {
  mkdirSync(target, { recursive: true })
  const done: string[] = []
  for (const m of mounts) {
    if (m.type === 'bind') {
      await exec('mount', ['--bind', m.source, target])
      if (m.options.includes('ro')) await exec('mount', ['-o', 'remount,bind,ro', target])
    } else {
      await exec('mount', ['-t', m.type, m.source, target, '-o', m.options.join(',')])
    }
    done.push(target)
  }
  return async () => { for (const t of done.reverse()) await exec('umount', [t]) }
}

export interface Unpacked {
  chainId: string
  chainIds: string[]
  /** Layers answered AlreadyExists (remote). */
  skipped: number
  /** Layers applied. */
  applied: number
}

/** Unpacks `image` into `sn` like containerd's unpacker with the CRI labels; `imageRef` goes into cri.image-ref. */
export async function unpackLikeContainerd (sn: Snapshotter, image: NydusImage, imageRef: string, workDir: string, opts: { criLabels?: boolean } = {}): Promise<Unpacked> {
  const chains = chainIds(image.layers.map((l) => l.diffId))
  let parent = ''
  let skipped = 0
  let applied = 0
  for (const [i, layer] of image.layers.entries()) {
    const chainId = chains[i] as string
    const exists = await sn.stat(chainId).then(() => true, (err: unknown) => { if (hasCode(err, 'NAIAD_SNAP_NOT_FOUND')) return false; throw err })
    if (exists) { parent = chainId; continue }
    const labels: Record<string, string> = { 'containerd.io/snapshot.ref': chainId }
    for (const [k, v] of Object.entries(layer.annotations)) if (k.startsWith('containerd.io/snapshot/')) labels[k] = v
    if (opts.criLabels !== false) {
      labels['containerd.io/snapshot/cri.image-ref'] = imageRef
      labels['containerd.io/snapshot/cri.layer-digest'] = layer.digest
      labels['containerd.io/snapshot/cri.manifest-digest'] = image.manifestDigest
      labels['containerd.io/snapshot/cri.image-layers'] = image.layers.slice(i).map((l) => l.digest).join(',')
    }
    const key = `extract-${Date.now()}-${i} ${chainId}`
    let mounts: Mount[]
    try {
      mounts = await sn.prepare(key, parent, { labels })
    } catch (err) {
      if (!hasCode(err, 'NAIAD_SNAP_ALREADY_EXISTS')) throw err
      const found = []
      for await (const s of sn.walk({ filters: [`labels."containerd.io/snapshot.ref"==${chainId},parent=="${parent}"`] })) found.push(s)
      if (found.length !== 1 || found[0]?.name !== chainId || found[0].kind !== 'committed') throw new Error(`layer ${i}: AlreadyExists, but List found ${JSON.stringify(found)}`)
      skipped++
      parent = chainId
      continue
    }
    const store = openImageStore(image.source, { plainHttp: true })
    const blob = join(workDir, `layer-${i}.tgz`)
    mkdirSync(workDir, { recursive: true })
    try {
      const parts: Buffer[] = []
      for await (const c of await store.getBlob(layer.digest)) parts.push(c as Buffer)
      writeFileSync(blob, Buffer.concat(parts))
    } finally {
      await store.close()
    }
    const target = join(workDir, `apply-${i}`)
    const unmount = await mountAll(mounts, target)
    try {
      await exec('tar', ['-xzf', blob, '-C', target])
    } finally {
      await unmount()
    }
    await sn.commit(chainId, key, { labels })
    applied++
    parent = chainId
  }
  return { chainId: parent, chainIds: chains, skipped, applied }
}
