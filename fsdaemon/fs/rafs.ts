/**
 * RafsFilesystem: a RAFS v6 image as a FUSE filesystem, by inode. Metadata comes straight from the
 * bootstrap (decoded lazily, cached per nid); file data comes from the per-blob chunk caches,
 * which fetch missing chunks through the mount's source chain and verify each against its digest.
 *
 * Node ids: the root is FUSE node 1; every other inode is its nid + 2 (so no nid maps to 1), and
 * st_ino is the nid itself, so hard links share an inode number, as under the kernel's EROFS.
 */
import type { Bootstrap, BootstrapInode } from '../../lib/format/bootstrap.ts'
import type { BlobInfo, ChunkRef } from '../../lib/format/types.ts'
import type { Logger } from '../../lib/log/index.ts'
import { isNaiadError } from '../../lib/errors/index.ts'
import { FuseErrno, Errno, DT, type Attr, type DirectExtent, type FuseDirEntry, type FuseEntry, type FuseFilesystem, type StatFs } from '../fuse/session.ts'
import type { ChunkFetcher, ChunkReader, FetchOptions } from '../types.ts'

const TYPE_MODE: Record<BootstrapInode['type'], number> = { socket: 0o140000, symlink: 0o120000, file: 0o100000, block: 0o060000, dir: 0o040000, char: 0o020000, fifo: 0o010000 }
const TYPE_DT: Record<BootstrapInode['type'], number> = { socket: DT.socket, symlink: DT.symlink, file: DT.file, block: DT.block, dir: DT.dir, char: DT.char, fifo: DT.fifo }

export interface RafsFilesystemDeps {
  bootstrap: Bootstrap
  /** The chunk cache of a blob (shared between mounts). */
  cacheFor: (blob: BlobInfo) => ChunkReader
  fetcher: ChunkFetcher
  log: Logger
  /**
   * Optional: opens an inode (`nid`, a regular file of `size` bytes) in a view of this image that
   * is not on this mount and reads straight from the chunk cache (kernel-view.ts); for kernel
   * passthrough of files whose chunks are all cached.
   */
  backing?: { open: (nid: number, size: number) => Promise<number | undefined> }
}

export interface RafsFilesystemOptions {
  /** On a cache miss, also fetch following chunks of the same file up to this many bytes. */
  amplifyBytes?: number
  /**
   * Sequential readahead: while a file is read sequentially, keep the next this-many bytes of
   * its chunks fetching in the background (merged into large Range requests, several in flight).
   * 0 turns it off.
   */
  readaheadBytes?: number
}

export interface ReadStats { reads: number, bytes: number, eio: number }

export class RafsFilesystem implements FuseFilesystem {
  private readonly b: Bootstrap
  private readonly dirCache = new Map<number, FuseDirEntry[]>()
  private readonly amplify: number
  private readonly readahead: number
  /** Where the last read of each recently read file ended (to detect sequential reads). */
  private readonly lastEnd = new Map<number, number>()
  /** Per file: the chunk index up to which readahead has been started. */
  private readonly aheadUntil = new Map<number, number>()
  readonly readStats: ReadStats = { reads: 0, bytes: 0, eio: 0 }

  constructor (private readonly deps: RafsFilesystemDeps, opts: RafsFilesystemOptions = {}) {
    this.b = deps.bootstrap
    this.amplify = opts.amplifyBytes ?? 0
    this.readahead = opts.readaheadBytes ?? 32 * 1024 * 1024
  }

  private nid (nodeid: number): number {
    if (nodeid === 1) return this.b.rootNid
    if (nodeid < 2) throw new FuseErrno(Errno.ENOENT)
    return nodeid - 2
  }

  private nodeid (nid: number): number {
    return nid === this.b.rootNid ? 1 : nid + 2
  }

  private inode (nid: number): BootstrapInode {
    try {
      return this.b.inode(nid)
    } catch (err) {
      // a corrupt or out-of-range inode: the kernel asked for something we never handed out
      this.deps.log.error({ err, nid }, 'bad inode')
      throw new FuseErrno(Errno.EIO)
    }
  }

  attrOf (nid: number): Attr {
    const a = this.inode(nid)
    return {
      ino: nid,
      size: a.size,
      blocks: Math.ceil(a.size / 512),
      mtime: a.mtime,
      mtimeNsec: a.mtimeNsec,
      mode: TYPE_MODE[a.type] | a.perm,
      nlink: a.nlink,
      uid: a.uid,
      gid: a.gid,
      rdev: a.rdev,
      blksize: 4096
    }
  }

