/**
 * Directory listings through the real kernel, served by the FUSE session's reader threads: a
 * directory listed with attributes from its start gets its subdirectories' listings encoded ahead
 * and handed to the reader threads, which answer them (and the empty READDIR that ends every
 * listing) without the main thread. The walk must see exactly the tree, and the main thread only
 * a handful of requests. A directory too large for one reply is listed by the main thread as
 * before. (find runs as a child process: this process serves the mount.)
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { nullLogger } from '../../lib/log/index.ts'
import { DT, FuseErrno, Errno, FuseSession, type Attr, type FuseDirEntry, type FuseFilesystem } from '../../fsdaemon/fuse/session.ts'

const run = promisify(execFile)

const attr = (ino: number, dir: boolean, size = 0): Attr => ({
  ino, size, blocks: Math.ceil(size / 512), mtime: 1_700_000_000n, mtimeNsec: 0, mode: dir ? 0o40755 : 0o100640, nlink: dir ? 2 : 1, uid: 0, gid: 0, rdev: 0, blksize: 4096
})

/** A tree in memory: root → 20 directories of 30 files each, plus "big" with 600 long names. */
function tree (): { fs: FuseFilesystem, expected: string[], readdirs: () => number } {
  const listing = new Map<number, FuseDirEntry[]>()
  const expected: string[] = [' 755 d 0']
  const dot = (self: number, parent: number): FuseDirEntry[] => [
    { name: Buffer.from('.'), nodeid: self, type: DT.dir, attr: attr(self, true) },
    { name: Buffer.from('..'), nodeid: parent, type: DT.dir, attr: attr(parent, true) }
  ]
  const root = dot(1, 1)
  let next = 1000
  const dir = (name: string, nodeid: number, names: string[]): void => {
    root.push({ name: Buffer.from(name), nodeid, type: DT.dir, attr: attr(nodeid, true) })
    expected.push(`${name} 755 d 0`)
    const es = dot(nodeid, 1)
    for (const [i, f] of names.entries()) {
      const id = next++
      es.push({ name: Buffer.from(f), nodeid: id, type: DT.file, attr: attr(id, false, i) })
      expected.push(`${name}/${f} 640 f ${i}`)
    }
    listing.set(nodeid, es)
  }
  for (let d = 0; d < 20; d++) dir(`d${d}`, 2 + d, Array.from({ length: 30 }, (_, i) => `f${i}.txt`))
  dir('big', 100, Array.from({ length: 600 }, (_, i) => `${'long-name-'.repeat(8)}${i}`))
  listing.set(1, root)
  let readdirs = 0
  const fs: FuseFilesystem = {
    lookup: async (parent, name) => {
      const e = listing.get(parent)?.find(x => x.name.equals(name))
      return e === undefined ? null : { nodeid: e.nodeid, attr: e.attr }
    },
    getattr: async (n) => attr(n, listing.has(n)),
    readlink: async () => { throw new FuseErrno(Errno.EINVAL) },
    open: async () => {},
    opendir: async () => {},
    read: async () => Buffer.alloc(0),
    readdir: async (n) => {
      readdirs++
      const l = listing.get(n)
      if (l === undefined) throw new FuseErrno(Errno.ENOTDIR)
      return l
    },
    getxattr: async () => null,
    listxattr: async () => [],
    statfs: async () => ({ blocks: 1, bfree: 0, bavail: 0, files: next, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 })
  }
  return { fs, expected: expected.sort(), readdirs: () => readdirs }
}

describe('directory walks answered by the FUSE reader threads', () => {
  let mnt: string
  let session: FuseSession
  const t = tree()
  beforeAll(async () => {
    mnt = mkdtempSync(join(tmpdir(), 'naiad-walk-'))
    session = new FuseSession({ fs: t.fs, log: nullLogger() }, { mountpoint: mnt, fsname: 'walk' })
    await session.mount()
  })
  afterAll(async () => {
    await session?.close()
    rmSync(mnt, { recursive: true, force: true })
  })

  it('find sees exactly the tree; subdirectory listings skip the main thread', async () => {
    const before = session.statistics().requests
    const { stdout } = await run('find', [mnt, '-printf', '%P %m %y %s\n'], { maxBuffer: 1 << 24 })
    expect(stdout.split('\n').filter(l => l !== '').sort()).toEqual(t.expected)
    // 22 directories: the root's listing and the big one's (several replies, all with
    // attributes: no LOOKUP per entry) reach the main thread; the 20 small ones and every
    // listing's empty end are answered by the reader threads (without that: over 40 requests)
    const mainThread = session.statistics().requests - before
    expect(mainThread).toBeLessThan(20)
  })

  it('a second walk is served by the kernel\'s caches', async () => {
    const before = session.statistics().requests
    const { stdout } = await run('find', [mnt, '-type', 'f'], { maxBuffer: 1 << 24 })
    expect(stdout.trim().split('\n')).toHaveLength(20 * 30 + 600)
    expect(session.statistics().requests - before).toBeLessThan(5)
  })
})
