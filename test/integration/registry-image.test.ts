/**
 * Interop with real tools: an image built by umoci (busybox-static) into an OCI layout, pushed by
 * skopeo to docker-registry with htpasswd (Basic) auth, must read back through
 * RegistryImageStore exactly as LayoutImageStore reads the layout; and an image pushed by our
 * store must be readable by skopeo.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Digester, type Digest } from '../../lib/digest/index.ts'
import { parseImageConfig, parseManifest, type Descriptor } from '../../lib/oci/index.ts'
import { openImageStore, type ImageStore } from '../../lib/registry/index.ts'
import { buildUmociImage, haveRegistry, skopeoCopy, startRegistry, type RunningRegistry } from '../helpers/registry.ts'

const execFileP = promisify(execFile)
const tools = haveRegistry() && ['/usr/bin/skopeo', '/usr/bin/umoci', '/usr/bin/busybox', '/usr/bin/perl'].every(p => existsSync(p))

async function digestOfStream (s: Readable): Promise<{ digest: Digest, size: number }> {
  const d = new Digester()
  for await (const c of s) d.update(c as Buffer)
  return { size: d.size, digest: d.digest() }
}

/** Everything an image is made of, read through a store: manifest, config, layer digests. */
async function snapshot (store: ImageStore): Promise<{ root: Descriptor, manifest: Buffer, config: Buffer, layers: Array<{ digest: Digest, size: number }> }> {
  const root = await store.resolve()
  const { bytes } = await store.getManifest(root)
  const m = parseManifest(bytes)
  const config = Buffer.concat(await (await store.getBlob(m.config.digest)).toArray() as Buffer[])
  const layers = []
  for (const l of m.layers) {
    expect(await store.statBlob(l.digest)).toBe(l.size)
    layers.push(await digestOfStream(await store.getBlob(l.digest, { size: l.size })))
  }
  return { root, manifest: bytes, config, layers }
}

describe.skipIf(!tools)('umoci + skopeo images through RegistryImageStore (htpasswd auth)', () => {
  const user = 'naiad'
  const password = randomBytes(12).toString('hex')
  let reg: RunningRegistry
  let work: string
  let layout: string

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'naiad-image-it-'))
    layout = join(work, 'layout')
    await buildUmociImage({ layoutDir: layout, tag: 'latest', files: { '/etc/naiad-test': 'hello from naiad\n' } })
    reg = await startRegistry({ htpasswd: { user, password } })
    await skopeoCopy(`oci:${layout}:latest`, `docker://${reg.host}/it/busybox:latest`, { creds: `${user}:${password}` })
  })

  afterAll(async () => {
    await reg?.stop()
    if (work !== undefined) await rm(work, { recursive: true, force: true })
  })

  it('reads the same image from the registry as from the layout', async () => {
    const fromLayout = openImageStore(`oci:${layout}:latest`)
    const fromRegistry = openImageStore(`${reg.host}/it/busybox:latest`, { plainHttp: 'loopback', credentials: { username: user, password } })
    try {
      const a = await snapshot(fromLayout)
      const b = await snapshot(fromRegistry)
      expect(b.root).toEqual(a.root)
      expect(b.manifest.equals(a.manifest)).toBe(true)
      expect(b.config.equals(a.config)).toBe(true)
      expect(b.layers).toEqual(a.layers)
      const cfg = parseImageConfig(a.config)
      expect(cfg.config?.Cmd).toEqual(['/bin/sh'])
      expect(cfg.rootfs.diff_ids).toHaveLength(a.layers.length)
      expect(a.layers.length).toBeGreaterThan(0)

      // Range reads of a layer agree byte for byte.
      const layer = parseManifest(a.manifest).layers[0] as Descriptor
      const range = [100, 100 + 65_535] as const
      const ra = Buffer.concat(await (await fromLayout.getBlob(layer.digest, { range })).toArray() as Buffer[])
      const rb = Buffer.concat(await (await fromRegistry.getBlob(layer.digest, { range })).toArray() as Buffer[])
      expect(rb.length).toBe(65_536)
      expect(rb.equals(ra)).toBe(true)
    } finally {
      await fromLayout.close()
      await fromRegistry.close()
    }
  })

  it('is refused without credentials, and with wrong ones', async () => {
    const anon = openImageStore(`${reg.host}/it/busybox:latest`, { plainHttp: 'loopback', credentials: {} })
    const wrong = openImageStore(`${reg.host}/it/busybox:latest`, { plainHttp: 'loopback', credentials: { username: user, password: 'wrong' } })
    try {
      await expect(anon.resolve()).rejects.toMatchObject({ code: 'NAIAD_REG_UNAUTHORIZED' })
      await expect(wrong.resolve()).rejects.toMatchObject({ code: 'NAIAD_REG_UNAUTHORIZED' })
    } finally {
      await anon.close()
      await wrong.close()
    }
  })

  it('pushes the layout with our store (docker config.json credentials) and skopeo reads it back identically', async () => {
    const cfgDir = join(work, 'docker')
    await execFileP('mkdir', ['-p', cfgDir])
    await writeFile(join(cfgDir, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${user}:${password}`).toString('base64') } } }))
    const src = openImageStore(`oci:${layout}:latest`)
    const dst = openImageStore(`${reg.host}/it/copy:v1`, { plainHttp: 'loopback', env: { DOCKER_CONFIG: cfgDir }, chunkSize: 256 * 1024, monolithicMaxBytes: 64 * 1024 })
    try {
      const root = await src.resolve()
      const { bytes, mediaType } = await src.getManifest(root)
      const m = parseManifest(bytes)
      for (const d of [m.config, ...m.layers]) {
        const r = await dst.pushBlob(d, async () => await src.getBlob(d.digest), { mountFrom: ['it/busybox'] })
        expect(r.outcome).toBe('mounted')
      }
      // A fresh repository with no mount source: real uploads (chunked for the layer).
      const fresh = openImageStore(`${reg.host}/it/fresh:v1`, { plainHttp: 'loopback', env: { DOCKER_CONFIG: cfgDir }, chunkSize: 256 * 1024, monolithicMaxBytes: 64 * 1024 })
      for (const d of [m.config, ...m.layers]) {
        expect((await fresh.pushBlob(d, async () => await src.getBlob(d.digest))).outcome).toBe('uploaded')
      }
      expect(await fresh.putManifest(bytes, mediaType, 'v1')).toEqual(root)
      await fresh.close()
      expect(await dst.putManifest(bytes, mediaType, 'v1')).toEqual(root)

      const out = join(work, 'back')
      await skopeoCopy(`docker://${reg.host}/it/fresh:v1`, `oci:${out}:v1`, { creds: `${user}:${password}` })
      const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
      expect(index.manifests[0]?.digest).toBe(root.digest)
      const back = await snapshot(openImageStore(`oci:${out}:v1`))
      const orig = await snapshot(src)
      expect(back.layers).toEqual(orig.layers)
      expect(back.config.equals(orig.config)).toBe(true)
    } finally {
      await src.close()
      await dst.close()
    }
  })
})