  async lookup (parent: number, name: Buffer): Promise<FuseEntry | null> {
    const dir = this.nid(parent)
    if (this.inode(dir).type !== 'dir') throw new FuseErrno(Errno.ENOTDIR)
    if (name.length > 255) throw new FuseErrno(Errno.ENAMETOOLONG)
    const e = this.b.lookup(dir, name)
    if (e === undefined) return null
    return { nodeid: this.nodeid(e.nid), attr: this.attrOf(e.nid) }
  }

  async getattr (nodeid: number): Promise<Attr> {
    return this.attrOf(this.nid(nodeid))
  }

  async readlink (nodeid: number): Promise<Buffer> {
    const nid = this.nid(nodeid)
    if (this.inode(nid).type !== 'symlink') throw new FuseErrno(Errno.EINVAL)
    return this.b.readlink(nid)
  }

  async open (nodeid: number): Promise<void> {
    const t = this.inode(this.nid(nodeid)).type
    if (t === 'dir') throw new FuseErrno(Errno.EISDIR)
  }

  /**
   * Kernel passthrough: only for regular files whose chunks are all in the cache (for good).
   * `fetchFirst`: fetch the missing chunks first (an inode a dead predecessor handed to the
   * kernel must be handed again, and the ready bits of its last second may not have been saved).
   */
  async backingFile (nodeid: number, fetchFirst = false): Promise<number | undefined> {
    const backing = this.deps.backing
    if (backing === undefined) return undefined
    const nid = this.nid(nodeid)
    const a = this.inode(nid)
    if (a.type !== 'file' || a.size === 0) return undefined
    const missing = new Map<BlobInfo, ChunkRef[]>()
    for (const c of this.b.chunks(nid)) {
      if (this.deps.cacheFor(c.blob).isReady(c.index)) continue
      if (!fetchFirst) return undefined
      const list = missing.get(c.blob)
      if (list === undefined) missing.set(c.blob, [c])
      else list.push(c)
    }
    for (const [blob, refs] of missing) await this.deps.cacheFor(blob).ensure(refs, this.deps.fetcher, { priority: 'ondemand' })
    return await backing.open(nid, a.size)
  }

  async opendir (nodeid: number): Promise<void> {
    if (this.inode(this.nid(nodeid)).type !== 'dir') throw new FuseErrno(Errno.ENOTDIR)
  }

  async readdir (nodeid: number): Promise<readonly FuseDirEntry[]> {
    const nid = this.nid(nodeid)
    const have = this.dirCache.get(nid)
    if (have !== undefined) return have
    if (this.inode(nid).type !== 'dir') throw new FuseErrno(Errno.ENOTDIR)
    const out: FuseDirEntry[] = []
    for (const e of this.b.readdir(nid)) {
      out.push({ name: e.name, nodeid: this.nodeid(e.nid), type: TYPE_DT[e.type], attr: this.attrOf(e.nid) })
    }
    this.dirCache.set(nid, out)
    return out
  }

  async getxattr (nodeid: number, name: Buffer): Promise<Buffer | null> {
    const x = this.b.xattrs(this.nid(nodeid)).find(a => a.name.equals(name))
    return x === undefined ? null : x.value
  }

  async listxattr (nodeid: number): Promise<readonly Buffer[]> {
    return this.b.xattrs(this.nid(nodeid)).map(x => x.name)
  }

  async statfs (): Promise<StatFs> {
    const blocks = this.b.blobs.reduce((n, x) => n + Math.ceil(x.uncompressedSize / 4096), 0)
    return { blocks, bfree: 0, bavail: 0, files: this.b.inodeCount, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 }
  }

