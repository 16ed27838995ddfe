/**
 * A FUSE session in pure TypeScript: opens /dev/fuse, mounts it with mount(8) (`-i`, so no
 * helper rewrites the options; the kernel gets `fd=3` of the mount process, which inherited our
 * /dev/fuse descriptor), then reads requests and writes replies on that descriptor.
 *
 * Why not fuse-native: docs/decisions/0002-fuse-without-native-binding.md (nanosecond times, raw
 * name bytes, inode-based protocol, real inode numbers for hard links).
 *
 * This folder is the only code that touches /dev/fuse; everything above it implements
 * `FuseFilesystem` and runs without FUSE.
 *
 * Threading: reads of /dev/fuse block until the kernel has a request, so they run in `readers`
 * (default 2) small worker threads doing blocking reads, never in libuv's threadpool (where they
 * would starve the cache's file I/O). Each request is transferred to the main thread, handled
 * asynchronously, and answered with one writev. A FUSE-serving process must never make a
 * synchronous call into its own mount (it would deadlock): nothing here or above does.
 */
import { spawn } from 'node:child_process'
import { open as openFile, writev as writevFd, writevSync, close as closeFd } from 'node:fs'
import { Worker } from 'node:worker_threads'
import { readFile, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import type { Logger } from '../../lib/log/index.ts'
import {
  Op, Errno, InitFlag, OpenFlag, IN_HEADER, OUT_HEADER, FUSE_KERNEL_MINOR, FUSE_KERNEL_VERSION,
  decodeInHeader, decodeInitIn, encodeInitOut, outHeader, cName, encodeEntryOut, encodeAttrOut,
  encodeOpenOut, decodeReadIn, decodeGetxattrIn, encodeGetxattrOut, encodeStatfsOut, direntSize,
  writeDirent, direntplusSize, ENTRY_OUT, ProtocolError, type Attr, type StatFs, type InHeader
} from './protocol.ts'

export { Errno, DT, type Attr, type StatFs } from './protocol.ts'

/** Thrown by a FuseFilesystem to answer with a specific errno. */
export class FuseErrno extends Error {
  constructor (readonly errno: number, message?: string) {
    super(message ?? `errno ${errno}`)
    this.name = 'FuseErrno'
  }
}

export interface FuseEntry { nodeid: number, attr: Attr }
export interface FuseDirEntry { name: Buffer, nodeid: number, type: number, attr: Attr }

/**
 * What the session needs from a filesystem, by FUSE node id (the root is 1). Implementations
 * throw FuseErrno for errno answers; any other error becomes EIO (the implementation logs the
 * cause with context).
 */
export interface FuseFilesystem {
  /** null: no such entry (cached by the kernel as a negative entry). */
  lookup (parent: number, name: Buffer): Promise<FuseEntry | null>
  getattr (nodeid: number): Promise<Attr>
  readlink (nodeid: number): Promise<Buffer>
  open (nodeid: number, flags: number): Promise<void>
  /**
   * Up to `size` bytes at `offset`. `into` (`size` bytes) may hold the result: the session reuses
   * it once the reply is written, so the result must not be kept.
   */
  read (nodeid: number, offset: number, size: number, opts?: { into?: Buffer }): Promise<Buffer>
  /**
   * Optional fast path: the data at once if it can be had without waiting (read synchronously
   * from somewhere that is not this mount into `into`, `size` bytes), else undefined, and the
   * session calls read().
   */
  readCached? (nodeid: number, offset: number, size: number, into: Buffer): Buffer | undefined
  opendir (nodeid: number): Promise<void>
  /** The whole listing including "." and ".."; the session pages through it by index. */
  readdir (nodeid: number): Promise<readonly FuseDirEntry[]>
  getxattr (nodeid: number, name: Buffer): Promise<Buffer | null>
  listxattr (nodeid: number): Promise<readonly Buffer[]>
  statfs (): Promise<StatFs>
}

export interface FuseSessionOptions {
  mountpoint: string
  /** fsname shown in /proc/mounts (e.g. the image reference). */
  fsname?: string
  /** Seconds the kernel may cache entries and attributes (images are immutable). */
  cacheTimeoutSec?: number
  allowOther?: boolean
  /** Concurrent reads of /dev/fuse (each holds a libuv pool thread). */
  readers?: number
  /** Largest READ the kernel may send (bytes; with FUSE_MAX_PAGES). */
  maxRead?: number
  /**
   * Kernel readahead window for this mount (KiB, written to /sys/class/bdi/<dev>/read_ahead_kb
   * after mounting; the kernel's default is 128 KiB, which turns a sequential read into many
   * small FUSE reads and Range requests). 0 leaves the default.
   */
  readAheadKb?: number
}

export interface FuseStats {
  requests: number
  errors: number
  bytesRead: number
  /** OPEN and OPENDIR requests (the kernel stops sending them once answered ENOSYS). */
  opens: number
}

const openP = promisify(openFile)
const closeP = promisify(closeFd)

const MAX_WRITE = 128 * 1024
/** Replies up to this size are written synchronously (see replyThen). */
const SYNC_REPLY_MAX = 64 * 1024
const BUF_SIZE = MAX_WRITE + 4096 + IN_HEADER

/** The reader thread (CommonJS, evaluated: no file to locate from dist/ or from source). */
const READER_WORKER = `
const { readSync } = require('node:fs')
const { parentPort, workerData } = require('node:worker_threads')
const { fd, size } = workerData
// one read buffer for the thread's life; each request is posted as a right-sized copy (requests
// of a read-only filesystem are small), so no large buffer is allocated per request
const buf = new Uint8Array(size)
for (;;) {
  let n
  try {
    n = readSync(fd, buf, 0, size, null)
  } catch (err) {
    if (err.code === 'ENOENT' || err.code === 'EINTR' || err.code === 'EAGAIN') continue
    parentPort.postMessage({ end: err.code || String(err) })
    break
  }
  if (n === 0) { parentPort.postMessage({ end: 'EOF' }); break }
  const req = buf.buffer.slice(0, n)
  parentPort.postMessage({ buf: req, n }, [req])
}
`

function runMount (args: string[], fd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'ignore', 'pipe']
    if (fd !== undefined) stdio.push(fd)
    const child = spawn(args[0]!, args.slice(1), { stdio })
    let err = ''
    child.stderr?.on('data', (c: Buffer) => { err += c.toString() })
    child.on('error', reject)
    child.on('exit', (code) => {
      if (code === 0) resolve()
      else reject(new Error(`${args.join(' ')} failed (exit ${String(code)}): ${err.trim()}`))
    })
  })
}

