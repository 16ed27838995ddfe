/**
 * The fsdaemon end to end, as separate processes against a real registry: a converted image
 * mounted through the registry source equals the source image (listed by child processes through
 * the kernel); laziness measured in bytes the registry served; faults (registry outage mid-read,
 * a corrupted blob byte, kill -9 of the daemon) handled as documented.
 *
 * The counting proxy runs in this process: nothing here may block the event loop while a daemon
 * reads through it (so only async child processes once daemons run).
 */
import { execFile, execFileSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, openSync, readSync, writeSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { buildImage, fidelityLayers, patternBytes, pushImage } from '../helpers/images.ts'
import { startCountingProxy, startRegistry, type CountingProxy, type RunningRegistry } from '../helpers/registry.ts'
import { listTree, listTreeAsync } from '../helpers/erofs.ts'
import { startNaiad, type Daemon } from '../helpers/daemon.ts'
import { FsdClient } from '../../lib/fsdapi/index.ts'

const exec = promisify(execFile)

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

function mounted (mp: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some(l => l.split(' ')[1] === mp)
}

/** Path of a blob's data file inside the registry's storage. */
function registryBlobPath (reg: RunningRegistry, hex: string): string {
  return join(reg.dir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data')
}

describe('fsdaemon against a real registry', () => {
  let reg: RunningRegistry
  let proxy: CountingProxy
  let work: string
  const daemons: Daemon[] = []
  let fidelityRootfs: string
  let lazyBlobs: string[] = []

  beforeAll(async () => {
    reg = await startRegistry()
    proxy = await startCountingProxy(reg.host)
    work = mkdtempSync(join(tmpdir(), 'naiad-fsd-'))
    const img = buildImage({ workDir: join(work, 'fid'), layers: fidelityLayers() })
    execFileSync('umoci', ['unpack', '--image', `${img.layout}:${img.tag}`, join(work, 'bundle')], { stdio: 'ignore' })
    fidelityRootfs = join(work, 'bundle', 'rootfs')
    pushImage(img, reg.host, 'app/fidelity:v1')
    expect((await naiad('convert', '--source', `${reg.host}/app/fidelity:v1`, '--target', `${reg.host}/app/fidelity:nydus`)).code).toBe(0)
    // an image with one small file and one 64 MiB file, for laziness and faults
    const lazy = buildImage({ workDir: join(work, 'lazy'), layers: [(r) => {
      writeFileSync(join(r, 'small.txt'), 'just a small file\n')
      writeFileSync(join(r, 'big.bin'), patternBytes(64 * 1024 * 1024, 5))
    }] })
    pushImage(lazy, reg.host, 'app/lazy:v1')
    const c = await naiad('convert', '--source', `${reg.host}/app/lazy:v1`, '--target', `${reg.host}/app/lazy:nydus`, '--output', 'json')
    lazyBlobs = (JSON.parse(c.out) as { platforms: Array<{ blobs: Array<{ digest: string }> }> }).platforms[0]!.blobs.map(b => b.digest.slice(7))
  }, 300_000)

  afterAll(async () => {
    for (const d of daemons) await d.stop(5000).catch(() => {})
    for (const l of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const mp = l.split(' ')[1]
      if (mp?.startsWith(work) === true) execFileSync('umount', ['-l', mp])
    }
    await proxy?.stop()
    await reg?.stop()
    rmSync(work, { recursive: true, force: true })
  })

  function fsd (name: string, ...extra: string[]): { daemon: Daemon, mnt: string, cache: string, state: string } {
    const mnt = join(work, `${name}-mnt`)
    const cache = join(work, `${name}-cache`)
    const state = join(work, `${name}-state`)
    const daemon = startNaiad(['fsd', '--mountpoint', mnt, '--cache-dir', cache, '--state-dir', state, '--log-level', 'info', ...extra])
    daemons.push(daemon)
    return { daemon, mnt, cache, state }
  }

  it('mounts a converted image through the registry: the tree equals the source image', async () => {
    const { daemon, mnt } = fsd('fid', '--image', `${proxy.host}/app/fidelity:nydus`)
    await daemon.waitFor('ready')
    expect(await listTreeAsync(mnt)).toBe(listTree(fidelityRootfs))
    // hard links share st_ino; device numbers and capabilities survive
    const st = (await exec('stat', ['-c', '%i %h', join(mnt, 'data/hl-a'), join(mnt, 'data/hl-b')])).stdout.trim().split('\n')
    expect(st[0]).toBe(st[1])
    const cap = (await exec('getfattr', ['-n', 'security.capability', '-e', 'hex', join(mnt, 'bin/ping')])).stdout
    expect(cap).toContain('0x0100000200200000000000000000000000000000')
    expect(await daemon.stop()).toBe(0)
    expect(mounted(mnt)).toBe(false)
  })

  it('is lazy: reading one small file of an image with a 64 MiB file fetches under 2 MiB', async () => {
    proxy.reset()
    const { daemon, mnt } = fsd('lazy', '--image', `${proxy.host}/app/lazy:nydus`, '--no-prefetch')
    await daemon.waitFor('ready')
    expect((await exec('cat', [join(mnt, 'small.txt')])).stdout).toBe('just a small file\n')
    const served = proxy.bytesServed()
    expect(served).toBeLessThan(2 * 1024 * 1024)
    // and the big file is all there when read
    const sum = (await exec('sha256sum', [join(mnt, 'big.bin')])).stdout.split(' ')[0]
    expect(sum).toBe((await exec('sha256sum', [join(work, 'lazy', 'layer0', 'big.bin')])).stdout.split(' ')[0])
    expect(proxy.bytesServed()).toBeGreaterThan(10 * 1024 * 1024)
    await daemon.stop()
  })

  it('registry outage mid-read: EIO with a log line naming blob, chunk, source and cause; works again when the registry returns', async () => {
    const { daemon, mnt } = fsd('outage', '--image', `${proxy.host}/app/lazy:nydus`, '--no-prefetch')
    await daemon.waitFor('ready')
    // read the first 4 MiB, then the registry dies
    await exec('dd', [`if=${join(mnt, 'big.bin')}`, 'of=/dev/null', 'bs=1M', 'count=4'])
    await reg.kill()
    const failed = await exec('dd', [`if=${join(mnt, 'big.bin')}`, 'of=/dev/null', 'bs=1M', 'skip=32', 'count=2']).then(() => null, (e: { stderr: string }) => e.stderr)
    expect(failed).toMatch(/Input\/output error/)
    const line = await daemon.waitFor(/answering EIO/)
    const text = JSON.stringify(line)
    expect(text).toMatch(new RegExp(lazyBlobs[0]!.slice(0, 12)))
    expect(text).toMatch(/origin/)
    await reg.restart()
    await exec('dd', [`if=${join(mnt, 'big.bin')}`, 'of=/dev/null', 'bs=1M', 'skip=32', 'count=2'])
    await daemon.stop()
  })

  it('a corrupted blob byte is detected and never served', async () => {
    // corrupt one byte in the middle of the blob, in the registry's storage
    const blob = registryBlobPath(reg, lazyBlobs[0]!)
    const at = Math.floor(statSync(blob).size / 2)
    const original = Buffer.alloc(1)
    const fd = openSync(blob, 'r+')
    readSync(fd, original, 0, 1, at)
    writeSync(fd, Buffer.from([original[0]! ^ 0x5a]), 0, 1, at)
    try {
      const { daemon, mnt } = fsd('corrupt', '--image', `${proxy.host}/app/lazy:nydus`, '--no-prefetch')
      await daemon.waitFor('ready')
      const r = await exec('sha256sum', [join(mnt, 'big.bin')]).then(() => 'read everything', (e: { stderr: string }) => e.stderr)
      expect(r).toMatch(/Input\/output error/)
      expect(daemon.output()).toMatch(/NAIAD_FMT_CHUNK_DIGEST|NAIAD_FMT_DECOMPRESS/)
      await daemon.stop()
    } finally {
      writeSync(fd, original, 0, 1, at)
      closeSync(fd)
    }
  })

  it('kill -9 of the daemon: a restart cleans the stale mount, remounts, and does not refetch cached chunks', async () => {
    const args = ['--image', `${proxy.host}/app/fidelity:nydus`, '--no-prefetch']
    const first = fsd('crash', ...args)
    await first.daemon.waitFor('ready')
    const before = (await exec('sha256sum', [join(first.mnt, 'data/big.bin')])).stdout
    // the ready-bitmap is persisted (after the data is durable) within cache.flush_interval (1 s)
    await new Promise(resolve => setTimeout(resolve, 1500))
    await first.daemon.kill()
    expect(mounted(first.mnt)).toBe(true)
    await expect(exec('ls', [first.mnt])).rejects.toMatchObject({ stderr: expect.stringMatching(/not connected/) })
    proxy.reset()
    const second = fsd('crash', ...args)
    await second.daemon.waitFor('ready')
    expect((await exec('sha256sum', [join(second.mnt, 'data/big.bin')])).stdout).toBe(before)
    const blobGets = proxy.requests().filter(r => r.path.includes('/blobs/') && r.range !== undefined)
    expect(blobGets).toEqual([])
    await second.daemon.stop()
    expect(mounted(second.mnt)).toBe(false)
  })

  it('prefetch: the files of the prefetch table are fetched in the background after mounting', async () => {
    const patterns = join(work, 'patterns')
    writeFileSync(patterns, '/small.txt\n/big.bin\n')
    expect((await naiad('convert', '--source', `${reg.host}/app/lazy:v1`, '--target', `${reg.host}/app/lazy:prefetch`, '--prefetch-patterns', patterns)).code).toBe(0)
    const sock = join(work, 'pf', 'fsd.sock')
    // the daemon's own read path (kernel passthrough would take these wholly cached files: below)
    writeFileSync(join(work, 'pf.toml'), '[fuse]\npassthrough = false\n')
    const d = startNaiad(['fsd', '--config', join(work, 'pf.toml'), '--socket', sock, '--cache-dir', join(work, 'pf-cache'), '--state-dir', join(work, 'pf-state'), '--log-level', 'info'])
    daemons.push(d)
    await d.waitFor('ready')
    const client = new FsdClient({ socketPath: sock })
    const mnt = join(work, 'pf-mnt')
    await client.mount({ mountpoint: mnt, image: `${proxy.host}/app/lazy:prefetch` })
    let info = (await client.list())[0]!
    for (let i = 0; i < 200 && info.prefetch.state !== 'done'; i++) {
      await new Promise(resolve => setTimeout(resolve, 100))
      info = (await client.list())[0]!
    }
    expect(info.prefetch.state).toBe('done')
    expect(info.prefetch.chunksTotal).toBe(65) // 64 chunks of big.bin + small.txt's one
    expect(info.reads).toBe(0)
    const ready = info.blobs.reduce((n, b) => n + b.readyChunks, 0)
    expect(ready).toBe(65)
    // reading now costs the registry nothing
    proxy.reset()
    const want = (await exec('sha256sum', [join(work, 'lazy', 'layer0', 'big.bin')])).stdout.split(' ')[0]
    expect((await exec('sha256sum', [join(mnt, 'big.bin')])).stdout.split(' ')[0]).toBe(want)
    expect(proxy.requests().filter(r => r.path.includes('/blobs/'))).toEqual([])
    // a wholly cached file is then answered by the FUSE reader threads from the cache file;
    // O_DIRECT reads skip the kernel's page cache, so every byte is asked of the daemon again
    const direct = async (): Promise<string> => (await exec('sh', ['-c', `dd if=${join(mnt, 'big.bin')} iflag=direct bs=1M 2>/dev/null | sha256sum`])).stdout.split(' ')[0]!
    expect(await direct()).toBe(want)
    info = (await client.list())[0]!
    expect(info.bytesRead).toBeGreaterThanOrEqual(2 * 64 * 1024 * 1024)
    expect(info.blobs.reduce((n, b) => n + b.cacheHits, 0)).toBeGreaterThanOrEqual(128)
    expect(proxy.requests().filter(r => r.path.includes('/blobs/'))).toEqual([])
    // the cache file loses its second half under the daemon: those reads fall short, are
    // fetched again, and the bytes served stay right
    const data = readdirSync(join(work, 'pf-cache')).find(f => f.endsWith('.blob.data'))!
    execFileSync('truncate', ['-s', '32M', join(work, 'pf-cache', data)])
    expect(await direct()).toBe(want)
    expect(proxy.requests().filter(r => r.path.includes('/blobs/')).length).toBeGreaterThan(0)
    expect(await direct()).toBe(want)
    await client.unmount(mnt)
    await d.stop()
  })

  it('kernel passthrough: a wholly cached file is read, mapped and stacked under overlayfs by the kernel from the cache; the daemon serves none of it', async () => {
    const sock = join(work, 'pt', 'fsd.sock')
    const { daemon, mnt, state } = fsd('pt', '--image', `${proxy.host}/app/lazy:nydus`, '--no-prefetch', '--socket', sock)
    await daemon.waitFor('ready')
    const client = new FsdClient({ socketPath: sock })
    const want = (await exec('sha256sum', [join(work, 'lazy', 'layer0', 'big.bin')])).stdout.split(' ')[0]
    const sum = async (f: string): Promise<string> => (await exec('sha256sum', [f])).stdout.split(' ')[0]!
    // opened before their chunks were there: served by the daemon for the inodes' lifetime
    expect(await sum(join(mnt, 'big.bin'))).toBe(want)
    expect((await exec('cat', [join(mnt, 'small.txt')])).stdout).toBe('just a small file\n')
    let info = (await client.list())[0]!
    expect(info.passthroughOpens).toBe(0)
    const served = info.bytesRead
    expect(served).toBeGreaterThanOrEqual(64 * 1024 * 1024 + 18)
    // the kernel forgets the inode (and its pages): the next open is handed to the kernel
    writeFileSync('/proc/sys/vm/drop_caches', '2')
    proxy.reset()
    expect(await sum(join(mnt, 'big.bin'))).toBe(want)
    expect((await exec('cat', [join(mnt, 'small.txt')])).stdout).toBe('just a small file\n')
    // mmap, as the loader maps libraries and binaries
    const mapped = await exec('python3', ['-c', 'import hashlib, mmap, sys; f = open(sys.argv[1], "rb"); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print(hashlib.sha256(m).hexdigest())', join(mnt, 'big.bin')])
    expect(mapped.stdout.trim()).toBe(want)
    // containerd stacks overlayfs on our mounts: the stacking depth still allows it
    const ov = join(work, 'pt-ov')
    for (const d of ['u', 'w', 'm']) execFileSync('mkdir', ['-p', join(ov, d)])
    await exec('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${mnt},upperdir=${join(ov, 'u')},workdir=${join(ov, 'w')}`, join(ov, 'm')])
    try {
      expect(await sum(join(ov, 'm', 'big.bin'))).toBe(want)
    } finally {
      await exec('umount', [join(ov, 'm')])
    }
    info = (await client.list())[0]!
    expect(info.passthroughOpens).toBeGreaterThanOrEqual(3)
    expect(info.bytesRead).toBe(served)
    expect(proxy.requests().filter(r => r.path.includes('/blobs/'))).toEqual([])
    // the kernel's view of the image is a private mount under the state dir, gone with the daemon
    const views = (): string[] => readFileSync('/proc/self/mounts', 'utf8').split('\n').map(l => l.split(' ')[1] ?? '').filter(p => p.startsWith(join(state, 'kernel')))
    expect(views().length).toBe(1)
    expect(await daemon.stop()).toBe(0)
    expect(mounted(mnt)).toBe(false)
    expect(views()).toEqual([])
    // after a crash, the next daemon detaches the dead one's view
    const again = fsd('pt', '--image', `${proxy.host}/app/lazy:nydus`, '--no-prefetch', '--socket', sock)
    await again.daemon.waitFor('ready')
    expect(await sum(join(mnt, 'small.txt'))).toBe((await exec('sha256sum', [join(work, 'lazy', 'layer0', 'small.txt')])).stdout.split(' ')[0])
    expect(views().length).toBe(1)
    await again.daemon.kill()
    expect(readdirSync(join(state, 'kernel')).filter(f => f.endsWith('.boot')).length).toBe(1)
    const third = fsd('pt', '--image', `${proxy.host}/app/lazy:nydus`, '--no-prefetch', '--socket', sock)
    await third.daemon.waitFor('ready')
    expect(views()).toEqual([])
    expect(readdirSync(join(state, 'kernel'))).toEqual([])
    expect(await sum(join(mnt, 'big.bin'))).toBe(want)
    expect(views().length).toBe(1)
    expect(await third.daemon.stop()).toBe(0)
    expect(views()).toEqual([])
    // and leaves nothing in the state dir (bootstraps written for the kernel, mount points)
    expect(readdirSync(join(state, 'kernel'))).toEqual([])
  })

  it('daemon mode: the control socket mounts, lists with per-blob statistics, serves metrics, unmounts', async () => {
    const sock = join(work, 'ctl', 'fsd.sock')
    const d = startNaiad(['fsd', '--socket', sock, '--cache-dir', join(work, 'ctl-cache'), '--state-dir', join(work, 'ctl-state'), '--log-level', 'info'])
    daemons.push(d)
    await d.waitFor('ready')
    const client = new FsdClient({ socketPath: sock })
    const mnt = join(work, 'ctl-mnt')
    const info = await client.mount({ mountpoint: mnt, image: `${proxy.host}/app/fidelity:nydus`, prefetch: false })
    expect(info.files).toBeGreaterThan(100)
    await exec('cat', [join(mnt, 'etc/passwd')])
    const list = await client.list()
    expect(list[0]!.blobs.some(b => b.chunksVerified > 0)).toBe(true)
    expect(list[0]!.blobs.flatMap(b => Object.values(b.bytesFetched)).reduce((a, b) => a + b, 0)).toBeGreaterThan(0)
    const metrics = await client.metrics()
    expect(metrics).toContain('naiad_fsd_mounts 1')
    expect(metrics).toMatch(/naiad_fsd_source_bytes_total\{source="origin"\} \d+/)
    // the registry is plain HTTP: its ranges were read straight into the cache's buffers
    expect(metrics).toMatch(/naiad_fsd_source_direct_reads_total\{source="origin"\} [1-9]\d*/)
    await client.unmount(mnt)
    expect(mounted(mnt)).toBe(false)
    await expect(client.unmount(mnt)).rejects.toMatchObject({ code: 'NAIAD_FS_NOT_MOUNTED' })
    const fsctl = await naiad('fsctl', 'ls', '--socket', sock)
    expect(JSON.parse(fsctl.out)).toEqual([])
    expect(await d.stop()).toBe(0)
    expect(readdirSync(join(work, 'ctl'))).toEqual([])
  })
})
