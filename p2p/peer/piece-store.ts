/**
 * The on-disk piece store. Each task has a directory `<dir>/tasks/<taskId>/` with `data` (a
 * sparse file of the blob's full size; pieces are written at their offsets) and `meta.json`
 * (size, piece length, the digests of every piece held, whether the whole blob was verified, last
 * access). Metadata is written atomically (temp file + rename) after the piece data, so a crash
 * can lose a piece but never claim one that was not written; on `open()` every piece is hashed
 * again and dropped if it does not match its recorded digest.
 *
 * Quota: the bytes of the pieces held never exceed `quota`. Making room evicts whole tasks, least
 * recently used first, and never a task that is pinned (being downloaded, read or uploaded).
 */
import { mkdir, open, readdir, readFile, rename, rm, writeFile, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { ioError, NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { PeerMetrics } from '../metrics.ts'
import { computePieceDigest, describeTaskId, isTaskId, pieceCount, pieceSpan, sameDigest, type PieceDigest, type TaskId } from '../protocol/index.ts'

export interface StoredTask {
  readonly taskId: TaskId
  readonly digest: string
  readonly size: number
  readonly pieceLength: number
  readonly pieces: Map<number, PieceDigest>
  /** Every piece held and the blob checked against its digest. */
  verified: boolean
  lastAccess: number
  bytes: number
}

interface MetaFile {
  version: 1
  taskId: string
  digest: string
  size: number
  pieceLength: number
  verified: boolean
  lastAccess: number
  /** piece number → [sha256 hex, block digests hex] */
  pieces: Record<string, [string, string]>
}

export interface PieceStoreDeps {
  logger?: Logger
  metrics?: PeerMetrics
  /** Called after a task was evicted (the peer tells the scheduler). */
  onEvict?: (taskId: TaskId) => void
  now?: () => number
}

export interface PieceStoreOptions {
  dir: string
  quota: number
}

export class PieceStore {
  private readonly log: Logger
  private readonly metrics: PeerMetrics | undefined
  private readonly now: () => number
  private readonly tasks = new Map<TaskId, StoredTask>()
  private readonly handles = new Map<TaskId, Promise<FileHandle>>()
  private readonly pins = new Map<TaskId, number>()
  private readonly dirty = new Set<TaskId>()
  private flushTimer: NodeJS.Timeout | undefined
  private flushing: Promise<void> = Promise.resolve()
  private used = 0
  private reserved = 0
  private closed = false

  constructor (private readonly deps: PieceStoreDeps, private readonly options: PieceStoreOptions) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.store' })
    this.metrics = deps.metrics
    this.now = deps.now ?? Date.now
    if (!(options.quota > 0)) throw new NaiadError('NAIAD_CFG_INVALID', 'storage quota must be positive')
  }

  get dir (): string { return this.options.dir }
  get usedBytes (): number { return this.used }
  get quota (): number { return this.options.quota }

  private taskDir (id: TaskId): string { return join(this.options.dir, 'tasks', id) }

  /**
   * Loads the store: reads every task's metadata, re-hashes every piece and keeps only those that
   * match. Unreadable metadata drops the task (NAIAD_P2P_STORE_CORRUPT is logged, not thrown).
   */
  async open (opts: { signal?: AbortSignal } = {}): Promise<void> {
    const root = join(this.options.dir, 'tasks')
    try {
      await mkdir(root, { recursive: true, mode: 0o700 })
    } catch (err) {
      throw ioError('cannot create piece store', root, err)
    }
    this.metrics?.storeQuotaBytes.set(this.options.quota)
    for (const name of await readdir(root)) {
      opts.signal?.throwIfAborted()
      if (!isTaskId(name)) continue
      try {
        await this.load(name)
      } catch (err) {
        this.log.warn({ taskId: name, err: new NaiadError('NAIAD_P2P_STORE_CORRUPT', `task ${name}: unreadable store entry`, { cause: err }) }, 'dropping unreadable task')
        await rm(this.taskDir(name), { recursive: true, force: true })
      }
    }
    this.metrics?.storeBytes.set(this.used)
    this.log.info({ tasks: this.tasks.size, bytes: this.used }, 'piece store loaded')
    if (this.used > this.options.quota) await this.makeRoom(0, undefined)
  }

  private async load (id: TaskId): Promise<void> {
    const meta = JSON.parse(await readFile(join(this.taskDir(id), 'meta.json'), 'utf8')) as MetaFile
    const d = describeTaskId(id)
    if (meta.version !== 1 || meta.taskId !== id || meta.digest !== d.digest || meta.pieceLength !== d.pieceLength || !Number.isSafeInteger(meta.size) || meta.size < 0) {
      throw new NaiadError('NAIAD_P2P_STORE_CORRUPT', `task ${id}: metadata does not match its id`)
    }
    const t: StoredTask = { taskId: id, digest: meta.digest, size: meta.size, pieceLength: meta.pieceLength, pieces: new Map(), verified: false, lastAccess: meta.lastAccess, bytes: 0 }
    const count = pieceCount(t.size, t.pieceLength)
    const fh = await open(join(this.taskDir(id), 'data'), 'r')
    let dropped = 0
    try {
      for (const [k, [sha, blocks]] of Object.entries(meta.pieces)) {
        const n = Number(k)
        if (!Number.isSafeInteger(n) || n < 0 || n >= count) { dropped++; continue }
        const span = pieceSpan(n, t.size, t.pieceLength)
        const buf = Buffer.allocUnsafe(span.length)
        const { bytesRead } = await fh.read(buf, 0, span.length, span.offset)
        const rec: PieceDigest = { number: n, sha256: Buffer.from(sha, 'hex'), blocks: Buffer.from(blocks, 'hex') }
        if (bytesRead !== span.length || !sameDigest(computePieceDigest(n, buf, t.pieceLength), rec)) { dropped++; continue }
        t.pieces.set(n, rec)
        t.bytes += span.length
      }
    } finally {
      await fh.close()
    }
    t.verified = meta.verified && dropped === 0 && t.pieces.size === count
    if (dropped > 0) {
      this.log.warn({ taskId: id, dropped }, 'pieces on disk did not match their digests; dropped')
      this.dirty.add(id)
    }
    this.tasks.set(id, t)
    this.used += t.bytes
  }

  /** Tasks held, for re-announcing to the scheduler. */
  list (): StoredTask[] {
    return [...this.tasks.values()]
  }

  get (id: TaskId): StoredTask | undefined {
    return this.tasks.get(id)
  }

  has (id: TaskId, n: number): boolean {
    return this.tasks.get(id)?.pieces.has(n) === true
  }

  /** Marks a task in use: it is not evicted until unpinned as often. */
  pin (id: TaskId): void {
    this.pins.set(id, (this.pins.get(id) ?? 0) + 1)
  }

  unpin (id: TaskId): void {
    const n = (this.pins.get(id) ?? 0) - 1
    if (n <= 0) this.pins.delete(id)
    else this.pins.set(id, n)
  }

  isPinned (id: TaskId): boolean {
    return (this.pins.get(id) ?? 0) > 0
  }

  touch (id: TaskId): void {
    const t = this.tasks.get(id)
    if (t !== undefined) t.lastAccess = this.now()
  }

  /** Creates the task's entry (and sparse data file) if missing. */
  async ensureTask (id: TaskId, size: number): Promise<StoredTask> {
    this.checkOpen()
    const existing = this.tasks.get(id)
    if (existing !== undefined) {
      if (existing.size !== size) throw new NaiadError('NAIAD_P2P_STORE_CORRUPT', `task ${id}: stored size ${existing.size}, now told ${size}`)
      return existing
    }
    const d = describeTaskId(id)
    const dir = this.taskDir(id)
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 })
      const fh = await open(join(dir, 'data'), 'a+')
      await fh.truncate(size)
      await fh.close()
    } catch (err) {
      throw ioError('cannot create task data file', dir, err)
    }
    const raced = this.tasks.get(id)
    if (raced !== undefined) return raced
    const t: StoredTask = { taskId: id, digest: d.digest, size, pieceLength: d.pieceLength, pieces: new Map(), verified: false, lastAccess: this.now(), bytes: 0 }
    this.tasks.set(id, t)
    this.markDirty(id)
    return t
  }

  private async handle (id: TaskId): Promise<FileHandle> {
    let h = this.handles.get(id)
    if (h === undefined) {
      h = open(join(this.taskDir(id), 'data'), 'r+')
      this.handles.set(id, h)
      h.catch(() => { if (this.handles.get(id) === h) this.handles.delete(id) })
    }
    return await h
  }

  /**
   * Stores a complete, verified piece: makes room (NAIAD_P2P_STORE_FULL if even evicting every
   * unpinned task is not enough), writes the bytes, then records the digest.
   */
  async writePiece (id: TaskId, digest: PieceDigest, data: Uint8Array): Promise<void> {
    this.checkOpen()
    const t = this.tasks.get(id)
    if (t === undefined) throw new NaiadError('NAIAD_INTERNAL', `writePiece: unknown task ${id}`)
    if (t.pieces.has(digest.number)) return
    const span = pieceSpan(digest.number, t.size, t.pieceLength)
    if (data.length !== span.length) throw new NaiadError('NAIAD_INTERNAL', `writePiece: piece ${digest.number} has ${data.length} bytes, expected ${span.length}`)
    await this.makeRoom(span.length, id)
    this.reserved += span.length
    try {
      const fh = await this.handle(id)
      await fh.write(data, 0, data.length, span.offset)
    } catch (err) {
      throw ioError('cannot write piece to', this.taskDir(id), err)
    } finally {
      this.reserved -= span.length
    }
    if (!this.tasks.has(id) || t.pieces.has(digest.number)) return
    t.pieces.set(digest.number, digest)
    t.bytes += span.length
    t.lastAccess = this.now()
    this.used += span.length
    this.metrics?.storeBytes.set(this.used)
    this.markDirty(id)
  }

  /** Reads `length` bytes of a task's blob at `offset` (the caller knows they are held). */
  async read (id: TaskId, offset: number, length: number): Promise<Buffer> {
    const fh = await this.handle(id)
    const buf = Buffer.allocUnsafe(length)
    let done = 0
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done)
      if (bytesRead === 0) throw new NaiadError('NAIAD_P2P_STORE_CORRUPT', `task ${id}: short read at ${offset + done}`)
      done += bytesRead
    }
    return buf
  }

  async markVerified (id: TaskId): Promise<void> {
    const t = this.tasks.get(id)
    if (t === undefined) return
    t.verified = true
    this.markDirty(id)
  }

  /** Deletes a task and its files (eviction, or a blob that failed verification). */
  async dropTask (id: TaskId): Promise<void> {
    const t = this.tasks.get(id)
    if (t === undefined) return
    this.tasks.delete(id)
    this.used -= t.bytes
    this.dirty.delete(id)
    const h = this.handles.get(id)
    this.handles.delete(id)
    if (h !== undefined) await h.then(async fh => { await fh.close() }, () => {})
    await rm(this.taskDir(id), { recursive: true, force: true })
    this.metrics?.storeBytes.set(this.used)
  }

  private async makeRoom (need: number, keep: TaskId | undefined): Promise<void> {
    if (this.used + this.reserved + need <= this.options.quota) return
    const victims = [...this.tasks.values()]
      .filter(t => t.taskId !== keep && !this.isPinned(t.taskId) && t.bytes > 0)
      .sort((a, b) => a.lastAccess - b.lastAccess)
    for (const v of victims) {
      if (this.used + this.reserved + need <= this.options.quota) break
      const bytes = v.bytes
      await this.dropTask(v.taskId)
      this.metrics?.evictions.inc()
      this.metrics?.evictedBytes.inc(bytes)
      this.log.info({ taskId: v.taskId, bytes }, 'evicted task (least recently used)')
      this.deps.onEvict?.(v.taskId)
    }
    if (this.used + this.reserved + need > this.options.quota) {
      throw new NaiadError('NAIAD_P2P_STORE_FULL', `piece store: ${need} more bytes do not fit in the quota of ${this.options.quota} (${this.used} used, the rest in use)`)
    }
  }

  private markDirty (id: TaskId): void {
    this.dirty.add(id)
    if (this.flushTimer === undefined && !this.closed) {
      this.flushTimer = setTimeout(() => { this.flushTimer = undefined; void this.flush() }, 200)
      this.flushTimer.unref()
    }
  }

  /** Writes pending metadata (atomically per task). */
  async flush (): Promise<void> {
    const run = async (): Promise<void> => {
      const ids = [...this.dirty]
      this.dirty.clear()
      for (const id of ids) {
        const t = this.tasks.get(id)
        if (t === undefined) continue
        const meta: MetaFile = {
          version: 1,
          taskId: t.taskId,
          digest: t.digest,
          size: t.size,
          pieceLength: t.pieceLength,
          verified: t.verified,
          lastAccess: t.lastAccess,
          pieces: Object.fromEntries([...t.pieces].map(([n, d]) => [String(n), [d.sha256.toString('hex'), d.blocks.toString('hex')]]))
        }
        const path = join(this.taskDir(id), 'meta.json')
        try {
          await writeFile(`${path}.tmp`, JSON.stringify(meta))
          await rename(`${path}.tmp`, path)
        } catch (err) {
          if (this.tasks.has(id)) this.log.warn({ taskId: id, err }, 'cannot write task metadata')
        }
      }
    }
    this.flushing = this.flushing.then(run, run)
    await this.flushing
  }

  private checkOpen (): void {
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', 'piece store is closed')
  }

  /** Flushes metadata and closes files. Safe twice. */
  async close (): Promise<void> {
    if (this.closed) { await this.flushing; return }
    this.closed = true
    if (this.flushTimer !== undefined) clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    await this.flush()
    const hs = [...this.handles.values()]
    this.handles.clear()
    await Promise.all(hs.map(async h => { try { await (await h).close() } catch {} }))
  }
}
