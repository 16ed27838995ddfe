/**
 * The ImageStore contract, run against both implementations: a registry repository (on the fake
 * registry) and an OCI layout directory. They must behave alike.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterEach, describe, expect, it } from 'vitest'
import { sha256 } from '../../../lib/digest/index.ts'
import { canonicalJson, MediaType } from '../../../lib/oci/index.ts'
import { openImageStore, type ImageStore } from '../../../lib/registry/index.ts'
import { startFakeRegistry } from '../../helpers/fake-registry.ts'

async function readAll (s: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of s) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c() })

const factories: Record<string, () => Promise<ImageStore>> = {
  registry: async () => {
    const f = await startFakeRegistry()
    cleanups.push(async () => await f.stop())
    const s = openImageStore(`${f.host}/conf/app:v1`, { plainHttp: 'loopback', credentials: {}, retryBaseDelayMs: 5, chunkSize: 64 * 1024, monolithicMaxBytes: 32 * 1024 })
    cleanups.push(async () => await s.close())
    return s
  },
  layout: async () => {
    const dir = await mkdtemp(join(tmpdir(), 'naiad-conf-'))
    cleanups.push(async () => await rm(dir, { recursive: true, force: true }))
    const s = openImageStore(`oci:${dir}:v1`)
    cleanups.push(async () => await s.close())
    return s
  }
}

for (const [name, make] of Object.entries(factories)) {
  describe(`ImageStore contract: ${name}`, () => {
    it('round-trips an image: blobs, manifest, index, tag', async () => {
      const store = await make()
      const layer = randomBytes(200_000)
      const config = canonicalJson({ architecture: 'arm64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(layer)] } })
      const layerDesc = { mediaType: MediaType.OciLayerGzip, digest: sha256(layer), size: layer.length }
      const configDesc = { mediaType: MediaType.OciConfig, digest: sha256(config), size: config.length }
      expect(await store.statBlob(layerDesc.digest)).toBeUndefined()
      expect((await store.pushBlob(layerDesc, () => Readable.from([layer]))).outcome).toBe('uploaded')
      expect((await store.pushBlob(layerDesc, layer)).outcome).toBe('exists')
      await store.pushBlob(configDesc, config)
      const manifest = canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: configDesc, layers: [layerDesc] })
      const mDesc = await store.putManifest(manifest, MediaType.OciManifest)
      expect(mDesc).toEqual({ mediaType: MediaType.OciManifest, digest: sha256(manifest), size: manifest.length })
      const index = canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [{ ...mDesc, platform: { os: 'linux', architecture: 'arm64' } }] })
      const iDesc = await store.putManifest(index, MediaType.OciIndex, 'v1')

      expect(await store.resolve()).toEqual(iDesc)
      expect(await store.resolve('v1')).toEqual(iDesc)
      expect((await store.resolve(mDesc.digest)).digest).toBe(mDesc.digest)
      const gotIndex = await store.getManifest()
      expect(gotIndex.mediaType).toBe(MediaType.OciIndex)
      expect(gotIndex.bytes.equals(index)).toBe(true)
      const gotManifest = await store.getManifest(mDesc)
      expect(gotManifest.bytes.equals(manifest)).toBe(true)
      expect(gotManifest.descriptor).toEqual(mDesc)
      expect((await readAll(await store.getBlob(layerDesc.digest))).equals(layer)).toBe(true)
      expect((await readAll(await store.getBlob(layerDesc.digest, { range: [1000, 1999] }))).equals(layer.subarray(1000, 2000))).toBe(true)
      expect(await store.statBlob(layerDesc.digest)).toBe(layer.length)
    })

    it('fails alike: not found, wrong size, wrong content', async () => {
      const store = await make()
      const data = randomBytes(1000)
      await expect(store.resolve('missing')).rejects.toMatchObject({ kind: 'NotFound' })
      await expect(store.getBlob(sha256('missing'))).rejects.toMatchObject({ kind: 'NotFound' })
      await expect(store.pushBlob({ mediaType: 'a/b', digest: sha256('x'), size: data.length }, data)).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
      const m = canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] })
      const d = await store.putManifest(m, MediaType.OciIndex, 'v1')
      await expect(store.getManifest({ ...d, size: d.size + 1 })).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
      await store.close()
      await store.close()
      await expect(store.statBlob(sha256('x'))).rejects.toMatchObject({ code: 'NAIAD_CLOSED' })
    })
  })
}
