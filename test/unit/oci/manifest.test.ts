import { describe, expect, it } from 'vitest'
import { sha256 } from '../../../lib/digest/index.ts'
import {
  canonicalJson, canonicalJsonString, layerCompression, MediaType, parseImageConfig, parseIndex, parseManifest, parseManifestOrIndex
} from '../../../lib/oci/index.ts'

const D1 = sha256('config')
const D2 = sha256('layer')

function manifest (over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: D1, size: 10 },
    layers: [{ mediaType: MediaType.OciLayerGzip, digest: D2, size: 20, annotations: { a: 'b' } }],
    ...over
  }
}

function errOf (fn: () => unknown): { code?: string, message: string } {
  try { fn() } catch (e) { return e as { code: string, message: string } }
  throw new Error('did not throw')
}

describe('parseManifest', () => {
  it('accepts OCI and Docker manifests and keeps unknown fields', () => {
    const m = parseManifest(JSON.stringify(manifest({ extra: { x: 1 } })))
    expect(m.mediaType).toBe(MediaType.OciManifest)
    expect(m.layers[0]?.digest).toBe(D2)
    expect(m['extra']).toEqual({ x: 1 })
    const dm = parseManifest(Buffer.from(JSON.stringify(manifest({ mediaType: MediaType.DockerManifest }))), `${MediaType.DockerManifest}; charset=utf-8`)
    expect(dm.mediaType).toBe(MediaType.DockerManifest)
  })

  it('fills in a missing mediaType from the declared type or the shape', () => {
    const noMt = manifest()
    delete noMt['mediaType']
    expect(parseManifest(JSON.stringify(noMt)).mediaType).toBe(MediaType.OciManifest)
    expect(parseManifest(JSON.stringify(noMt), 'application/json').mediaType).toBe(MediaType.OciManifest)
    expect(parseManifest(JSON.stringify(noMt), MediaType.DockerManifest).mediaType).toBe(MediaType.DockerManifest)
  })

  const badCases: Array<[string, unknown, RegExp]> = [
    ['not JSON', '{', /not JSON/],
    ['an array', '[]', /JSON object/],
    ['schemaVersion 3', manifest({ schemaVersion: 3 }), /^schemaVersion: expected 2/],
    ['no config', manifest({ config: undefined }), /^config: expected a descriptor/],
    ['bad config digest', manifest({ config: { mediaType: MediaType.OciConfig, digest: 'sha256:xyz', size: 1 } }), /^config\.digest: /],
    ['negative size', manifest({ layers: [{ mediaType: MediaType.OciLayer, digest: D2, size: -1 }] }), /^layers\[0\]\.size: expected a non-negative integer/],
    ['fractional size', manifest({ layers: [{ mediaType: MediaType.OciLayer, digest: D2, size: 1.5 }] }), /^layers\[0\]\.size/],
    ['layers not array', manifest({ layers: {} }), /^layers: expected an array/],
    ['bad media type', manifest({ layers: [{ mediaType: 'nope', digest: D2, size: 1 }] }), /^layers\[0\]\.mediaType: not a media type/],
    ['annotation not string', manifest({ annotations: { a: 1 } }), /^annotations\["a"\]: expected a string/],
    ['layer annotation not string', manifest({ layers: [{ mediaType: MediaType.OciLayer, digest: D2, size: 1, annotations: { x: true } }] }), /^layers\[0\]\.annotations\["x"\]/],
    ['mediaType disagreeing with declared', manifest({ mediaType: MediaType.DockerManifest }), /^mediaType: the document says/],
    ['index given to parseManifest', { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }, /expected an image manifest, got an index/]
  ]
  for (const [name, doc, re] of badCases) {
    it(`rejects ${name} with NAIAD_OCI_BAD_MANIFEST naming the field`, () => {
      const e = errOf(() => parseManifest(typeof doc === 'string' ? doc : JSON.stringify(doc), name.includes('declared') ? MediaType.OciManifest : undefined))
      expect(e.code).toBe('NAIAD_OCI_BAD_MANIFEST')
      expect(e.message).toMatch(re)
    })
  }

  it('rejects unknown and schema 1 media types as unsupported', () => {
    expect(errOf(() => parseManifest(JSON.stringify(manifest({ mediaType: 'application/vnd.example+json' }))))).toMatchObject({ code: 'NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE' })
    expect(errOf(() => parseManifest(JSON.stringify(manifest()), 'application/vnd.example+json'))).toMatchObject({ code: 'NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE' })
    const s1 = errOf(() => parseManifest(JSON.stringify({ schemaVersion: 1, name: 'x', fsLayers: [] })))
    expect(s1).toMatchObject({ code: 'NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE' })
    expect(s1.message).toMatch(/schema 1/)
    expect(errOf(() => parseManifest('{}', MediaType.DockerSchema1Signed))).toMatchObject({ code: 'NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE' })
  })

  it('rejects non-UTF-8 and oversized documents', () => {
    expect(errOf(() => parseManifest(Buffer.from([0x7b, 0xff, 0x7d])))).toMatchObject({ code: 'NAIAD_OCI_BAD_MANIFEST' })
    expect(errOf(() => parseManifest(Buffer.alloc(4 * 1024 * 1024 + 1, 0x20)))).toMatchObject({ code: 'NAIAD_OCI_BAD_MANIFEST' })
  })
})

