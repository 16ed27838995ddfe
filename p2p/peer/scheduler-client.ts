/**
 * The peer's side of naiad.p2p.v1.Scheduler: heartbeats (AnnounceHost, every
 * `heartbeatIntervalMs`; AnnounceTasks with everything on disk when the scheduler asks, e.g. after
 * our restart or its restart), one AnnouncePeer stream per task being downloaded (`TaskStream`),
 * and the unary calls preheat and tests use.
 *
 * Availability: `up` is true while the last heartbeat succeeded. When it is false, `openTask`
 * fails at once (NAIAD_P2P_SCHEDULER_UNAVAILABLE) so downloads go to the origin without waiting;
 * heartbeats keep trying every `retryIntervalMs`. A stream that does not answer a request within
 * `connectTimeoutMs × 2` is treated as dead (the scheduler always answers at once), which covers a
 * scheduler host that vanished without closing its connections.
 *
 * Nothing sent here carries credentials or the origin's address.
 */
import * as grpc from '@grpc/grpc-js'
import { NaiadError, hasCode } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { PeerMetrics } from '../metrics.ts'
import { assignmentsFromMsg, digestToMsg, fromGrpcError, hostStatusFromMsg, hostToMsg, reasonToMsg, taskStatFromMsg } from '../grpc/convert.ts'
import { schedulerClientConstructor, type AnnouncePeerRequestMsg, type AnnouncePeerResponseMsg, type ListHostsResponseMsg, type StatTaskResponseMsg } from '../grpc/proto.ts'
import type { Assignments, FailureReason, HeldTask, HostInfo, HostStatus, PieceDigest, TaskStat } from '../protocol/index.ts'

export interface SchedulerClientOptions {
  /** `host:port` or `unix:/path`. */
  address: string
  connectTimeoutMs: number
  heartbeatIntervalMs: number
  retryIntervalMs: number
}

export interface SchedulerClientDeps {
  logger?: Logger
  metrics?: PeerMetrics
  /** This host's description (read at every heartbeat). */
  host: () => HostInfo
  /** Everything held on disk, for AnnounceTasks. */
  heldTasks: () => HeldTask[]
  activeUploads?: () => number
}

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void

function grpcTarget (address: string): string {
  if (address.startsWith('unix:')) return `unix://${address.slice(5).replace(/^\/\/(?=\/)/, '')}`
  return address
}

/** One download's stream. */
export class TaskStream {
  closed = false
  /** Set by the engine: called with every assignments message. */
  onAssignments: (a: Assignments) => void = () => {}
  /** Set by the engine: called once when the stream ends (error or not). */
  onClosed: (err: NaiadError | undefined) => void = () => {}
  private awaitingSince: number | undefined
  private batch: number[] | undefined
  private originBatch: number[] | undefined
  private readonly timer: NodeJS.Timeout

