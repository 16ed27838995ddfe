import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { sha256 } from '../../../lib/digest/index.ts'
import { Annotation, canonicalJson, MediaType, parseIndex } from '../../../lib/oci/index.ts'
import { LayoutImageStore, openImageStore } from '../../../lib/registry/index.ts'

let dir: string
beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'naiad-layout-')) })
afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

async function readAll (s: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of s) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

function image (layer: Buffer): { config: Buffer, manifest: Buffer } {
  const config = canonicalJson({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(layer)] } })
  const manifest = canonicalJson({
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: sha256(config), size: config.length },
    layers: [{ mediaType: MediaType.OciLayer, digest: sha256(layer), size: layer.length }]
  })
  return { config, manifest }
}

async function tmpFiles (root: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(root, { recursive: true })) if (e.includes('.tmp-')) out.push(e)
  return out
}

describe('LayoutImageStore', () => {
  it('writes a layout others can read and reads it back', async () => {
    const store = openImageStore(`oci:${dir}/img:v1`)
    expect(store).toBeInstanceOf(LayoutImageStore)
    const layer = randomBytes(100_000)
    const { config, manifest } = image(layer)
    const r1 = await store.pushBlob({ mediaType: MediaType.OciLayer, digest: sha256(layer), size: layer.length }, () => Readable.from([layer.subarray(0, 10), layer.subarray(10)]))
    expect(r1.outcome).toBe('uploaded')
    expect((await store.pushBlob({ mediaType: MediaType.OciLayer, digest: sha256(layer), size: layer.length }, layer)).outcome).toBe('exists')
    await store.pushBlob({ mediaType: MediaType.OciConfig, digest: sha256(config), size: config.length }, config)
    const desc = await store.putManifest(manifest, MediaType.OciManifest, 'v1')
    expect(desc).toEqual({ mediaType: MediaType.OciManifest, digest: sha256(manifest), size: manifest.length })

    expect(JSON.parse(await readFile(join(dir, 'img', 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' })
    const index = parseIndex(await readFile(join(dir, 'img', 'index.json')))
    expect(index.manifests).toEqual([{ ...desc, annotations: { [Annotation.RefName]: 'v1' } }])
    expect((await readFile(join(dir, 'img', 'blobs', 'sha256', sha256(layer).slice(7)))).equals(layer)).toBe(true)

    expect(await store.resolve()).toEqual(desc)
    const got = await store.getManifest()
    expect(got.bytes.equals(manifest)).toBe(true)
    expect((await store.getManifest(desc)).mediaType).toBe(MediaType.OciManifest)
    expect(await store.statBlob(sha256(layer))).toBe(layer.length)
    expect(await store.statBlob(sha256('nope'))).toBeUndefined()
    expect((await readAll(await store.getBlob(sha256(layer)))).equals(layer)).toBe(true)
    expect((await readAll(await store.getBlob(sha256(layer), { range: [5, 14] }))).equals(layer.subarray(5, 15))).toBe(true)
    expect((await readAll(await store.getBlob(sha256(layer), { range: [99_990, 200_000] }))).equals(layer.subarray(99_990))).toBe(true)
    expect(await tmpFiles(join(dir, 'img'))).toEqual([])
    await store.close()
    await store.close()
    await expect(store.resolve()).rejects.toMatchObject({ code: 'NAIAD_CLOSED' })
  })

  it('re-tags, stores untagged manifests, and serialises concurrent index updates', async () => {
    const store = new LayoutImageStore({}, { reference: { kind: 'layout', dir } })
    const a = image(Buffer.from('a')).manifest
    const b = image(Buffer.from('b')).manifest
    await store.putManifest(a, MediaType.OciManifest, 'x')
    await store.putManifest(b, MediaType.OciManifest, 'x')
    expect((await store.resolve('x')).digest).toBe(sha256(b))
    await store.putManifest(a, MediaType.OciManifest, sha256(a))
    await store.putManifest(a, MediaType.OciManifest)
    expect(await store.tags()).toEqual(['x'])
    expect((await store.resolve(sha256(a))).digest).toBe(sha256(a))
    await Promise.all(Array.from({ length: 10 }, async (_, i) => await store.putManifest(i % 2 === 0 ? a : b, MediaType.OciManifest, `t${i}`)))
    expect((await store.tags()).sort()).toEqual(['t0', 't1', 't2', 't3', 't4', 't5', 't6', 't7', 't8', 't9', 'x'])
    await expect(store.putManifest(a, MediaType.OciManifest, sha256(b))).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    await expect(store.putManifest(Buffer.from('{}'), MediaType.OciManifest, 'bad')).rejects.toMatchObject({ code: 'NAIAD_OCI_BAD_MANIFEST' })
  })

  it('refuses content that does not match its descriptor and leaves nothing behind', async () => {
    const store = new LayoutImageStore({}, { reference: { kind: 'layout', dir } })
    const data = randomBytes(5000)
    const wrong = sha256('other')
    await expect(store.pushBlob({ mediaType: 'x/y', digest: wrong, size: data.length }, data)).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    await expect(store.pushBlob({ mediaType: 'x/y', digest: wrong, size: data.length }, () => Readable.from([data]))).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    await expect(store.pushBlob({ mediaType: 'x/y', digest: sha256(data), size: 10 }, () => Readable.from([data]))).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    expect(await store.statBlob(wrong)).toBeUndefined()
    expect(await store.statBlob(sha256(data))).toBeUndefined()
    expect(await tmpFiles(dir)).toEqual([])
  })

  it('detects a corrupted blob file while streaming it', async () => {
    const store = new LayoutImageStore({}, { reference: { kind: 'layout', dir } })
    const data = randomBytes(5000)
    await store.pushBlob({ mediaType: 'x/y', digest: sha256(data), size: data.length }, data)
    const path = store.blobPath(sha256(data))
    const bad = Buffer.from(data)
    bad[100] = (bad[100] ?? 0) ^ 1
    await writeFile(path, bad)
    await expect(readAll(await store.getBlob(sha256(data)))).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
  })

  it('reports missing and malformed layouts, tags and blobs', async () => {
    const missing = new LayoutImageStore({}, { reference: { kind: 'layout', dir: join(dir, 'none'), tag: 'v1' } })
    await expect(missing.resolve()).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
    await mkdir(join(dir, 'other'))
    await writeFile(join(dir, 'other', 'README'), 'not a layout')
    await expect(new LayoutImageStore({}, { reference: { kind: 'layout', dir: join(dir, 'other') } }).resolve('v1')).rejects.toMatchObject({ code: 'NAIAD_OCI_LAYOUT' })
    await mkdir(join(dir, 'bad'))
    await writeFile(join(dir, 'bad', 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}')
    await writeFile(join(dir, 'bad', 'index.json'), '{"schemaVersion":2,"manifests":[{"digest":"nope"}]}')
    await expect(new LayoutImageStore({}, { reference: { kind: 'layout', dir: join(dir, 'bad') } }).resolve('v1')).rejects.toMatchObject({ code: 'NAIAD_OCI_LAYOUT' })

    const store = new LayoutImageStore({}, { reference: { kind: 'layout', dir } })
    await store.putManifest(image(Buffer.from('a')).manifest, MediaType.OciManifest, 'v1')
    const e = await store.resolve('v2').catch((x: unknown) => x)
    expect(e).toMatchObject({ code: 'NAIAD_REG_NOT_FOUND', kind: 'NotFound' })
    expect((e as Error).message).toMatch(/no tag "v2"; it has "v1"/)
    await expect(store.getBlob(sha256('nope'))).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
    await expect(store.resolve(sha256('nope'))).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
  })

  it('resolves an untagged reference to the only image of a layout', async () => {
    const store = new LayoutImageStore({}, { reference: { kind: 'layout', dir } })
    const m = image(Buffer.from('a')).manifest
    await store.putManifest(m, MediaType.OciManifest, 'only')
    expect((await store.resolve()).digest).toBe(sha256(m))
  })

  it('aborts a blob stream', async () => {
    const store = new LayoutImageStore({}, { reference: { kind: 'layout', dir } })
    const data = randomBytes(4 * 1024 * 1024)
    await store.pushBlob({ mediaType: 'x/y', digest: sha256(data), size: data.length }, data)
    const ac = new AbortController()
    const s = await store.getBlob(sha256(data), { signal: ac.signal })
    const done = (async () => { for await (const _ of s) ac.abort() })()
    await expect(done).rejects.toMatchObject({ name: 'AbortError' })
  })
})
