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
import { closeSync, existsSync } from 'node:fs'
import { open as openFile, writev as writevFd, writevSync, close as closeFd } from 'node:fs'
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads'
import { readFile, writeFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import type { Logger } from '../../lib/log/index.ts'
import { ModeTable, type OpenMode } from './modes.ts'
import { nativeFuse, nativeFuseProblem } from './native.ts'
import {
  DT, Op, Errno, InitFlag, OpenFlag, IN_HEADER, OUT_HEADER, FUSE_KERNEL_MINOR, FUSE_KERNEL_VERSION,
  decodeInHeader, decodeInitIn, encodeInitOut, InitFlag2, FUSE_MINOR_PASSTHROUGH, decodeBatchForget, type InitIn, outHeader, cName, encodeEntryOut, encodeAttrOut,
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
   * Optional: where a regular file's bytes lie in one piece in a local file (not on this mount),
   * if they do, and which parts are there yet (`ready`; bytes once there never change while
   * mounted). The session's reader threads then answer the READs of parts that are there
   * themselves; `served` is called (later, batched) with what they served, and `seen` with
   * reads from the piece `noticeFrom()` on (for readahead).
   */
  directExtent? (nodeid: number): DirectExtent | undefined
  /**
   * Optional fast path: the data at once if it can be had without waiting (read synchronously
   * from somewhere that is not this mount into `into`, `size` bytes), else undefined, and the
   * session calls read().
   */
  readCached? (nodeid: number, offset: number, size: number, into: Buffer): Buffer | undefined
  /**
   * Optional (kernel passthrough, docs/decisions/0005-kernel-passthrough.md): a read-only
   * descriptor of a file that is not on this mount and holds exactly this regular file's bytes,
   * all of them at hand for good (they never change while mounted), or undefined. The session
   * registers it with the kernel, which then serves the file's reads, mmap and splice from it
   * without asking us; the session closes the descriptor. `fetchFirst`: the file must be handed
   * to the kernel (it is open in passthrough already): get whatever is missing first.
   */
  backingFile? (nodeid: number, fetchFirst?: boolean): Promise<number | undefined>
  opendir (nodeid: number): Promise<void>
  /** The whole listing including "." and ".."; the session pages through it by index. */
  readdir (nodeid: number): Promise<readonly FuseDirEntry[]>
  getxattr (nodeid: number, name: Buffer): Promise<Buffer | null>
  listxattr (nodeid: number): Promise<readonly Buffer[]>
  statfs (): Promise<StatFs>
}

export interface DirectExtent {
  path: string
  /** Where the file's first byte is in `path`. */
  offset: number
  /** The file's size. */
  size: number
  /**
   * Which parts of `path` hold the file's bytes yet: piece k (`chunkSize` bytes from the file's
   * start) is there when bit `first + k` of `bits` (shared memory) is set. Without: all of it.
   */
  ready?: { bits: Uint8Array, first: number, chunkSize: number }
  served: (reads: number, bytes: number) => void
  /** A read of [offset, end) the reader threads answered that the filesystem wants to know of. */
  seen?: (offset: number, end: number) => void
  /** From which piece on the filesystem wants to hear of reads (`seen`). */
  noticeFrom?: () => number
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
  /**
   * Start a holder process for the /dev/fuse descriptor (lib/fsdapi/failover.ts), so that the
   * connection outlives this process; default false.
   */
  holder?: boolean
  /** Largest READ the kernel may send (bytes; with FUSE_MAX_PAGES). */
  maxRead?: number
  /**
   * Kernel readahead window for this mount (KiB, written to /sys/class/bdi/<dev>/read_ahead_kb
   * after mounting; the kernel's default is 128 KiB, which turns a sequential read into many
   * small FUSE reads and Range requests). 0 leaves the default.
   */
  readAheadKb?: number
  /**
   * Kernel passthrough for files the filesystem has a backing file for (`backingFile`; needs
   * Linux 6.9+ and the native addon); default false.
   */
  passthrough?: boolean
  /**
   * Where the session records each inode's open mode (passthrough or not) while the kernel
   * holds the inode, so that a successor adopting the connection answers the same (the kernel
   * fails an open whose mode differs from that of the inode's other open files). Needed with
   * `holder`; without it an adopting successor turns passthrough off.
   */
  modeLog?: string
}

export interface FuseStats {
  requests: number
  errors: number
  bytesRead: number
  /** OPEN and OPENDIR requests (the kernel stops sending them once answered ENOSYS). */
  opens: number
  /** Opens answered with kernel passthrough (the kernel reads the backing file itself). */
  passthroughOpens: number
}

const openP = promisify(openFile)
const closeP = promisify(closeFd)

const MAX_WRITE = 128 * 1024
/** Replies up to this size are written synchronously (see replyThen). */
const SYNC_REPLY_MAX = 64 * 1024
const BUF_SIZE = MAX_WRITE + 4096 + IN_HEADER

/**
 * The reader thread (CommonJS, evaluated: no file to locate from dist/ or from source).
 *
 * It also answers READs of "direct" files itself: files whose bytes lie in one piece of a local
 * file (a blob cache file, never on this mount) that the main thread registered through `port`.
 * A READ whose pieces are all there (the blob cache's ready bits, shared memory) is a pread into
 * the reply and one write to /dev/fuse, in this thread, without a message to the main thread;
 * anything else (a piece not fetched yet, a short read) goes to the main thread as any other
 * request. A read reaching the piece `marks[slot]` is reported to the main thread (`seen`), which
 * starts the next readahead window and sets the next mark. What it served is counted in
 * `counters` (per extent slot: reads, bytes; this thread's own region), which the main thread
 * folds into its statistics. Empty READDIRs at a listing's end and listings encoded ahead are
 * answered here too.
 */
const READER_WORKER = `
const { readSync, writeSync, openSync, closeSync } = require('node:fs')
const { parentPort, workerData, receiveMessageOnPort } = require('node:worker_threads')
const { fd, size, port, counters, region, maxRead, marks: marksBuf } = workerData
const marks = new Int32Array(marksBuf)
// one read buffer for the thread's life; each request is posted as a right-sized copy (requests
// of a read-only filesystem are small), so no large buffer is allocated per request
const buf = Buffer.allocUnsafeSlow(size)
const out = Buffer.allocUnsafeSlow(maxRead + 16)
const count = new BigUint64Array(counters)
const extents = new Map()
const files = new Map()
// directory node id -> its number of entries: a READDIR(PLUS) at or past it is answered empty
const dirEnds = new Map()
// directory node id -> its whole listing with attributes, encoded: the answer to a READDIRPLUS
// from its start (given once; later ones go to the main thread)
const lists = new Map()
function control () {
  for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
    const e = m.message
    if (e.dir !== undefined) { dirEnds.set(e.dir, e.end); continue }
    if (e.list !== undefined) { lists.set(e.list, Buffer.from(e.body.buffer, e.body.byteOffset, e.body.length)); continue }
    let f = files.get(e.path)
    if (f === undefined) {
      try { f = openSync(e.path, 'r') } catch { continue }
      files.set(e.path, f)
    }
    extents.set(e.nodeid, { fd: f, base: e.base, size: e.size, slot: region + 2 * e.slot, mark: e.slot, bits: e.bits, first: e.first, cs: e.cs })
  }
}
function reply (len) {
  out.writeUInt32LE(16 + len, 0)
  out.writeInt32LE(0, 4)
  buf.copy(out, 8, 8, 16)
  try {
    writeSync(fd, out, 0, 16 + len)
  } catch (err) {
    // ENOENT: the request was interrupted and is gone
    if (err.code !== 'ENOENT') parentPort.postMessage({ warn: err.code || String(err) })
  }
}
function direct (n) {
  if (n < 64) return false
  const op = buf.readUInt32LE(4)
  if (op === 28 || op === 44) {
    control()
    const dir = Number(buf.readBigUInt64LE(16))
    const at = Number(buf.readBigUInt64LE(48))
    const list = op === 44 && at === 0 ? lists.get(dir) : undefined
    if (list !== undefined) {
      lists.delete(dir)
      if (list.length > buf.readUInt32LE(56) || list.length > maxRead) return false
      list.copy(out, 16)
      reply(list.length)
      return true
    }
    const end = dirEnds.get(dir)
    if (end === undefined || at < end) return false
    reply(0)
    return true
  }
  if (op !== 15) return false
  control()
  if (extents.size === 0) return false
  const e = extents.get(Number(buf.readBigUInt64LE(16)))
  if (e === undefined) return false
  const off = Number(buf.readBigUInt64LE(48))
  const want = buf.readUInt32LE(56)
  if (off >= e.size || want > maxRead) return false
  const len = Math.min(want, e.size - off)
  const last = e.bits === undefined ? 0 : Math.floor((off + len - 1) / e.cs)
  if (e.bits !== undefined) {
    // every piece the read touches must be in the file already
    for (let k = Math.floor(off / e.cs); k <= last; k++) {
      const i = e.first + k
      if (((Atomics.load(e.bits, i >>> 3) >>> (i & 7)) & 1) === 0) return false
    }
  }
  let got = 0
  try {
    while (got < len) {
      const r = readSync(e.fd, out, 16 + got, len - got, e.base + off + got)
      if (r === 0) return false
      got += r
    }
  } catch {
    return false
  }
  reply(len)
  Atomics.add(count, e.slot, 1n)
  Atomics.add(count, e.slot + 1, BigInt(len))
  // (the main thread wants to hear of reads from this piece on: to read ahead)
  if (e.bits !== undefined && last >= Atomics.load(marks, e.mark)) {
    Atomics.store(marks, e.mark, 0x7fffffff)
    parentPort.postMessage({ seen: Number(buf.readBigUInt64LE(16)), offset: off, until: off + len })
  }
  return true
}
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
  if (direct(n)) continue
  const req = buf.buffer.slice(buf.byteOffset, buf.byteOffset + n)
  parentPort.postMessage({ buf: req, n }, [req])
}
for (const f of files.values()) { try { closeSync(f) } catch {} }
`

/** What the reader threads need to answer a direct file's READs. */
function directMessage (nodeid: number, ext: DirectExtent, slot: number): Record<string, unknown> {
  const r = ext.ready
  return { nodeid, path: ext.path, base: ext.offset, size: ext.size, slot, ...(r !== undefined ? { bits: r.bits, first: r.first, cs: r.chunkSize } : {}) }
}

/** Most direct files per session (the slots of the shared counters). */
const MAX_DIRECT = 4096

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

/** What a daemon records so that its successor can adopt a session (lib/fsdapi/failover.ts). */
export interface FuseAdoption {
  holderPid: number
  /** The descriptor number in the holder. */
  fd: number
  noOpen: boolean
  noOpendir: boolean
  /** The kernel can queue again what a dead daemon read (FUSE_HAS_RESEND, Linux 6.9+). */
  resend: boolean
  /** Set when kernel passthrough was negotiated: where the session's inode open modes are logged. */
  modeLog?: string
}

/**
 * The holder's program: lets any process of its user take its descriptor (prctl PR_SET_PTRACER_ANY:
 * under Yama's ptrace_scope 1 the launcher is not its ancestor), then sleeps while `ARGV[0]`
 * (escaped as in mountinfo) is a mount point.
 */
const HOLDER = 'use Config; syscall($Config{archname} =~ /aarch64/ ? 167 : 157, 0x59616d61, -1, 0, 0, 0); my $m = " $ARGV[0] "; while (1) { sleep 5; open(my $f, "<", "/proc/self/mountinfo") or last; my $all = join("", <$f>); close($f); last if index($all, $m) < 0 }'

/** FUSE_NOTIFY_RESEND (7.40) */
const NOTIFY_RESEND = 7
/**
 * How deep a backing file's filesystem may be stacked (FUSE's max_stack_depth). 1 keeps our mount
 * at depth 1, so that overlayfs (depth 2, the limit) can still take it as a lower layer, as
 * containerd's snapshots do; the backing files are then on filesystems of depth 0.
 */
const PASSTHROUGH_STACK_DEPTH = 1
/** The fh answered to OPEN: which mode the file was opened in. */
const FH_CACHED = 1n
const FH_PASSTHROUGH = 2n

export class FuseSession {
  private fd = -1
  private closed: Promise<void> | undefined
  private loopDone: Promise<void> | undefined
  private initDone = false
  private readonly stats: FuseStats = { requests: 0, errors: 0, bytesRead: 0, opens: 0, passthroughOpens: 0 }
  private readonly workers = new Set<Worker>()
  private readonly opts: Required<Omit<FuseSessionOptions, 'fsname' | 'modeLog'>> & { fsname: string, modeLog: string | undefined }

  constructor (private readonly deps: { fs: FuseFilesystem, log: Logger }, opts: FuseSessionOptions) {
    this.opts = {
      mountpoint: opts.mountpoint,
      fsname: (opts.fsname ?? 'naiad').replace(/[,\s\\]/g, '_'),
      cacheTimeoutSec: opts.cacheTimeoutSec ?? 365 * 24 * 3600,
      allowOther: opts.allowOther ?? true,
      readers: opts.readers ?? 2,
      maxRead: opts.maxRead ?? 1024 * 1024,
      readAheadKb: opts.readAheadKb ?? 4096,
      holder: opts.holder ?? false,
      passthrough: opts.passthrough ?? false,
      modeLog: opts.modeLog
    }
    this.counters = new SharedArrayBuffer(this.opts.readers * MAX_DIRECT * 2 * 8)
  }

  get mountpoint (): string { return this.opts.mountpoint }

  statistics (): FuseStats {
    this.flushDirect()
    return { ...this.stats }
  }

  /** What a successor needs to adopt this session's connection (after a crash). */
  get adoption (): FuseAdoption | undefined {
    return this.holderPid !== undefined
      ? { holderPid: this.holderPid, fd: 3, noOpen: this.noOpen, noOpendir: this.noOpendir, resend: this.canResend, ...(this.modes?.path !== undefined ? { modeLog: this.modes.path } : {}) }
      : undefined
  }

  private holderPid: number | undefined
  private canResend = false

  /** The holder: a process that keeps our /dev/fuse descriptor open (as its fd 3) while the mount exists. */
  private startHolder (): void {
    if (!existsSync('/usr/bin/perl')) return // no failover launcher either (lib/fsdapi/failover.ts)
    try {
      // it ends by itself once the mount is gone from the mount table (unmounted, or detached after
      // its daemon died and was not replaced), so a holder never outlives its mount for long; it
      // never touches the mount itself
      const esc = this.opts.mountpoint.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'))
      const child = spawn('perl', ['-e', HOLDER, esc], { stdio: ['ignore', 'ignore', 'ignore', this.fd], detached: true })
      child.on('error', (err) => { this.deps.log.warn({ err }, 'the FUSE descriptor holder could not be started: this mount will not survive a crash of the daemon') })
      child.unref()
      this.holderPid = child.pid
    } catch (err) {
      this.deps.log.warn({ err }, 'the FUSE descriptor holder could not be started')
    }
  }

  private stopHolder (): void {
    if (this.holderPid === undefined) return
    try { process.kill(-this.holderPid, 'SIGKILL') } catch {} // its process group (setsid)
    this.holderPid = undefined
  }

  /**
   * Serves the connection of a mount made by a daemon that died: `fd` is its /dev/fuse
   * descriptor (taken from the holder), the kernel's INIT was answered back then. Requests the
   * dead daemon read but never answered are queued again (FUSE_NOTIFY_RESEND).
   */
  async adopt (fd: number, a: FuseAdoption): Promise<void> {
    this.fd = fd
    this.noOpen = a.noOpen
    this.noOpendir = a.noOpendir
    this.canResend = a.resend
    this.holderPid = a.holderPid
    if (a.modeLog !== undefined) this.adoptModes(a.modeLog)
    this.initDone = true
    this.startReaders()
    // notification: unique 0, the error field carries the code; no payload
    writevSync(this.fd, [outHeader(OUT_HEADER, NOTIFY_RESEND, 0n)])
    if (this.opts.readAheadKb > 0) await this.setReadAhead(this.opts.readAheadKb)
  }

  private startReaders (): void {
    this.loopDone = Promise.all(Array.from({ length: this.opts.readers }, async (_, k) => { await this.readLoop(k) })).then(() => {})
    this.flushTimer = setInterval(() => { this.flushDirect() }, 1000)
    this.flushTimer.unref()
    void this.loopDone.then(() => { clearInterval(this.flushTimer); this.flushDirect() })
  }

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
    this.startReaders()
    await Promise.race([init, this.loopDone!.then(() => { throw new Error('FUSE session ended before INIT') })])
    if (this.opts.holder) this.startHolder()
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

  // kernel passthrough (docs/decisions/0005-kernel-passthrough.md)
  private modes: ModeTable | undefined
  private readonly pendingBacking = new Map<number, Promise<number | undefined>>()
  private passthroughBroken = false

  private wantPassthrough (i: InitIn): boolean {
    if (!this.opts.passthrough || this.deps.fs.backingFile === undefined) return false
    if ((i.flags & InitFlag.INIT_EXT) === 0 || (i.flags2 & InitFlag2.PASSTHROUGH) === 0) {
      this.deps.log.debug('the kernel offers no FUSE passthrough (Linux < 6.9 or CONFIG_FUSE_PASSTHROUGH off): every read goes through the daemon')
      return false
    }
    if (nativeFuse() === undefined) {
      this.deps.log.info({ reason: nativeFuseProblem() }, 'no kernel passthrough: every read goes through the daemon')
      return false
    }
    // a successor adopting this connection must know the modes answered
    if (this.opts.holder && this.opts.modeLog === undefined) return false
    try {
      this.modes = ModeTable.create(this.opts.modeLog)
    } catch (err) {
      this.deps.log.warn({ err }, 'cannot start the passthrough mode log: no kernel passthrough')
      return false
    }
    return true
  }

  private adoptModes (path: string): void {
    if (nativeFuse() === undefined) {
      // opens go on through this daemon; an open of an inode that has files open in
      // passthrough fails until those close
      this.deps.log.warn({ reason: nativeFuseProblem() }, 'the adopted connection uses kernel passthrough, which this daemon cannot: files open in passthrough cannot be opened again until closed')
      return
    }
    this.modes = ModeTable.load(path)
  }

  /** The backing id to answer an OPEN of `nodeid` with, or undefined: through the daemon. */
  private async passthroughFor (nodeid: number): Promise<number | undefined> {
    const modes = this.modes!
    const mode = modes.mode(nodeid)
    if (mode === 'c') return undefined
    const id = modes.backingId(nodeid)
    if (id !== undefined) return id
    // first open in the inode's lifetime (or one decided by a predecessor): opens at once share one
    let p = this.pendingBacking.get(nodeid)
    if (p === undefined) {
      p = this.registerBacking(nodeid, mode).finally(() => { this.pendingBacking.delete(nodeid) })
      this.pendingBacking.set(nodeid, p)
    }
    return await p
  }

  private async registerBacking (nodeid: number, mode: OpenMode | undefined): Promise<number | undefined> {
    const modes = this.modes!
    const native = nativeFuse()!
    let fd: number | undefined
    if (!this.passthroughBroken || mode === 'p') {
      try {
        fd = await this.deps.fs.backingFile!(nodeid, mode === 'p')
      } catch (err) {
        this.deps.log.warn({ err, nodeid }, 'no backing file for passthrough; serving the file through the daemon')
      }
    }
    if (fd !== undefined) {
      try {
        const id = native.backingOpen(this.fd, fd)
        modes.record(nodeid, 'p', id)
        return id
      } catch (err) {
        if (!this.passthroughBroken) this.deps.log.warn({ err }, 'the kernel refused a passthrough backing file: every read goes through the daemon from now on')
        this.passthroughBroken = true
      } finally {
        try { closeSync(fd) } catch {}
      }
    }
    // a predecessor opened this inode in passthrough: an open through the daemon would fail
    if (mode === 'p') throw new FuseErrno(Errno.EIO, `inode ${nodeid} is open in passthrough and its backing file cannot be opened again`)
    modes.record(nodeid, 'c')
    return undefined
  }

  private forget (nodeid: number): void {
    const id = this.modes?.forget(nodeid)
    if (id === undefined || this.fd < 0) return
    try {
      nativeFuse()?.backingClose(this.fd, id)
    } catch (err) {
      this.deps.log.debug({ err, nodeid }, 'closing a passthrough backing id failed')
    }
  }

  /** Resolves when the kernel ends the session (unmount) or close() is called. */
  async done (): Promise<void> {
    await this.loopDone
  }

  /**
   * One reader: a worker thread blocked in read(2) on /dev/fuse, posting each request here. It
   * ends when the kernel ends the session (ENODEV after unmount) or the descriptor is closed.
   */
  private async readLoop (k: number): Promise<void> {
    const { port1, port2 } = new MessageChannel()
    const worker = new Worker(READER_WORKER, {
      eval: true,
      workerData: { fd: this.fd, size: BUF_SIZE, port: port2, counters: this.counters, region: k * MAX_DIRECT * 2, maxRead: this.opts.maxRead, marks: this.marks.buffer },
      transferList: [port2]
    })
    // extents registered before this thread started
    for (const [nodeid, d] of this.direct) port1.postMessage(directMessage(nodeid, d.ext, d.slot))
    for (const [dir, end] of this.dirEnds) port1.postMessage({ dir, end })
    this.ports.add(port1)
    worker.unref()
    this.workers.add(worker)
    await new Promise<void>((resolve) => {
      worker.on('message', (m: { buf?: ArrayBuffer, n?: number, end?: string, warn?: string, seen?: number, offset?: number, until?: number }) => {
        if (m.seen !== undefined) {
          const d = this.direct.get(m.seen)
          if (d !== undefined) {
            try {
              d.ext.seen?.(m.offset ?? 0, m.until ?? 0)
            } catch (err) {
              this.deps.log.debug({ err }, 'reporting a read failed')
            }
            this.setMark(d.slot, d.ext)
          }
          return
        }
        if (m.warn !== undefined) {
          this.deps.log.warn({ errno: m.warn }, 'writing a FUSE reply failed')
          return
        }
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
    this.ports.delete(port1)
    port1.close()
  }

  // direct files: answered by the reader threads (see READER_WORKER)
  private readonly counters: SharedArrayBuffer
  /** Per direct file: the piece from which on its reads are reported to the main thread. */
  private readonly marks = new Int32Array(new SharedArrayBuffer(MAX_DIRECT * 4))
  private readonly ports = new Set<MessagePort>()
  private readonly direct = new Map<number, { slot: number, ext: DirectExtent, reads: number, bytes: number }>()
  /** Directories whose listing's end the reader threads know. */
  private readonly dirEnds = new Map<number, number>()
  /** Per node id not (yet) direct: fast reads to let pass before asking again. */
  private readonly directWait = new Map<number, number>()
  private flushTimer: NodeJS.Timeout | undefined

  /** After a READ of `nodeid` answered from cached data: make the file direct if it can be. */
  private maybeDirect (nodeid: number): void {
    const fs = this.deps.fs
    if (fs.directExtent === undefined || this.direct.has(nodeid) || this.direct.size >= MAX_DIRECT) return
    const wait = this.directWait.get(nodeid) ?? 0
    if (wait > 0) { this.directWait.set(nodeid, wait - 1); return }
    let ext: DirectExtent | undefined
    try {
      ext = fs.directExtent(nodeid)
    } catch {
      ext = undefined
    }
    if (ext === undefined) {
      // (asking costs a look at each chunk of the file: not at every read)
      if (this.directWait.size > 4096) this.directWait.clear()
      this.directWait.set(nodeid, 32)
      return
    }
    this.directWait.delete(nodeid)
    const slot = this.direct.size
    this.direct.set(nodeid, { slot, ext, reads: 0, bytes: 0 })
    this.setMark(slot, ext)
    const m = directMessage(nodeid, ext, slot)
    for (const p of this.ports) p.postMessage(m)
  }

  /** Tells the reader threads from which piece of the file on they report reads. */
  private setMark (slot: number, ext: DirectExtent): void {
    const from = ext.noticeFrom?.() ?? Number.MAX_SAFE_INTEGER
    Atomics.store(this.marks, slot, Math.min(from, 0x7fffffff))
  }

  /** Bytes of listings handed to the reader threads so far (bounded). */
  private prelistedBytes = 0

  /** The entries of a directory from index `offset` that fit `size` bytes, and the index after them. */
  private encodeDir (entries: readonly FuseDirEntry[], offset: number, size: number, plus: boolean): { out: Buffer, end: number } {
    const t = this.opts.cacheTimeoutSec
    const out = Buffer.alloc(size)
    let pos = 0
    let end = offset
    for (let i = offset; i < entries.length; i++, end++) {
      const e = entries[i]!
      const need = plus ? direntplusSize(e.name) : direntSize(e.name)
      if (pos + need > size) break
      if (plus) {
        // "." and ".." carry no entry (nodeid 0): the kernel takes no reference for them
        const dot = e.name.length <= 2 && e.name.every(c => c === 0x2e)
        encodeEntryOut(dot ? 0 : e.nodeid, dot ? null : e.attr, { entrySec: dot ? 0 : t, attrSec: dot ? 0 : t }, out, pos)
        pos = writeDirent(out, pos + ENTRY_OUT, e.attr.ino, i + 1, e.type, e.name)
      } else {
        pos = writeDirent(out, pos, e.attr.ino, i + 1, e.type, e.name)
      }
    }
    return { out: out.subarray(0, pos), end }
  }

  private tellDirEnd (nodeid: number, end: number): void {
    if (this.dirEnds.has(nodeid) || this.dirEnds.size >= 65536) return
    this.dirEnds.set(nodeid, end)
    for (const p of this.ports) p.postMessage({ dir: nodeid, end })
  }

  /**
   * A directory was listed with attributes from its start (ls -l, find, a walk): its
   * subdirectories are likely next. Their listings (those that fit one reply of `size` bytes) are
   * encoded now and handed to the reader threads, which answer their first READDIRPLUS (and the
   * empty one after it) themselves. At most 4 MiB of listings per session (some 20,000 entries).
   */
  private prelist (entries: readonly FuseDirEntry[], size: number): void {
    const fs = this.deps.fs
    if (this.ports.size === 0) return
    void (async () => {
      for (const e of entries) {
        if (e.type !== DT.dir || e.nodeid === 0 || this.dirEnds.has(e.nodeid) || this.prelistedBytes >= 4 << 20 || this.fd < 0) continue
        if (e.name.length <= 2 && e.name.every(c => c === 0x2e)) continue
        const sub = await fs.readdir(e.nodeid)
        const { out, end } = this.encodeDir(sub, 0, size, true)
        if (end !== sub.length || this.dirEnds.has(e.nodeid)) continue
        this.prelistedBytes += out.length
        for (const p of this.ports) p.postMessage({ list: e.nodeid, body: out })
        this.tellDirEnd(e.nodeid, end)
      }
    })().catch((err: unknown) => { this.deps.log.debug({ err }, 'listing subdirectories ahead failed (they are listed when asked)') })
  }

  /** Folds what the reader threads served into the statistics. */
  private flushDirect (): void {
    if (this.direct.size === 0) return
    const count = new BigUint64Array(this.counters)
    for (const d of this.direct.values()) {
      let reads = 0
      let bytes = 0
      for (let k = 0; k < this.opts.readers; k++) {
        const i = k * MAX_DIRECT * 2 + 2 * d.slot
        reads += Number(Atomics.load(count, i))
        bytes += Number(Atomics.load(count, i + 1))
      }
      if (reads === d.reads) continue
      const dr = reads - d.reads
      const db = bytes - d.bytes
      d.reads = reads
      d.bytes = bytes
      this.stats.requests += dr
      this.stats.bytesRead += db
      try {
        d.ext.served(dr, db)
      } catch (err) {
        this.deps.log.error({ err }, 'counting direct reads failed')
      }
    }
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
    const d = this.direct.get(h.nodeid)
    if (d !== undefined) this.setMark(d.slot, d.ext)
    else this.maybeDirect(h.nodeid)
    return true
  }

  private async handle (h: InHeader, req: Buffer): Promise<void> {
    const fs = this.deps.fs
    const t = this.opts.cacheTimeoutSec
    switch (h.opcode) {
      case Op.INIT: {
        const i = decodeInitIn(req)
        if (i.major !== FUSE_KERNEL_VERSION) { this.reply(h.unique, Errno.EIO); return }
        const want = InitFlag.ASYNC_READ | InitFlag.DO_READDIRPLUS | InitFlag.PARALLEL_DIROPS | InitFlag.POSIX_ACL | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS
        const flags = (want & i.flags) >>> 0
        // the kernel can do without OPEN/OPENDIR (and their RELEASEs): answered ENOSYS once, it
        // stops sending them and opens with FOPEN_KEEP_CACHE (| FOPEN_CACHE_DIR), which is what
        // we would answer anyway. Saves two round trips per open(2) (find opens every directory
        // twice). Older kernels would fail the open on ENOSYS: only when they say they can.
        this.noOpen = (i.flags & InitFlag.NO_OPEN_SUPPORT) !== 0
        this.noOpendir = (i.flags & InitFlag.NO_OPENDIR_SUPPORT) !== 0
        this.canResend = (i.flags & InitFlag.INIT_EXT) !== 0 && (i.flags2 & InitFlag2.HAS_RESEND) !== 0
        // kernel passthrough: needs OPEN for every file (the mode is chosen per open)
        const passthrough = this.wantPassthrough(i)
        if (passthrough) this.noOpen = false
        this.reply(h.unique, 0, encodeInitOut({
          minor: Math.min(i.minor, passthrough ? FUSE_MINOR_PASSTHROUGH : FUSE_KERNEL_MINOR),
          maxReadahead: Math.min(i.maxReadahead, this.opts.maxRead),
          flags,
          maxBackground: 64,
          congestionThreshold: 48,
          maxWrite: MAX_WRITE,
          timeGran: 1,
          maxPages: Math.max(1, Math.floor(this.opts.maxRead / 4096)),
          ...(passthrough ? { flags: (flags | InitFlag.INIT_EXT) >>> 0, flags2: InitFlag2.PASSTHROUGH, maxStackDepth: PASSTHROUGH_STACK_DEPTH } : {})
        }))
        this.initDone = true
        this.onInit?.()
        return
      }
      case Op.DESTROY:
        this.reply(h.unique, 0)
        return
      case Op.FORGET:
        this.forget(h.nodeid)
        return // no reply
      case Op.BATCH_FORGET:
        if (this.modes !== undefined) for (const nodeid of decodeBatchForget(req)) this.forget(nodeid)
        return
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
        const id = this.modes !== undefined ? await this.passthroughFor(h.nodeid) : undefined
        if (id !== undefined) {
          this.stats.passthroughOpens++
          this.reply(h.unique, 0, encodeOpenOut(OpenFlag.PASSTHROUGH, FH_PASSTHROUGH, id))
        } else {
          this.reply(h.unique, 0, encodeOpenOut(OpenFlag.KEEP_CACHE, FH_CACHED))
        }
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
        // (this read may have moved the readahead on)
        const d = this.direct.get(h.nodeid)
        if (d !== undefined) this.setMark(d.slot, d.ext)
        else this.maybeDirect(h.nodeid)
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
        const { out, end } = this.encodeDir(entries, r.offset, r.size, plus)
        // the listing ends in this reply: the reader threads answer the next READDIR (the
        // empty one that tells the kernel so) themselves (told before the kernel has the reply)
        if (out.length > 0 && end === entries.length) this.tellDirEnd(h.nodeid, end)
        this.reply(h.unique, 0, out)
        if (plus && r.offset === 0) this.prelist(entries, r.size)
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
        this.stopHolder()
        const fd = this.fd
        this.fd = -1
        await closeP(fd).catch(() => {})
      }
      this.modes?.close()
      await Promise.race([this.loopDone, new Promise(resolve => setTimeout(resolve, 2000).unref())])
    })()
    await this.closed
  }
}
