/**
 * Conformance suite for naiad's Snapshotter interface, in the spirit of containerd's
 * snapshots/testsuite (our own code). Runners call `snapshotterConformance(name, factory, caps)`;
 * the factory builds a fresh snapshotter on a fresh root per case, so cases are independent.
 *
 * Groups: metadata semantics (everywhere) and mount semantics (root + overlayfs: the returned
 * mounts are applied with mount(8) and layers written and read through them).
 */
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { promisify } from 'node:util'
import { afterEach, describe, expect, it } from 'vitest'
import { isNaiadError, type ErrorKind } from '../../lib/errors/index.ts'
import type { Mount, SnapshotInfo, Snapshotter } from '../../snapshotter/snapshotter.ts'

const run = promisify(execFile)

export interface SnapshotterFactoryResult {
  readonly snapshotter: Snapshotter
  readonly cleanup: () => Promise<void>
}

export type SnapshotterFactory = (ctx: { root: string }) => Promise<SnapshotterFactoryResult>

export interface SnapshotterCapabilities {
  /** The returned mounts can be applied with mount(8) (needs root and overlayfs). */
  readonly mounts: boolean
}

async function expectKind (p: Promise<unknown>, kind: ErrorKind): Promise<void> {
  let err: unknown
  try {
    await p
  } catch (e) {
    err = e
  }
  expect(err, `expected a ${kind} error`).toBeDefined()
  expect(isNaiadError(err) ? err.kind : String(err)).toBe(kind)
}

async function collect (it: AsyncIterable<SnapshotInfo>): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = []
  for await (const i of it) out.push(i)
  return out.sort((a, b) => a.name.localeCompare(b.name))
}

export function canMount (): boolean {
  return process.platform === 'linux' && process.getuid?.() === 0
}

/** Applies containerd mounts to target with mount(8), as containerd's mount.All does. */
export async function mountAll (mounts: readonly Mount[], target: string): Promise<void> {
  for (const m of mounts) {
    if (m.type === 'bind') {
      await run('mount', ['-o', m.options.join(','), m.source, target])
      // a read-only bind needs a remount on old util-linux; harmless on new ones
      if (m.options.includes('ro')) await run('mount', ['-o', 'remount,ro,bind', target])
    } else {
      const { options, cwd } = compactLowerdir(m.options)
      await run('mount', ['-t', m.type, '-o', options.join(','), m.source, target], cwd === undefined ? {} : { cwd })
    }
  }
}

/**
 * Like containerd's mount_linux.go compactLowerdirOption: when the options would not fit in a
 * page, mount from the lower directories' common parent with relative paths.
 */
function compactLowerdir (options: readonly string[]): { options: string[], cwd?: string } {
  const i = options.findIndex((o) => o.startsWith('lowerdir='))
  const lower = options[i]
  if (i < 0 || lower === undefined || options.join(',').length < 4000) return { options: [...options] }
  const dirs = lower.slice('lowerdir='.length).split(':')
  // common parent: .../snapshots/<id>/fs → .../snapshots
  const parents = dirs.map((d) => dirname(dirname(d)))
  const cwd = parents[0]
  if (cwd === undefined || parents.some((p) => p !== cwd)) return { options: [...options] }
  const out = [...options]
  out[i] = 'lowerdir=' + dirs.map((d) => relative(cwd, d)).join(':')
  return { options: out, cwd }
}

export async function unmountAll (target: string): Promise<void> {
  for (let i = 0; i < 8; i++) {
    try {
      await run('umount', [target])
    } catch {
      return
    }
  }
}

