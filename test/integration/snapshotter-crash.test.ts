/**
 * kill -9 of `naiad snapshotter` while clients create, commit and remove snapshots: after a
 * restart on the same root the metadata is consistent with the directories (every snapshot has
 * its directory; after cleanup every directory belongs to a snapshot), and everything works.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { SnapshotsClient } from '../../snapshotter/grpc/client.ts'
import type { SnapshotInfo } from '../../snapshotter/snapshotter.ts'
import { NAIAD_BIN, startNaiad, type Daemon } from '../helpers/daemon.ts'

async function collect (it: AsyncIterable<SnapshotInfo>): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = []
  for await (const i of it) out.push(i)
  return out
}

describe.skipIf(!existsSync(NAIAD_BIN))('snapshotter crash safety', () => {
  const daemons: Daemon[] = []
  let base = ''
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.kill()
    if (base !== '') await rm(base, { recursive: true, force: true })
  })

  it('survives kill -9 during a stream of mutations', async () => {
    base = await mkdtemp('/tmp/naiad-snapcrash-')
    const root = join(base, 'root')
    const sock = join(base, 's.sock')
    const start = async (): Promise<Daemon> => {
      const d = startNaiad(['snapshotter', '--root', root, '--socket', sock, '--log-level', 'info'])
      daemons.push(d)
      await d.waitFor('ready', 30_000)
      return d
    }
    for (let round = 0; round < 3; round++) {
      const d = await start()
      const c = new SnapshotsClient({}, { socket: sock })
      let n = 0
      let stop = false
      const worker = async (w: number): Promise<void> => {
        let parent = ''
        while (!stop) {
          const k = `r${round}/w${w}/${n++}`
          try {
            await c.prepare(`${k}-a`, parent, { labels: { 'containerd.io/snapshot/i': String(n) } })
            await c.commit(k, `${k}-a`)
            if (n % 3 === 0) {
              await c.view(`${k}-v`, k)
              await c.remove(`${k}-v`)
            }
            parent = k
          } catch {
            return
          }
        }
      }
      const workers = [0, 1, 2, 3].map(worker)
      await new Promise((resolve) => setTimeout(resolve, 300 + round * 200))
      await d.kill()
      stop = true
      await Promise.all(workers)
      await c.close()
      expect(n).toBeGreaterThan(4)
    }
    // restart: consistent, and it works
    await start()
    const c = new SnapshotsClient({}, { socket: sock })
    try {
      const all = await collect(c.walk())
      expect(all.length).toBeGreaterThan(0)
      const dirs = new Set(await readdir(join(root, 'snapshots')))
      // start-up ran cleanup: only numeric directories remain, and exactly as many as snapshots
      expect([...dirs].every((x) => /^\d+$/.test(x))).toBe(true)
      expect(dirs.size).toBe(all.length)
      const names = new Set(all.map((i) => i.name))
      for (const i of all) {
        if (i.parent !== '') expect(names.has(i.parent)).toBe(true)
        expect((await c.stat(i.name)).kind).toBe(i.kind)
      }
      const top = all.find((i) => i.kind === 'committed')!
      await c.prepare('after-restart', top.name)
      await c.commit('after-restart-c', 'after-restart')
      // remove everything, children first
      let left = await collect(c.walk())
      while (left.length > 0) {
        const parents = new Set(left.map((i) => i.parent))
        for (const i of left.filter((x) => !parents.has(x.name))) await c.remove(i.name)
        left = await collect(c.walk())
      }
      await c.cleanup()
      expect(await readdir(join(root, 'snapshots'))).toEqual([])
    } finally {
      await c.close()
    }
  })
})
