/**
 * Caches of removed images are released: a real fsdaemon (started by the snapshotter) caches the
 * chunks a container reads; while a mount uses the blob its cache cannot be deleted
 * (NAIAD_FS_BLOB_IN_USE); removing the image's snapshots the way containerd's GC does (container,
 * then the bootstrap, then the data layers) deletes the blob's cache files; a blob that another
 * image still lists keeps its cache; Cleanup deletes cached blobs no image of the snapshotter
 * lists (left by a mount made outside it, or an image removed while the fsdaemon was down).
 * The Usage of a data layer committed remotely is what the fsdaemon caches of its blob.
 */
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { createLogger } from '../../lib/log/index.ts'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { LocalSnapshotter } from '../../snapshotter/local/overlay.ts'
import { FsdRemoteFilesystem } from '../../snapshotter/remote/fsd.ts'
import { buildImage, patternBytes, pushImage } from '../helpers/images.ts'
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts'
import { NAIAD_BIN } from '../helpers/daemon.ts'
import { fetchNydusImage, mountAll, unpackLikeContainerd, type NydusImage } from '../helpers/unpacker.ts'

const exec = promisify(execFile)

async function naiad (...argv: string[]): Promise<{ code: number, err: string }> {
  const err: string[] = []
  const w = new Writable({ write (c, _e, cb) { err.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w, stderr: w })
  return { code, err: err.join('') }
}

async function naiadOut (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []
  const err: string[] = []
  const w = (x: string[]): Writable => new Writable({ write (c, _e, cb) { x.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

/** Blob ids with cache files in `dir`. */
function cached (dir: string): string[] {
  if (!existsSync(dir)) return []
  return [...new Set(readdirSync(dir).map((n) => /^([0-9a-f]{64})\.blob\.data$/.exec(n)?.[1]).filter((x): x is string => x !== undefined))].sort()
}

describe.skipIf(!existsSync(NAIAD_BIN) || !existsSync('/dev/fuse'))('snapshotter: caches of removed images are released', () => {
  let reg: RunningRegistry
  let work: string
  let a: NydusImage
  let b: NydusImage
  let refA: string
  let refB: string
  let sn: LocalSnapshotter
  let fsd: FsdClient
  const log = createLogger({ service: 'test', level: 'silent' })

  beforeAll(async () => {
    reg = await startRegistry()
    work = mkdtempSync(join(tmpdir(), 'naiad-release-'))
    // two images: A has two data layers, B shares A's first layer and adds its own
    const shared = (r: string): void => { writeFileSync(join(r, 'shared.bin'), patternBytes(2 << 20, 3)) }
    const imgA = buildImage({ workDir: join(work, 'imgA'), layers: [shared, (r) => { writeFileSync(join(r, 'a.bin'), patternBytes(2 << 20, 5)) }] })
    const imgB = buildImage({ workDir: join(work, 'imgB'), layers: [shared, (r) => { writeFileSync(join(r, 'b.txt'), 'image b\n') }] })
    pushImage(imgA, reg.host, 'rel/a:oci')
    pushImage(imgB, reg.host, 'rel/b:oci')
    refA = `${reg.host}/rel/a:nydus`
    refB = `${reg.host}/rel/b:nydus`
    for (const [src, dst] of [[`${reg.host}/rel/a:oci`, refA], [`${reg.host}/rel/b:oci`, refB]] as const) {
      const c = await naiad('convert', '--source', src, '--target', dst)
      expect(c.code, c.err).toBe(0)
    }
    a = await fetchNydusImage(refA)
    b = await fetchNydusImage(refB)
    const remote = new FsdRemoteFilesystem({ log }, {
      socket: join(work, 'fsd.sock'),
      start: true,
      binary: NAIAD_BIN,
      config: '',
      cacheDir: join(work, 'cache'),
      stateDir: join(work, 'state'),
      logFile: join(work, 'fsd.log'),
      startTimeoutMs: 20_000,
      plainHttp: false,
      stopOnClose: true
    })
    sn = new LocalSnapshotter({ log, remote }, { root: join(work, 'root') })
    fsd = new FsdClient({ socketPath: join(work, 'fsd.sock') })
  }, 120_000)

  afterAll(async () => {
    await sn?.close()
    if (work !== undefined) {
      for (const l of readFileSync('/proc/self/mounts', 'utf8').split('\n').reverse()) {
        const mp = l.split(' ')[1]
        if (mp?.startsWith(work) === true) await exec('umount', ['-l', mp]).catch(() => {})
      }
      rmSync(work, { recursive: true, force: true })
    }
    await reg?.stop()
  })

  /** Runs a container of the image that reads `files`, then removes the container. */
  async function runContainer (top: string, name: string, files: string[]): Promise<void> {
    const mounts = await sn.prepare(name, top)
    const mnt = join(work, name)
    const umount = await mountAll(mounts, mnt)
    try {
      for (const f of files) await exec('cat', [join(mnt, f)], { maxBuffer: 16 << 20, encoding: 'buffer' })
    } finally {
      await umount()
    }
  }

  /**
   * Removes an image's snapshots like containerd's GC: top (bootstrap) first, then each parent,
   * stopping at a layer another image's chain still builds on (the GC keeps it too).
   */
  async function removeImage (chainIds: string[]): Promise<void> {
    for (const id of [...chainIds].reverse()) {
      const err = await sn.remove(id).then(() => undefined, (e: Error & { code?: string }) => e)
      if (err?.code === 'NAIAD_SNAP_HAS_CHILDREN') return
      if (err !== undefined && err.code !== 'NAIAD_SNAP_NOT_FOUND') throw err
    }
  }

  it('a blob in use keeps its cache; removing an image releases the caches only it used', async () => {
    const cacheDir = join(work, 'cache')
    const ua = await unpackLikeContainerd(sn, a, refA, join(work, 'applyA'))
    const ub = await unpackLikeContainerd(sn, b, refB, join(work, 'applyB'))
    expect(ua.skipped).toBe(2)
    await runContainer(ua.chainId, 'ca', ['shared.bin', 'a.bin'])
    await runContainer(ub.chainId, 'cb', ['b.txt', 'shared.bin'])
    const blobIdsA = a.layers.filter((l) => l.annotations['containerd.io/snapshot/nydus-blob'] === 'true').map((l) => l.digest.slice('sha256:'.length))
    const blobIdsB = b.layers.filter((l) => l.annotations['containerd.io/snapshot/nydus-blob'] === 'true').map((l) => l.digest.slice('sha256:'.length))
    const sharedBlob = blobIdsA.find((x) => blobIdsB.includes(x))
    expect(sharedBlob, 'the two images share their first layer').toBeDefined()
    const onlyA = blobIdsA.filter((x) => x !== sharedBlob)
    const onlyB = blobIdsB.filter((x) => x !== sharedBlob)
    expect(cached(cacheDir)).toEqual([...blobIdsA, ...onlyB].sort())
    // Usage of a data layer committed remotely: the bytes the fsdaemon caches of its blob
    const layerA = a.layers.findIndex((l) => l.digest === `sha256:${onlyA[0]!}`)
    const usageA = await sn.usage(ua.chainIds[layerA]!)
    expect(usageA.size).toBeGreaterThanOrEqual(2 << 20)
    expect(usageA.size).toBe((await fsd.blobs()).find((x) => x.blobId === onlyA[0])?.bytes)

    // containers still exist, so the images stay mounted: the caches cannot go
    const err = await fsd.removeBlob(onlyA[0]!).then(() => undefined, (e: Error & { code?: string }) => e)
    expect(err?.code).toBe('NAIAD_FS_BLOB_IN_USE')
    expect((await fsd.blobs()).find((x) => x.blobId === onlyA[0])?.users).toBe(1)
    // the same through the CLI
    const sock = join(work, 'fsd.sock')
    const listed = await naiadOut('fsctl', 'blobs', '--socket', sock)
    expect(listed.code).toBe(0)
    expect((JSON.parse(listed.out) as Array<{ blobId: string }>).map((x) => x.blobId).sort()).toEqual([...blobIdsA, ...onlyB].sort())
    const rm = await naiadOut('fsctl', 'rm-blob', '--socket', sock, `sha256:${onlyA[0]!}`)
    expect(rm.code).not.toBe(0)
    expect(rm.err).toContain('NAIAD_FS_BLOB_IN_USE')

    await sn.remove('ca')
    await removeImage(ua.chainIds)
    // A's own blob is gone; the shared one stays for B
    expect(cached(cacheDir)).toEqual([sharedBlob!, ...onlyB].sort())

    await sn.remove('cb')
    await removeImage(ub.chainIds)
    expect(cached(cacheDir)).toEqual([])
    expect((await fsd.list()).length).toBe(0)
  }, 120_000)

  it('Cleanup deletes cached blobs no image of the snapshotter lists', async () => {
    const cacheDir = join(work, 'cache')
    // a mount made outside the snapshotter (naiad fsd mount), read, then unmounted: its cache stays
    const mp = join(work, 'outside')
    await fsd.mount({ mountpoint: mp, image: refA })
    await exec('cat', [join(mp, 'a.bin')], { maxBuffer: 16 << 20, encoding: 'buffer' })
    await fsd.unmount(mp)
    expect(cached(cacheDir).length).toBeGreaterThan(0)
    // image B unpacked (not running): its blobs are listed by a bootstrap snapshot, so they stay
    const ub = await unpackLikeContainerd(sn, b, refB, join(work, 'applyB2'))
    await runContainer(ub.chainId, 'cb2', ['b.txt'])
    await sn.remove('cb2')
    const blobIdsB = b.layers.filter((l) => l.annotations['containerd.io/snapshot/nydus-blob'] === 'true').map((l) => l.digest.slice('sha256:'.length))
    await sn.cleanup()
    const left = cached(cacheDir)
    expect(left.length).toBeGreaterThan(0)
    for (const id of left) expect(blobIdsB).toContain(id)
    await removeImage(ub.chainIds)
    await sn.cleanup()
    expect(cached(cacheDir)).toEqual([])
  }, 120_000)
})