export function snapshotterConformance (name: string, factory: SnapshotterFactory, caps: SnapshotterCapabilities): void {
  describe(`snapshotter conformance: ${name}`, () => {
    const cleanups: Array<() => Promise<void>> = []
    afterEach(async () => {
      for (const c of cleanups.splice(0).reverse()) await c()
    })

    async function setup (): Promise<{ sn: Snapshotter, work: string, root: string }> {
      const base = await mkdtemp(join(tmpdir(), 'naiad-snap-'))
      const root = join(base, 'root')
      const work = join(base, 'work')
      await mkdir(root)
      await mkdir(work)
      const { snapshotter, cleanup } = await factory({ root })
      cleanups.push(async () => {
        await cleanup()
        await rm(base, { recursive: true, force: true })
      })
      return { sn: snapshotter, work, root }
    }

    // ---- metadata semantics --------------------------------------------------------------

    it('prepare, stat, commit, view: kinds, parents and labels after each step', async () => {
      const { sn } = await setup()
      const m = await sn.prepare('ns/1/extract', '', { labels: { 'containerd.io/snapshot/a': '1' } })
      expect(m.length).toBeGreaterThan(0)
      let i = await sn.stat('ns/1/extract')
      expect(i).toMatchObject({ name: 'ns/1/extract', parent: '', kind: 'active', labels: { 'containerd.io/snapshot/a': '1' } })
      expect(i.createdAt).toBeInstanceOf(Date)
      await sn.commit('ns/2/layer1', 'ns/1/extract', { labels: { 'containerd.io/snapshot/b': '2' } })
      await expectKind(sn.stat('ns/1/extract'), 'NotFound')
      i = await sn.stat('ns/2/layer1')
      expect(i).toMatchObject({ name: 'ns/2/layer1', parent: '', kind: 'committed', labels: { 'containerd.io/snapshot/b': '2' } })
      await sn.prepare('ns/3/child', 'ns/2/layer1')
      expect(await sn.stat('ns/3/child')).toMatchObject({ kind: 'active', parent: 'ns/2/layer1' })
      await sn.view('ns/4/view', 'ns/2/layer1')
      expect(await sn.stat('ns/4/view')).toMatchObject({ kind: 'view', parent: 'ns/2/layer1' })
      // transitivity: a committed child of a committed parent
      await sn.commit('ns/5/layer2', 'ns/3/child')
      await sn.prepare('ns/6/top', 'ns/5/layer2')
      expect(await sn.stat('ns/6/top')).toMatchObject({ parent: 'ns/5/layer2' })
      expect(await sn.stat('ns/5/layer2')).toMatchObject({ parent: 'ns/2/layer1', kind: 'committed' })
    })

    it('the same key twice gives AlreadyExists, across kinds', async () => {
      const { sn } = await setup()
      await sn.prepare('k', '')
      await expectKind(sn.prepare('k', ''), 'AlreadyExists')
      await expectKind(sn.view('k', ''), 'AlreadyExists')
      await sn.commit('c', 'k')
      await sn.prepare('k2', '')
      await expectKind(sn.commit('c', 'k2'), 'AlreadyExists')
      await expectKind(sn.prepare('c', ''), 'AlreadyExists')
    })

    it('unknown keys and parents give NotFound', async () => {
      const { sn } = await setup()
      await expectKind(sn.commit('x', 'missing'), 'NotFound')
      await expectKind(sn.remove('missing'), 'NotFound')
      await expectKind(sn.stat('missing'), 'NotFound')
      await expectKind(sn.mounts('missing'), 'NotFound')
      await expectKind(sn.usage('missing'), 'NotFound')
      await expectKind(sn.prepare('a', 'missing-parent'), 'NotFound')
      await expectKind(sn.update({ name: 'missing', labels: {} }), 'NotFound')
    })

    it('a view cannot be committed; a committed snapshot has no mounts; parents must be committed', async () => {
      const { sn } = await setup()
      await sn.view('v', '')
      await expectKind(sn.commit('c', 'v'), 'FailedPrecondition')
      await sn.prepare('a', '')
      await expectKind(sn.prepare('b', 'a'), 'InvalidArgument')
      await expectKind(sn.view('b', 'v'), 'InvalidArgument')
      await sn.commit('c', 'a')
      await expectKind(sn.mounts('c'), 'FailedPrecondition')
      expect((await sn.mounts('v')).length).toBeGreaterThan(0)
      // the failed creates left nothing behind
      expect((await collect(sn.walk())).map((i) => i.name)).toEqual(['c', 'v'])
    })

    it('removing a parent with children gives FailedPrecondition; children first works', async () => {
      const { sn } = await setup()
      await sn.prepare('a', '')
      await sn.commit('p', 'a')
      await sn.prepare('child', 'p')
      await sn.view('view', 'p')
      await expectKind(sn.remove('p'), 'FailedPrecondition')
      await sn.remove('child')
      await expectKind(sn.remove('p'), 'FailedPrecondition')
      await sn.remove('view')
      await sn.remove('p')
      await expectKind(sn.stat('p'), 'NotFound')
      expect(await collect(sn.walk())).toEqual([])
    })

    it('update honours field paths and rejects other fields', async () => {
      const { sn } = await setup()
      await sn.prepare('a', '', { labels: { x: '1', y: '2' } })
      const before = await sn.stat('a')
      let i = await sn.update({ name: 'a', labels: { y: '20', z: '3', ignored: 'no' } }, ['labels.y', 'labels.z'])
      expect(i.labels).toEqual({ x: '1', y: '20', z: '3' })
      expect(i.updatedAt.getTime()).toBeGreaterThan(before.updatedAt.getTime())
      expect(i.createdAt.getTime()).toBe(before.createdAt.getTime())
      i = await sn.update({ name: 'a', labels: {} }, ['labels.x'])
      expect(i.labels).toEqual({ y: '20', z: '3' })
      i = await sn.update({ name: 'a', labels: { only: 'this' } }, ['labels'])
      expect(i.labels).toEqual({ only: 'this' })
      i = await sn.update({ name: 'a', labels: { all: 'new' } }, [])
      expect(i.labels).toEqual({ all: 'new' })
      expect((await sn.stat('a')).labels).toEqual({ all: 'new' })
      await expectKind(sn.update({ name: 'a', labels: {} }, ['parent']), 'InvalidArgument')
      await expectKind(sn.update({ name: 'a', labels: {} }, ['name']), 'InvalidArgument')
      expect((await sn.stat('a')).labels).toEqual({ all: 'new' })
    })

    it('labels round trip, with the 4096-byte limit', async () => {
      const { sn } = await setup()
      const labels = { 'containerd.io/snapshot.ref': 'sha256:' + 'a'.repeat(64), 'containerd.io/snapshot/nydus-blob': 'true', 'k.with.dots': 'v=1,2 "q"' }
      await sn.prepare('a', '', { labels })
      expect((await sn.stat('a')).labels).toEqual(labels)
      const key = 'containerd.io/snapshot/big'
      await sn.prepare('ok', '', { labels: { [key]: 'x'.repeat(4096 - key.length) } })
      await expectKind(sn.prepare('too-big', '', { labels: { [key]: 'x'.repeat(4097 - key.length) } }), 'InvalidArgument')
      await expectKind(sn.stat('too-big'), 'NotFound')
    })

    it('walk lists everything, and filters like containerd (OR of ANDs)', async () => {
      const { sn } = await setup()
      await sn.prepare('ex', '', { labels: { 'containerd.io/snapshot.ref': 'sha256:1' } })
      await sn.commit('sha256:1', 'ex', { labels: { 'containerd.io/snapshot.ref': 'sha256:1' } })
      await sn.prepare('ex2', 'sha256:1')
      await sn.commit('sha256:2', 'ex2', { labels: { 'containerd.io/snapshot.ref': 'sha256:2', other: 'x' } })
      await sn.prepare('ns/9/active', 'sha256:2')
      await sn.view('ns/9/view', 'sha256:1')
      const names = async (filters?: string[]): Promise<string[]> => (await collect(sn.walk(filters === undefined ? {} : { filters }))).map((i) => i.name)
      expect(await names()).toEqual(['ns/9/active', 'ns/9/view', 'sha256:1', 'sha256:2'])
      expect(await names(['kind==committed'])).toEqual(['sha256:1', 'sha256:2'])
      expect(await names(['kind==active'])).toEqual(['ns/9/active'])
      expect(await names(['kind!=committed'])).toEqual(['ns/9/active', 'ns/9/view'])
      // the exact shape containerd sends for the remote-snapshot lookup
      expect(await names(['labels."containerd.io/snapshot.ref"==sha256:2,parent=="sha256:1"'])).toEqual(['sha256:2'])
      expect(await names(['labels."containerd.io/snapshot.ref"==sha256:2,parent=="nope"'])).toEqual([])
      expect(await names(['labels.other'])).toEqual(['sha256:2'])
      expect(await names(['name~=^ns/9/'])).toEqual(['ns/9/active', 'ns/9/view'])
      expect(await names(['name==sha256:1', 'kind==view'])).toEqual(['ns/9/view', 'sha256:1'])
      await expectKind(names(['name~=(']), 'InvalidArgument')
    })

    it('stat inside walk', async () => {
      const { sn } = await setup()
      await sn.prepare('a', '')
      await sn.commit('b', 'a')
      await sn.prepare('c', 'b')
      for await (const i of sn.walk()) {
        expect(await sn.stat(i.name)).toEqual(i)
      }
    })

    it('usage counts the snapshot\'s own layer', async () => {
      const { sn } = await setup()
      await sn.prepare('a', '')
      const u0 = await sn.usage('a')
      expect(u0.inodes).toBeGreaterThanOrEqual(1)
      expect(u0.size).toBeGreaterThanOrEqual(0)
      await sn.commit('c', 'a')
      expect(await sn.usage('c')).toEqual(u0)
    })

    it('cleanup keeps every snapshot and is idempotent', async () => {
      const { sn } = await setup()
      await sn.prepare('a', '')
      await sn.commit('c', 'a')
      await sn.view('v', 'c')
      await sn.cleanup()
      await sn.cleanup()
      expect((await collect(sn.walk())).map((i) => i.name)).toEqual(['c', 'v'])
      expect((await sn.mounts('v')).length).toBeGreaterThan(0)
    })

    it('close twice is fine; calls after close fail', async () => {
      const { sn } = await setup()
      await sn.prepare('a', '')
      await sn.close()
      await sn.close()
      await expectKind(sn.stat('a'), 'FailedPrecondition')
    })

    it('an aborted signal stops an operation before it changes anything', async () => {
      const { sn } = await setup()
      const ac = new AbortController()
      ac.abort()
      let err: unknown
      try { await sn.prepare('a', '', { signal: ac.signal }) } catch (e) { err = e }
      expect(err).toBeDefined()
      await expectKind(sn.stat('a'), 'NotFound')
    })

    // ---- mount semantics ------------------------------------------------------------------

    describe.skipIf(!caps.mounts || !canMount())('mounts (root, overlayfs)', () => {
      async function withMount<T> (mounts: readonly Mount[], dir: string, fn: (dir: string) => Promise<T>): Promise<T> {
        await mkdir(dir, { recursive: true })
        await mountAll(mounts, dir)
        try {
          return await fn(dir)
        } finally {
          await unmountAll(dir)
        }
      }

      it('a chain of layers: files of layer N visible in N+1, deletions as whiteouts, read-only view', async () => {
        const { sn, work } = await setup()
        const mnt = join(work, 'mnt')
        await withMount(await sn.prepare('l1-a', ''), mnt, async (d) => {
          await writeFile(join(d, 'a'), 'one')
          await writeFile(join(d, 'b'), 'bee')
          await mkdir(join(d, 'dir'), { mode: 0o711 })
          await writeFile(join(d, 'dir', 'f'), 'f1')
        })
        await sn.commit('l1', 'l1-a')
        await withMount(await sn.prepare('l2-a', 'l1'), mnt, async (d) => {
          expect(await readFile(join(d, 'a'), 'utf8')).toBe('one')
          await unlink(join(d, 'b'))
          await writeFile(join(d, 'a'), 'two')
          await writeFile(join(d, 'c'), 'sea')
        })
        await sn.commit('l2', 'l2-a')
        expect((await sn.usage('l2')).inodes).toBeGreaterThanOrEqual(3)
        await withMount(await sn.prepare('l3-a', 'l2'), mnt, async (d) => {
          expect(await readFile(join(d, 'a'), 'utf8')).toBe('two')
          expect((await readdir(d)).sort()).toEqual(['a', 'c', 'dir'])
          expect((await stat(join(d, 'dir'))).mode & 0o777).toBe(0o711)
          await rm(join(d, 'dir'), { recursive: true })
        })
        await sn.commit('l3', 'l3-a')
        // a read-only view of the whole chain
        await withMount(await sn.view('v3', 'l3'), mnt, async (d) => {
          expect((await readdir(d)).sort()).toEqual(['a', 'c'])
          await expect(writeFile(join(d, 'x'), 'no')).rejects.toMatchObject({ code: 'EROFS' })
        })
        // a read-only view of a single layer (bind mount)
        await withMount(await sn.view('v1', 'l1'), mnt, async (d) => {
          expect((await readdir(d)).sort()).toEqual(['a', 'b', 'dir'])
          expect(await readFile(join(d, 'a'), 'utf8')).toBe('one')
          await expect(writeFile(join(d, 'x'), 'no')).rejects.toMatchObject({ code: 'EROFS' })
        })
        // the same mounts again from Mounts
        expect(await sn.mounts('v3')).toEqual(await sn.mounts('v3'))
        // lower layers are untouched by their children
        await withMount(await sn.view('v2', 'l2'), mnt, async (d) => {
          expect((await readdir(d)).sort()).toEqual(['a', 'c', 'dir'])
          expect(await readFile(join(d, 'dir', 'f'), 'utf8')).toBe('f1')
        })
      })

      it('root of a new snapshot is a 0755 directory', async () => {
        const { sn, work } = await setup()
        const mnt = join(work, 'mnt')
        await withMount(await sn.prepare('a', ''), mnt, async (d) => {
          expect((await stat(d)).mode & 0o777).toBe(0o755)
        })
      })

      it('128 layers mount', async () => {
        const { sn, work } = await setup()
        const mnt = join(work, 'mnt')
        let parent = ''
        for (let i = 0; i < 128; i++) {
          await withMount(await sn.prepare(`a${i}`, parent), mnt, async (d) => {
            await writeFile(join(d, `f${i}`), String(i))
          })
          await sn.commit(`c${i}`, `a${i}`)
          parent = `c${i}`
        }
        await withMount(await sn.view('v', parent), mnt, async (d) => {
          expect((await readdir(d)).length).toBe(128)
          expect(await readFile(join(d, 'f0'), 'utf8')).toBe('0')
        })
      })
    })
  })
}