/** Unmounts a FUSE mountpoint; lazily if it is busy or its daemon is gone. */
export async function unmountFuse (mountpoint: string): Promise<void> {
  try {
    await runMount(['umount', mountpoint])
  } catch {
    await runMount(['umount', '-l', mountpoint])
  }
}

export class FuseSession {
  private fd = -1
  private closed: Promise<void> | undefined
  private loopDone: Promise<void> | undefined
  private initDone = false
  private readonly stats: FuseStats = { requests: 0, errors: 0, bytesRead: 0, opens: 0 }
  private readonly workers = new Set<Worker>()
  private readonly opts: Required<Omit<FuseSessionOptions, 'fsname'>> & { fsname: string }

  constructor (private readonly deps: { fs: FuseFilesystem, log: Logger }, opts: FuseSessionOptions) {
    this.opts = {
      mountpoint: opts.mountpoint,
      fsname: (opts.fsname ?? 'naiad').replace(/[,\s\\]/g, '_'),
      cacheTimeoutSec: opts.cacheTimeoutSec ?? 365 * 24 * 3600,
      allowOther: opts.allowOther ?? true,
      readers: opts.readers ?? 2,
      maxRead: opts.maxRead ?? 1024 * 1024,
      readAheadKb: opts.readAheadKb ?? 4096
    }
  }

