/**
 * The remote-snapshot protocol of the local snapshotter, without a registry: Nydus data layers are
 * committed remotely (AlreadyExists, found by containerd's List filter, labels and parent kept);
 * a data layer without an image reference is prepared normally; a container on a bootstrap whose
 * image can be neither mounted nor downloaded fails with NAIAD_SNAP_REMOTE and leaves nothing; and
 * with the remote path configured, the whole conformance suite still passes for ordinary layers.
 */
import { mkdtemp, rm, mkdir, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { nullLogger } from '../../../lib/log/index.ts'
import { LocalSnapshotter } from '../../../snapshotter/local/overlay.ts'
import { FsdRemoteFilesystem } from '../../../snapshotter/remote/fsd.ts'
import { RegistryMaterializer } from '../../../snapshotter/remote/materialize.ts'
import type { SnapshotInfo } from '../../../snapshotter/snapshotter.ts'
import type { RemoteFilesystem, RemoteImage } from '../../../snapshotter/remote/filesystem.ts'
import { snapshotterConformance } from '../../conformance/snapshotter.ts'

const REF = 'containerd.io/snapshot.ref'
const BLOB = 'containerd.io/snapshot/nydus-blob'
const BOOT = 'containerd.io/snapshot/nydus-bootstrap'
const IMAGE = 'containerd.io/snapshot/cri.image-ref'

function deadRemote (dir: string): FsdRemoteFilesystem {
  // a real client of a socket nobody serves, not allowed to start a daemon
  return new FsdRemoteFilesystem({ log: nullLogger() }, { socket: join(dir, 'none.sock'), start: false, binary: '', config: '', cacheDir: '', stateDir: '', logFile: join(dir, 'fsd.log'), startTimeoutMs: 1000, plainHttp: false, stopOnClose: false })
}

async function list (sn: LocalSnapshotter, filter: string): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = []
  for await (const i of sn.walk({ filters: [filter] })) out.push(i)
  return out
}

snapshotterConformance('local with the remote path configured (ordinary layers)', async ({ root }) => {
  const snapshotter = new LocalSnapshotter({ log: nullLogger(), remote: deadRemote(root), materializer: new RegistryMaterializer({ log: nullLogger() }, { plainHttp: false }) }, { root })
  return { snapshotter, cleanup: async () => { await snapshotter.close() } }
}, { mounts: true })