  constructor (
    private readonly call: grpc.ClientDuplexStream<AnnouncePeerRequestMsg, AnnouncePeerResponseMsg>,
    private readonly ids: { hostId: string, taskId: string, peerId: string },
    readonly contentLength: number | undefined,
    ackTimeoutMs: number,
    private readonly log: Logger,
    private readonly detach: () => void
  ) {
    call.on('data', (m: AnnouncePeerResponseMsg) => {
      this.awaitingSince = undefined
      if (m.response === 'assignments' && m.assignments !== null && m.assignments !== undefined) {
        try {
          this.onAssignments(assignmentsFromMsg(m.assignments))
        } catch (err) {
          this.log.warn({ err, taskId: ids.taskId }, 'bad assignments from the scheduler')
        }
      }
    })
    call.on('error', (err) => { this.end(fromGrpcError(err, 'scheduler stream')) })
    call.on('end', () => { this.end(new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', 'the scheduler ended the stream')) })
    this.timer = setInterval(() => {
      if (this.awaitingSince !== undefined && Date.now() - this.awaitingSince > ackTimeoutMs) {
        this.log.warn({ taskId: ids.taskId }, 'scheduler stream did not answer; treating it as dead')
        this.end(new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', `the scheduler did not answer within ${ackTimeoutMs} ms`))
      }
    }, Math.max(50, Math.min(1000, ackTimeoutMs / 4)))
    this.timer.unref()
  }

  private write (m: Omit<AnnouncePeerRequestMsg, 'hostId' | 'taskId' | 'peerId'>): void {
    if (this.closed) return
    try {
      this.call.write({ ...this.ids, ...m })
    } catch (err) {
      this.end(fromGrpcError(err, 'scheduler stream'))
    }
  }

  /**
   * Asks for pieces (batched within one tick); answers arrive through onAssignments. `originOnly`:
   * origin read-ahead (BACK_TO_SOURCE, WAIT or SKIPPED; never parents).
   */
  request (numbers: readonly number[], originOnly = false): void {
    if (this.closed) return
    if (this.batch === undefined) {
      this.batch = []
      this.originBatch = []
      queueMicrotask(() => {
        const b = this.batch ?? []
        const o = this.originBatch ?? []
        this.batch = this.originBatch = undefined
        if (this.closed) return
        if (b.length > 0) {
          this.awaitingSince ??= Date.now()
          this.write({ requestPieces: { numbers: [...new Set(b)] } })
        }
        if (o.length > 0) {
          this.awaitingSince ??= Date.now()
          this.write({ requestPieces: { numbers: [...new Set(o)], originOnly: true } })
        }
      })
    }
    if (originOnly) this.originBatch?.push(...numbers)
    else this.batch.push(...numbers)
  }

  started (number: number, parentHostId: string): void {
    this.write({ pieceStarted: { number, parentHostId } })
  }

  finished (r: { digest: PieceDigest, source: 'origin' | 'peer', parentHostId: string, length: number, costMs: number }): void {
    this.write({ pieceFinished: { digest: digestToMsg(r.digest), source: r.source === 'origin' ? 'PIECE_SOURCE_ORIGIN' : 'PIECE_SOURCE_PEER', parentHostId: r.parentHostId, length: r.length, costMs: Math.max(1, Math.round(r.costMs)) } })
  }

  failed (r: { number: number, parentHostId: string, reason: FailureReason, description: string }): void {
    this.write({ pieceFailed: { number: r.number, parentHostId: r.parentHostId, reason: reasonToMsg(r.reason), description: r.description.slice(0, 300) } })
  }

  peerFinished (contentLength: number): void {
    this.write({ peerFinished: { contentLength } })
  }

  peerFailed (description: string, blobDigestMismatch: boolean): void {
    this.write({ peerFailed: { description: description.slice(0, 300), blobDigestMismatch } })
  }

  private end (err: NaiadError | undefined): void {
    if (this.closed) return
    this.closed = true
    clearInterval(this.timer)
    try { this.call.cancel() } catch {}
    this.detach()
    this.onClosed(err)
  }

  /** Ends the download's stream (the host keeps its pieces). Safe twice. */
  close (): void {
    if (this.closed) return
    try { this.call.end() } catch {}
    this.end(undefined)
  }
}

export class SchedulerClient {
  private readonly log: Logger
  private readonly client: grpc.Client & Record<string, unknown>
  private readonly ac = new AbortController()
  private readonly streams = new Set<TaskStream>()
  private isUp = false
  private firstAttempt: Promise<void> | undefined
  private wake: (() => void) | undefined
  private closing: Promise<void> | undefined
  private seq = 0

  constructor (private readonly deps: SchedulerClientDeps, private readonly options: SchedulerClientOptions) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.scheduler-client' })
    const Ctor = schedulerClientConstructor()
    // No connection is made until the first call.
    this.client = new Ctor(grpcTarget(options.address), grpc.credentials.createInsecure(), {
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': Math.max(1000, options.retryIntervalMs)
    }) as grpc.Client & Record<string, unknown>
  }

  /** True while the last heartbeat reached the scheduler. */
  get up (): boolean { return this.isUp }

  /** Starts heartbeating (no await needed; `ready()` waits for the first attempt). */
  start (): void {
    if (this.firstAttempt !== undefined || this.closing !== undefined) return
    let resolveFirst: () => void = () => {}
    this.firstAttempt = new Promise<void>(resolve => { resolveFirst = resolve })
    void this.loop(resolveFirst)
  }

  /** Resolves after the first heartbeat attempt finished (either way). */
  async ready (): Promise<void> {
    await this.firstAttempt
  }

  private async loop (resolveFirst: () => void): Promise<void> {
    const signal = this.ac.signal
    while (!signal.aborted) {
      let ok = false
      try {
        await this.heartbeat()
        ok = true
      } catch (err) {
        if (this.isUp) this.log.warn({ err }, 'scheduler unreachable; downloads go to the origin until it is back')
        else this.log.debug({ err }, 'scheduler still unreachable')
        this.setUp(false)
      }
      resolveFirst()
      await this.sleep(ok ? this.options.heartbeatIntervalMs : this.options.retryIntervalMs)
    }
  }

  private setUp (v: boolean): void {
    if (v && !this.isUp) this.log.info({ address: this.options.address }, 'scheduler reachable')
    this.isUp = v
    this.deps.metrics?.schedulerUp.set(v ? 1 : 0)
  }

  private async sleep (ms: number): Promise<void> {
    await new Promise<void>(resolve => {
      const t = setTimeout(done, ms)
      t.unref()
      const onAbort = (): void => { done() }
      function done (): void { clearTimeout(t); resolve() }
      this.wake = done
      this.ac.signal.addEventListener('abort', onAbort, { once: true })
    })
    this.wake = undefined
  }

  /** Sends a heartbeat now (and the held tasks if the scheduler asks for them). */
  async heartbeat (): Promise<void> {
    const host = this.deps.host()
    const res = await this.unary<{ reannounce: boolean }>('announceHost', { host: hostToMsg(host), activeUploads: this.deps.activeUploads?.() ?? 0, uploadBytesPerSecond: 0 })
    if (res.reannounce) {
      const tasks = this.deps.heldTasks()
      await this.announceTasks(tasks, true)
      this.log.info({ tasks: tasks.length }, 'announced held pieces to the scheduler')
    }
    this.setUp(true)
  }

  /** Runs a heartbeat soon (e.g. after the scheduler said it does not know us). */
  nudge (): void {
    this.wake?.()
  }

  private async unary<T> (method: string, req: unknown, timeoutMs = this.options.connectTimeoutMs, signal?: AbortSignal): Promise<T> {
    if (this.closing !== undefined && method !== 'leaveHost') throw new NaiadError('NAIAD_CLOSED', 'scheduler client is closed')
    const fn = this.client[method] as UnaryFn
    return await new Promise<T>((resolve, reject) => {
      const call = fn.call(this.client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        signal?.removeEventListener('abort', onAbort)
        if (err !== null) reject(fromGrpcError(err, `scheduler ${method}`))
        else resolve(res as T)
      }) as unknown as grpc.ClientUnaryCall
      const onAbort = (): void => { call.cancel() }
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  async announceTasks (tasks: readonly HeldTask[], replace: boolean): Promise<Array<{ taskId: string, number: number }>> {
    const host = this.deps.host()
    const res = await this.unary<{ rejected: Array<{ taskId: string, number: number }> }>('announceTasks', {
      hostId: host.id,
      replace,
      tasks: tasks.map(t => ({ taskId: t.taskId, digest: t.digest, contentLength: t.contentLength, pieceLength: t.pieceLength, pieces: t.pieces.map(digestToMsg), complete: t.complete }))
    }, Math.max(this.options.connectTimeoutMs, 10_000))
    if (res.rejected.length > 0) this.log.warn({ rejected: res.rejected.length }, 'the scheduler refused some announced pieces (digests disagree)')
    return res.rejected
  }

  async statTask (taskId: string, opts: { signal?: AbortSignal } = {}): Promise<TaskStat | undefined> {
    return taskStatFromMsg(await this.unary<StatTaskResponseMsg>('statTask', { taskId }, this.options.connectTimeoutMs, opts.signal))
  }

  async listHosts (seedsOnly: boolean, opts: { signal?: AbortSignal } = {}): Promise<HostStatus[]> {
    return (await this.unary<ListHostsResponseMsg>('listHosts', { seedsOnly }, this.options.connectTimeoutMs, opts.signal)).hosts.map(hostStatusFromMsg)
  }

  /** Tells the scheduler this host dropped a task (best effort). */
  leaveTask (taskId: string): void {
    if (!this.isUp) return
    this.unary('leaveTask', { hostId: this.deps.host().id, taskId }).catch((err: unknown) => { this.log.debug({ err, taskId }, 'leaveTask failed') })
  }

  /**
   * Opens the download stream of a task and registers it. Fails fast with
   * NAIAD_P2P_SCHEDULER_UNAVAILABLE while the scheduler is down.
   */
  async openTask (r: { taskId: string, digest: string, pieceLength: number, contentLength: number | undefined }, opts: { signal?: AbortSignal } = {}): Promise<TaskStream> {
    if (this.closing !== undefined) throw new NaiadError('NAIAD_CLOSED', 'scheduler client is closed')
    await this.ready()
    if (!this.isUp) throw new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', `scheduler ${this.options.address} is unreachable`)
    try {
      return await this.openOnce(r, opts)
    } catch (err) {
      if (!hasCode(err, 'NAIAD_P2P_UNKNOWN_HOST')) throw err
      await this.heartbeat()
      return await this.openOnce(r, opts)
    }
  }

  private async openOnce (r: { taskId: string, digest: string, pieceLength: number, contentLength: number | undefined }, opts: { signal?: AbortSignal }): Promise<TaskStream> {
    const host = this.deps.host()
    const ids = { hostId: host.id, taskId: r.taskId, peerId: `${host.id}/${r.taskId.slice(0, 24)}/${process.pid}.${++this.seq}` }
    const call = (this.client['announcePeer'] as () => grpc.ClientDuplexStream<AnnouncePeerRequestMsg, AnnouncePeerResponseMsg>).call(this.client)
    const registered = await new Promise<{ contentLength: number | undefined }>((resolve, reject) => {
      const fail = (err: NaiadError): void => { cleanup(); try { call.cancel() } catch {}; reject(err) }
      const onData = (m: AnnouncePeerResponseMsg): void => {
        if (m.response !== 'registered' || m.registered === null || m.registered === undefined) { fail(new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', 'the scheduler did not confirm the registration')); return }
        cleanup()
        resolve({ contentLength: m.registered.contentLengthKnown ? m.registered.contentLength : undefined })
      }
      const onError = (err: unknown): void => { fail(fromGrpcError(err, 'scheduler AnnouncePeer')) }
      const onEnd = (): void => { fail(new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', 'the scheduler ended the stream before registering')) }
      const onAbort = (): void => { fail(new NaiadError('NAIAD_ABORTED', 'aborted while registering with the scheduler')) }
      const timer = setTimeout(() => { fail(new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', `the scheduler did not answer within ${this.options.connectTimeoutMs} ms`)) }, this.options.connectTimeoutMs)
      function cleanup (): void {
        clearTimeout(timer)
        call.off('data', onData)
        call.off('error', onError)
        call.off('end', onEnd)
        opts.signal?.removeEventListener('abort', onAbort)
      }
      call.on('data', onData)
      call.on('error', onError)
      call.on('end', onEnd)
      opts.signal?.addEventListener('abort', onAbort, { once: true })
      call.write({ ...ids, register: { digest: r.digest, pieceLength: r.pieceLength, contentLength: r.contentLength ?? 0, contentLengthKnown: r.contentLength !== undefined } })
    })
    const stream: TaskStream = new TaskStream(call, ids, registered.contentLength, this.options.connectTimeoutMs * 2, this.log, () => { this.streams.delete(stream) })
    this.streams.add(stream)
    return stream
  }

  /** Leaves the cluster (best effort), ends streams and the channel. Safe twice. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      this.ac.abort()
      for (const s of [...this.streams]) s.close()
      if (this.isUp) {
        try { await this.unary('leaveHost', { hostId: this.deps.host().id }, 1000) } catch {}
      }
      this.client.close()
      this.setUp(false)
    })()
    await this.closing
  }
}

/**
 * Read-only access to a scheduler for tools (`naiad preheat`, tests): ListHosts and StatTask,
 * without announcing a host. close() is safe twice.
 */
export class SchedulerAdmin {
  private readonly client: grpc.Client & Record<string, unknown>
  private closed = false

  constructor (private readonly options: { address: string, timeoutMs?: number }) {
    const Ctor = schedulerClientConstructor()
    this.client = new Ctor(grpcTarget(options.address), grpc.credentials.createInsecure()) as grpc.Client & Record<string, unknown>
  }

  private async unary<T> (method: string, req: unknown, signal?: AbortSignal): Promise<T> {
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', 'scheduler admin client is closed')
    const fn = this.client[method] as UnaryFn
    return await new Promise<T>((resolve, reject) => {
      const call = fn.call(this.client, req, new grpc.Metadata(), { deadline: Date.now() + (this.options.timeoutMs ?? 5000) }, (err, res) => {
        signal?.removeEventListener('abort', onAbort)
        if (err !== null) reject(fromGrpcError(err, `scheduler ${this.options.address} ${method}`))
        else resolve(res as T)
      }) as unknown as grpc.ClientUnaryCall
      const onAbort = (): void => { call.cancel() }
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  async listHosts (seedsOnly: boolean, opts: { signal?: AbortSignal } = {}): Promise<HostStatus[]> {
    return (await this.unary<ListHostsResponseMsg>('listHosts', { seedsOnly }, opts.signal)).hosts.map(hostStatusFromMsg)
  }

  async statTask (taskId: string, opts: { signal?: AbortSignal } = {}): Promise<TaskStat | undefined> {
    return taskStatFromMsg(await this.unary<StatTaskResponseMsg>('statTask', { taskId }, opts.signal))
  }

  close (): void {
    if (this.closed) return
    this.closed = true
    this.client.close()
  }
}
