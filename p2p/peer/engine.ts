/**
 * The download engine: one in-memory `Task` per blob being read or downloaded, fetching pieces
 * from parents (as the scheduler assigns them) or from the origin, and streaming bytes to readers
 * as they arrive.
 *
 * - A reader (`read`) asks for bytes [first, last]; only the overlapping pieces (plus
 *   `readAheadPieces`) are fetched, at most `concurrentPieces` transfers at once per task, on-demand
 *   pieces before read-ahead before prefetch. Up to four times as many pieces may be waiting for an
 *   assignment from the scheduler: a piece waiting for a busy parent does not hold a transfer slot,
 *   so the origin and idle parents keep being used meanwhile.
 * - A piece being fetched lives in a buffer whose readable prefix (`avail`) grows as bytes arrive:
 *   origin bytes as soon as they arrive, parent bytes one 256 KiB block at a time after the block
 *   matched its recorded sha256. So a reader's first byte never waits for a whole piece, and bytes
 *   from peers are never handed out unverified. Bytes below `avail` are never overwritten.
 * - Each piece: ask the scheduler (PARENTS → try them, best measured speed first, weighted random;
 *   BACK_TO_SOURCE → origin; WAIT → wait for the next assignment), or go to the origin when the
 *   scheduler is not configured or unreachable. A parent that fails is reported (and skipped for
 *   this piece); one whose bytes do not match is reported as DIGEST_MISMATCH (the scheduler
 *   blocklists it cluster-wide) and the piece resumes from the last verified block elsewhere.
 * - Origin read-ahead: once this peer got an origin permit for a task that readers are reading
 *   (a Range read of a blob is a strong hint the whole blob will be wanted), it keeps up to
 *   `originReadAheadPieces` more pieces asked for as origin-only requests: the scheduler grants
 *   each under the cluster's origin budget only if no peer holds, receives or fetches it, else
 *   skips it. So the origin link is never idle while pieces remain, independently of how far the
 *   readers' windows reach, and the registry still serves each piece once.
 * - Complete pieces go to the store and are reported; when every piece is there, the whole blob
 *   is checked against its digest.
 */
import { createHash, type Hash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Readable } from 'node:stream'
import { Agent, request, type Dispatcher } from 'undici'
import { parseDigest, type Digest } from '../../lib/digest/index.ts'
import { isAbortError, isNaiadError, NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, redactText, type Logger } from '../../lib/log/index.ts'
import type { PeerMetrics } from '../metrics.ts'
import {
  blockDigest, blockLength, computePieceDigest, pieceCount, pieceSpan, piecesForRange, sha256Of, sliceOfPiece, taskIdFor,
  type Assignments, type FailureReason, type HeldTask, type HostInfo, type PieceDigest, type TaskId
} from '../protocol/index.ts'
import type { OriginContext, OriginPool } from './origin.ts'
import type { PieceStore } from './piece-store.ts'
import type { SchedulerClient, TaskStream } from './scheduler-client.ts'

export type Priority = 'ondemand' | 'readahead' | 'prefetch' | 'origin'
/** 'origin': origin read-ahead, asked for as origin-only (lowest priority). */
const PRIO: Record<Priority, number> = { ondemand: 0, readahead: 1, prefetch: 2, origin: 3 }
/** Origin read-ahead continues while a reader read the task within this long. */
const ORIGIN_AHEAD_IDLE_MS = 5000

export interface EngineOptions {
  pieceLength: number
  concurrentPieces: number
  readAheadPieces: number
  /**
   * Origin read-ahead: once this peer was sent to the origin for a task being read, the pieces up
   * to this many beyond the furthest piece its readers asked for are asked for origin-only, this
   * many at a time at most (0 disables; default 0).
   */
  originReadAheadPieces?: number
  /**
   * Complete pieces kept in memory after they are stored (most recent first), so that readers and
   * uploads to children read them without a disk read, and the blob's digest is computed as they
   * complete (default 0).
   */
  memoryPieces?: number
  /** Fetch the whole blob in the background on first use. */
  prefetch: boolean
  pieceTimeoutMs: number
  waitTimeoutMs: number
  maxAttempts: number
  /** While the scheduler is unreachable, how long before a task tries it again (default 5 s). */
  schedulerRetryMs?: number
  /** An idle task's scheduler stream is closed after this long (default 10 s). */
  lingerMs?: number
}

export interface EngineDeps {
  logger?: Logger
  metrics?: PeerMetrics
  store: PieceStore
  origin: OriginPool
  scheduler?: SchedulerClient
  /** This host's id (never our own parent). */
  hostId: string
  /** HTTP dispatcher for piece fetches from parents (default: an own Agent). */
  dispatcher?: Dispatcher
}

/** A piece being received, as the upload server sees it to relay its final prefix. */
export interface InflightPiece {
  readonly length: number
  readonly buf: Buffer | undefined
  readonly avail: number
  readonly done: boolean
  readonly error: unknown
  /** Incremented whenever a transfer into the piece broke off (a relay then cuts its children loose). */
  readonly interruptions: number
  /** The piece was dropped without being fetched (an origin read-ahead the scheduler skipped). */
  readonly dropped: boolean
  changed (signal?: AbortSignal): Promise<void>
}

/** A piece being fetched: a buffer whose prefix `[0, avail)` is final. */
class PieceSlot implements InflightPiece {
  buf: Buffer | undefined
  avail = 0
  done = false
  error: unknown
  interruptions = 0
  dropped = false
  /** A transfer into the piece is running now. */
  receiving = false
  /** Time spent waiting for assignments and for a transfer slot (diagnostics). */
  planMs = 0
  slotMs = 0
  private waiters: Array<() => void> = []
  constructor (readonly number: number, readonly length: number) {}

  /** A transfer into the piece failed: whoever relays it must not wait for this source. */
  interrupt (): void {
    this.interruptions++
    this.notify()
  }

  notify (): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  /** Resolves at the next change (more bytes, done, error) or rejects on abort. */
  async changed (signal?: AbortSignal): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => { reject(signal?.reason instanceof Error ? signal.reason : new DOMException('aborted', 'AbortError')) }
      if (signal?.aborted === true) { onAbort(); return }
      this.waiters.push(() => { signal?.removeEventListener('abort', onAbort); resolve() })
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }
}