describe('remote-snapshot protocol', () => {
  let dir = ''
  let sn: LocalSnapshotter | undefined
  afterEach(async () => {
    await sn?.close()
    sn = undefined
    if (dir !== '') await rm(dir, { recursive: true, force: true })
  })

  const open = async (materialize = false): Promise<LocalSnapshotter> => {
    dir = await mkdtemp(join(tmpdir(), 'naiad-remoteproto-'))
    sn = new LocalSnapshotter({ log: nullLogger(), remote: deadRemote(dir), ...(materialize ? { materializer: new RegistryMaterializer({ log: nullLogger() }, { plainHttp: false }) } : {}) }, { root: join(dir, 'root') })
    return sn
  }

  it('a Nydus data layer is committed under its ref (labels and parent kept) and answers AlreadyExists; containerd\'s List filter finds it', async () => {
    const s = await open()
    const l1 = { [REF]: 'sha256:c1', [BLOB]: 'true', [IMAGE]: 'registry.example/app:nydus' }
    await expect(s.prepare('default/1/extract-1 sha256:c1', '', { labels: l1 })).rejects.toMatchObject({ code: 'NAIAD_SNAP_ALREADY_EXISTS' })
    const l2 = { [REF]: 'sha256:c2', [BLOB]: 'true', [IMAGE]: 'registry.example/app:nydus' }
    await expect(s.prepare('default/2/extract-2 sha256:c2', 'sha256:c1', { labels: l2 })).rejects.toMatchObject({ code: 'NAIAD_SNAP_ALREADY_EXISTS' })
    const found = await list(s, `labels."${REF}"==sha256:c2,parent=="sha256:c1"`)
    expect(found.map((i) => [i.name, i.parent, i.kind])).toEqual([['sha256:c2', 'sha256:c1', 'committed']])
    expect(found[0]!.labels).toEqual(l2)
    // the extract key is gone; preparing the same layer again (a second pull) is AlreadyExists again
    await expect(s.stat('default/2/extract-2 sha256:c2')).rejects.toMatchObject({ code: 'NAIAD_SNAP_NOT_FOUND' })
    await expect(s.prepare('default/3/extract-3 sha256:c2', 'sha256:c1', { labels: l2 })).rejects.toMatchObject({ code: 'NAIAD_SNAP_ALREADY_EXISTS' })
    expect(await s.usage('sha256:c2')).toEqual({ size: 0, inodes: 0 })
  })

  it('a Nydus data layer without an image reference is prepared normally (containerd will download it)', async () => {
    const s = await open()
    const mounts = await s.prepare('extract sha256:c1', '', { labels: { [REF]: 'sha256:c1', [BLOB]: 'true' } })
    expect(mounts[0]!.type).toBe('bind')
    expect((await s.stat('extract sha256:c1')).kind).toBe('active')
  })

  it('the stargz reference label is the fallback image reference', async () => {
    const s = await open()
    await expect(s.prepare('extract sha256:c1', '', { labels: { [REF]: 'sha256:c1', [BLOB]: 'true', 'containerd.io/snapshot/remote/stargz.reference': 'r.example/a:b' } })).rejects.toMatchObject({ code: 'NAIAD_SNAP_ALREADY_EXISTS' })
  })

  it('without a remote filesystem and a materializer, Nydus labels mean nothing (plain layers)', async () => {
    dir = await mkdtemp(join(tmpdir(), 'naiad-remoteproto-'))
    sn = new LocalSnapshotter({ log: nullLogger() }, { root: join(dir, 'root') })
    const mounts = await sn.prepare('extract sha256:c1', '', { labels: { [REF]: 'sha256:c1', [BLOB]: 'true', [IMAGE]: 'r.example/a:b' } })
    expect(mounts[0]!.type).toBe('bind')
  })

  async function bootstrapChain (s: LocalSnapshotter, image: string | undefined): Promise<string> {
    const img = image !== undefined ? { [IMAGE]: image } : {}
    await s.prepare('x1 sha256:c1', '', { labels: { [REF]: 'sha256:c1', [BLOB]: 'true', ...img } }).catch(() => {})
    if (image === undefined) await s.commit('sha256:c1', 'x1 sha256:c1')
    const boot = { [REF]: 'sha256:b', [BOOT]: 'true', ...img }
    const m = await s.prepare('x2 sha256:b', 'sha256:c1', { labels: boot })
    const fs = m[0]!.type === 'bind' ? m[0]!.source : m[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length)
    await mkdir(join(fs, 'image'))
    await writeFile(join(fs, 'image', 'image.boot'), 'not a bootstrap')
    await s.commit('sha256:b', 'x2 sha256:b', { labels: boot })
    return 'sha256:b'
  }

  it('a bootstrap layer committed without labels keeps its Nydus and image labels', async () => {
    const s = await open()
    const boot = { [REF]: 'sha256:b', [BOOT]: 'true', [IMAGE]: 'r.example/a:b' }
    await s.prepare('x sha256:b', '', { labels: boot })
    await s.commit('sha256:b', 'x sha256:b')
    expect((await s.stat('sha256:b')).labels).toEqual({ [BOOT]: 'true', [IMAGE]: 'r.example/a:b' })
  })

  it('a container whose image can be neither mounted nor downloaded fails NAIAD_SNAP_REMOTE, and no snapshot is left', async () => {
    const s = await open(true)
    const top = await bootstrapChain(s, '127.0.0.1:9/app:nydus')
    const err = await s.prepare('container', top).then(() => undefined, (e: unknown) => e) as Error & { code: string }
    expect(err.code).toBe('NAIAD_SNAP_REMOTE')
    expect(err.message).toMatch(/lazy mount failed .*cannot reach the fsdaemon/)
    expect(err.message).toMatch(/full download failed .*NAIAD_FMT|full download failed/)
    await expect(s.stat('container')).rejects.toMatchObject({ code: 'NAIAD_SNAP_NOT_FOUND' })
    await expect(s.view('v', top)).rejects.toMatchObject({ code: 'NAIAD_SNAP_REMOTE' })
    // the bootstrap itself is removable (GC)
    await s.remove(top)
  })

  it('a bootstrap with no image reference anywhere in its chain: a clear error naming the labels', async () => {
    const s = await open(true)
    const top = await bootstrapChain(s, undefined)
    const err = await s.prepare('container', top).then(() => undefined, (e: unknown) => e) as Error & { code: string }
    expect(err.code).toBe('NAIAD_SNAP_REMOTE')
    expect(err.message).toMatch(/cri\.image-ref/)
  })

  it('a full download of one image does not hold up the containers of another (per-image locks)', async () => {
    dir = await mkdtemp(join(tmpdir(), 'naiad-remoteproto-'))
    // unit-level stand-ins: a mount that works for image "fast" and fails for "slow", and a full
    // download of "slow" that waits until the test lets it finish
    const mounted = new Set<string>()
    const remote: RemoteFilesystem = {
      mount: async (mp: string, image: RemoteImage) => {
        if (image.image.includes('slow')) throw new Error('no lazy path for this image')
        await mkdir(mp, { recursive: true })
        mounted.add(mp)
      },
      alive: async (mp: string) => mounted.has(mp),
      list: async () => [...mounted].map((mountpoint) => ({ mountpoint, labels: {} })),
      unmount: async (mp: string) => { mounted.delete(mp) },
      close: async () => {}
    }
    let finish!: () => void
    const gate = new Promise<void>((resolve) => { finish = resolve })
    let started!: () => void
    const downloading = new Promise<void>((resolve) => { started = resolve })
    const materializer = {
      materialize: async (d: string): Promise<void> => {
        started()
        await gate
        await mkdir(d, { recursive: true })
        await writeFile(join(d, 'hello'), 'slow\n')
      }
    }
    sn = new LocalSnapshotter({ log: nullLogger(), remote, materializer }, { root: join(dir, 'root') })
    const s = sn
    const chain = async (name: string): Promise<string> => {
      const img = { [IMAGE]: `r.example/${name}:nydus` }
      await s.prepare(`x1 ${name}`, '', { labels: { [REF]: `sha256:${name}-data`, [BLOB]: 'true', ...img } }).catch(() => {})
      const boot = { [REF]: `sha256:${name}-boot`, [BOOT]: 'true', ...img }
      const m = await s.prepare(`x2 ${name}`, `sha256:${name}-data`, { labels: boot })
      const fs = m[0]!.type === 'bind' ? m[0]!.source : m[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length)
      await mkdir(join(fs, 'image'))
      await writeFile(join(fs, 'image', 'image.boot'), 'not read by these stand-ins')
      await s.commit(`sha256:${name}-boot`, `x2 ${name}`, { labels: boot })
      return `sha256:${name}-boot`
    }
    const slow = await chain('slow')
    const fast = await chain('fast')
    const slowPrepare = s.prepare('c-slow', slow)
    await downloading
    // while "slow" is being downloaded in full, a container of "fast" is prepared, and removed
    const m = await s.prepare('c-fast', fast)
    expect(m[0]!.options.find((o) => o.startsWith('lowerdir='))).toMatch(/\/mnt$/)
    await s.remove('c-fast')
    expect(mounted.size).toBe(0)
    let slowDone = false
    void slowPrepare.then(() => { slowDone = true })
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(slowDone).toBe(false)
    finish()
    const ms = await slowPrepare
    expect(ms[0]!.options.find((o) => o.startsWith('lowerdir='))).toMatch(/\/rootfs$/)
    // Cleanup (all images) waits for nothing now and leaves both images usable
    await s.cleanup()
    await s.remove('c-slow')
  })
})