  get mountpoint (): string { return this.opts.mountpoint }

  statistics (): FuseStats { return { ...this.stats } }

  /** Opens /dev/fuse, mounts, and starts serving. Resolves once the kernel's INIT is answered. */
  async mount (): Promise<void> {
    this.fd = await openP('/dev/fuse', 'r+')
    const options = ['fd=3', 'rootmode=40000', 'user_id=0', 'group_id=0', 'default_permissions', 'ro', `max_read=${this.opts.maxRead}`]
    if (this.opts.allowOther) options.push('allow_other')
    try {
      await runMount(['mount', '-i', '-n', '-t', 'fuse.naiad', '-o', options.join(','), this.opts.fsname, this.opts.mountpoint], this.fd)
    } catch (err) {
      await closeP(this.fd).catch(() => {})
      this.fd = -1
      throw err
    }
    let initResolve!: () => void
    const init = new Promise<void>((resolve) => { initResolve = resolve })
    this.onInit = initResolve
    this.loopDone = Promise.all(Array.from({ length: this.opts.readers }, async () => { await this.readLoop() })).then(() => {})
    await Promise.race([init, this.loopDone.then(() => { throw new Error('FUSE session ended before INIT') })])
    if (this.opts.readAheadKb > 0) await this.setReadAhead(this.opts.readAheadKb)
  }

  /** Sets the mount's readahead window through its backing device's sysfs entry. */
  private async setReadAhead (kb: number): Promise<void> {
    try {
      const info = await readFile('/proc/self/mountinfo', 'utf8')
      const esc = this.opts.mountpoint.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'))
      const line = info.split('\n').find(l => l.split(' ')[4] === esc && l.includes(' - fuse.naiad '))
      const dev = line?.split(' ')[2]
      if (dev === undefined) return
      await writeFile(`/sys/class/bdi/${dev}/read_ahead_kb`, String(kb))
    } catch (err) {
      this.deps.log.debug({ err }, 'could not set the readahead window (kernel default stays)')
    }
  }

  private onInit: (() => void) | undefined
  private noOpen = false
  private noOpendir = false

  /** Resolves when the kernel ends the session (unmount) or close() is called. */
  async done (): Promise<void> {
    await this.loopDone
  }

  /**
   * One reader: a worker thread blocked in read(2) on /dev/fuse, posting each request here. It
   * ends when the kernel ends the session (ENODEV after unmount) or the descriptor is closed.
   */
  private async readLoop (): Promise<void> {
    const worker = new Worker(READER_WORKER, { eval: true, workerData: { fd: this.fd, size: BUF_SIZE } })
    worker.unref()
    this.workers.add(worker)
    await new Promise<void>((resolve) => {
      worker.on('message', (m: { buf?: ArrayBuffer, n?: number, end?: string }) => {
        if (m.end !== undefined) {
          if (m.end !== 'ENODEV' && m.end !== 'EBADF') this.deps.log.error({ errno: m.end }, 'reading /dev/fuse failed')
          resolve()
          return
        }
        if (m.buf !== undefined && m.n !== undefined && this.fd >= 0) this.dispatch(Buffer.from(m.buf, 0, m.n))
      })
      worker.on('error', (err) => { this.deps.log.error({ err }, 'FUSE reader thread failed'); resolve() })
      worker.on('exit', () => { resolve() })
    })
    this.workers.delete(worker)
  }

  private reply (unique: bigint, error: number, ...parts: Buffer[]): void {
    this.replyThen(undefined, unique, error, ...parts)
  }

  /** reply(), then `done` once the kernel has the bytes (or the write failed). */
  private replyThen (done: (() => void) | undefined, unique: bigint, error: number, ...parts: Buffer[]): void {
    this.writeReply(unique, error, parts, false, done)
  }