  /**
   * Reads file data through the chunk caches. With `into` (at least `size` bytes), the result is
   * a view of it: cached chunks are read from the cache file straight into it.
   */
  async read (nodeid: number, offset: number, size: number, opts: FetchOptions & { into?: Buffer } = {}): Promise<Buffer> {
    const nid = this.nid(nodeid)
    const a = this.inode(nid)
    if (a.type === 'dir') throw new FuseErrno(Errno.EISDIR)
    if (a.type !== 'file') throw new FuseErrno(Errno.EINVAL)
    if (offset >= a.size || size === 0) return Buffer.alloc(0)
    const end = Math.min(a.size, offset + size)
    const chunks = this.b.chunks(nid)
    const cs = this.b.chunkSize
    const first = Math.floor(offset / cs)
    const last = Math.floor((end - 1) / cs)
    this.readStats.reads++
    this.track(nid, chunks, offset, end, last)
    const into = opts.into !== undefined && opts.into.length >= end - offset ? opts.into : undefined
    const { into: _into, ...fetchOpts } = opts
    try {
      if (this.amplify > 0) await this.amplifyMisses(chunks, first, last, fetchOpts)
      // every part settles before this returns or throws: none may still write into `into`
      const settled = await Promise.allSettled(Array.from({ length: last - first + 1 }, async (_, k) => {
        const i = first + k
        const ref = chunks[i]
        if (ref === undefined) throw new FuseErrno(Errno.EIO, `inode ${nid} has no chunk ${i}`)
        const from = i === first ? offset - i * cs : 0
        const to = i === last ? end - i * cs : ref.uncompressedSize
        if (into === undefined) return await this.deps.cacheFor(ref.blob).read(ref, from, to - from, this.deps.fetcher, fetchOpts)
        const pos = i * cs + from - offset
        const dst = into.subarray(pos, pos + to - from)
        const got = await this.deps.cacheFor(ref.blob).read(ref, from, to - from, this.deps.fetcher, { ...fetchOpts, into: dst })
        if (got.buffer !== dst.buffer || got.byteOffset !== dst.byteOffset) got.copy(dst)
        return dst
      }))
      const parts: Buffer[] = []
      for (const r of settled) {
        if (r.status === 'rejected') throw r.reason
        parts.push(r.value)
      }
      const out = into !== undefined ? into.subarray(0, end - offset) : parts.length === 1 ? parts[0]! : Buffer.concat(parts)
      this.readStats.bytes += out.length
      return out
    } catch (err) {
      if (err instanceof FuseErrno) throw err
      this.readStats.eio++
      this.deps.log.error({
        err,
        nid,
        offset,
        length: end - offset,
        ...(isNaiadError(err) ? { code: err.code, ...err.details } : {})
      }, 'read failed after retries on every source: answering EIO')
      throw new FuseErrno(Errno.EIO)
    }
  }

  /**
   * Sequential-read detection and readahead, for a read of [offset, end) of `nid` whose last
   * chunk is `last`.
   */
  private track (nid: number, chunks: ChunkRef[], offset: number, end: number, last: number): void {
    const cs = this.b.chunkSize
    // the kernel sends a sequential read's pieces concurrently and slightly out of order: treat a
    // read near where the last one ended as sequential
    const prev = this.lastEnd.get(nid)
    const sequential = offset === 0 || (prev !== undefined && Math.abs(offset - prev) <= 2 * Math.max(cs, this.readahead))
    if (this.lastEnd.size > 4096) { this.lastEnd.clear(); this.aheadUntil.clear() }
    if (prev === undefined || end > prev) this.lastEnd.set(nid, end)
    if (sequential && this.readahead > 0) {
      // start a whole window at a time once less than half of it is left, so the cache merges
      // it into large requests (a window sliding chunk by chunk would fetch chunk by chunk)
      const window = Math.max(1, Math.ceil(this.readahead / cs))
      const until = this.aheadUntil.get(nid) ?? 0
      if (until - last <= window / 2) {
        const from = Math.max(until, last + 1)
        this.aheadUntil.set(nid, last + 1 + window)
        this.readAhead(chunks, from, last + 1 + window)
      }
    }
  }

  /**
   * The fast path for data already in the cache files: reads [offset, offset + size) of a
   * regular file into `into` synchronously and returns the view of it holding the data, or
   * undefined (nothing done) when any chunk of it is not ready or anything is unusual; read()
   * handles those.
   */
  readCached (nodeid: number, offset: number, size: number, into: Buffer): Buffer | undefined {
    if (nodeid < 1 || size === 0 || into.length < size) return undefined
    const nid = nodeid === 1 ? this.b.rootNid : nodeid - 2
    let a: BootstrapInode
    try {
      a = this.b.inode(nid)
    } catch {
      return undefined
    }
    if (a.type !== 'file' || offset >= a.size) return undefined
    const end = Math.min(a.size, offset + size)
    const chunks = this.b.chunks(nid)
    const cs = this.b.chunkSize
    const first = Math.floor(offset / cs)
    const last = Math.floor((end - 1) / cs)
    for (let i = first; i <= last; i++) {
      const ref = chunks[i]
      if (ref === undefined) return undefined
      const cache = this.deps.cacheFor(ref.blob)
      if (cache.readReadySync === undefined || !cache.isReady(ref.index)) return undefined
    }
    for (let i = first; i <= last; i++) {
      const ref = chunks[i]!
      const from = i === first ? offset - i * cs : 0
      const to = i === last ? end - i * cs : ref.uncompressedSize
      const pos = i * cs + from - offset
      if (!this.deps.cacheFor(ref.blob).readReadySync!(ref, from, into.subarray(pos, pos + to - from))) return undefined
    }
    this.readStats.reads++
    this.readStats.bytes += end - offset
    this.track(nid, chunks, offset, end, last)
    return into.subarray(0, end - offset)
  }