type Plan =
  | { kind: 'origin', reason: 'scheduler' | 'no-scheduler' }
  | { kind: 'parents', parents: HostInfo[], digest: PieceDigest }
  | { kind: 'skipped' }

interface AssignWaiter { resolve: (a: Plan | 'retry') => void }

class Task {
  size: number | undefined
  count = 0
  ctx: OriginContext | undefined
  readonly slots = new Map<number, PieceSlot>()
  readonly queued = new Map<number, number>()
  /** Priority each piece was last asked for. */
  readonly prio = new Map<number, number>()
  readonly running = new Set<number>()
  readonly assignWaiters = new Map<number, AssignWaiter>()
  session: TaskStream | undefined
  sessionOpening: Promise<TaskStream | undefined> | undefined
  directUntil = 0
  refs = 0
  sizing: Promise<number> | undefined
  verifying: Promise<void> | undefined
  lingerTimer: NodeJS.Timeout | undefined
  prefetching = false
  /** Origin read-ahead: the highest piece it considered (-1: not started). */
  originCursor = -1
  /** When a reader last read the task (ms), and the furthest piece readers asked for. */
  lastReadAt = 0
  furthestRead = -1
  /** The blob's digest over pieces [0, hashedPieces), fed from memory as pieces complete in order. */
  hash: Hash | undefined
  hashedPieces = 0
  lastError: unknown
  /** Transfers in progress and pieces waiting for a transfer slot (priority, then number). */
  transfers = 0
  /** On-demand transfers running. */
  urgent = 0
  readonly slotWaiters: Array<{ n: number, prio: number, go: () => void }> = []
  readonly gateWaiters: Array<() => void> = []
  constructor (readonly id: TaskId, readonly digest: Digest, readonly pieceLength: number) {}
}

interface ParentStat { bps: number | undefined, blockedUntil: number }

export interface TaskHandle {
  readonly taskId: TaskId
  readonly size: number
  /** Unpins the task. Safe twice. */
  release (): void
}

export interface TaskStatus {
  taskId: string
  digest: string
  size: number | undefined
  pieceCount: number
  piecesHeld: number
  verified: boolean
  downloading: boolean
  error?: string
}

type Fetched = { source: 'origin' | 'peer', digest: PieceDigest, parent?: string, costMs: number }

const FINAL_ORIGIN_ERRORS = new Set<string>(['NAIAD_REG_NOT_FOUND', 'NAIAD_REG_UNAUTHORIZED', 'NAIAD_REG_DENIED', 'NAIAD_P2P_ORIGIN_NOT_ALLOWED', 'NAIAD_CLOSED'])

/** An origin read-ahead piece the scheduler skipped: dropped quietly. */
class SkippedPiece extends Error {}

class PieceError extends Error {
  constructor (readonly reason: FailureReason, message: string, cause?: unknown) { super(message, cause === undefined ? undefined : { cause }) }
}

export class DownloadEngine {
  private readonly log: Logger
  private readonly metrics: PeerMetrics | undefined
  private readonly tasks = new Map<TaskId, Task>()
  private readonly hosts = new Map<string, HostInfo>()
  private readonly parents = new Map<string, ParentStat>()
  /** Recently completed pieces (`<taskId>/<n>` → bytes), least recently completed first. */
  private readonly recent = new Map<string, Buffer>()
  private readonly ac = new AbortController()
  private readonly dispatcher: Dispatcher
  private readonly ownDispatcher: Agent | undefined
  private closed = false