describe('parseIndex / parseManifestOrIndex', () => {
  const idx = { schemaVersion: 2, manifests: [{ mediaType: MediaType.OciManifest, digest: D1, size: 5, platform: { os: 'linux', architecture: 'amd64' } }] }
  it('parses an index without mediaType (umoci index.json) and Docker lists', () => {
    expect(parseIndex(JSON.stringify(idx)).mediaType).toBe(MediaType.OciIndex)
    expect(parseIndex(JSON.stringify({ ...idx, mediaType: MediaType.DockerManifestList })).mediaType).toBe(MediaType.DockerManifestList)
    const either = parseManifestOrIndex(JSON.stringify(idx))
    expect(either.kind).toBe('index')
    expect(parseManifestOrIndex(JSON.stringify(manifest())).kind).toBe('manifest')
  })
  it('validates platforms of entries', () => {
    const e = errOf(() => parseIndex(JSON.stringify({ ...idx, manifests: [{ mediaType: MediaType.OciManifest, digest: D1, size: 5, platform: { os: 'linux' } }] })))
    expect(e).toMatchObject({ code: 'NAIAD_OCI_BAD_MANIFEST' })
    expect(e.message).toMatch(/^manifests\[0\]\.platform\.architecture: expected a string/)
    expect(errOf(() => parseIndex(JSON.stringify(manifest())))).toMatchObject({ code: 'NAIAD_OCI_BAD_MANIFEST' })
  })
})

describe('parseImageConfig', () => {
  const cfg = { architecture: 'amd64', os: 'linux', config: { Env: ['A=1'], Cmd: ['/bin/sh'], Entrypoint: null, Labels: null }, rootfs: { type: 'layers', diff_ids: [D2] }, history: [{ created_by: 'x', empty_layer: true }], custom: 1 }
  it('accepts a config and keeps unknown fields', () => {
    const c = parseImageConfig(JSON.stringify(cfg))
    expect(c.rootfs.diff_ids).toEqual([D2])
    expect(c['custom']).toBe(1)
  })
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ ...cfg, architecture: undefined }, /^architecture: expected a string/],
    [{ ...cfg, rootfs: { type: 'x', diff_ids: [] } }, /^rootfs\.type: expected "layers"/],
    [{ ...cfg, rootfs: { type: 'layers', diff_ids: ['nope'] } }, /^rootfs\.diff_ids\[0\]: /],
    [{ ...cfg, config: { Env: 'A=1' } }, /^config\.Env: expected an array of strings/],
    [{ ...cfg, history: [{ empty_layer: 'yes' }] }, /^history\[0\]\.empty_layer: expected a boolean/]
  ]
  for (const [doc, re] of bad) {
    it(`rejects ${re.source}`, () => {
      const e = errOf(() => parseImageConfig(JSON.stringify(doc)))
      expect(e.code).toBe('NAIAD_OCI_BAD_MANIFEST')
      expect(e.message).toMatch(re)
    })
  }
})

describe('media types', () => {
  it('knows layer compressions and refuses non-tar layers', () => {
    expect(layerCompression(MediaType.OciLayerGzip)).toBe('gzip')
    expect(layerCompression(MediaType.DockerLayerGzip)).toBe('gzip')
    expect(layerCompression(MediaType.OciLayerZstd)).toBe('zstd')
    expect(layerCompression(MediaType.OciLayer)).toBe('none')
    expect(errOf(() => layerCompression(MediaType.NydusBlob))).toMatchObject({ code: 'NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE' })
  })
})

describe('canonicalJson', () => {
  it('sorts keys at every level and drops undefined', () => {
    expect(canonicalJsonString({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: 'x' }, u: undefined })).toBe('{"a":{"c":"x","d":[3,{"y":2,"z":1}]},"b":1}')
  })
  it('is deterministic whatever the insertion order', () => {
    const a = canonicalJson({ x: 1, y: [1, 2], z: { q: 'é' } })
    const b = canonicalJson({ z: { q: 'é' }, y: [1, 2], x: 1 })
    expect(a.equals(b)).toBe(true)
    expect(JSON.parse(a.toString('utf8'))).toEqual({ x: 1, y: [1, 2], z: { q: 'é' } })
  })
  it('refuses values JSON cannot hold', () => {
    expect(() => canonicalJson({ a: Number.NaN })).toThrow(/cannot represent/)
    expect(() => canonicalJson({ a: 1n })).toThrow(/cannot represent/)
  })
})
