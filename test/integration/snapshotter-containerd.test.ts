/**
 * A private containerd 1.6 (Debian package) with naiad's snapshotter as its `nydus` proxy plugin:
 * ctr drives prepare/commit/ls/rm through containerd into our socket, and `ctr images pull
 * --snapshotter nydus` unpacks a plain image into our overlay snapshots, whose content is then
 * checked through a real mount. containerd runs with its own root, state and sockets; it and the
 * snapshotter are stopped by pid and every mount under the test directory is removed afterwards.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises'
import { chmodSync, copyFileSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SnapshotsClient } from '../../snapshotter/grpc/client.ts'
import type { SnapshotInfo } from '../../snapshotter/snapshotter.ts'
import { canMount, mountAll, unmountAll } from '../conformance/snapshotter.ts'
import { NAIAD_BIN, startNaiad, type Daemon } from '../helpers/daemon.ts'
import { buildImage, pushImage } from '../helpers/images.ts'
import { haveRegistry, startRegistry, type RunningRegistry } from '../helpers/registry.ts'

const run = promisify(execFile)
const CONTAINERD = '/usr/bin/containerd'
const CTR = '/usr/bin/ctr'
const ready = canMount() && existsSync(CONTAINERD) && existsSync(CTR) && existsSync(NAIAD_BIN) && haveRegistry()

async function waitUntil (what: string, fn: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await fn().catch(() => false)) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

async function collect (it: AsyncIterable<SnapshotInfo>): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = []
  for await (const i of it) out.push(i)
  return out
}

describe.skipIf(!ready)('snapshotter as containerd 1.6 proxy plugin', () => {
  let base = ''
  let snap: Daemon | undefined
  let containerd: ChildProcess | undefined
  let containerdLog = ''
  let registry: RunningRegistry | undefined
  let client: SnapshotsClient | undefined
  let imageRef = ''
  const sock = (): string => join(base, 'c.sock')
  const snapSock = (): string => join(base, 'snap.sock')
  const ctr = async (...args: string[]): Promise<string> => {
    try {
      return (await run(CTR, ['-a', sock(), '-n', 'naiadtest', ...args], { timeout: 60_000 })).stdout
    } catch (err) {
      throw new Error(`ctr ${args.join(' ')}: ${(err as { stderr?: string }).stderr ?? String(err)}\ncontainerd log:\n${containerdLog.slice(-3000)}\nsnapshotter log:\n${snap?.output().slice(-3000) ?? ''}`)
    }
  }

  beforeAll(async () => {
    base = await mkdtemp('/tmp/naiad-ctd-')
    await mkdir(join(base, 'root'))
    await mkdir(join(base, 'state'))
    snap = startNaiad(['snapshotter', '--root', join(base, 'snapshots'), '--socket', snapSock(), '--log-level', 'debug'])
    await snap.waitFor('ready', 30_000)
    const config = [
      'version = 2',
      `root = "${join(base, 'root')}"`,
      `state = "${join(base, 'state')}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${sock()}"`,
      '[ttrpc]',
      `  address = "${join(base, 'c.ttrpc.sock')}"`,
      '[debug]',
      '  level = "debug"',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = "${join(base, 'opt')}"`,
      '[proxy_plugins.nydus]',
      '  type = "snapshot"',
      `  address = "${snapSock()}"`
    ].join('\n') + '\n'
    await writeFile(join(base, 'config.toml'), config)
    containerd = spawn(CONTAINERD, ['--config', join(base, 'config.toml')], { stdio: ['ignore', 'pipe', 'pipe'] })
    containerd.stdout?.on('data', (c: Buffer) => { containerdLog += c.toString() })
    containerd.stderr?.on('data', (c: Buffer) => { containerdLog += c.toString() })
    await waitUntil('containerd', async () => { await run(CTR, ['-a', sock(), 'version'], { timeout: 5000 }); return true })
    client = new SnapshotsClient({}, { socket: snapSock() })
  })

  afterAll(async () => {
    await client?.close()
    if (containerd !== undefined && containerd.exitCode === null && containerd.signalCode === null) {
      const c = containerd
      const exited = new Promise((resolve) => c.once('exit', resolve))
      c.kill('SIGTERM')
      const t = setTimeout(() => { c.kill('SIGKILL') }, 10_000)
      await exited
      clearTimeout(t)
    }
    await snap?.stop()
    await registry?.stop()
    if (base !== '') {
      // every mount under the test directory, deepest first
      const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(base + '/')).sort().reverse()
      for (const m of mounts) await run('umount', ['-l', m]).catch(() => {})
      await rm(base, { recursive: true, force: true })
    }
    // runc keeps per-namespace state under /run/containerd/runc whatever containerd's state dir is
    await rmdir('/run/containerd/runc/naiadtest').catch(() => {})
  })

  it('ctr snapshots prepare/commit/ls/rm go through our socket; GC removes backend snapshots', async () => {
    await ctr('snapshots', '--snapshotter', 'nydus', 'prepare', 'k1', '')
    let backend = await collect(client!.walk())
    expect(backend.map((i) => [i.name.replace(/^naiadtest\/\d+\//, ''), i.kind])).toEqual([['k1', 'active']])
    await ctr('snapshots', '--snapshotter', 'nydus', 'commit', 'c1', 'k1')
    await ctr('snapshots', '--snapshotter', 'nydus', 'prepare', 'k2', 'c1')
    const ls = await ctr('snapshots', '--snapshotter', 'nydus', 'ls')
    expect(ls).toMatch(/c1\s+Committed/)
    expect(ls).toMatch(/k2\s+c1\s+Active/)
    backend = await collect(client!.walk())
    const c1 = backend.find((i) => i.name.endsWith('/c1'))
    expect(c1?.kind).toBe('committed')
    expect(backend.find((i) => i.name.endsWith('/k2'))?.parent).toBe(c1?.name)
    // removing the parent first is refused by containerd (its own metadata) before reaching us
    await expect(ctr('snapshots', '--snapshotter', 'nydus', 'rm', 'c1')).rejects.toThrow()
    await ctr('snapshots', '--snapshotter', 'nydus', 'rm', 'k2')
    // containerd's GC removes the backend snapshot, then calls Cleanup. Wait for that pass before
    // the next removal: containerd 1.6 can miss a removal made while a backend GC pass is running
    // (its snapshotter-dirty flag is consumed by the running pass; seen here as c1 left behind
    // until the next deletion), so two quick removals are not reliably collected together.
    let left: SnapshotInfo[] = []
    await waitUntil('GC of the removed child', async () => { left = await collect(client!.walk()); return left.length === 1 })
    await ctr('snapshots', '--snapshotter', 'nydus', 'rm', 'c1')
    await waitUntil('GC of backend snapshots', async () => { left = await collect(client!.walk()); return left.length === 0 })
      .catch((err: Error) => {
        throw new Error(`${err.message}; backend still holds ${JSON.stringify(left.map((i) => [i.name, i.kind, i.parent]))}\ncontainerd log:\n${containerdLog.slice(-4000)}\nsnapshotter log:\n${snap?.output().slice(-4000) ?? ''}`)
      })
    // (a removed snapshot's directory is renamed rm-* and deleted right after the metadata: under
    // load the walk can be empty a moment before the directory is gone)
    await waitUntil('removed snapshot directories deleted', async () => (await readdir(join(base, 'snapshots', 'snapshots'))).length === 0).catch(() => {})
    expect(await readdir(join(base, 'snapshots', 'snapshots'))).toEqual([])
  })

  it('ctr images pull --snapshotter nydus unpacks a plain image into our overlay snapshots', async () => {
    registry = await startRegistry()
    const img = buildImage({
      workDir: join(base, 'img'),
      layers: [
        (root) => {
          mkdirSync(join(root, 'bin'))
          copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'))
          chmodSync(join(root, 'bin', 'busybox'), 0o755)
          for (const l of ['sh', 'cat', 'ls']) symlinkSync('busybox', join(root, 'bin', l))
          writeFileSync(join(root, 'a.txt'), 'layer one\n')
          writeFileSync(join(root, 'gone.txt'), 'to be deleted\n')
        },
        (root) => { writeFileSync(join(root, 'b.txt'), 'layer two\n'); writeFileSync(join(root, '.wh.gone.txt'), '') },
        (root) => { writeFileSync(join(root, 'a.txt'), 'layer three wins\n') }
      ]
    })
    const ref = pushImage(img, registry.host, 'naiad/plain:1')
    await ctr('images', 'pull', '--plain-http', '--snapshotter', 'nydus', ref)
    const backend = await collect(client!.walk())
    const committed = backend.filter((i) => i.kind === 'committed')
    expect(committed).toHaveLength(3)
    const parents = new Set(committed.map((i) => i.parent))
    const top = committed.filter((i) => !parents.has(i.name))
    expect(top).toHaveLength(1)
    // containerd's own view: three committed layers in the nydus snapshotter
    const ls = await ctr('snapshots', '--snapshotter', 'nydus', 'ls')
    expect(ls.split('\n').filter((l) => /Committed/.test(l))).toHaveLength(3)
    // the content, through a real read-only mount of the top layer
    await client!.view('naiad-check', top[0]!.name)
    const mnt = join(base, 'mnt')
    await mkdir(mnt)
    await mountAll(await client!.mounts('naiad-check'), mnt)
    try {
      expect((await readdir(mnt)).sort()).toEqual(['a.txt', 'b.txt', 'bin'])
      expect(await readFile(join(mnt, 'a.txt'), 'utf8')).toBe('layer three wins\n')
      expect(await readFile(join(mnt, 'b.txt'), 'utf8')).toBe('layer two\n')
    } finally {
      await unmountAll(mnt)
    }
    await client!.remove('naiad-check')
    imageRef = ref
  })

  it('ctr run --snapshotter nydus runs a container on our overlay snapshot', async () => {
    expect(imageRef).not.toBe('')
    const out = await ctr('run', '--rm', '--snapshotter', 'nydus', imageRef, 'naiad-run-1', '/bin/sh', '-c', 'cat /a.txt /b.txt; ls /; echo written > /new.txt; cat /new.txt')
    expect(out).toContain('layer three wins\nlayer two\n')
    expect(out).not.toContain('gone.txt')
    expect(out).toContain('written')
    // the container's active snapshot was removed with the container (GC reaches the backend)
    await waitUntil('container snapshot GC', async () => (await collect(client!.walk())).every((i) => i.kind === 'committed'))
  })
})