  /** `sync`: written at once whatever its size (else only small replies are). */
  private writeReply (unique: bigint, error: number, parts: Buffer[], sync: boolean, done: (() => void) | undefined): void {
    if (this.fd < 0) { done?.(); return }
    const len = OUT_HEADER + parts.reduce((s, p) => s + p.length, 0)
    // one writev: the kernel takes a reply only as a single write, and no copy of the data
    const iov = [outHeader(len, -error, unique), ...parts]
    const failed = (err: NodeJS.ErrnoException | null): void => {
      // ENOENT: the request was interrupted and is gone; anything else is worth a log line
      if (err !== null && err.code !== 'ENOENT' && err.code !== 'EBADF') this.deps.log.warn({ err }, 'writing a FUSE reply failed')
    }
    if (sync || len <= SYNC_REPLY_MAX) {
      // small replies (everything but file data) are written at once: a write to /dev/fuse
      // never blocks, and a trip through libuv's threadpool would add latency to every
      // metadata request of a walk
      try {
        writevSync(this.fd, iov)
      } catch (err) {
        failed(err as NodeJS.ErrnoException)
      }
      done?.()
      return
    }
    writevFd(this.fd, iov, (err) => {
      done?.()
      failed(err)
    })
  }

  /**
   * Reply buffers for READ, reused: a fresh 1 MiB ArrayBuffer per read would make V8 run a full
   * garbage collection every few dozen reads (external memory pressure).
   */
  private readonly replyPool: Buffer[] = []

  private takeReplyBuffer (size: number): Buffer {
    if (size > this.opts.maxRead) return Buffer.allocUnsafeSlow(size)
    return this.replyPool.pop() ?? Buffer.allocUnsafeSlow(this.opts.maxRead)
  }

  private giveReplyBuffer (b: Buffer): void {
    if (b.length === this.opts.maxRead && this.replyPool.length < 64) this.replyPool.push(b)
  }

  private dispatch (req: Buffer): void {
    let h: InHeader
    try {
      h = decodeInHeader(req)
    } catch (err) {
      this.deps.log.error({ err }, 'malformed FUSE request')
      return
    }
    this.stats.requests++
    if (h.opcode === Op.READ && this.fastRead(h, req)) return
    this.handle(h, req).catch((err: unknown) => {
      if (err instanceof FuseErrno) {
        this.reply(h.unique, err.errno)
        return
      }
      this.stats.errors++
      if (!(err instanceof ProtocolError)) this.deps.log.error({ err, opcode: h.opcode, nodeid: h.nodeid }, 'FUSE request failed')
      this.reply(h.unique, err instanceof ProtocolError ? Errno.EINVAL : Errno.EIO)
    })
  }

  /**
   * READ of data the filesystem has at hand (cached chunks): read and answered synchronously, no
   * trip through libuv's threadpool (the copies from and to the page cache are fast).
   */
  private fastRead (h: InHeader, req: Buffer): boolean {
    const fs = this.deps.fs
    if (fs.readCached === undefined) return false
    let r: { offset: number, size: number }
    try {
      r = decodeReadIn(req)
    } catch {
      return false
    }
    if (r.size > this.opts.maxRead || r.size === 0) return false
    const into = this.takeReplyBuffer(r.size)
    let data: Buffer | undefined
    try {
      data = fs.readCached(h.nodeid, r.offset, r.size, into.subarray(0, r.size))
    } catch {
      data = undefined
    }
    if (data === undefined) {
      this.giveReplyBuffer(into)
      return false
    }
    this.stats.bytesRead += data.length
    this.writeReply(h.unique, 0, [data], true, undefined)
    this.giveReplyBuffer(into)
    return true
  }

