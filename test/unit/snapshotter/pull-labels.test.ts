/**
 * The labels `naiad pull` sends with each unpack Prepare, checked against containerd 1.6's rules:
 * chain IDs (identity.ChainIDs), the layer annotations forwarded (only containerd.io/snapshot/*),
 * and the four cri.* labels of AppendInfoHandlerWrapper, with cri.image-layers cut at whole
 * digests before containerd's 4096-byte label limit.
 */
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { chainIds, imageLayersLabel, layerLabels } from '../../../snapshotter/pull/pull.ts'

const d = (n: number): string => `sha256:${createHash('sha256').update(String(n)).digest('hex')}`
const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip'

describe('naiad pull labels', () => {
  it('chain IDs: the first is the diff id, then sha256("<parent> <diff id>")', () => {
    const ids = chainIds([d(1), d(2), d(3)])
    expect(ids[0]).toBe(d(1))
    const c2 = `sha256:${createHash('sha256').update(`${d(1)} ${d(2)}`).digest('hex')}`
    expect(ids[1]).toBe(c2)
    expect(ids[2]).toBe(`sha256:${createHash('sha256').update(`${c2} ${d(3)}`).digest('hex')}`)
  })

  it('Prepare labels: snapshot.ref, snapshot annotations only, the four cri labels', () => {
    const layers = [
      { mediaType: 'application/vnd.oci.image.layer.nydus.blob.v1', digest: d(1), size: 1, annotations: { 'containerd.io/snapshot/nydus-blob': 'true', 'org.opencontainers.image.title': 'x' } },
      { mediaType: LAYER, digest: d(2), size: 1, annotations: { 'containerd.io/snapshot/nydus-bootstrap': 'true' } }
    ]
    expect(layerLabels('r.example/a/b:1', d(9), layers, 0, d(7))).toEqual({
      'containerd.io/snapshot.ref': d(7),
      'containerd.io/snapshot/nydus-blob': 'true',
      'containerd.io/snapshot/cri.image-ref': 'r.example/a/b:1',
      'containerd.io/snapshot/cri.layer-digest': d(1),
      'containerd.io/snapshot/cri.manifest-digest': d(9),
      'containerd.io/snapshot/cri.image-layers': `${d(1)},${d(2)}`
    })
    // the last layer lists only itself
    expect(layerLabels('r.example/a/b:1', d(9), layers, 1, d(8))['containerd.io/snapshot/cri.image-layers']).toBe(d(2))
  })

  it('cri.image-layers stops at the last whole digest within 4096 bytes (key + value)', () => {
    const layers = Array.from({ length: 100 }, (_, i) => ({ mediaType: LAYER, digest: d(i), size: 1 }))
    const v = imageLayersLabel(layers)
    expect('containerd.io/snapshot/cri.image-layers'.length + v.length).toBeLessThanOrEqual(4096)
    const items = v.split(',')
    expect(items.length).toBe(Math.floor((4096 - 'containerd.io/snapshot/cri.image-layers'.length + 1) / 72))
    expect(items).toEqual(layers.slice(0, items.length).map((l) => l.digest))
    // non-layer descriptors are not listed
    expect(imageLayersLabel([{ mediaType: 'application/vnd.oci.image.config.v1+json', digest: d(1), size: 1 }, layers[0]!])).toBe(d(0))
  })
})
