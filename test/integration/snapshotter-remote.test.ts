/**
 * The snapshotter's remote (lazy Nydus) path with real parts: a multi-layer image built, converted
 * by naiad and pushed to a private registry (reached through a counting proxy); a real fsdaemon
 * process started by the snapshotter; real FUSE and overlay mounts. The Snapshotter is driven
 * exactly as containerd's unpacker drives it (test/helpers/unpacker.ts): data layers come back
 * AlreadyExists and are found by List filter, the bootstrap layer is applied into the returned
 * mounts and committed, and a container snapshot on top gives an overlay on the FUSE mount.
 *
 * The counting proxy runs in this process: while a daemon reads through it, only async child
 * processes (mount, cat, the tree listing) are used here.
 */
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { createLogger } from '../../lib/log/index.ts'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { LocalSnapshotter } from '../../snapshotter/local/overlay.ts'
import { FsdRemoteFilesystem, type FsdRemoteOptions } from '../../snapshotter/remote/fsd.ts'
import { RegistryMaterializer } from '../../snapshotter/remote/materialize.ts'
import { SnapshotsClient } from '../../snapshotter/grpc/client.ts'
import { buildImage, patternBytes, pushImage } from '../helpers/images.ts'
import { startCountingProxy, startRegistry, type CountingProxy, type RunningRegistry } from '../helpers/registry.ts'
import { listTree, listTreeAsync } from '../helpers/erofs.ts'
import { NAIAD_BIN, startNaiad, type Daemon } from '../helpers/daemon.ts'
import { fetchNydusImage, mountAll, unpackLikeContainerd, type NydusImage } from '../helpers/unpacker.ts'

const exec = promisify(execFile)

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

/** A zombie (exited, not yet reaped by its new parent) counts as gone. */
function pidAlive (pid: number): boolean {
  try { process.kill(pid, 0) } catch { return false }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch { return false }
}

const BIG = 24 * 1024 * 1024