  private async handle (h: InHeader, req: Buffer): Promise<void> {
    const fs = this.deps.fs
    const t = this.opts.cacheTimeoutSec
    switch (h.opcode) {
      case Op.INIT: {
        const i = decodeInitIn(req)
        if (i.major !== FUSE_KERNEL_VERSION) { this.reply(h.unique, Errno.EIO); return }
        const want = InitFlag.ASYNC_READ | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO | InitFlag.PARALLEL_DIROPS | InitFlag.POSIX_ACL | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS
        const flags = (want & i.flags) >>> 0
        // the kernel can do without OPEN/OPENDIR (and their RELEASEs): answered ENOSYS once, it
        // stops sending them and opens with FOPEN_KEEP_CACHE (| FOPEN_CACHE_DIR), which is what
        // we would answer anyway. Saves two round trips per open(2) (find opens every directory
        // twice). Older kernels would fail the open on ENOSYS: only when they say they can.
        this.noOpen = (i.flags & InitFlag.NO_OPEN_SUPPORT) !== 0
        this.noOpendir = (i.flags & InitFlag.NO_OPENDIR_SUPPORT) !== 0
        this.reply(h.unique, 0, encodeInitOut({
          minor: Math.min(i.minor, FUSE_KERNEL_MINOR),
          maxReadahead: Math.min(i.maxReadahead, this.opts.maxRead),
          flags,
          maxBackground: 64,
          congestionThreshold: 48,
          maxWrite: MAX_WRITE,
          timeGran: 1,
          maxPages: Math.max(1, Math.floor(this.opts.maxRead / 4096))
        }))
        this.initDone = true
        this.onInit?.()
        return
      }
      case Op.DESTROY:
        this.reply(h.unique, 0)
        return
      case Op.FORGET:
      case Op.BATCH_FORGET:
      case Op.INTERRUPT:
        return // no reply
      case Op.LOOKUP: {
        const name = cName(req, IN_HEADER)
        const e = await fs.lookup(h.nodeid, name)
        this.reply(h.unique, 0, e === null ? encodeEntryOut(0, null, { entrySec: t, attrSec: t }) : encodeEntryOut(e.nodeid, e.attr, { entrySec: t, attrSec: t }))
        return
      }
      case Op.GETATTR:
        this.reply(h.unique, 0, encodeAttrOut(await fs.getattr(h.nodeid), t))
        return
      case Op.READLINK:
        this.reply(h.unique, 0, await fs.readlink(h.nodeid))
        return
      case Op.OPEN: {
        this.stats.opens++
        const flags = req.length >= IN_HEADER + 4 ? req.readUInt32LE(IN_HEADER) : 0
        if ((flags & 3) !== 0 || (flags & 0o1000) !== 0) throw new FuseErrno(Errno.EROFS)
        await fs.open(h.nodeid, flags)
        // (the mount is read-only: the kernel refuses opens for writing before asking)
        if (this.noOpen) throw new FuseErrno(Errno.ENOSYS)
        this.reply(h.unique, 0, encodeOpenOut(OpenFlag.KEEP_CACHE))
        return
      }
      case Op.READ: {
        const r = decodeReadIn(req)
        const into = this.takeReplyBuffer(r.size)
        let data: Buffer
        try {
          data = await fs.read(h.nodeid, r.offset, r.size, { into: into.subarray(0, r.size) })
        } catch (err) {
          this.giveReplyBuffer(into)
          throw err
        }
        this.stats.bytesRead += data.length
        this.replyThen(() => { this.giveReplyBuffer(into) }, h.unique, 0, data)
        return
      }
      case Op.RELEASE:
      case Op.RELEASEDIR:
      case Op.FLUSH:
      case Op.FSYNC:
      case Op.FSYNCDIR:
        this.reply(h.unique, 0)
        return
      case Op.OPENDIR:
        this.stats.opens++
        await fs.opendir(h.nodeid)
        if (this.noOpendir) throw new FuseErrno(Errno.ENOSYS)
        this.reply(h.unique, 0, encodeOpenOut(OpenFlag.KEEP_CACHE | OpenFlag.CACHE_DIR))
        return
      case Op.READDIR:
      case Op.READDIRPLUS: {
        const r = decodeReadIn(req)
        const entries = await fs.readdir(h.nodeid)
        const plus = h.opcode === Op.READDIRPLUS
        const out = Buffer.alloc(r.size)
        let pos = 0
        for (let i = r.offset; i < entries.length; i++) {
          const e = entries[i]!
          const need = plus ? direntplusSize(e.name) : direntSize(e.name)
          if (pos + need > r.size) break
          if (plus) {
            // "." and ".." carry no entry (nodeid 0): the kernel takes no reference for them
            const dot = e.name.length <= 2 && e.name.every(c => c === 0x2e)
            encodeEntryOut(dot ? 0 : e.nodeid, dot ? null : e.attr, { entrySec: dot ? 0 : t, attrSec: dot ? 0 : t }, out, pos)
            pos = writeDirent(out, pos + ENTRY_OUT, e.attr.ino, i + 1, e.type, e.name)
          } else {
            pos = writeDirent(out, pos, e.attr.ino, i + 1, e.type, e.name)
          }
        }
        this.reply(h.unique, 0, out.subarray(0, pos))
        return
      }
      case Op.GETXATTR: {
        const g = decodeGetxattrIn(req)
        const v = await fs.getxattr(h.nodeid, g.name)
        if (v === null) throw new FuseErrno(Errno.ENODATA)
        if (g.size === 0) this.reply(h.unique, 0, encodeGetxattrOut(v.length))
        else if (g.size < v.length) throw new FuseErrno(Errno.ERANGE)
        else this.reply(h.unique, 0, v)
        return
      }
      case Op.LISTXATTR: {
        const size = req.length >= IN_HEADER + 4 ? req.readUInt32LE(IN_HEADER) : 0
        const names = await fs.listxattr(h.nodeid)
        const list = Buffer.concat(names.flatMap(n => [n, Buffer.from([0])]))
        if (size === 0) this.reply(h.unique, 0, encodeGetxattrOut(list.length))
        else if (size < list.length) throw new FuseErrno(Errno.ERANGE)
        else this.reply(h.unique, 0, list)
        return
      }
      case Op.STATFS:
        this.reply(h.unique, 0, encodeStatfsOut(await fs.statfs()))
        return
      case Op.SETATTR: case Op.SYMLINK: case Op.MKNOD: case Op.MKDIR: case Op.UNLINK: case Op.RMDIR:
      case Op.RENAME: case Op.LINK: case Op.WRITE: case Op.SETXATTR: case Op.REMOVEXATTR: case Op.CREATE:
      case Op.RENAME2: case Op.FALLOCATE: case Op.COPY_FILE_RANGE: case Op.TMPFILE:
        throw new FuseErrno(Errno.EROFS)
      default:
        // ACCESS (default_permissions does the checks), STATX, LSEEK, locks, ioctl, poll…: the
        // kernel falls back or remembers the ENOSYS
        throw new FuseErrno(Errno.ENOSYS)
    }
  }

  /** True once the kernel's INIT was answered. */
  get ready (): boolean { return this.initDone }

  /**
   * Unmounts (lazily if busy) and closes /dev/fuse. Safe to call twice; concurrent callers share
   * one completion.
   */
  async close (): Promise<void> {
    this.closed ??= (async () => {
      if (this.fd >= 0) {
        await unmountFuse(this.opts.mountpoint).catch((err: unknown) => { this.deps.log.warn({ err, mountpoint: this.opts.mountpoint }, 'unmount failed') })
        const fd = this.fd
        this.fd = -1
        await closeP(fd).catch(() => {})
      }
      await Promise.race([this.loopDone, new Promise(resolve => setTimeout(resolve, 2000).unref())])
    })()
    await this.closed
  }
}
