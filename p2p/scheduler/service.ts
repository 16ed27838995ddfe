/**
 * The scheduler's state and decisions, without gRPC: hosts (from heartbeats), tasks, which host
 * holds which piece, the recorded digests of every piece, origin permits, waiters, per-download and
 * cluster-wide blocklists. The gRPC adapter (grpc-server.ts) turns stream messages into calls here
 * and `PeerSink` calls into stream writes; tests drive it directly with a fake clock.
 *
 * Decisions for one piece a peer asks for (`decide`):
 * 1. The evaluator ranks the hosts holding it (never the asking host, never a blocklisted one);
 *    with `parentSelection` 'ring' (default) they are then ordered by ring distance (the holder nearest
 *    before the child in the ring of the task's downloads first), and the child's predecessor in
 *    the ring, when it holds the piece and copies it to nobody else, is offered alone; when it is
 *    about to receive it (waiting for it, assigned a parent, fetching it from the origin), the
 *    answer is WAIT, so that each piece is relayed around the ring. If one of them has a free
 *    upload slot, the answer is PARENTS (best first, at most
 *    `candidateParents`) and a slot of the best one is reserved until the peer reports the piece.
 * 2. If holders exist but all are busy: WAIT; the peer is served when a slot frees or a new holder
 *    appears (the swarm grows by doubling: every finished transfer adds a holder).
 * 3. If no usable holder exists: BACK_TO_SOURCE when fewer than `originBudgetPerPiece` origin
 *    fetches of the piece are in flight cluster-wide, else WAIT. So N cold peers fetch each piece
 *    from the registry about once.
 *
 * Integrity: the digests of a piece's first origin fetch are recorded; later reports (from peers,
 * from the origin again, or re-announced after a restart) that disagree are rejected, and a
 * parent whose bytes did not match is blocklisted cluster-wide for `blocklistTtlMs`.
 */
import { NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { SchedulerMetrics } from '../metrics.ts'
import { describeTaskId, isTaskId, pieceCount, pieceSpan, sameDigest, taskIdFor, validPieceDigest, type Assignment, type Assignments, type FailureReason, type HeldTask, type HostInfo, type HostStatus, type PieceDigest, type TaskId, type TaskStat } from '../protocol/index.ts'
export type { Assignment, Assignments, FailureReason, HeldTask, HostInfo, HostStatus, TaskStat } from '../protocol/index.ts'
import { createEvaluator, type CandidateHost, type Evaluator, type TransferEdges } from './evaluator.ts'

/** Where a download's answers go (the adapter writes them to the stream). */
export interface PeerSink {
  assignments (a: Assignments): void
  /** The scheduler ends the download (host forgotten, replaced by a newer stream). */
  close (err: NaiadError): void
}

export interface SchedulerOptions {
  /** Parents returned per piece (default 3). */
  candidateParents?: number
  /** Concurrent origin fetches per piece cluster-wide (default 1). */
  originBudgetPerPiece?: number
  /**
   * Concurrent origin fetches one download may hold (default 1), so that the origin fetches of a
   * blob are spread over the peers asking for it: each then feeds the swarm with a share of the
   * pieces, and no peer's downlink carries two origin streams beside its own downloads from
   * parents (which slowed them: bench/p2p, docs/benchmarks.md).
   */
  originPermitsPerPeer?: number
  /**
   * Concurrent origin fetches of one blob cluster-wide (default 4). Each origin stream shares its
   * peer's downlink with that peer's downloads from parents, so one or two streams left the
   * origin's uplink (the link every byte crosses once) 35-45 % idle; four on four peers keep it
   * 85-96 % busy (bench/p2p, N = 4: 36.8 s -> 28-29 s).
   */
  originConcurrencyPerTask?: number
  /**
   * How parents are chosen: 'ring' (default) orders the downloads of a task in a ring (by host
   * id) and offers each child the holder of the piece nearest before it first, so that pieces
   * flow around the ring relayed block by block, every uplink feeding its successor
   * (docs/p2p.md); 'score' ranks the holders by the evaluator's score alone.
   */
  parentSelection?: 'ring' | 'score'
  /** Half-life of the recent-upload volume the evaluator balances (default 10 s). */
  uploadHalfLifeMs?: number
  /** An origin permit not reported within this is given to someone else (default 2 min). */
  permitTimeoutMs?: number
  /** How long a bad parent stays on the cluster-wide blocklist (default 10 min). */
  blocklistTtlMs?: number
  /** Transport failures within `failureWindowMs` that blocklist a host cluster-wide (default 3). */
  failureThreshold?: number
  failureWindowMs?: number
  /** A host that has not heart-beaten for this long is forgotten (default 30 s). */
  hostTtlMs?: number
  /** A parent that failed a download is skipped by that download for this long (default 60 s). */
  childBlocklistTtlMs?: number
  /** A task with no holder and no download is forgotten after this long (default 10 min). */
  taskTtlMs?: number
}

export interface SchedulerServiceDeps {
  logger?: Logger
  metrics?: SchedulerMetrics
  now?: () => number
  evaluator?: Evaluator
}

class HostState {
  lastSeen: number
  assigned = 0
  /** Recently uploaded bytes, decayed with the half-life (as of `uploadAt`). */
  upload = 0
  uploadAt = 0
  bandwidth: number | undefined
  failures: number[] = []
  blocklistedUntil = 0
  announced = false
  readonly tasks = new Map<TaskId, Set<number>>()
  readonly complete = new Set<TaskId>()
  readonly sessions = new Set<PeerSession>()
  constructor (public info: HostInfo, now: number) { this.lastSeen = now }
}

class TaskState {
  size: number | undefined
  readonly digests = new Map<number, PieceDigest>()
  readonly holders = new Map<number, Set<string>>()
  readonly permits = new Map<number, Map<PeerSession, number>>()
  readonly waiters = new Map<number, Set<PeerSession>>()
  /** Downloads receiving each piece from a parent now (they relay it: partial holders). */
  readonly receiving = new Map<number, Set<PeerSession>>()
  readonly sessions = new Set<PeerSession>()
  permitsGranted = 0
  /** Origin permits held now (all pieces). */
  permitsHeld = 0
  lastActive: number
  constructor (readonly id: TaskId, readonly digest: string, readonly pieceLength: number, now: number) { this.lastActive = now }

  pieceCount (): number | undefined {
    return this.size === undefined ? undefined : pieceCount(this.size, this.pieceLength)
  }

  private ringHosts: string[] | undefined

  /** The host ids of the task's downloads in order (parent selection 'ring'); kept until they change. */
  ring (): string[] {
    this.ringHosts ??= [...new Set([...this.sessions].map(x => x.host.info.id))].sort()
    return this.ringHosts
  }

  addSession (s: PeerSession): void {
    this.sessions.add(s)
    this.ringHosts = undefined
  }

  deleteSession (s: PeerSession): void {
    this.sessions.delete(s)
    this.ringHosts = undefined
  }
}

/** One download: one AnnouncePeer stream. */
export class PeerSession {
  readonly blocklist = new Map<string, number>()
  /** Piece → the parent whose upload slot it holds. */
  readonly transfers = new Map<number, string>()
  /** Pieces it is receiving from a parent now: it can relay their verified blocks (cut-through). */
  readonly started = new Set<number>()
  readonly permits = new Set<number>()
  readonly waiting = new Set<number>()
  /** Pieces it waits for as origin read-ahead (origin only, never from parents). */
  readonly originOnly = new Set<number>()
  closed = false
  constructor (readonly peerId: string, readonly host: HostState, readonly task: TaskState, readonly sink: PeerSink, private readonly service: SchedulerService) {}

  get taskInfo (): { contentLength: number | undefined } { return { contentLength: this.task.size } }
  requestPieces (numbers: readonly number[], originOnly = false): void { this.service.requestPieces(this, numbers, originOnly) }
  pieceStarted (number: number, parentHostId: string): void { this.service.pieceStarted(this, number, parentHostId) }
  pieceFinished (r: { digest: PieceDigest, source: 'origin' | 'peer', parentHostId: string, length: number, costMs: number }): void { this.service.pieceFinished(this, r) }
  pieceFailed (r: { number: number, parentHostId: string, reason: FailureReason, description: string }): void { this.service.pieceFailed(this, r) }
  finished (contentLength: number): void { this.service.peerFinished(this, contentLength) }
  failed (description: string, blobDigestMismatch: boolean): void { this.service.peerFailed(this, description, blobDigestMismatch) }
  close (): void { this.service.closeSession(this) }
}

const DEFAULTS = {
  candidateParents: 3,
  parentSelection: 'ring' as 'ring' | 'score',
  originBudgetPerPiece: 1,
  originPermitsPerPeer: 1,
  originConcurrencyPerTask: 4,
  uploadHalfLifeMs: 10_000,
  permitTimeoutMs: 120_000,
  blocklistTtlMs: 600_000,
  failureThreshold: 3,
  failureWindowMs: 60_000,
  hostTtlMs: 30_000,
  childBlocklistTtlMs: 60_000,
  taskTtlMs: 600_000
}

export class SchedulerService {
  private readonly log: Logger
  private readonly metrics: SchedulerMetrics | undefined
  private readonly now: () => number
  private readonly evaluator: Evaluator
  private readonly opts: Required<SchedulerOptions>
  private readonly hosts = new Map<string, HostState>()
  private readonly tasks = new Map<TaskId, TaskState>()
  private readonly sessions = new Map<string, PeerSession>()

  constructor (deps: SchedulerServiceDeps, options: SchedulerOptions = {}) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.scheduler' })
    this.metrics = deps.metrics
    this.now = deps.now ?? Date.now
    this.opts = { ...DEFAULTS, ...stripUndefined(options) }
    this.evaluator = deps.evaluator ?? createEvaluator({ badParentFailures: this.opts.failureThreshold })
  }

  // ---- hosts ---------------------------------------------------------------------------------

  /** Heartbeat. Returns whether the host must (re)announce its tasks. */
  announceHost (info: HostInfo): { reannounce: boolean } {
    checkHostInfo(info)
    const now = this.now()
    let h = this.hosts.get(info.id)
    if (h === undefined) {
      h = new HostState(info, now)
      this.hosts.set(info.id, h)
      this.log.info({ hostId: info.id, ip: info.ip, seed: info.seed }, 'host joined')
      this.metrics?.hosts.set(this.hosts.size)
    } else {
      h.info = info
      h.lastSeen = now
    }
    return { reannounce: !h.announced }
  }

  /** The pieces a host holds (after its restart or ours). Returns the pieces refused. */
  announceTasks (hostId: string, held: readonly HeldTask[], replace: boolean): Array<{ taskId: string, number: number }> {
    const h = this.requireHost(hostId)
    h.lastSeen = this.now()
    if (replace) this.dropHoldings(h)
    const rejected: Array<{ taskId: string, number: number }> = []
    for (const t of held) {
      if (!isTaskId(t.taskId)) continue
      let task: TaskState
      try {
        task = this.taskFor(t.taskId, t.digest, t.pieceLength, t.contentLength > 0 || t.complete ? t.contentLength : undefined)
      } catch (err) {
        this.log.warn({ hostId, taskId: t.taskId, err }, 'refused announced task')
        for (const p of t.pieces) rejected.push({ taskId: t.taskId, number: p.number })
        continue
      }
      for (const p of t.pieces) {
        if (this.recordOrCheck(task, p)) this.addHolder(task, h, p.number)
        else rejected.push({ taskId: t.taskId, number: p.number })
      }
      if (t.complete && rejected.every(r => r.taskId !== t.taskId)) h.complete.add(task.id)
      this.pump(task)
    }
    h.announced = true
    if (rejected.length > 0) this.log.warn({ hostId, rejected: rejected.length }, 'announced pieces disagree with recorded digests')
    return rejected
  }

  leaveTask (hostId: string, taskId: string): void {
    const h = this.hosts.get(hostId)
    if (h === undefined || !isTaskId(taskId)) return
    const task = this.tasks.get(taskId)
    if (task !== undefined) this.dropTask(h, task)
  }

  leaveHost (hostId: string): void {
    const h = this.hosts.get(hostId)
    if (h !== undefined) this.removeHost(h, 'left')
  }

  listHosts (seedsOnly: boolean): HostStatus[] {
    const now = this.now()
    return [...this.hosts.values()].filter(h => !seedsOnly || h.info.seed).map(h => ({
      host: h.info,
      activeUploads: h.assigned,
      blocklistedUntil: h.blocklistedUntil > now ? h.blocklistedUntil : 0,
      measuredBandwidth: Math.round(h.bandwidth ?? 0),
      recentFailures: this.recentFailures(h, now)
    }))
  }

  statTask (taskId: string): TaskStat | undefined {
    if (!isTaskId(taskId)) return undefined
    const task = this.tasks.get(taskId)
    if (task === undefined) return undefined
    const holders: TaskStat['holders'] = []
    for (const h of this.hosts.values()) {
      const ps = h.tasks.get(task.id)
      if (ps !== undefined && ps.size > 0) holders.push({ hostId: h.info.id, pieces: ps.size, complete: h.complete.has(task.id) })
    }
    return { digest: task.digest, contentLength: task.size, pieceCount: task.pieceCount() ?? 0, recordedPieces: task.digests.size, holders, originPermitsGranted: task.permitsGranted }
  }

  // ---- downloads -----------------------------------------------------------------------------

  /**
   * Opens a download (the stream's register message). Throws NAIAD_P2P_UNKNOWN_HOST for a host
   * without a heartbeat, NAIAD_P2P_BAD_REQUEST for a task id that does not match the digest and
   * piece length, or a size that contradicts the recorded one.
   */
  openPeer (r: { peerId: string, hostId: string, taskId: string, digest: string, pieceLength: number, contentLength: number | undefined }, sink: PeerSink): PeerSession {
    const h = this.requireHost(r.hostId)
    if (!isTaskId(r.taskId)) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `not a task id: ${JSON.stringify(r.taskId.slice(0, 100))}`)
    const task = this.taskFor(r.taskId, r.digest, r.pieceLength, r.contentLength)
    const old = this.sessions.get(r.peerId)
    if (old !== undefined) {
      old.sink.close(new NaiadError('NAIAD_P2P_BAD_REQUEST', `download ${r.peerId} was opened again`))
      this.closeSession(old)
    }
    const s = new PeerSession(r.peerId, h, task, sink, this)
    this.sessions.set(r.peerId, s)
    task.addSession(s)
    h.sessions.add(s)
    task.lastActive = this.now()
    this.metrics?.activePeers.set(this.sessions.size)
    this.log.debug({ peerId: r.peerId, hostId: r.hostId, taskId: r.taskId }, 'download registered')
    return s
  }

  /**
   * A download asks for pieces. `originOnly` (origin read-ahead): each piece only from the origin
   * and only if no peer holds, receives or fetches it — BACK_TO_SOURCE under the usual budget,
   * WAIT while the budget is spent, SKIPPED otherwise (also later, if it becomes available
   * elsewhere while waiting); never PARENTS.
   */
  requestPieces (s: PeerSession, numbers: readonly number[], originOnly = false): void {
    if (s.closed) return
    const end = this.metrics?.scheduleSeconds.startTimer()
    const task = s.task
    task.lastActive = this.now()
    const count = task.pieceCount()
    const wanted = new Set<number>()
    for (const n of numbers) {
      if (!Number.isSafeInteger(n) || n < 0 || (count !== undefined && n >= count)) continue
      wanted.add(n)
    }
    const out: Assignment[] = []
    for (const n of [...wanted].sort((a, b) => a - b)) {
      this.releasePiece(s, n)
      const a = this.decide(s, n, wanted, originOnly)
      if (a.action === 'wait') {
        s.waiting.add(n)
        if (originOnly) s.originOnly.add(n)
        let ws = task.waiters.get(n)
        if (ws === undefined) task.waiters.set(n, ws = new Set())
        ws.add(s)
      }
      out.push(a)
    }
    if (out.length > 0) this.send(s, out)
    end?.()
  }

  pieceStarted (s: PeerSession, n: number, parentHostId: string): void {
    if (s.closed) return
    const cur = s.transfers.get(n)
    if (cur !== parentHostId) {
      if (cur !== undefined) this.releaseSlot(cur)
      const p = this.hosts.get(parentHostId)
      if (p === undefined) { s.transfers.delete(n); return }
      p.assigned++
      s.transfers.set(n, parentHostId)
    }
    if (s.task.digests.has(n) && !s.started.has(n)) {
      s.started.add(n)
      let r = s.task.receiving.get(n)
      if (r === undefined) s.task.receiving.set(n, r = new Set())
      r.add(s)
      this.pump(s.task)
    }
  }

  pieceFinished (s: PeerSession, r: { digest: PieceDigest, source: 'origin' | 'peer', parentHostId: string, length: number, costMs: number }): void {
    if (s.closed) return
    const task = s.task
    const n = r.digest.number
    task.lastActive = this.now()
    this.releasePiece(s, n)
    if (task.size !== undefined) {
      const count = pieceCount(task.size, task.pieceLength)
      if (n >= count || !validPieceDigest(r.digest, pieceSpan(n, task.size, task.pieceLength).length, task.pieceLength)) {
        this.metrics?.pieceReports.inc({ source: r.source, result: 'rejected' })
        this.log.warn({ peerId: s.peerId, taskId: task.id, pieceNum: n }, 'malformed piece report')
        this.pump(task)
        return
      }
    }
    if (r.source === 'peer') {
      const parent = this.hosts.get(r.parentHostId)
      if (parent !== undefined && r.costMs > 0 && r.length > 0) {
        const bw = r.length / (r.costMs / 1000)
        parent.bandwidth = parent.bandwidth === undefined ? bw : 0.7 * parent.bandwidth + 0.3 * bw
      }
      if (parent !== undefined) this.addUpload(parent, r.length)
    }
    const ok = r.source === 'origin' ? this.recordOrCheck(task, r.digest) : (task.digests.has(n) && sameDigest(task.digests.get(n) as PieceDigest, r.digest))
    if (!ok) {
      this.metrics?.pieceReports.inc({ source: r.source, result: 'rejected' })
      this.log.warn({ peerId: s.peerId, taskId: task.id, pieceNum: n, source: r.source }, 'piece report disagrees with the recorded digest; not counted as held')
    } else {
      this.metrics?.pieceReports.inc({ source: r.source, result: 'finished' })
      this.addHolder(task, s.host, n)
    }
    this.pump(task)
  }

  pieceFailed (s: PeerSession, r: { number: number, parentHostId: string, reason: FailureReason, description: string }): void {
    if (s.closed) return
    const task = s.task
    const now = this.now()
    this.releasePiece(s, r.number)
    this.metrics?.pieceReports.inc({ source: r.parentHostId === '' ? 'origin' : 'peer', result: 'failed' })
    const parent = r.parentHostId === '' ? undefined : this.hosts.get(r.parentHostId)
    if (parent !== undefined) {
      switch (r.reason) {
        case 'digest-mismatch':
          this.blocklist(parent, now, 'digest_mismatch')
          s.blocklist.set(parent.info.id, now + this.opts.blocklistTtlMs)
          this.removeHolder(task, parent, r.number)
          this.log.warn({ peerId: s.peerId, taskId: task.id, pieceNum: r.number, parent: parent.info.id }, 'parent served a corrupt piece: blocklisted cluster-wide')
          break
        case 'transport':
          parent.failures.push(now)
          s.blocklist.set(parent.info.id, now + this.opts.childBlocklistTtlMs)
          if (this.recentFailures(parent, now) >= this.opts.failureThreshold && parent.blocklistedUntil <= now) {
            this.blocklist(parent, now, 'failures')
            this.log.warn({ parent: parent.info.id, failures: parent.failures.length }, 'parent failed too often: blocklisted cluster-wide')
          }
          break
        case 'not-found':
          this.removeHolder(task, parent, r.number)
          break
        case 'busy':
        case 'origin':
          break
      }
    }
    this.pump(task)
  }

  peerFinished (s: PeerSession, contentLength: number): void {
    if (s.closed) return
    if (s.task.size === undefined) s.task.size = contentLength
    if (s.task.size === contentLength) s.host.complete.add(s.task.id)
  }

  peerFailed (s: PeerSession, description: string, blobDigestMismatch: boolean): void {
    if (s.closed) return
    this.log.warn({ peerId: s.peerId, taskId: s.task.id, blobDigestMismatch, description }, 'download failed')
    if (blobDigestMismatch) this.dropTask(s.host, s.task)
  }

  /** The stream ended: permits, reserved slots and waits are released. Safe twice. */
  closeSession (s: PeerSession): void {
    if (s.closed) return
    s.closed = true
    for (const n of [...s.transfers.keys(), ...s.permits, ...s.waiting]) this.releasePiece(s, n)
    s.task.deleteSession(s)
    s.host.sessions.delete(s)
    if (this.sessions.get(s.peerId) === s) this.sessions.delete(s.peerId)
    this.metrics?.activePeers.set(this.sessions.size)
    this.pump(s.task)
  }

  /** Periodic housekeeping: expired hosts, permits and tasks; serves waiters (safety net). */
  sweep (): void {
    const now = this.now()
    for (const h of [...this.hosts.values()]) {
      if (h.lastSeen + this.opts.hostTtlMs < now) {
        this.metrics?.hostsExpired.inc()
        this.removeHost(h, 'stopped heart-beating')
      } else {
        h.failures = h.failures.filter(t => t > now - this.opts.failureWindowMs)
      }
    }
    for (const task of [...this.tasks.values()]) {
      for (const [n, ps] of task.permits) {
        for (const [s, exp] of [...ps]) {
          if (exp <= now) {
            this.metrics?.permitsExpired.inc()
            this.log.warn({ peerId: s.peerId, taskId: task.id, pieceNum: n }, 'origin permit expired without a report')
            ps.delete(s)
            s.permits.delete(n)
            task.permitsHeld--
          }
        }
        if (ps.size === 0) task.permits.delete(n)
      }
      for (const s of task.sessions) for (const [id, until] of s.blocklist) if (until <= now) s.blocklist.delete(id)
      if (task.sessions.size === 0 && task.holders.size === 0 && task.lastActive + this.opts.taskTtlMs < now) {
        this.tasks.delete(task.id)
        continue
      }
      this.pump(task)
    }
    let blocked = 0
    for (const h of this.hosts.values()) if (h.blocklistedUntil > now) blocked++
    this.metrics?.blocklistSize.set(blocked)
    this.metrics?.tasks.set(this.tasks.size)
    this.metrics?.hosts.set(this.hosts.size)
  }

  /** Ends every download (shutdown). */
  close (): void {
    for (const s of [...this.sessions.values()]) {
      s.sink.close(new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', 'the scheduler is shutting down'))
      this.closeSession(s)
    }
  }

  // ---- internals -----------------------------------------------------------------------------

  private requireHost (hostId: string): HostState {
    const h = this.hosts.get(hostId)
    if (h === undefined) throw new NaiadError('NAIAD_P2P_UNKNOWN_HOST', `host ${JSON.stringify(hostId.slice(0, 100))} has not announced itself`)
    return h
  }

  private taskFor (taskId: TaskId, digest: string, pieceLength: number, contentLength: number | undefined): TaskState {
    let expected: string
    try {
      expected = taskIdFor(digest, pieceLength)
    } catch (err) {
      throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `bad digest or piece length for task ${taskId}`, { cause: err })
    }
    if (expected !== taskId) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `task id ${taskId} does not match digest ${digest} and piece length ${pieceLength}`)
    let task = this.tasks.get(taskId)
    if (task === undefined) {
      const d = describeTaskId(taskId)
      task = new TaskState(taskId, d.digest, d.pieceLength, this.now())
      this.tasks.set(taskId, task)
      this.metrics?.tasks.set(this.tasks.size)
    }
    if (contentLength !== undefined) {
      if (task.size === undefined) task.size = contentLength
      else if (task.size !== contentLength) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `task ${taskId}: size ${contentLength} contradicts the recorded ${task.size}`)
    }
    return task
  }

  /** Records a piece's digests if none are recorded; true if they are (now) the recorded ones. */
  private recordOrCheck (task: TaskState, d: PieceDigest): boolean {
    if (task.size !== undefined) {
      if (d.number >= pieceCount(task.size, task.pieceLength)) return false
      if (!validPieceDigest(d, pieceSpan(d.number, task.size, task.pieceLength).length, task.pieceLength)) return false
    }
    const rec = task.digests.get(d.number)
    if (rec === undefined) {
      task.digests.set(d.number, { number: d.number, sha256: Buffer.from(d.sha256), blocks: Buffer.from(d.blocks) })
      return true
    }
    return sameDigest(rec, d)
  }

  private addHolder (task: TaskState, h: HostState, n: number): void {
    let hs = task.holders.get(n)
    if (hs === undefined) task.holders.set(n, hs = new Set())
    hs.add(h.info.id)
    let ps = h.tasks.get(task.id)
    if (ps === undefined) h.tasks.set(task.id, ps = new Set())
    ps.add(n)
  }

  private removeHolder (task: TaskState, h: HostState, n: number): void {
    const hs = task.holders.get(n)
    hs?.delete(h.info.id)
    if (hs?.size === 0) task.holders.delete(n)
    h.tasks.get(task.id)?.delete(n)
    h.complete.delete(task.id)
  }

  private dropTask (h: HostState, task: TaskState): void {
    for (const n of h.tasks.get(task.id) ?? []) {
      const hs = task.holders.get(n)
      hs?.delete(h.info.id)
      if (hs?.size === 0) task.holders.delete(n)
    }
    h.tasks.delete(task.id)
    h.complete.delete(task.id)
  }

  private dropHoldings (h: HostState): void {
    for (const id of [...h.tasks.keys()]) {
      const task = this.tasks.get(id)
      if (task !== undefined) this.dropTask(h, task)
    }
  }

  private removeHost (h: HostState, why: string): void {
    this.log.info({ hostId: h.info.id, why }, 'host forgotten')
    for (const s of [...h.sessions]) {
      s.sink.close(new NaiadError('NAIAD_P2P_UNKNOWN_HOST', `host ${h.info.id} was forgotten: ${why}`))
      this.closeSession(s)
    }
    this.dropHoldings(h)
    this.hosts.delete(h.info.id)
    // Slots other downloads reserved on it are released when they report; nothing more to do.
    this.metrics?.hosts.set(this.hosts.size)
  }

  private blocklist (h: HostState, now: number, reason: 'digest_mismatch' | 'failures'): void {
    h.blocklistedUntil = now + this.opts.blocklistTtlMs
    this.metrics?.blocklisted.inc({ reason })
  }

  private recentFailures (h: HostState, now: number): number {
    let n = 0
    for (const t of h.failures) if (t > now - this.opts.failureWindowMs) n++
    return n
  }

  private recentUpload (h: HostState, now: number): number {
    return h.upload * Math.pow(0.5, (now - h.uploadAt) / this.opts.uploadHalfLifeMs)
  }

  private addUpload (h: HostState, bytes: number): void {
    const now = this.now()
    h.upload = this.recentUpload(h, now) + bytes
    h.uploadAt = now
  }

  private releaseSlot (hostId: string): void {
    const h = this.hosts.get(hostId)
    if (h !== undefined && h.assigned > 0) h.assigned--
  }

  /** Forgets whatever `s` held for piece n: a reserved slot, an origin permit, a wait. */
  private releasePiece (s: PeerSession, n: number): void {
    if (s.started.delete(n)) {
      const r = s.task.receiving.get(n)
      r?.delete(s)
      if (r?.size === 0) s.task.receiving.delete(n)
    }
    const parent = s.transfers.get(n)
    if (parent !== undefined) {
      s.transfers.delete(n)
      this.releaseSlot(parent)
    }
    if (s.permits.delete(n)) {
      const ps = s.task.permits.get(n)
      if (ps?.delete(s) === true) s.task.permitsHeld--
      if (ps?.size === 0) s.task.permits.delete(n)
    }
    s.originOnly.delete(n)
    if (s.waiting.delete(n)) {
      const ws = s.task.waiters.get(n)
      ws?.delete(s)
      if (ws?.size === 0) s.task.waiters.delete(n)
    }
  }

  private edges (task: TaskState): TransferEdges {
    const edges = new Map<string, Map<string, Set<number>>>()
    for (const s of task.sessions) {
      for (const [n, parent] of s.transfers) {
        let out = edges.get(s.host.info.id)
        if (out === undefined) edges.set(s.host.info.id, out = new Map())
        let ps = out.get(parent)
        if (ps === undefined) out.set(parent, ps = new Set())
        ps.add(n)
      }
    }
    return edges
  }

  private candidate (h: HostState, held: number, now: number, pieceLength: number): CandidateHost {
    return {
      hostId: h.info.id,
      seed: h.info.seed,
      held,
      activeUploads: h.assigned,
      uploadConcurrency: Math.max(1, h.info.uploadConcurrency),
      ...(h.bandwidth !== undefined ? { bandwidth: h.bandwidth } : {}),
      recentUploadBytes: this.recentUpload(h, now) + h.assigned * pieceLength,
      recentFailures: this.recentFailures(h, now),
      blocklisted: h.blocklistedUntil > now
    }
  }

  /**
   * The downloads before `s` in the task's ring, nearest first, once around (not `s` again): each
   * one the nearest before the previous (`s` first) whose host is not blocklisted cluster-wide or
   * by that previous download. One pass over the ring, whatever is taken of it.
   */
  private * ringBefore (task: TaskState, s: PeerSession, now: number): Generator<PeerSession> {
    const ring = task.ring()
    const me = ring.indexOf(s.host.info.id)
    if (me < 0) return
    let cur = s
    for (let i = 1; i < ring.length; i++) {
      const id = ring[(me - i + ring.length) % ring.length] as string
      const h = this.hosts.get(id)
      if (h === undefined || h.blocklistedUntil > now || (cur.blocklist.get(id) ?? 0) > now) continue
      let next: PeerSession | undefined
      for (const x of h.sessions) if (x.task === task && !x.closed) { next = x; break }
      if (next === undefined) continue
      yield next
      cur = next
    }
  }

  /**
   * True when piece n is on its way around the ring to `s`'s predecessor: walking back over
   * downloads that wait for n too, one holds or receives it, is assigned a parent for it or
   * fetches it from the origin. False when the walk meets a download that does not want n, or
   * comes back around (everyone waiting for everyone: the holders are outside the ring).
   */
  private comingAround (pred: PeerSession, further: Iterator<PeerSession>, n: number, holders: ReadonlySet<string>): boolean {
    for (let p: PeerSession | undefined = pred; p !== undefined; p = further.next().value ?? undefined) {
      if (holders.has(p.host.info.id) || p.transfers.has(n) || p.permits.has(n)) return true
      if (!p.waiting.has(n)) return false
    }
    return false
  }

  /** Transfers of piece n from parents in progress (reserved or started). */
  private copiesInFlight (task: TaskState, n: number): number {
    let c = 0
    for (const x of task.sessions) if (x.transfers.has(n)) c++
    return c
  }

  /** Hosts receiving piece n from a parent now (they relay its verified blocks as they arrive). */
  private partialHolders (task: TaskState, n: number): Set<string> {
    const out = new Set<string>()
    for (const x of task.receiving.get(n) ?? []) out.add(x.host.info.id)
    return out
  }

  /**
   * For each host, how many pieces of the task (other than `except`) only it holds or receives
   * while other downloads of the task are open — pieces they will want and nobody else can send
   * (the newest pieces from the origin, a seed's blob). Not only the pieces someone waits for
   * right now: the peer ahead of the readers (origin read-ahead) must keep its uplink for first
   * copies, not spend it on copies others could make.
   */
  private uniqueDemand (task: TaskState, except: number): Map<string, number> {
    const out = new Map<string, number>()
    if (task.sessions.size < 2) return out
    const count = task.pieceCount() ?? 0
    for (let p = 0; p < count; p++) {
      if (p === except) continue
      const complete = task.holders.get(p)
      const receiving = task.receiving.get(p)
      const c = complete?.size ?? 0
      const r = receiving?.size ?? 0
      if (c + r === 0 || c > 1 || r > 1) continue
      let only: string | undefined
      if (r === 0) [only] = complete as Set<string>
      else {
        const [s] = receiving as Set<PeerSession>
        const id = s?.host.info.id
        if (c === 1 && complete?.has(id ?? '') !== true) continue
        only = id
      }
      if (only !== undefined) out.set(only, (out.get(only) ?? 0) + 1)
    }
    return out
  }

  /**
   * False when no waiter of piece n can be given anything now: no holder (complete or receiving)
   * has a free upload slot, the piece's or the blob's origin budget is spent, and no origin-only
   * waiter is to be told SKIPPED. (True does not mean someone will be: `decide` has the last word.)
   */
  private assignable (task: TaskState, n: number): boolean {
    const permits = task.permits.get(n)?.size ?? 0
    if (permits < this.opts.originBudgetPerPiece && task.permitsHeld < this.opts.originConcurrencyPerTask) return true
    if (permits > 0 || (task.holders.get(n)?.size ?? 0) > 0 || (task.receiving.get(n)?.size ?? 0) > 0) {
      for (const s of task.waiters.get(n) ?? []) if (s.originOnly.has(n)) return true
    }
    const free = (id: string): boolean => { const h = this.hosts.get(id); return h !== undefined && h.assigned < Math.max(1, h.info.uploadConcurrency) }
    for (const id of task.holders.get(n) ?? []) if (free(id)) return true
    for (const s of task.receiving.get(n) ?? []) if (free(s.host.info.id)) return true
    return false
  }

  /** Decides one piece for one download (see the module comment); reserves what it grants. */
  private decide (s: PeerSession, n: number, wanted: ReadonlySet<number>, originOnly = false): Assignment {
    const task = s.task
    const now = this.now()
    const complete = task.holders.get(n)
    const partial = this.partialHolders(task, n)
    const digest = task.digests.get(n)
    if (originOnly && ((complete?.size ?? 0) > 0 || partial.size > 0 || (task.permits.get(n)?.size ?? 0) > 0)) {
      // Origin read-ahead never duplicates what a peer has or is fetching.
      this.metrics?.assignments.inc({ action: 'skipped' })
      return { number: n, action: 'skipped' }
    }
    if (!originOnly && ((complete?.size ?? 0) > 0 || partial.size > 0) && digest !== undefined) {
      const ring = this.opts.parentSelection === 'ring'
      const holders = new Set([...(complete ?? []), ...partial])
      // (in the ring only seeds keep the "alone holds other pieces" filter: a pass over every piece)
      const seedHolds = [...holders].some(id => this.hosts.get(id)?.info.seed === true)
      const unique = !ring || seedHolds ? this.uniqueDemand(task, n) : undefined
      const candidates: CandidateHost[] = []
      for (const id of holders) {
        const h = this.hosts.get(id)
        if (h === undefined) continue
        let held = 0
        const ps = h.tasks.get(task.id)
        if (ps !== undefined) for (const w of wanted) if (ps.has(w)) held++
        const isPartial = complete?.has(id) !== true
        candidates.push({ ...this.candidate(h, Math.max(1, held), now, task.pieceLength), uniqueDemand: ring && !h.info.seed ? 0 : unique?.get(id) ?? 0, ...(isPartial ? { partial: true } : {}) })
      }
      const childBlocklist = new Set<string>()
      for (const [id, until] of s.blocklist) if (until > now) childBlocklist.add(id)
      let ranked = this.evaluator.evaluateParents({ childHostId: s.host.info.id, wanted: new Set([n]), candidates, childBlocklist, edges: this.edges(task), limit: Math.max(this.opts.candidateParents, candidates.length) })
      if (ring) ranked = ringOrder(ranked, s.host.info.id, task.ring())
      if (ring && !seedHolds) {
        // The ring's hop: the child's predecessor relays the piece to it. If the piece is coming
        // around the ring to the predecessor, the child waits for that instead of taking another
        // holder's uplink (bench/p2p, N = 16 at 20 Mbit/s: 151.6-156.9 s vs 157.3-159.9 s). Not
        // for a piece a seed holds: its uplink spreads it to every child it can, so that what only
        // the seed has is out before it could fail (test/integration/p2p-netns.test.ts).
        const walk = this.ringBefore(task, s, now)
        const pred = walk.next().value ?? undefined
        if (pred !== undefined) {
          const predId = pred.host.info.id
          if (holders.has(predId)) {
            // The predecessor holds it: it copies it to its successor, unless it already copies
            // it to someone else.
            const h = this.hosts.get(predId)
            let copying = false
            for (const x of task.sessions) if (x !== s && x.transfers.get(n) === predId) copying = true
            if (!copying && h !== undefined && h.assigned < Math.max(1, h.info.uploadConcurrency) && ranked.some(r => r.hostId === predId)) {
              return this.grantParents(s, n, [predId], digest)
            }
          } else if (this.comingAround(pred, walk, n, holders)) {
            this.metrics?.assignments.inc({ action: 'wait' })
            this.metrics?.waits.inc({ reason: 'predecessor' })
            return { number: n, action: 'wait' }
          }
        }
      }
      if (ranked.length > 0 && this.copiesInFlight(task, n) >= ranked.length) {
        // Each holder copies a piece to one child at a time: the copies double the holders every
        // round, and no uplink is split between several copies of the same piece.
        this.metrics?.assignments.inc({ action: 'wait' })
        this.metrics?.waits.inc({ reason: 'copying' })
        return { number: n, action: 'wait' }
      }
      if (ranked.length > 0) {
        const free = ranked.filter(r => { const h = this.hosts.get(r.hostId); return h !== undefined && h.assigned < Math.max(1, h.info.uploadConcurrency) })
        if (free.length === 0) {
          this.metrics?.assignments.inc({ action: 'wait' })
          this.metrics?.waits.inc({ reason: 'slots' })
          return { number: n, action: 'wait' }
        }
        return this.grantParents(s, n, free.slice(0, this.opts.candidateParents).map(r => r.hostId), digest)
      }
    }
    let ps = task.permits.get(n)
    if ((ps?.size ?? 0) < this.opts.originBudgetPerPiece && s.permits.size < this.opts.originPermitsPerPeer && task.permitsHeld < this.opts.originConcurrencyPerTask) {
      if (ps === undefined) task.permits.set(n, ps = new Map())
      ps.set(s, now + this.opts.permitTimeoutMs)
      task.permitsHeld++
      s.permits.add(n)
      task.permitsGranted++
      this.metrics?.assignments.inc({ action: 'back_to_source' })
      return { number: n, action: 'back-to-source' }
    }
    this.metrics?.assignments.inc({ action: 'wait' })
    this.metrics?.waits.inc({ reason: (complete?.size ?? 0) > 0 || partial.size > 0 ? 'no_usable_holder' : 'no_source' })
    return { number: n, action: 'wait' }
  }

  /** PARENTS for piece n: reserves an upload slot of the first parent (known, free) for `s`. */
  private grantParents (s: PeerSession, n: number, parents: string[], digest: PieceDigest): Assignment {
    const best = this.hosts.get(parents[0] as string) as HostState
    best.assigned++
    s.transfers.set(n, best.info.id)
    this.metrics?.assignments.inc({ action: 'parents' })
    return { number: n, action: 'parents', parents, digest }
  }

  /** Serves waiters whose piece can now be assigned (new holder, free slot, free permit). */
  private pump (task: TaskState): void {
    if (task.waiters.size === 0) return
    const now = this.now()
    const batches = new Map<PeerSession, Assignment[]>()
    for (const n of [...task.waiters.keys()].sort((a, b) => a - b)) {
      const ws = task.waiters.get(n)
      if (ws === undefined) continue
      // Most waiters wait for a piece nobody can be given yet: skip them without a decision.
      if (!this.assignable(task, n)) continue
      // Serve first the waiters whose uplink has been idle: receiving a piece early makes them
      // relays of it, so every uplink in the swarm gets something to upload (not the same few).
      const order = [...ws].map((s, i) => ({ s, i, up: this.recentUpload(s.host, now) })).sort((x, y) => x.up - y.up || x.i - y.i).map(x => x.s)
      for (const s of order) {
        if (s.closed) { ws.delete(s); continue }
        const a = this.decide(s, n, new Set([n]), s.originOnly.has(n))
        if (a.action === 'wait') continue
        ws.delete(s)
        s.waiting.delete(n)
        s.originOnly.delete(n)
        let b = batches.get(s)
        if (b === undefined) batches.set(s, b = [])
        b.push(a)
      }
      if (ws.size === 0) task.waiters.delete(n)
    }
    for (const [s, pieces] of batches) this.send(s, pieces)
  }

  private send (s: PeerSession, pieces: Assignment[]): void {
    const ids = new Set<string>()
    for (const a of pieces) if (a.action === 'parents') for (const p of a.parents) ids.add(p)
    const hosts: HostInfo[] = []
    for (const id of ids) { const h = this.hosts.get(id); if (h !== undefined) hosts.push(h.info) }
    s.sink.assignments({ pieces, hosts })
  }
}

