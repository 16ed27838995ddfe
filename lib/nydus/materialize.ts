/**
 * Writes a Nydus image's whole filesystem into a directory: the tree from the RAFS bootstrap, the
 * file contents from the data blobs (each blob downloaded in full from the store, verified against
 * its digest, then every chunk decompressed and verified against its chunk digest). The snapshotter
 * uses it as the fallback when an image cannot be mounted lazily.
 *
 * Written: directories, regular files (sparse where the image's chunks leave holes is not
 * attempted; sizes are exact), symlinks, hard links, character and block devices, fifos, xattrs
 * (incl. security.capability), owners, permission and special bits, mtimes with nanoseconds.
 * Needs root (owners, devices, trusted.* xattrs). Sockets are skipped (tar cannot carry them
 * either). Node has no mknod, mkfifo, setxattr or nanosecond utimes, so `mknod`, `setfattr` and
 * `touch` (coreutils, attr) run as child processes: non-UTF-8 names are first created under an
 * ASCII temporary name and renamed at the end.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { chmod, lchown, link, lutimes, mkdir, open, rename, rm, symlink, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { promisify } from 'node:util'
import type { Bootstrap } from '../format/bootstrap.ts'
import { BlobReader } from '../format/blob.ts'
import type { BlobInfo, Inode } from '../format/types.ts'
import { major, minor } from '../format/types.ts'
import type { Digest } from '../digest/index.ts'
import { NaiadError, throwIfAborted } from '../errors/index.ts'
import type { ImageStore } from '../registry/store.ts'

const execFileP = promisify(execFile)

export interface MaterializeOptions {
  readonly signal?: AbortSignal
  /** Where the blobs are downloaded (deleted afterwards); default `<dir>.blobs`. */
  readonly blobDir?: string
  /** Told about entries that cannot be written (sockets). */
  readonly warn?: (msg: string, path: string) => void
}

export interface MaterializeStats {
  entries: number
  files: number
  bytes: number
  blobBytes: number
}

interface Pending {
  /** Working path (UTF-8, maybe through ASCII temporary names). */
  work: string
  /** Final path, raw bytes. */
  real: Buffer
  depth: number
}

const TOUCH_BATCH = 200

function utf8Safe (name: Buffer): string | undefined {
  const s = name.toString('utf8')
  return Buffer.from(s, 'utf8').equals(name) ? s : undefined
}

async function run (cmd: string, args: string[], signal: AbortSignal | undefined): Promise<void> {
  try {
    await execFileP(cmd, args, { ...(signal !== undefined ? { signal } : {}) })
  } catch (err) {
    const e = err as { stderr?: string, message: string }
    throw new NaiadError('NAIAD_IO', `${cmd} ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`, { cause: err })
  }
}