  /**
   * Where a regular file's bytes lie in one piece of a cache file, when they do: its chunks in
   * one blob, each following the last in the blob's uncompressed layout and in the blob's chunk
   * table (as the converter writes a file; not for chunks deduplicated from elsewhere). With the
   * blob's shared ready bits, so readers can tell which parts are cached.
   */
  directExtent (nodeid: number): DirectExtent | undefined {
    if (nodeid < 1) return undefined
    const nid = nodeid === 1 ? this.b.rootNid : nodeid - 2
    let a: BootstrapInode
    try {
      a = this.b.inode(nid)
    } catch {
      return undefined
    }
    if (a.type !== 'file' || a.size === 0) return undefined
    const chunks = this.b.chunks(nid)
    const cs = this.b.chunkSize
    const n = Math.ceil(a.size / cs)
    const c0 = chunks[0]
    if (c0 === undefined || chunks.length !== n) return undefined
    const cache = this.deps.cacheFor(c0.blob)
    const path = cache.dataPath
    const bits = cache.readyBits
    if (path === undefined || bits === undefined || c0.uncompressedOffset + a.size > c0.blob.uncompressedSize || c0.index + n > c0.blob.chunkCount) return undefined
    for (let i = 0; i < n; i++) {
      const c = chunks[i]!
      const size = i < n - 1 ? cs : a.size - i * cs
      if (c.blob !== c0.blob || c.index !== c0.index + i || c.uncompressedOffset !== c0.uncompressedOffset + i * cs || c.uncompressedSize !== size) return undefined
    }
    const window = Math.max(1, Math.ceil(this.readahead / cs))
    return {
      path,
      offset: c0.uncompressedOffset,
      size: a.size,
      ready: { bits, first: c0.index, chunkSize: cs },
      served: (reads, bytes) => {
        this.readStats.reads += reads
        this.readStats.bytes += bytes
        cache.countHits?.(reads)
      },
      seen: (offset, end) => {
        this.track(nid, chunks, offset, Math.min(end, a.size), Math.floor((Math.min(end, a.size) - 1) / cs))
      },
      // track() starts the next window once a read's last chunk is within half a window of
      // where readahead has got to
      noticeFrom: () => {
        if (this.readahead <= 0) return Number.MAX_SAFE_INTEGER
        const until = this.aheadUntil.get(nid)
        if (until === undefined) return 0
        return until >= n ? Number.MAX_SAFE_INTEGER : Math.max(0, Math.ceil(until - window / 2))
      }
    }
  }

  /**
   * Starts fetching the chunks [from, to) that are not cached, without waiting: the cache merges them into few requests and later reads join them.
   */
  private readAhead (chunks: ChunkRef[], from: number, to: number): void {
    const byBlob = new Map<BlobInfo, ChunkRef[]>()
    for (let i = from; i < chunks.length && i < to; i++) {
      const c = chunks[i]!
      const cache = this.deps.cacheFor(c.blob)
      if (cache.isReady(c.index)) continue
      const list = byBlob.get(c.blob)
      if (list === undefined) byBlob.set(c.blob, [c])
      else list.push(c)
    }
    for (const [blob, refs] of byBlob) {
      this.deps.cacheFor(blob).ensure(refs, this.deps.fetcher, { priority: 'ondemand' }).catch((err: unknown) => {
        this.deps.log.debug({ err, blobId: blob.blobId }, 'readahead failed (the read itself will retry)')
      })
    }
  }

  /** On a miss, fetch the following chunks of the file too (merged into one request by the cache). */
  private async amplifyMisses (chunks: ChunkRef[], first: number, last: number, opts: FetchOptions): Promise<void> {
    const start = chunks[first]
    if (start === undefined || this.deps.cacheFor(start.blob).isReady(start.index)) return
    const want: ChunkRef[] = []
    let bytes = 0
    for (let i = first; i < chunks.length; i++) {
      const c = chunks[i]!
      if (c.blob !== start.blob) break
      if (i > last && bytes >= this.amplify) break
      if (!this.deps.cacheFor(c.blob).isReady(c.index)) want.push(c)
      bytes += c.uncompressedSize
    }
    await this.deps.cacheFor(start.blob).ensure(want, this.deps.fetcher, opts)
  }
}