describe.skipIf(!existsSync(NAIAD_BIN) || !existsSync('/dev/fuse'))('snapshotter remote path (lazy Nydus)', () => {
  let reg: RunningRegistry
  let proxy: CountingProxy
  let work: string
  let rootfs: string
  let image: NydusImage
  let imageRef: string
  const fsdPids = new Set<number>()
  const daemons: Daemon[] = []
  const log = createLogger({ service: 'test', level: 'silent' })

  beforeAll(async () => {
    reg = await startRegistry()
    proxy = await startCountingProxy(reg.host)
    work = mkdtempSync(join(tmpdir(), 'naiad-snapremote-'))
    const img = buildImage({
      workDir: join(work, 'img'),
      layers: [
        (r) => {
          mkdirSync(join(r, 'bin'))
          execFileSync('cp', ['/bin/busybox', join(r, 'bin', 'busybox')])
          execFileSync('ln', ['-s', 'busybox', join(r, 'bin', 'sh')])
          mkdirSync(join(r, 'etc'))
          writeFileSync(join(r, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n')
          writeFileSync(join(r, 'etc', 'gone'), 'deleted in layer 2\n')
          execFileSync('mknod', [join(r, 'etc', 'null'), 'c', '1', '3'])
          execFileSync('mkfifo', [join(r, 'etc', 'fifo')])
          execFileSync('setfattr', ['-n', 'user.note', '-v', 'kept', join(r, 'etc', 'passwd')])
        },
        (r) => {
          mkdirSync(join(r, 'data'))
          writeFileSync(join(r, 'data', 'big.bin'), patternBytes(BIG, 3))
          writeFileSync(join(r, 'data', 'small.txt'), 'a small file\n')
          execFileSync('ln', [join(r, 'data', 'small.txt'), join(r, 'data', 'small-link.txt')])
          execFileSync('chown', ['1234:5678', join(r, 'data', 'small.txt')])
        },
        (r) => {
          mkdirSync(join(r, 'etc'))
          writeFileSync(join(r, 'etc', '.wh.gone'), '')
          writeFileSync(join(r, 'etc', 'hostname'), 'naiad\n')
          execFileSync('ln', ['-s', '../data/small.txt', join(r, 'etc', 'link')])
        }
      ]
    })
    execFileSync('umoci', ['unpack', '--image', `${img.layout}:${img.tag}`, join(work, 'bundle')], { stdio: 'ignore' })
    rootfs = join(work, 'bundle', 'rootfs')
    pushImage(img, reg.host, 'app/remote:v1')
    const c = await naiad('convert', '--source', `${reg.host}/app/remote:v1`, '--target', `${reg.host}/app/remote:nydus`)
    expect(c.code, c.err).toBe(0)
    // blobs are read through the counting proxy: the image reference names it
    imageRef = `${proxy.host}/app/remote:nydus`
    image = await fetchNydusImage(`${reg.host}/app/remote:nydus`)
    expect(image.layers.length).toBe(4) // three data blobs and the bootstrap
  }, 180_000)

  afterAll(async () => {
    for (const d of daemons) await d.kill().catch(() => {})
    for (const pid of fsdPids) { try { process.kill(pid, 'SIGKILL') } catch {} }
    if (work !== undefined) {
      for (const l of readFileSync('/proc/self/mounts', 'utf8').split('\n').reverse()) {
        const mp = l.split(' ')[1]
        if (mp?.startsWith(work) === true) await exec('umount', ['-l', mp]).catch(() => {})
      }
    }
    await proxy?.stop()
    await reg?.stop()
    if (work !== undefined) rmSync(work, { recursive: true, force: true })
  })

  function fsdOptions (name: string, over: Partial<FsdRemoteOptions> = {}): FsdRemoteOptions {
    return {
      socket: join(work, name, 'fsd.sock'),
      start: true,
      binary: NAIAD_BIN,
      config: '',
      cacheDir: join(work, name, 'cache'),
      stateDir: join(work, name, 'fsd-state'),
      logFile: join(work, name, 'fsd.log'),
      startTimeoutMs: 20_000,
      plainHttp: false,
      stopOnClose: true,
      ...over
    }
  }

  it('in process: data layers are skipped, the container gets an overlay on the FUSE mount, reads are lazy, the last user releases the mount', async () => {
    const o = fsdOptions('inproc')
    const remote = new FsdRemoteFilesystem({ log }, o)
    const sn = new LocalSnapshotter({ log, remote }, { root: join(work, 'inproc', 'root') })
    try {
      proxy.reset()
      const top = await unpackLikeContainerd(sn, image, imageRef, join(work, 'inproc', 'apply'))
      // only the small bootstrap layer was downloaded (by the "unpacker"), no data blob
      expect(top.skipped).toBe(3)
      const fsd = new FsdClient({ socketPath: o.socket })
      expect(existsSync(o.socket)).toBe(false) // the fsdaemon starts only when a container needs it
      const mounts = await sn.prepare('container-1', top.chainId)
      expect(mounts).toHaveLength(1)
      expect(mounts[0]!.type).toBe('overlay')
      const mnt = join(work, 'inproc', 'c1')
      const served = await fsd.list()
      expect(served).toHaveLength(1)
      fsdPids.add((await fsd.daemon()).pid)
      // the control API's mount request: bootstrap goes with exactly one of image or blobDir
      await expect(fsd.mount({ mountpoint: join(work, 'inproc', 'x'), bootstrap: 'relative/image.boot', image: imageRef })).rejects.toMatchObject({ code: 'NAIAD_CLI_USAGE' })
      await expect(fsd.mount({ mountpoint: join(work, 'inproc', 'x'), bootstrap: '/x/image.boot', image: imageRef, blobDir: '/x' })).rejects.toMatchObject({ code: 'NAIAD_CLI_USAGE' })
      await expect(fsd.mount({ mountpoint: join(work, 'inproc', 'x'), bootstrap: join(work, 'inproc', 'missing.boot'), image: imageRef })).rejects.toMatchObject({ code: 'NAIAD_FS_MOUNT' })
      // the same request again answers the existing mount (idempotent per mountpoint)
      const again = await fsd.mount({ mountpoint: served[0]!.mountpoint, bootstrap: served[0]!.bootstrap!, image: imageRef, labels: served[0]!.labels })
      expect(again.mountpoint).toBe(served[0]!.mountpoint)
      expect(await fsd.list()).toHaveLength(1)
      expect(mounts[0]!.options).toContain(`lowerdir=${served[0]!.mountpoint}`)
      const umount = await mountAll(mounts, mnt)
      try {
        expect((await exec('cat', [join(mnt, 'data', 'small.txt')])).stdout).toBe('a small file\n')
        expect(proxy.bytesServed()).toBeLessThan(BIG / 4)
        // the whole tree equals the source image (the overlay root's own attributes come from its upper dir)
        expect(await listTreeAsync(mnt, '--skip-root-attrs')).toBe(listTree(rootfs, '--skip-root-attrs'))
        // the container's layer is writable
        await exec('sh', ['-c', `echo written > ${join(mnt, 'etc', 'new')}`])
        expect((await exec('cat', [join(mnt, 'etc', 'new')])).stdout).toBe('written\n')
        // a second container of the same image shares the FUSE mount
        const m2 = await sn.prepare('container-2', top.chainId)
        expect(m2[0]!.options).toContain(`lowerdir=${served[0]!.mountpoint}`)
        expect(await fsd.list()).toHaveLength(1)
        // mounts() is idempotent
        expect(await sn.mounts('container-2')).toEqual(m2)
        await sn.remove('container-2')
        // a view of the image is a read-only bind of the FUSE mount
        const v = await sn.view('view-1', top.chainId)
        expect(v).toEqual([{ type: 'bind', source: served[0]!.mountpoint, options: ['ro', 'rbind'] }])
        const vmnt = join(work, 'inproc', 'v1')
        const unview = await mountAll(v, vmnt)
        try {
          expect((await exec('cat', [join(vmnt, 'etc', 'hostname')])).stdout).toBe('naiad\n')
          await expect(exec('sh', ['-c', `echo x > ${join(vmnt, 'etc', 'new')}`])).rejects.toMatchObject({ stderr: expect.stringMatching(/Read-only/) })
        } finally {
          await unview()
        }
        await sn.remove('view-1')
        expect(await fsd.list()).toHaveLength(1)
      } finally {
        await umount()
      }
      await sn.remove('container-1')
      expect(await fsd.list()).toEqual([]) // released with its last user
      // GC removes the image snapshots, children first; cleanup finds nothing left over
      for (const k of [...top.chainIds].reverse()) await sn.remove(k)
      await sn.cleanup()
    } finally {
      await sn.close()
    }
    for (let i = 0; i < 100 && [...fsdPids].some(pidAlive); i++) await new Promise((resolve) => setTimeout(resolve, 50))
    expect([...fsdPids].some(pidAlive), readFileSync(o.logFile, 'utf8').slice(-3000)).toBe(false) // stopOnClose
  }, 120_000)

  it('over gRPC: kill -9 of the snapshotter leaves the mount serving and the restart re-adopts it; kill -9 of the fsdaemon: the snapshotter starts a new one that adopts the FUSE connection, the running container reads on; both killed: the restart remounts at start-up; cleanup unmounts strays', async () => {
    const base = join(work, 'grpc')
    mkdirSync(base, { recursive: true })
    const o = fsdOptions('grpc')
    const sock = join(base, 'snap.sock')
    const cfg = join(base, 'snapshotter.toml')
    writeFileSync(cfg, [
      '[root]', `dir = "${join(base, 'root')}"`,
      '[socket]', `path = "${sock}"`,
      '[fsdaemon]', `socket = "${o.socket}"`, `binary = "${NAIAD_BIN}"`, `cache_dir = "${o.cacheDir}"`, `state_dir = "${o.stateDir}"`, `log_file = "${o.logFile}"`
    ].join('\n') + '\n')
    const start = async (...extra: string[]): Promise<Daemon> => {
      const d = startNaiad(['snapshotter', '--config', cfg, '--log-level', 'info', ...extra])
      daemons.push(d)
      await d.waitFor('ready', 30_000)
      return d
    }
    let d = await start()
    const c = new SnapshotsClient({}, { socket: sock })
    const fsd = new FsdClient({ socketPath: o.socket })
    expect(existsSync(o.socket)).toBe(false) // start-up (cleanup, recover) starts no fsdaemon while no image needs one
    const top = await unpackLikeContainerd(c, image, imageRef, join(base, 'apply'))
    const m1 = await c.prepare('c1', top.chainId)
    const pid1 = (await fsd.daemon()).pid
    fsdPids.add(pid1)
    const mnt1 = join(base, 'c1')
    const um1 = await mountAll(m1, mnt1)
    try {
      expect((await exec('cat', [join(mnt1, 'etc', 'hostname')])).stdout).toBe('naiad\n')
      // kill -9 of the snapshotter: the fsdaemon (its own session) keeps serving the container
      await d.kill()
      expect(pidAlive(pid1)).toBe(true)
      const sum = (await exec('sha256sum', [join(mnt1, 'data', 'big.bin')])).stdout.split(' ')[0]
      expect(sum).toBe(execFileSync('sha256sum', [join(rootfs, 'data', 'big.bin')], { encoding: 'utf8' }).split(' ')[0])
      // the restarted snapshotter re-adopts the running daemon and its mount
      d = await start()
      await d.waitFor('image lower directory checked after start')
      expect((await fsd.daemon()).pid).toBe(pid1)
      const m2 = await c.prepare('c2', top.chainId)
      expect(m2).toEqual([{ ...m1[0]!, options: m2[0]!.options }])
      expect(m2[0]!.options.find((x) => x.startsWith('lowerdir='))).toBe(m1[0]!.options.find((x) => x.startsWith('lowerdir=')))
      await c.remove('c2')
      // kill -9 of the fsdaemon: the snapshotter's watchdog starts a new one within a second or
      // two, which adopts the FUSE connection (its holder kept it): the running container's read
      // waits meanwhile, then gets its bytes (no ENOTCONN)
      const fuseMnt = m1[0]!.options.find((x) => x.startsWith('lowerdir='))!.slice('lowerdir='.length).split(':').pop()!
      const dev = statSync(fuseMnt).dev
      process.kill(pid1, 'SIGKILL')
      for (let i = 0; i < 100 && pidAlive(pid1); i++) await new Promise((resolve) => setTimeout(resolve, 20))
      expect((await exec('cat', [join(mnt1, 'etc', 'passwd')], { timeout: 30_000 })).stdout).toBe('root:x:0:0:root:/root:/bin/sh\n')
      expect(statSync(fuseMnt).dev).toBe(dev)
    } finally {
      await um1()
    }
    // ... and the next container prepare uses the new fsdaemon, which serves the image
    const m3 = await c.prepare('c3', top.chainId)
    const pid2 = (await fsd.daemon()).pid
    fsdPids.add(pid2)
    expect(pid2).not.toBe(pid1)
    const mnt3 = join(base, 'c3')
    const um3 = await mountAll(m3, mnt3)
    try {
      expect((await exec('cat', [join(mnt3, 'etc', 'passwd')])).stdout).toBe('root:x:0:0:root:/root:/bin/sh\n')
    } finally {
      await um3()
    }
    await c.remove('c1')
    // both die (kill -9) while c3 still uses the image: the restarted snapshotter starts a new
    // fsdaemon and remounts the image at start-up, before any prepare
    const lowerdir = m3[0]!.options.find((x) => x.startsWith('lowerdir='))!.slice('lowerdir='.length)
    process.kill(pid2, 'SIGKILL')
    await d.kill()
    for (let i = 0; i < 100 && pidAlive(pid2); i++) await new Promise((resolve) => setTimeout(resolve, 20))
    d = await start()
    await d.waitFor('image lower directory checked after start')
    const pid3 = (await fsd.daemon()).pid
    fsdPids.add(pid3)
    expect(pid3).not.toBe(pid2)
    expect((await fsd.list()).map((m) => m.mountpoint)).toEqual([lowerdir])
    expect((await exec('cat', [join(lowerdir, 'etc', 'hostname')])).stdout).toBe('naiad\n')
    // a mount of ours that no snapshot uses (as after a crash between mount and record) goes at cleanup
    const stray = join(base, 'root', 'snapshots', '999999', 'mnt')
    await fsd.mount({ mountpoint: stray, bootstrap: join(lowerdir, '..', 'fs', 'image', 'image.boot'), image: imageRef, labels: { 'naiad.io/snapshotter-root': join(base, 'root'), 'naiad.io/snapshot-id': '999999' } })
    expect(await fsd.list()).toHaveLength(2)
    await c.cleanup()
    expect((await fsd.list()).map((m) => m.mountpoint)).toEqual([lowerdir])
    await c.remove('c3')
    expect(await fsd.list()).toEqual([])
    await c.close()
    // --stop-fsdaemon: the snapshotter stops the fsdaemon when it exits
    await d.stop()
    d = await start('--stop-fsdaemon')
    expect(await d.stop(30_000)).toBe(0)
    expect(pidAlive(pid3)).toBe(false)
  }, 120_000)

  it('fallback: the fsdaemon cannot be started → the container prepare downloads the image in full and the overlay is still correct; with the registry unreachable too, a clear error', async () => {
    const base = join(work, 'fallback')
    const remote = new FsdRemoteFilesystem({ log }, fsdOptions('fallback', { binary: join(base, 'no-such-naiad.js') }))
    const materializer = new RegistryMaterializer({ log }, { plainHttp: false })
    const sn = new LocalSnapshotter({ log, remote, materializer }, { root: join(base, 'root') })
    try {
      const top = await unpackLikeContainerd(sn, image, imageRef, join(base, 'apply'))
      expect(top.skipped).toBe(3)
      proxy.reset()
      const mounts = await sn.prepare('c1', top.chainId)
      // the whole image came from the registry: every data blob
      const blobBytes = image.layers.slice(0, 3).reduce((n, l) => n + l.size, 0)
      expect(proxy.bytesServed()).toBeGreaterThanOrEqual(blobBytes)
      const lower = mounts[0]!.options.find((o) => o.startsWith('lowerdir='))!
      expect(lower).toMatch(/\/rootfs$/)
      const mnt = join(base, 'c1')
      const umount = await mountAll(mounts, mnt)
      try {
        expect(await listTreeAsync(mnt, '--skip-root-attrs')).toBe(listTree(rootfs, '--skip-root-attrs'))
      } finally {
        await umount()
      }
      // the next container reuses the written-out image: nothing fetched
      proxy.reset()
      const m2 = await sn.prepare('c2', top.chainId)
      expect(m2[0]!.options).toContain(lower)
      expect(proxy.bytesServed()).toBe(0)
      await sn.remove('c1')
      await sn.remove('c2')

    } finally {
      await sn.close()
    }
    // registry unreachable as well: the prepare fails with both causes, and leaves nothing behind
    const sn2 = new LocalSnapshotter({ log, remote: new FsdRemoteFilesystem({ log }, fsdOptions('fallback2', { binary: join(base, 'no-such-naiad.js') })), materializer: new RegistryMaterializer({ log }, { plainHttp: false }) }, { root: join(base, 'root2') })
    try {
      const top = await unpackLikeContainerd(sn2, image, '127.0.0.1:9/app/remote:nydus', join(base, 'apply2'))
      const err = await sn2.prepare('c1', top.chainId).then(() => undefined, (e: unknown) => e)
      expect(err).toMatchObject({ code: 'NAIAD_SNAP_REMOTE' })
      expect(String((err as Error).message)).toMatch(/lazy mount failed .*NAIAD_SNAP_FSD_START|lazy mount failed .*no-such-naiad/)
      expect(String((err as Error).message)).toMatch(/full download failed/)
      await expect(sn2.stat('c1')).rejects.toMatchObject({ code: 'NAIAD_SNAP_NOT_FOUND' })
    } finally {
      await sn2.close()
    }
  }, 120_000)
})