/** Downloads each blob the tree uses (whole, verified) and writes the tree at `dir` (must not exist). */
export async function materializeImage (dir: string, bootstrap: Bootstrap, store: ImageStore, opts: MaterializeOptions = {}): Promise<MaterializeStats> {
  const signal = opts.signal
  const tree = bootstrap.toTree()
  const blobDir = opts.blobDir ?? `${dir}.blobs`
  const stats: MaterializeStats = { entries: 0, files: 0, bytes: 0, blobBytes: 0 }
  const handles = new Map<BlobInfo, FileHandle>()
  await mkdir(blobDir, { recursive: true, mode: 0o700 })
  try {
    // 1. the blobs, whole and verified (the store checks the digest while streaming)
    const used = new Map<string, BlobInfo>()
    const walk = [tree]
    while (walk.length > 0) {
      const n = walk.pop() as Inode
      for (const c of n.chunks) used.set(c.blob.blobId, c.blob)
      for (const e of n.entries ?? []) walk.push(e.inode)
    }
    for (const [id, blob] of used) {
      throwIfAborted(signal)
      const file = join(blobDir, id)
      await pipeline(await store.getBlob(`sha256:${id}` as Digest, { size: blob.compressedSize, ...(signal !== undefined ? { signal } : {}) }), createWriteStream(file), ...(signal !== undefined ? [{ signal }] : []))
      stats.blobBytes += blob.compressedSize
      handles.set(blob, await open(file, 'r'))
    }
    // 2. the tree under working paths
    const tmpTag = randomBytes(8).toString('hex')
    let tmpSeq = 0
    const renames: Pending[] = []
    const links: Array<{ from: Inode, to: Buffer }> = []
    const firstReal = new Map<Inode, Buffer>()
    const dirs: Array<{ real: Buffer, inode: Inode }> = []
    const nsTimes = new Map<string, string[]>()
    const setTime = async (path: string, inode: Inode): Promise<void> => {
      if (inode.mtimeNsec === 0) {
        await lutimes(path, Number(inode.mtime), Number(inode.mtime))
        return
      }
      // touch reads "@-S.N" as -(S.N): a negative second count with a positive nanosecond part is written as one negative number
      const spec = inode.mtime >= 0n
        ? `@${inode.mtime.toString()}.${String(inode.mtimeNsec).padStart(9, '0')}`
        : `@-${(-inode.mtime - 1n).toString()}.${String(1_000_000_000 - inode.mtimeNsec).padStart(9, '0')}`
      const list = nsTimes.get(spec) ?? []
      list.push(path)
      nsTimes.set(spec, list)
    }
    // chown clears setuid/setgid bits and security.capability: owner first, then mode, then xattrs
    const attrs = async (path: string, inode: Inode): Promise<void> => {
      await lchown(path, inode.uid, inode.gid)
      if (inode.type !== 'symlink') await chmod(path, inode.perm)
      for (const x of inode.xattrs) {
        const name = utf8Safe(x.name)
        if (name === undefined) throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `xattr name ${x.name.toString('hex')} is not UTF-8`)
        await run('setfattr', ['-h', '-n', name, '-v', `0x${x.value.toString('hex')}`, path], signal)
      }
    }
    const writeFile = async (path: string, inode: Inode): Promise<void> => {
      const fh = await open(path, 'wx', 0o600)
      try {
        let off = 0
        for (const c of inode.chunks) {
          throwIfAborted(signal)
          const h = handles.get(c.blob)
          if (h === undefined) throw new NaiadError('NAIAD_FMT_CORRUPT', `chunk of blob ${c.blob.blobId}, which is not in the image's blob table`)
          const raw = Buffer.allocUnsafe(c.compressedSize)
          const { bytesRead } = await h.read(raw, 0, c.compressedSize, c.compressedOffset)
          const data = BlobReader.decodeChunk(c, raw.subarray(0, bytesRead))
          await fh.write(data, 0, data.length, off)
          off += data.length
        }
        await fh.truncate(inode.size)
      } finally {
        await fh.close()
      }
      stats.files++
      stats.bytes += inode.size
    }
    const visit = async (inode: Inode, work: string, real: Buffer, depth: number): Promise<void> => {
      throwIfAborted(signal)
      stats.entries++
      switch (inode.type) {
        case 'dir':
          await mkdir(work, { mode: 0o700 })
          break
        case 'file':
          if (firstReal.has(inode)) { links.push({ from: inode, to: real }); return }
          firstReal.set(inode, real)
          await writeFile(work, inode)
          break
        case 'symlink':
          await symlink(inode.symlink ?? Buffer.alloc(0), work)
          break
        case 'char':
        case 'block':
        case 'fifo':
          if (firstReal.has(inode)) { links.push({ from: inode, to: real }); return }
          firstReal.set(inode, real)
          await run('mknod', inode.type === 'fifo' ? [work, 'p'] : [work, inode.type === 'char' ? 'c' : 'b', String(major(inode.rdev)), String(minor(inode.rdev))], signal)
          break
        case 'socket':
          opts.warn?.('skipping a socket (cannot be materialized)', real.toString('utf8'))
          return
      }
      await attrs(work, inode)
      if (inode.type === 'dir') {
        dirs.push({ real, inode })
        for (const e of inode.entries ?? []) {
          const name = utf8Safe(e.name)
          const childReal = Buffer.concat([real, Buffer.from('/'), e.name])
          if (name !== undefined && !name.startsWith('.naiad-materialize-')) {
            await visit(e.inode, `${work}/${name}`, childReal, depth + 1)
          } else {
            const tmp = `${work}/.naiad-materialize-${tmpTag}-${tmpSeq++}`
            renames.push({ work: tmp, real: Buffer.concat([Buffer.from(`${work}/`), e.name]), depth: depth + 1 })
            await visit(e.inode, tmp, childReal, depth + 1)
          }
        }
      } else {
        await setTime(work, inode)
      }
    }
    await visit(tree, dir, Buffer.from(dir), 0)
    // nanosecond mtimes of non-directories, batched by time (their working paths still exist)
    const touch = async (): Promise<void> => {
      for (const [spec, paths] of nsTimes) {
        for (let i = 0; i < paths.length; i += TOUCH_BATCH) await run('touch', ['-h', '-m', '-a', '-d', spec, '--', ...paths.slice(i, i + TOUCH_BATCH)], signal)
      }
      nsTimes.clear()
    }
    await touch()
    // 3. non-UTF-8 names, deepest first (their parents still have their working paths)
    renames.sort((a, b) => b.depth - a.depth)
    for (const r of renames) await rename(r.work, r.real)
    // 4. hard links, between final paths
    for (const l of links) await link(firstReal.get(l.from) as Buffer, l.to)
    // 5. directory mtimes last (every change inside them is done)
    for (const d of dirs) {
      if (d.inode.mtimeNsec === 0) {
        await lutimes(d.real, Number(d.inode.mtime), Number(d.inode.mtime))
      } else {
        const s = utf8Safe(d.real)
        if (s !== undefined) await setTime(s, d.inode)
        else await lutimes(d.real, Number(d.inode.mtime) + d.inode.mtimeNsec / 1e9, Number(d.inode.mtime) + d.inode.mtimeNsec / 1e9) // µs precision: a non-UTF-8 directory path with a sub-second mtime
      }
    }
    await touch()
    return stats
  } finally {
    for (const h of handles.values()) await h.close().catch(() => {})
    await rm(blobDir, { recursive: true, force: true })
  }
}