  constructor (private readonly deps: EngineDeps, private readonly options: EngineOptions) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.engine' })
    this.metrics = deps.metrics
    if (deps.dispatcher !== undefined) this.dispatcher = deps.dispatcher
    else this.dispatcher = this.ownDispatcher = new Agent({ connections: 32, keepAliveTimeout: 30_000, connect: { timeout: options.pieceTimeoutMs } })
  }

  // ---- tasks and readers ---------------------------------------------------------------------

  private taskFor (digest: Digest): Task {
    const id = taskIdFor(digest, this.options.pieceLength)
    let t = this.tasks.get(id)
    if (t === undefined) {
      t = new Task(id, digest, this.options.pieceLength)
      const stored = this.deps.store.get(id)
      if (stored !== undefined) { t.size = stored.size; t.count = pieceCount(stored.size, t.pieceLength) }
      this.tasks.set(id, t)
    }
    return t
  }

  /**
   * Opens a blob for reading: pins its task and learns its size (store, then the scheduler, then
   * an origin HEAD). The origin context (with the requester's Authorization) is remembered in
   * memory for this task's origin fetches. NAIAD_REG_NOT_FOUND when the origin has no such blob.
   */
  async acquire (digestStr: string, ctx: OriginContext, opts: { signal?: AbortSignal } = {}): Promise<TaskHandle> {
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', 'download engine is closed')
    const digest = parseDigest(digestStr)
    const task = this.taskFor(digest)
    // Keep a context with credentials for the same origin rather than replace it with one without
    // (a later anonymous reader must not break the authenticated one's fetches on this node).
    if (!(ctx.authorization === undefined && task.ctx?.authorization !== undefined && task.ctx.origin === ctx.origin)) task.ctx = ctx
    task.refs++
    this.deps.store.pin(task.id)
    this.cancelLinger(task)
    let released = false
    const release = (): void => {
      if (released) return
      released = true
      task.refs--
      this.deps.store.unpin(task.id)
      this.maybeIdle(task)
    }
    try {
      const size = await this.resolveSize(task, opts.signal)
      if (this.options.prefetch) this.prefetch(task)
      return { taskId: task.id, size, release }
    } catch (err) {
      release()
      throw err
    }
  }

  private async resolveSize (task: Task, signal?: AbortSignal): Promise<number> {
    if (task.size !== undefined) return task.size
    task.sizing ??= (async () => {
      let size: number | undefined
      const sched = this.deps.scheduler
      if (sched !== undefined) {
        await sched.ready()
        if (sched.up) {
          try {
            size = (await sched.statTask(task.id, signal !== undefined ? { signal } : {}))?.contentLength
          } catch (err) {
            this.log.debug({ err, taskId: task.id }, 'scheduler statTask failed')
          }
        }
      }
      if (size === undefined) {
        if (task.ctx === undefined) throw new NaiadError('NAIAD_INTERNAL', `task ${task.id}: no origin to ask for the size`)
        size = await this.deps.origin.size(task.ctx, task.digest, signal !== undefined ? { signal } : {})
      }
      await this.deps.store.ensureTask(task.id, size)
      task.size = size
      task.count = pieceCount(size, task.pieceLength)
      return size
    })()
    try {
      return await task.sizing
    } finally {
      task.sizing = undefined
    }
  }

  /**
   * Streams bytes [first, last] (inclusive, within the blob) of an acquired task to `write`,
   * chunk by chunk, as they become available. `write` must resolve when the chunk may be followed
   * by the next (backpressure). Rejects with the piece's error if a piece cannot be fetched.
   */
  async read (h: TaskHandle, first: number, last: number, write: (chunk: Buffer) => Promise<void>, opts: { signal?: AbortSignal, priority?: Priority } = {}): Promise<void> {
    const task = this.tasks.get(h.taskId)
    if (task === undefined || task.size === undefined) throw new NaiadError('NAIAD_INTERNAL', 'read: the task is not acquired')
    const span = piecesForRange(first, last, task.size, task.pieceLength)
    if (span === undefined) return
    const prio = opts.priority ?? 'ondemand'
    task.lastReadAt = Date.now()
    task.furthestRead = Math.max(task.furthestRead, span.last)
    for (let n = span.first; n <= span.last; n++) this.ensure(task, n, prio)
    const ahead = Math.min(task.count - 1, span.last + this.options.readAheadPieces)
    for (let n = span.last + 1; n <= ahead; n++) this.ensure(task, n, 'readahead')
    if (task.originCursor >= 0) this.extendOriginAhead(task, task.originCursor)
    this.deps.store.touch(task.id)
    for (let n = span.first; n <= span.last; n++) {
      const ps = pieceSpan(n, task.size, task.pieceLength)
      const sl = sliceOfPiece(ps, first, last)
      if (sl === undefined) continue
      let pos = sl.start
      while (pos < sl.end) {
        opts.signal?.throwIfAborted()
        const slot = task.slots.get(n)
        if (slot !== undefined) {
          while (slot.avail <= pos && !slot.done && slot.error === undefined && !slot.dropped) await slot.changed(opts.signal)
          if (slot.dropped) continue
          if (slot.avail > pos && slot.buf !== undefined) {
            const end = Math.min(slot.avail, sl.end)
            const chunk = slot.buf.subarray(pos, end)
            pos = end
            this.metrics?.mirrorBytes.inc(chunk.length)
            await write(chunk)
            continue
          }
          if (slot.error !== undefined) throw slot.error
          continue
        }
        const mem = this.recent.get(`${task.id}/${n}`)
        if (mem !== undefined) {
          const chunk = mem.subarray(pos, sl.end)
          pos = sl.end
          this.metrics?.mirrorBytes.inc(chunk.length)
          await write(chunk)
          continue
        }
        if (this.deps.store.has(task.id, n)) {
          const len = Math.min(sl.end - pos, 1024 * 1024)
          const chunk = await this.deps.store.read(task.id, ps.offset + pos, len)
          pos += len
          this.metrics?.mirrorBytes.inc(chunk.length)
          await write(chunk)
          continue
        }
        this.ensure(task, n, prio)
      }
    }
  }

  /** Starts downloading every missing piece of a task in the background. */
  private prefetch (task: Task): void {
    if (task.prefetching || task.size === undefined) return
    task.prefetching = true
    for (let n = 0; n < task.count; n++) this.ensure(task, n, 'prefetch')
  }

  /**
   * Downloads a whole blob (preheat): resolves when every piece is stored and the blob verified.
   */
  async downloadAll (digest: string, ctx: OriginContext, opts: { signal?: AbortSignal } = {}): Promise<TaskStatus> {
    const h = await this.acquire(digest, ctx, opts)
    try {
      const task = this.tasks.get(h.taskId) as Task
      for (let n = 0; n < task.count; n++) this.ensure(task, n, 'prefetch')
      for (let n = 0; n < task.count; n++) {
        while (!this.deps.store.has(task.id, n)) {
          opts.signal?.throwIfAborted()
          const slot = task.slots.get(n)
          if (slot === undefined) { this.ensure(task, n, 'prefetch'); if (!task.slots.has(n)) break; continue }
          while (!slot.done && slot.error === undefined && !slot.dropped) await slot.changed(opts.signal)
          if (slot.dropped) continue
          if (slot.error !== undefined) throw slot.error
          if (!this.deps.store.has(task.id, n)) throw new NaiadError('NAIAD_P2P_STORE_FULL', `piece ${n} of ${task.digest} could not be stored`)
        }
      }
      await this.checkComplete(task)
      await task.verifying
      return this.status(h.taskId)
    } finally {
      h.release()
    }
  }

  status (taskId: string): TaskStatus {
    const task = this.tasks.get(taskId as TaskId)
    const stored = this.deps.store.get(taskId as TaskId)
    const size = task?.size ?? stored?.size
    return {
      taskId,
      digest: task?.digest ?? stored?.digest ?? '',
      size,
      pieceCount: size === undefined ? 0 : pieceCount(size, this.options.pieceLength),
      piecesHeld: stored?.pieces.size ?? 0,
      verified: stored?.verified === true,
      downloading: task !== undefined && (task.running.size > 0 || task.queued.size > 0),
      ...(task?.lastError !== undefined ? { error: redactText(task.lastError instanceof Error ? task.lastError.message : String(task.lastError)) } : {})
    }
  }

  // ---- piece scheduling ----------------------------------------------------------------------

  /** Makes sure piece n is held or being fetched (creating its slot), at least at priority `prio`. */
  private ensure (task: Task, n: number, prio: Priority): void {
    if (this.closed || this.deps.store.has(task.id, n)) return
    const p = PRIO[prio]
    const before = task.prio.get(n)
    task.prio.set(n, Math.min(p, before ?? p))
    if (before !== undefined && p < before) {
      this.wakeGate(task)
      // Asked for origin-only so far: ask again as a normal request (parents allowed).
      if (before === PRIO.origin) task.assignWaiters.get(n)?.resolve('retry')
    }
    if (task.running.has(n)) return
    const q = task.queued.get(n)
    if (q !== undefined) {
      if (p < q) task.queued.set(n, p)
      return
    }
    if (!task.slots.has(n) && task.size !== undefined) task.slots.set(n, new PieceSlot(n, pieceSpan(n, task.size, task.pieceLength).length))
    task.queued.set(n, p)
    this.cancelLinger(task)
    this.pumpQueue(task)
  }

  private pumpQueue (task: Task): void {
    while (task.running.size < this.options.concurrentPieces * 4 + (this.options.originReadAheadPieces ?? 0) && task.queued.size > 0) {
      let best = -1
      let bestP = Infinity
      for (const [n, p] of task.queued) if (p < bestP || (p === bestP && n < best)) { best = n; bestP = p }
      task.queued.delete(best)
      task.running.add(best)
      this.deps.store.pin(task.id)
      void this.runPiece(task, best).finally(() => {
        task.running.delete(best)
        task.prio.delete(best)
        this.deps.store.unpin(task.id)
        if (task.originCursor >= 0) this.extendOriginAhead(task, best)
        this.pumpQueue(task)
        this.maybeIdle(task)
      })
    }
  }

  private async runPiece (task: Task, n: number): Promise<void> {
    let slot = task.slots.get(n)
    if (slot === undefined) {
      slot = new PieceSlot(n, pieceSpan(n, task.size as number, task.pieceLength).length)
      task.slots.set(n, slot)
    }
    const started = Date.now()
    try {
      const got = await this.fetchPiece(task, slot)
      const buf = slot.buf as Buffer
      const seconds = (Date.now() - started) / 1000
      this.log.debug({ taskId: task.id, pieceNum: n, source: got.source, parent: got.parent, durationMs: Date.now() - started, transferMs: got.costMs, planMs: slot.planMs, slotMs: slot.slotMs }, 'piece fetched')
      this.metrics?.pieces.inc({ source: got.source })
      this.metrics?.pieceSeconds.observe({ source: got.source }, seconds)
      let stored = false
      try {
        await this.deps.store.writePiece(task.id, got.digest, buf)
        stored = true
      } catch (err) {
        this.log.warn({ err, taskId: task.id, pieceNum: n }, 'cannot store piece; it is served from memory to current readers only')
      }
      slot.done = true
      if (stored) this.remember(task, n, buf)
      slot.notify()
      task.slots.delete(n)
      if (stored) {
        task.session?.finished({ digest: got.digest, source: got.source, parentHostId: got.parent ?? '', length: slot.length, costMs: got.costMs })
        await this.checkComplete(task)
      } else if (got.parent !== undefined) {
        task.session?.failed({ number: n, parentHostId: got.parent, reason: 'busy', description: 'not stored' })
      }
    } catch (err) {
      if (err instanceof SkippedPiece) {
        slot.dropped = true
        slot.notify()
        if (task.slots.get(n) === slot) task.slots.delete(n)
        return
      }
      task.lastError = err
      if (!isAbortError(err) && !this.closed) this.log.warn({ err, taskId: task.id, pieceNum: n }, 'piece failed')
      slot.error = err
      slot.notify()
      if (task.slots.get(n) === slot) task.slots.delete(n)
    }
  }

  /** Waits for one of the task's `concurrentPieces` transfer slots; returns its release. */
  private async transferSlot (task: Task, n: number, now = false): Promise<() => void> {
    const urgent = this.priorityOf(task, n) === 'ondemand'
    if (now) {
      // An origin permit must not idle behind other transfers (permits per peer are few).
      task.transfers++
    } else if (task.transfers >= this.options.concurrentPieces) {
      const prio = PRIO[this.priorityOf(task, n)]
      await new Promise<void>(resolve => {
        task.slotWaiters.push({ n, prio, go: resolve })
        task.slotWaiters.sort((x, y) => x.prio - y.prio || x.n - y.n)
      })
    } else {
      task.transfers++
    }
    if (urgent) task.urgent++
    let done = false
    return () => {
      if (done) return
      done = true
      if (urgent) task.urgent--
      const next = task.transfers > this.options.concurrentPieces ? undefined : task.slotWaiters.shift()
      if (next !== undefined) next.go()
      else task.transfers--
      this.wakeGate(task)
    }
  }

  /**
   * While an on-demand transfer of the task runs, at most one other transfer runs beside it: a
   * read-ahead or prefetch piece does not split the bandwidth a reader is waiting on more than
   * that (its next piece arrives, and is relayed, nearly at full speed), yet the next piece is
   * always on its way, so the origin or the parent never idles between pieces. On-demand pieces
   * pass at once.
   */
  private async gate (task: Task, n: number): Promise<void> {
    while (this.priorityOf(task, n) !== 'ondemand' && this.priorityOf(task, n) !== 'origin' && ((task.urgent > 0 && task.transfers >= 2) || task.transfers >= this.options.concurrentPieces) && !this.closed) {
      await new Promise<void>(resolve => { task.gateWaiters.push(resolve) })
    }
  }

  private wakeGate (task: Task): void {
    const ws = task.gateWaiters.splice(0)
    for (const w of ws) w()
  }

  private priorityOf (task: Task, n: number): Priority {
    const p = task.prio.get(n) ?? 2
    return p === 0 ? 'ondemand' : p === 1 ? 'readahead' : p === 2 ? 'prefetch' : 'origin'
  }

  /** One piece, with retries over parents and the origin. */
  private async fetchPiece (task: Task, slot: PieceSlot): Promise<Fetched> {
    const n = slot.number
    const skip = new Set<string>()
    const state: { lastErr: unknown } = { lastErr: undefined }
    for (let attempt = 1; attempt <= this.options.maxAttempts; attempt++) {
      if (this.closed) throw new NaiadError('NAIAD_ABORTED', 'the peer is shutting down')
      const t0 = Date.now()
      await this.gate(task, n)
      const plan = await this.plan(task, n)
      if (plan.kind === 'skipped') {
        if (this.priorityOf(task, n) === 'origin') throw new SkippedPiece(`piece ${n} skipped`)
        attempt--
        continue
      }
      if (plan.kind === 'origin' && plan.reason === 'scheduler') this.extendOriginAhead(task, n)
      const t1 = Date.now()
      // Allocated once there is somewhere to fetch from (not while waiting for an assignment).
      slot.buf ??= Buffer.allocUnsafe(slot.length)
      const release = await this.transferSlot(task, n, plan.kind === 'origin' && plan.reason === 'scheduler')
      slot.planMs += t1 - t0
      slot.slotMs += Date.now() - t1
      let outcome: Fetched | 'failed' | 'again'
      slot.receiving = true
      try {
        outcome = plan.kind === 'origin' ? await this.tryOrigin(task, slot, plan.reason, state) : await this.tryParents(task, slot, plan, skip, state)
      } finally {
        slot.receiving = false
        release()
      }
      if (outcome === 'again') {
        // Every parent offered was busy or already failed this piece: ask again shortly, without
        // counting it as a try.
        attempt--
        if (skip.size >= 16) skip.clear()
        await sleep(30 + Math.random() * 120)
        continue
      }
      if (outcome !== 'failed') return outcome
      if (plan.kind === 'origin') await sleep(Math.min(2000, 100 * 2 ** attempt), undefined, { signal: this.ac.signal }).catch(() => {})
    }
    throw new NaiadError('NAIAD_P2P_PIECE_UNAVAILABLE', `piece ${n} of ${task.digest}: no source delivered it after ${this.options.maxAttempts} tries: ${errText(state.lastErr)}`, { cause: state.lastErr })
  }

  private async tryOrigin (task: Task, slot: PieceSlot, reason: 'scheduler' | 'no-scheduler', state: { lastErr: unknown }): Promise<Fetched | 'failed'> {
    const t0 = Date.now()
    try {
      await this.fetchFromOrigin(task, slot)
      this.metrics?.backToSource.inc({ reason })
      return { source: 'origin', digest: computePieceDigest(slot.number, slot.buf as Buffer, task.pieceLength), costMs: Date.now() - t0 }
    } catch (err) {
      state.lastErr = err
      task.session?.failed({ number: slot.number, parentHostId: '', reason: 'origin', description: errText(err) })
      if (isNaiadError(err) && FINAL_ORIGIN_ERRORS.has(err.code)) throw err
      this.log.debug({ err, taskId: task.id, pieceNum: slot.number }, 'origin fetch failed')
      return 'failed'
    }
  }

  private async tryParents (task: Task, slot: PieceSlot, plan: { parents: HostInfo[], digest: PieceDigest }, skip: Set<string>, state: { lastErr: unknown }): Promise<Fetched | 'failed' | 'again'> {
    const n = slot.number
    const candidates = this.orderParents(plan.parents.filter(p => !skip.has(p.id)))
    if (candidates.length === 0) {
      for (const p of plan.parents) task.session?.failed({ number: n, parentHostId: p.id, reason: 'busy', description: 'skipped' })
      return 'again'
    }
    let allBusy = true
    for (const p of candidates) {
      const t0 = Date.now()
      const before = slot.avail
      let flowing = false
      try {
        // Reported once the parent answers: only then can this peer relay the piece to others.
        await this.fetchFromParent(task, slot, p, plan.digest, () => { flowing = true; task.session?.started(n, p.id) })
        // Every block verified in this transfer: the piece matches its record (both come from the
        // same origin bytes). Bytes from an earlier attempt are checked as a whole.
        if (before > 0 && !sha256Of(slot.buf as Buffer).equals(plan.digest.sha256)) throw new PieceError('digest-mismatch', `piece ${n} from ${p.id}: sha256 of the piece does not match the record`)
        const costMs = Date.now() - t0
        this.recordSpeed(p.id, slot.length - before, costMs)
        return { source: 'peer', digest: plan.digest, parent: p.id, costMs }
      } catch (err) {
        state.lastErr = err
        const reason: FailureReason = err instanceof PieceError ? err.reason : 'transport'
        if (reason !== 'busy') allBusy = false
        task.session?.failed({ number: n, parentHostId: p.id, reason, description: errText(err) })
        this.metrics?.parentFailures.inc({ parent: p.id, reason })
        if (reason === 'digest-mismatch') {
          this.metrics?.digestMismatches.inc()
          this.blockParent(p.id, 600_000)
          this.log.warn({ taskId: task.id, pieceNum: n, parent: p.id }, 'piece from parent does not match its recorded digest; discarded, parent reported')
        } else if (reason === 'transport') {
          this.blockParent(p.id, 10_000)
          this.log.debug({ err, taskId: task.id, pieceNum: n, parent: p.id }, 'parent failed a piece')
        }
        if (reason !== 'busy') skip.add(p.id)
        // Children relaying this piece from us must not wait for a source that broke off.
        if (flowing) slot.interrupt()
        if (isAbortError(err) && this.closed) throw err
      }
    }
    return allBusy ? 'again' : 'failed'
  }

  /**
   * Origin read-ahead: this peer was sent to the origin for piece `from` (or an origin read-ahead
   * piece ended, or a reader read on): while readers read the task, the pieces after `from` up to
   * `originReadAheadPieces` beyond the furthest piece they asked for are asked for origin-only,
   * at most `originReadAheadPieces` at a time, so the origin link stays busy back to back instead
   * of waiting for the readers' windows to reach each piece.
   */
  private extendOriginAhead (task: Task, from: number): void {
    const k = this.options.originReadAheadPieces ?? 0
    if (k <= 0 || this.closed || task.size === undefined || this.deps.scheduler === undefined) return
    if (Date.now() - task.lastReadAt > ORIGIN_AHEAD_IDLE_MS) return
    task.originCursor = Math.max(task.originCursor, from)
    let outstanding = 0
    for (const n of task.running) if (task.prio.get(n) === PRIO.origin) outstanding++
    for (const [n] of task.queued) if (task.prio.get(n) === PRIO.origin) outstanding++
    const limit = Math.min(task.count - 1, task.furthestRead + k)
    while (outstanding < k && task.originCursor < limit) {
      const c = ++task.originCursor
      if (this.deps.store.has(task.id, c) || task.running.has(c) || task.queued.has(c)) continue
      this.ensure(task, c, 'origin')
      outstanding++
    }
  }

  /** What to do for piece n: ask the scheduler, or go to the origin without one. */
  private async plan (task: Task, n: number): Promise<Plan> {
    for (;;) {
      const session = await this.sessionFor(task)
      if (session === undefined) return { kind: 'origin', reason: 'no-scheduler' }
      const originOnly = this.priorityOf(task, n) === 'origin'
      const got = await new Promise<Plan | 'retry'>((resolve) => {
        const timer = setTimeout(() => { task.assignWaiters.delete(n); resolve('retry') }, this.options.waitTimeoutMs)
        timer.unref()
        const prev = task.assignWaiters.get(n)
        const w: AssignWaiter = { resolve: (a) => { clearTimeout(timer); if (task.assignWaiters.get(n) === w) task.assignWaiters.delete(n); resolve(a) } }
        task.assignWaiters.set(n, w)
        prev?.resolve('retry')
        session.request([n], originOnly)
      })
      if (got !== 'retry') return got
      if (this.closed) throw new NaiadError('NAIAD_ABORTED', 'the peer is shutting down')
    }
  }

  private onAssignments (task: Task, a: Assignments): void {
    for (const h of a.hosts) this.hosts.set(h.id, h)
    for (const p of a.pieces) {
      if (p.action === 'wait') continue
      const w = task.assignWaiters.get(p.number)
      if (w === undefined) {
        // A piece still being fetched: the scheduler keeps one grant per piece and download, which
        // the running transfer's own report releases; reporting this stale one would release it
        // under the running transfer (and let someone else fetch the piece from the origin too).
        if (p.action === 'skipped' || task.running.has(p.number)) continue
        // Nobody waits for it any more: give back what the scheduler reserved.
        task.session?.failed({ number: p.number, parentHostId: p.action === 'parents' ? (p.parents[0] ?? '') : '', reason: p.action === 'parents' ? 'busy' : 'origin', description: 'no longer needed' })
        continue
      }
      task.assignWaiters.delete(p.number)
      if (p.action === 'back-to-source') {
        w.resolve({ kind: 'origin', reason: 'scheduler' })
      } else if (p.action === 'skipped') {
        w.resolve({ kind: 'skipped' })
      } else {
        const parents = p.parents.map(id => this.hosts.get(id)).filter((h): h is HostInfo => h !== undefined && h.id !== this.deps.hostId)
        w.resolve(parents.length > 0 ? { kind: 'parents', parents, digest: p.digest } : 'retry')
      }
    }
  }

  /** The task's scheduler stream, opened on demand; undefined means "go to the origin". */
  private async sessionFor (task: Task): Promise<TaskStream | undefined> {
    const sched = this.deps.scheduler
    if (sched === undefined || this.closed) return undefined
    if (task.session !== undefined && !task.session.closed) return task.session
    if (Date.now() < task.directUntil) return undefined
    task.sessionOpening ??= (async () => {
      try {
        const s = await sched.openTask({ taskId: task.id, digest: task.digest, pieceLength: task.pieceLength, contentLength: task.size }, { signal: this.ac.signal })
        s.onAssignments = (a) => { this.onAssignments(task, a) }
        s.onClosed = (err) => {
          if (task.session === s) task.session = undefined
          if (err !== undefined && !this.closed) {
            this.log.warn({ err, taskId: task.id }, 'scheduler stream lost; pieces go to the origin until it is back')
            task.directUntil = Date.now() + (this.options.schedulerRetryMs ?? 5000)
          }
          for (const [n, w] of [...task.assignWaiters]) { task.assignWaiters.delete(n); w.resolve('retry') }
        }
        task.session = s
        return s
      } catch (err) {
        if (!this.closed) this.log.warn({ err, taskId: task.id }, 'scheduler unavailable for this download; using the origin')
        task.directUntil = Date.now() + (this.options.schedulerRetryMs ?? 5000)
        return undefined
      } finally {
        task.sessionOpening = undefined
      }
    })()
    return await task.sessionOpening
  }

  private orderParents (parents: HostInfo[]): HostInfo[] {
    const now = Date.now()
    const usable = parents.filter(p => p.id !== this.deps.hostId && (this.parents.get(p.id)?.blockedUntil ?? 0) <= now)
    if (usable.length <= 1) return usable
    let known = 0
    for (const p of usable) known = Math.max(known, this.parents.get(p.id)?.bps ?? 0)
    const prior = known > 0 ? known : 1
    // The scheduler reserved an upload slot on the first parent: favour it (×4) unless another is
    // measured to be much faster; the others are likelier to be busy.
    const weights = usable.map((p, i) => (this.parents.get(p.id)?.bps ?? prior) * (i === 0 ? 4 : Math.max(0.2, 1 - 0.2 * i)))
    const total = weights.reduce((a, b) => a + b, 0)
    let r = Math.random() * total
    let pick = 0
    for (let i = 0; i < weights.length; i++) { r -= weights[i] as number; if (r <= 0) { pick = i; break } }
    const first = usable[pick] as HostInfo
    return [first, ...usable.filter((_, i) => i !== pick)]
  }

  private recordSpeed (hostId: string, bytes: number, ms: number): void {
    if (bytes <= 0 || ms <= 0) return
    const bps = bytes / (ms / 1000)
    const s = this.parents.get(hostId) ?? { bps: undefined, blockedUntil: 0 }
    s.bps = s.bps === undefined ? bps : 0.7 * s.bps + 0.3 * bps
    this.parents.set(hostId, s)
  }

  private blockParent (hostId: string, ms: number): void {
    const s = this.parents.get(hostId) ?? { bps: undefined, blockedUntil: 0 }
    s.blockedUntil = Math.max(s.blockedUntil, Date.now() + ms)
    this.parents.set(hostId, s)
  }

  // ---- transfers -----------------------------------------------------------------------------

  /** Appends verified bytes to a slot beyond `avail` and wakes readers. */
  private advance (slot: PieceSlot, at: number, data: Buffer): number {
    const end = at + data.length
    if (end <= slot.avail) return 0
    const from = Math.max(at, slot.avail)
    data.copy(slot.buf as Buffer, from, from - at)
    const added = end - slot.avail
    slot.avail = end
    slot.notify()
    return added
  }

  private async fetchFromOrigin (task: Task, slot: PieceSlot): Promise<void> {
    if (task.ctx === undefined) throw new NaiadError('NAIAD_P2P_PIECE_UNAVAILABLE', `task ${task.id}: no origin known (no reader asked for it since the restart)`)
    const span = pieceSpan(slot.number, task.size as number, task.pieceLength)
    if (slot.avail >= slot.length) return
    const ac = new AbortController()
    const onAbort = (): void => { ac.abort(this.ac.signal.reason) }
    this.ac.signal.addEventListener('abort', onAbort, { once: true })
    try {
      const body: Readable = await this.deps.origin.range(task.ctx, task.digest, span.offset + slot.avail, span.offset + span.length - 1, { signal: ac.signal })
      for await (const chunk of body as AsyncIterable<Buffer>) {
        const added = this.advance(slot, slot.avail, chunk)
        this.metrics?.pieceBytes.inc({ source: 'origin' }, added)
      }
      if (slot.avail < slot.length) throw new NaiadError('NAIAD_REG_UNAVAILABLE', `origin body for piece ${slot.number} ended early`)
    } finally {
      this.ac.signal.removeEventListener('abort', onAbort)
    }
  }

  private async fetchFromParent (task: Task, slot: PieceSlot, parent: HostInfo, digest: PieceDigest, onFlowing: () => void): Promise<void> {
    const bl = blockLength(task.pieceLength)
    let block = Math.floor(slot.avail / bl)
    let pos = block * bl
    if (pos >= slot.length) return
    const url = `http://${parent.ip.includes(':') ? `[${parent.ip}]` : parent.ip}:${parent.uploadPort}/pieces/${task.id}/${slot.number}`
    const ac = new AbortController()
    const onAbort = (): void => { ac.abort(this.ac.signal.reason) }
    this.ac.signal.addEventListener('abort', onAbort, { once: true })
    let res: Dispatcher.ResponseData
    try {
      res = await request(url, {
        method: 'GET',
        headers: pos > 0 ? { range: `bytes=${pos}-${slot.length - 1}` } : {},
        dispatcher: this.dispatcher,
        signal: ac.signal,
        headersTimeout: this.options.pieceTimeoutMs,
        bodyTimeout: this.options.pieceTimeoutMs
      })
    } catch (err) {
      this.ac.signal.removeEventListener('abort', onAbort)
      throw new PieceError('transport', `parent ${parent.id}: ${errText(err)}`, err)
    }
    try {
      if (res.statusCode === 503 || res.statusCode === 429) throw new PieceError('busy', `parent ${parent.id} is busy`)
      if (res.statusCode === 404) throw new PieceError('not-found', `parent ${parent.id} does not hold piece ${slot.number}`)
      if (res.statusCode !== (pos > 0 ? 206 : 200)) throw new PieceError('transport', `parent ${parent.id} answered HTTP ${res.statusCode}`)
      onFlowing()
      // A block that lies wholly beyond `avail` is received straight into the piece buffer (no
      // reader looks there yet) and exposed by moving `avail` once it is verified; only a block
      // overlapping bytes already exposed (a resume) goes through a scratch buffer.
      const buf = slot.buf as Buffer
      let scratch: Buffer | undefined
      let fill = 0
      try {
        for await (const c of res.body as AsyncIterable<Buffer>) {
          let off = 0
          while (off < c.length) {
            const blockLen = Math.min(bl, slot.length - pos)
            const want = blockLen - fill
            if (want <= 0) throw new PieceError('transport', `parent ${parent.id} sent more than the piece`)
            const direct = pos >= slot.avail
            const target = direct ? buf : (scratch ??= Buffer.allocUnsafe(bl))
            const at = direct ? pos + fill : fill
            const take = Math.min(want, c.length - off)
            c.copy(target, at, off, off + take)
            fill += take
            off += take
            if (fill === blockLen) {
              const data = direct ? buf.subarray(pos, pos + blockLen) : target.subarray(0, blockLen)
              const expected = blockDigest(digest, block)
              const got = createHash('sha256').update(data).digest()
              if (expected === undefined || !got.equals(expected)) {
                throw new PieceError('digest-mismatch', `piece ${slot.number} block ${block} from ${parent.id} does not match the recorded sha256`)
              }
              let added: number
              if (direct) {
                added = pos + blockLen - slot.avail
                slot.avail = pos + blockLen
                slot.notify()
              } else {
                added = this.advance(slot, pos, data)
              }
              this.metrics?.pieceBytes.inc({ source: 'peer' }, added)
              pos += blockLen
              block++
              fill = 0
            }
          }
        }
      } catch (err) {
        if (err instanceof PieceError) throw err
        throw new PieceError('transport', `parent ${parent.id}: ${errText(err)}`, err)
      }
      if (pos < slot.length) throw new PieceError('transport', `parent ${parent.id}: body ended at ${pos} of ${slot.length} bytes`)
    } finally {
      this.ac.signal.removeEventListener('abort', onAbort)
      if (!res.body.destroyed) {
        res.body.on('error', () => {})
        res.body.destroy()
      }
    }
  }

  // ---- completion ----------------------------------------------------------------------------

  /** Keeps a stored piece in memory (bounded) and feeds the blob's digest in order. */
  private remember (task: Task, n: number, buf: Buffer): void {
    const max = this.options.memoryPieces ?? 0
    if (max <= 0) return
    const key = `${task.id}/${n}`
    this.recent.delete(key)
    this.recent.set(key, buf)
    while (task.size !== undefined && task.hashedPieces < task.count) {
      const b = this.recent.get(`${task.id}/${task.hashedPieces}`)
      if (b === undefined) break
      task.hash ??= createHash(hashAlgorithm(task.digest))
      task.hash.update(b)
      task.hashedPieces++
    }
    for (const k of this.recent.keys()) {
      if (this.recent.size <= max) break
      this.recent.delete(k)
    }
  }

  private forget (taskId: TaskId): void {
    const prefix = `${taskId}/`
    for (const k of [...this.recent.keys()]) if (k.startsWith(prefix)) this.recent.delete(k)
  }

  private async checkComplete (task: Task): Promise<void> {
    const stored = this.deps.store.get(task.id)
    if (stored === undefined || stored.verified || task.size === undefined || stored.pieces.size < task.count) return
    task.verifying ??= (async () => {
      // The pieces fed in order from memory as they completed are not read again from disk.
      const hash = task.hash ?? createHash(hashAlgorithm(task.digest))
      const from = task.hash !== undefined ? Math.min(stored.size, task.hashedPieces * task.pieceLength) : 0
      task.hash = undefined
      task.hashedPieces = task.count
      const step = 8 * 1024 * 1024
      this.deps.store.pin(task.id)
      try {
        for (let off = from; off < stored.size; off += step) hash.update(await this.deps.store.read(task.id, off, Math.min(step, stored.size - off)))
        const got = `${task.digest.slice(0, task.digest.indexOf(':'))}:${hash.digest('hex')}`
        if (got === task.digest) {
          await this.deps.store.markVerified(task.id)
          this.metrics?.blobVerifications.inc({ result: 'ok' })
          task.session?.peerFinished(stored.size)
          this.log.info({ taskId: task.id, digest: task.digest, size: stored.size }, 'blob complete and verified')
        } else {
          this.metrics?.blobVerifications.inc({ result: 'mismatch' })
          const err = new NaiadError('NAIAD_P2P_BLOB_DIGEST_MISMATCH', `blob ${task.digest}: the complete content hashes to ${got}; pieces dropped`)
          this.log.error({ err, taskId: task.id }, 'complete blob does not match its digest')
          task.session?.peerFailed(err.message, true)
          task.lastError = err
          task.hashedPieces = 0
          this.forget(task.id)
          await this.deps.store.dropTask(task.id)
          await this.deps.store.ensureTask(task.id, stored.size)
        }
      } catch (err) {
        task.hashedPieces = 0
        this.log.warn({ err, taskId: task.id }, 'blob verification failed to run')
      } finally {
        this.deps.store.unpin(task.id)
        task.verifying = undefined
      }
    })()
    await task.verifying
  }

  // ---- idle handling and store interplay -----------------------------------------------------

  private cancelLinger (task: Task): void {
    if (task.lingerTimer !== undefined) clearTimeout(task.lingerTimer)
    task.lingerTimer = undefined
  }

  private maybeIdle (task: Task): void {
    if (task.refs > 0 || task.running.size > 0 || task.queued.size > 0 || this.closed) return
    this.cancelLinger(task)
    task.lingerTimer = setTimeout(() => {
      task.lingerTimer = undefined
      if (task.refs > 0 || task.running.size > 0 || task.queued.size > 0) return
      task.session?.close()
      task.session = undefined
      if (this.tasks.get(task.id) === task) this.tasks.delete(task.id)
    }, this.options.lingerMs ?? 10_000)
    task.lingerTimer.unref()
  }

  /**
   * A piece in memory for the upload server: being received right now, for relaying (cut-through)
   * — its bytes below `avail` are final (verified block by block when they come from a parent) —
   * or complete and among the recent pieces kept in memory.
   */
  inflight (taskId: string, n: number): InflightPiece | undefined {
    const slot = this.tasks.get(taskId as TaskId)?.slots.get(n)
    if (slot === undefined) {
      const mem = this.recent.get(`${taskId}/${n}`)
      return mem === undefined ? undefined : completePiece(mem)
    }
    // Only while bytes are flowing in (or all there): a piece waiting to be scheduled again would
    // leave the child waiting for nothing.
    if (slot === undefined || slot.buf === undefined || slot.error !== undefined || !(slot.receiving || slot.done)) return undefined
    return slot
  }

  /** The store evicted a task: forget it here too. */
  onEvicted (taskId: TaskId): void {
    this.forget(taskId)
    const t = this.tasks.get(taskId)
    if (t !== undefined && t.refs === 0 && t.running.size === 0) this.tasks.delete(taskId)
    this.deps.scheduler?.leaveTask(taskId)
  }

  /** What the store holds, as announced to the scheduler. */
  heldTasks (): HeldTask[] {
    return this.deps.store.list().filter(t => t.pieces.size > 0).map(t => ({
      taskId: t.taskId,
      digest: t.digest,
      contentLength: t.size,
      pieceLength: t.pieceLength,
      pieces: [...t.pieces.values()],
      complete: t.verified
    }))
  }

  /** Aborts transfers and ends scheduler streams. Safe twice. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.ac.abort(new NaiadError('NAIAD_ABORTED', 'the peer is shutting down'))
    for (const t of this.tasks.values()) {
      this.cancelLinger(t)
      t.queued.clear()
      for (const slot of t.slots.values()) {
        if (!slot.done && slot.error === undefined) { slot.error = new NaiadError('NAIAD_ABORTED', 'the peer is shutting down'); slot.notify() }
      }
      for (const [n, w] of [...t.assignWaiters]) { t.assignWaiters.delete(n); w.resolve('retry') }
      this.wakeGate(t)
      t.session?.close()
    }
    if (this.ownDispatcher !== undefined) await this.ownDispatcher.close().catch(() => {})
  }
}

function hashAlgorithm (digest: string): 'sha256' | 'sha512' {
  return digest.startsWith('sha512:') ? 'sha512' : 'sha256'
}

/** A complete piece held in memory, as the upload server relays it. */
function completePiece (buf: Buffer): InflightPiece {
  return { length: buf.length, buf, avail: buf.length, done: true, error: undefined, interruptions: 0, dropped: false, changed: async () => {} }
}

function errText (err: unknown): string {
  if (err === undefined) return 'unknown error'
  return redactText(err instanceof Error ? (isNaiadError(err) ? `${err.code}: ${err.message}` : err.message) : String(err)).slice(0, 300)
}

