/**
 * RegistryClient against the real registry (Debian docker-registry, distribution 2.8), with the
 * counting proxy in between to see exactly what went over the wire.
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sha256 } from '../../lib/digest/index.ts'
import { canonicalJson, MediaType, parseIndex, parseManifest } from '../../lib/oci/index.ts'
import { RegistryClient } from '../../lib/registry/index.ts'
import { haveRegistry, startCountingProxy, startRegistry, type CountingProxy, type RunningRegistry } from '../helpers/registry.ts'

const MiB = 1024 * 1024

async function readAll (s: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of s) parts.push(c as Buffer)
  return Buffer.concat(parts)
}

describe.skipIf(!haveRegistry())('RegistryClient against docker-registry 2.8', () => {
  let reg: RunningRegistry
  let proxy: CountingProxy
  let client: RegistryClient

  const small = randomBytes(100 * 1024)
  const big = randomBytes(5 * MiB)
  const config = canonicalJson({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(small), sha256(big)] } })
  const smallDesc = { mediaType: MediaType.OciLayer, digest: sha256(small), size: small.length }
  const bigDesc = { mediaType: MediaType.OciLayer, digest: sha256(big), size: big.length }
  const configDesc = { mediaType: MediaType.OciConfig, digest: sha256(config), size: config.length }

  beforeAll(async () => {
    reg = await startRegistry()
    proxy = await startCountingProxy(reg.host)
    client = new RegistryClient({}, { endpoint: proxy.host, plainHttp: 'loopback', chunkSize: MiB, monolithicMaxBytes: 256 * 1024, retryBaseDelayMs: 20 })
  })

  afterAll(async () => {
    await client?.close()
    await proxy?.stop()
    await reg?.stop()
    await reg?.stop()
  })

  it('answers the API check', async () => {
    await client.ping()
  })

  it('pushes a small blob monolithically (POST + PUT)', async () => {
    proxy.reset()
    const r = await client.pushBlob('it/app', smallDesc, small)
    expect(r.outcome).toBe('uploaded')
    expect(proxy.requests().map(q => q.method)).toEqual(['HEAD', 'POST', 'PUT'])
    expect(await client.statBlob('it/app', smallDesc.digest)).toBe(small.length)
  })

  it('pushes a 5 MiB stream in 1 MiB PATCHes', async () => {
    proxy.reset()
    const r = await client.pushBlob('it/app', bigDesc, () => Readable.from((function * () { for (let o = 0; o < big.length; o += 300_000) yield big.subarray(o, o + 300_000) })()))
    expect(r.outcome).toBe('uploaded')
    const reqs = proxy.requests()
    expect(reqs.map(q => q.method)).toEqual(['HEAD', 'POST', 'PATCH', 'PATCH', 'PATCH', 'PATCH', 'PATCH', 'PUT'])
    expect(reqs.filter(q => q.method === 'PATCH').map(q => q.contentRange)).toEqual(
      [0, 1, 2, 3, 4].map(i => `${i * MiB}-${(i + 1) * MiB - 1}`))
    expect(await client.statBlob('it/app', bigDesc.digest)).toBe(big.length)
  })

  it('skips a blob the repository already has', async () => {
    proxy.reset()
    expect((await client.pushBlob('it/app', bigDesc, big)).outcome).toBe('exists')
    expect(proxy.requests().map(q => q.method)).toEqual(['HEAD'])
  })

  it('mounts a blob from another repository', async () => {
    proxy.reset()
    expect(await client.statBlob('it/other', bigDesc.digest)).toBeUndefined()
    const r = await client.pushBlob('it/other', bigDesc, () => { throw new Error('must not read the source') }, { mountFrom: ['it/app'] })
    expect(r.outcome).toBe('mounted')
    expect(proxy.requests().filter(q => q.method === 'PATCH' || q.method === 'PUT')).toEqual([])
    expect(await client.statBlob('it/other', bigDesc.digest)).toBe(big.length)
  })

  it('rejects a source that does not match its digest, storing nothing', async () => {
    const wrong = { ...bigDesc, digest: sha256('not the content') }
    await expect(client.pushBlob('it/app', wrong, () => Readable.from([big]))).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
    expect(await client.statBlob('it/app', wrong.digest)).toBeUndefined()
  })

  it('puts a manifest and an index, resolves the tag, reads by digest', async () => {
    await client.pushBlob('it/app', configDesc, config)
    const manifest = canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciManifest, config: configDesc, layers: [smallDesc, bigDesc] })
    const mDesc = await client.putManifest('it/app', sha256(manifest), manifest, MediaType.OciManifest)
    const index = canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [{ ...mDesc, platform: { os: 'linux', architecture: 'amd64' } }] })
    const iDesc = await client.putManifest('it/app', 'v1', index, MediaType.OciIndex)

    expect(await client.headManifest('it/app', 'v1')).toEqual(iDesc)
    const gotIndex = await client.getManifest('it/app', 'v1')
    expect(gotIndex.bytes.equals(index)).toBe(true)
    expect(parseIndex(gotIndex.bytes, gotIndex.mediaType).manifests[0]?.digest).toBe(mDesc.digest)
    const gotManifest = await client.getManifest('it/app', mDesc.digest)
    expect(gotManifest.mediaType).toBe(MediaType.OciManifest)
    expect(parseManifest(gotManifest.bytes).layers.map(l => l.digest)).toEqual([smallDesc.digest, bigDesc.digest])
    expect(await client.listTags('it/app')).toEqual(['v1'])

    // A Docker schema 2 manifest under another tag.
    const docker = canonicalJson({ schemaVersion: 2, mediaType: MediaType.DockerManifest, config: { ...configDesc, mediaType: MediaType.DockerConfig }, layers: [{ ...smallDesc, mediaType: MediaType.DockerLayerGzip }] })
    await client.putManifest('it/app', 'docker', docker, MediaType.DockerManifest)
    expect((await client.headManifest('it/app', 'docker')).mediaType).toBe(MediaType.DockerManifest)

    await expect(client.getManifest('it/app', 'nope')).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
    await expect(client.getManifest('it/none', 'v1')).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
  })

  it('reads exact byte ranges, and only those bytes cross the wire', async () => {
    for (const [s, e] of [[0, 0], [1, 4096], [MiB - 10, MiB + 10], [big.length - 100, big.length - 1]] as const) {
      proxy.reset()
      const got = await readAll(await client.getBlob('it/app', bigDesc.digest, { range: [s, e] }))
      expect(got.equals(big.subarray(s, e + 1)), `${s}-${e}`).toBe(true)
      expect(proxy.bytesServed()).toBe(e - s + 1)
      expect(proxy.requests()).toEqual([expect.objectContaining({ method: 'GET', range: `bytes=${s}-${e}`, status: 206 })])
    }
    // A range past the end is clamped by the registry.
    const tail = await readAll(await client.getBlob('it/app', bigDesc.digest, { range: [big.length - 5, big.length + 1000] }))
    expect(tail.equals(big.subarray(big.length - 5))).toBe(true)
  })

  it('reads whole blobs digest-verified and reports sizes', async () => {
    expect((await readAll(await client.getBlob('it/app', bigDesc.digest, { size: big.length }))).equals(big)).toBe(true)
    expect(await client.statBlob('it/app', smallDesc.digest)).toBe(small.length)
    expect(await client.statBlob('it/app', sha256('absent'))).toBeUndefined()
    await expect(client.getBlob('it/app', sha256('absent'))).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
  })

  it('deletes a manifest (delete is enabled)', async () => {
    const m = canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] })
    const d = await client.putManifest('it/del', 'gone', m, MediaType.OciIndex)
    await client.deleteManifest('it/del', d.digest)
    await expect(client.getManifest('it/del', d.digest)).rejects.toMatchObject({ code: 'NAIAD_REG_NOT_FOUND' })
  })
})

describe.skipIf(!haveRegistry())('startRegistry helper', () => {
  it('runs with htpasswd auth, stops by pid, removes its directory, and stops twice safely', async () => {
    const r = await startRegistry({ htpasswd: { user: 'u', password: 'p@ss word' } })
    expect(r.host).toMatch(/^127\.0\.0\.1:\d+$/)
    expect((await fetch(`${r.url}/v2/`)).status).toBe(401)
    const auth = `Basic ${Buffer.from('u:p@ss word').toString('base64')}`
    expect((await fetch(`${r.url}/v2/`, { headers: { authorization: auth } })).status).toBe(200)
    await Promise.all([r.stop(), r.stop()])
    await r.stop()
    expect(() => process.kill(r.pid, 0)).toThrow()
    expect(existsSync(r.dir)).toBe(false)
  })

  it('runs two registries side by side', async () => {
    const [a, b] = await Promise.all([startRegistry(), startRegistry()])
    try {
      expect(a.host).not.toBe(b.host)
      expect((await fetch(`${a.url}/v2/`)).status).toBe(200)
      expect((await fetch(`${b.url}/v2/`)).status).toBe(200)
    } finally {
      await a.stop()
      await b.stop()
    }
  })
})