/**
 * `ranked` (the evaluator's choice: usable parents only) reordered by ring distance: the holder
 * nearest before `child` in the ring of the task's downloads (`ringHosts`: host ids, sorted)
 * first; ties (hosts outside the ring) keep the evaluator's order after the others.
 */
export function ringOrder<T extends { hostId: string }> (ranked: readonly T[], child: string, ringHosts: readonly string[]): T[] {
  const ring = ringHosts.includes(child) ? ringHosts : [...ringHosts, child].sort()
  const me = ring.indexOf(child)
  const dist = (id: string): number => {
    const i = ring.indexOf(id)
    return i < 0 ? ring.length : (me - i + ring.length) % ring.length
  }
  return ranked.map((r, i) => ({ r, i, d: dist(r.hostId) })).sort((a, b) => a.d - b.d || a.i - b.i).map(x => x.r)
}

function checkHostInfo (h: HostInfo): void {
  if (typeof h.id !== 'string' || h.id === '' || h.id.length > 256) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', 'host id must be a non-empty string of at most 256 characters')
  if (!Number.isInteger(h.uploadPort) || h.uploadPort < 1 || h.uploadPort > 65535) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `host ${h.id}: bad upload port ${h.uploadPort}`)
  if (typeof h.ip !== 'string' || h.ip === '') throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `host ${h.id}: no ip`)
}

function stripUndefined<T extends object> (o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}
