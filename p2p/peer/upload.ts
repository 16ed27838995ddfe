/**
 * The upload server: other peers fetch pieces here with
 * `GET /pieces/<taskId>/<n>` (optionally `Range: bytes=a-b` within the piece, to resume). Only
 * complete, verified pieces are served. At most `maxConcurrent` uploads run at once (more get
 * 503, and the child tries another parent); all uploads share one token bucket of `rateLimit`
 * bytes per second. The task is pinned while it is uploaded, so it is not evicted underneath.
 *
 * Also: `GET /healthz`, and on seed peers `POST /api/v1/preheat` and `GET /api/v1/tasks/<id>`.
 *
 * TEST ONLY: with `faultCorruptUploads`, every chunk sent has a bit flipped, to exercise
 * corrupt-piece detection end to end.
 */
import type http from 'node:http'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import { NaiadError } from '../../lib/errors/index.ts'
import type { PeerMetrics } from '../metrics.ts'
import { isTaskId, pieceSpan, type TaskId } from '../protocol/index.ts'
import type { InflightPiece } from './engine.ts'
import type { PieceStore } from './piece-store.ts'
import { TokenBucket } from './rate-limit.ts'
import { sendError, writeChunk } from './http-util.ts'

export interface UploadServerOptions {
  maxConcurrent: number
  /** Bytes per second, 0 for unlimited. */
  rateLimit: number
  faultCorruptUploads?: boolean
}

export interface UploadServerDeps {
  logger?: Logger
  metrics?: PeerMetrics
  store: PieceStore
  /** Pieces still being received, relayed block by block as they arrive (cut-through). */
  inflight?: (taskId: string, n: number) => InflightPiece | undefined
  /** A relayed piece whose source stalls for this long is cut off (default 30 s). */
  stallTimeoutMs?: number
  /** Extra routes (the peer's API), tried before 404. Returns true if it handled the request. */
  api?: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<boolean>
}

const CHUNK = 256 * 1024

export class UploadHandler {
  private readonly log: Logger
  private readonly bucket: TokenBucket
  private active = 0

  constructor (private readonly deps: UploadServerDeps, private readonly options: UploadServerOptions) {
    this.log = (deps.logger ?? nullLogger()).child({ component: 'p2p.upload' })
    this.bucket = new TokenBucket(options.rateLimit)
    if (options.faultCorruptUploads === true) this.log.warn('TEST FAULT ENABLED: every uploaded piece is corrupted (testing.fault_corrupt_uploads)')
  }

  get activeUploads (): number { return this.active }

  readonly handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    void this.route(req, res).catch((err: unknown) => {
      this.log.debug({ err }, 'upload request failed')
      sendError(res, 500, err)
    })
  }

  private async route (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    if (path === '/healthz' && (req.method === 'GET' || req.method === 'HEAD')) {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end('ok\n')
      return
    }
    const m = /^\/pieces\/([^/]+)\/(\d{1,9})$/.exec(path)
    if (m !== null && (req.method === 'GET' || req.method === 'HEAD')) {
      await this.servePiece(req, res, m[1] ?? '', Number(m[2]))
      return
    }
    if (this.deps.api !== undefined && await this.deps.api(req, res)) return
    sendError(res, 404, new NaiadError('NAIAD_P2P_BAD_REQUEST', `no route ${req.method ?? ''} ${path.slice(0, 100)}`))
  }

  /** Streams bytes [start, end] of a piece still being received, as they become final. */
  private async relay (p: InflightPiece, start: number, end: number, res: http.ServerResponse, signal: AbortSignal): Promise<void> {
    let pos = start
    const generation = p.interruptions
    while (pos <= end) {
      if (p.avail > pos && p.buf !== undefined) {
        const stop = Math.min(p.avail, end + 1, pos + CHUNK)
        const len = stop - pos
        await this.bucket.take(len, signal)
        // The final prefix never changes: send it without a copy (a copy only to corrupt it).
        let chunk = p.buf.subarray(pos, stop)
        if (this.options.faultCorruptUploads === true) {
          chunk = Buffer.from(chunk)
          chunk[chunk.length >> 1] = (chunk[chunk.length >> 1] ?? 0) ^ 0x40
        }
        await writeChunk(res, chunk, signal)
        this.deps.metrics?.uploadBytes.inc(len)
        pos = stop
        continue
      }
      if (p.error !== undefined) throw new NaiadError('NAIAD_P2P_PARENT_FAILED', 'the piece being relayed failed upstream')
      if (p.done) throw new NaiadError('NAIAD_P2P_PARENT_FAILED', 'the piece being relayed ended short')
      // Its source broke off: cut the child loose now (it resumes elsewhere from its last verified
      // block) instead of letting it wait for a source that has to be scheduled again.
      if (p.interruptions !== generation) throw new NaiadError('NAIAD_P2P_PARENT_FAILED', 'the transfer of the piece being relayed broke off upstream')
      const stall = AbortSignal.timeout(Math.min(10_000, this.deps.stallTimeoutMs ?? 30_000))
      await p.changed(AbortSignal.any([signal, stall]))
    }
  }

  private async servePiece (req: http.IncomingMessage, res: http.ServerResponse, id: string, n: number): Promise<void> {
    if (!isTaskId(id)) { sendError(res, 400, new NaiadError('NAIAD_P2P_BAD_REQUEST', 'not a task id')); return }
    const taskId = id as TaskId
    const t = this.deps.store.get(taskId)
    // From memory when the engine has it (being received, or complete and recent): no disk read.
    const relay = this.deps.inflight?.(taskId, n)
    if (t === undefined || (!t.pieces.has(n) && relay === undefined)) {
      this.deps.metrics?.uploadRejected.inc({ reason: 'missing' })
      sendError(res, 404, new NaiadError('NAIAD_P2P_UNKNOWN_TASK', `piece ${n} of ${taskId} is not held here`))
      return
    }
    if (this.active >= this.options.maxConcurrent) {
      this.deps.metrics?.uploadRejected.inc({ reason: 'busy' })
      sendError(res, 503, new NaiadError('NAIAD_P2P_BUSY', `at the upload limit of ${this.options.maxConcurrent}`), { 'retry-after': '1' })
      return
    }
    const span = pieceSpan(n, t.size, t.pieceLength)
    let start = 0
    let end = span.length - 1
    const range = req.headers.range
    if (range !== undefined) {
      const rm = /^bytes=(\d+)-(\d*)$/.exec(range)
      if (rm === null || Number(rm[1]) >= span.length) {
        sendError(res, 416, new NaiadError('NAIAD_P2P_RANGE_NOT_SATISFIABLE', `bad range ${range.slice(0, 50)} for a piece of ${span.length} bytes`), { 'content-range': `bytes */${span.length}` })
        return
      }
      start = Number(rm[1])
      if (rm[2] !== '' && rm[2] !== undefined) end = Math.min(end, Number(rm[2]))
      if (end < start) { sendError(res, 416, new NaiadError('NAIAD_P2P_RANGE_NOT_SATISFIABLE', 'empty range'), { 'content-range': `bytes */${span.length}` }); return }
    }
    const digest = t.pieces.get(n)
    this.active++
    this.deps.metrics?.activeUploads.set(this.active)
    this.deps.store.pin(taskId)
    const ac = new AbortController()
    res.on('close', () => { if (!res.writableFinished) ac.abort(new NaiadError('NAIAD_ABORTED', 'the child went away')) })
    try {
      res.writeHead(range !== undefined ? 206 : 200, {
        'content-type': 'application/octet-stream',
        'content-length': String(end - start + 1),
        ...(range !== undefined ? { 'content-range': `bytes ${start}-${end}/${span.length}` } : {}),
        ...(digest !== undefined ? { 'x-naiad-piece-sha256': digest.sha256.toString('hex') } : {})
      })
      if (req.method === 'HEAD') { res.end(); return }
      if (relay !== undefined) {
        await this.relay(relay, start, end, res, ac.signal)
        res.end()
        return
      }
      for (let off = start; off <= end; off += CHUNK) {
        const len = Math.min(CHUNK, end - off + 1)
        await this.bucket.take(len, ac.signal)
        const chunk = await this.deps.store.read(taskId, span.offset + off, len)
        if (this.options.faultCorruptUploads === true) chunk[chunk.length >> 1] = (chunk[chunk.length >> 1] ?? 0) ^ 0x40
        await writeChunk(res, chunk, ac.signal)
        this.deps.metrics?.uploadBytes.inc(len)
      }
      res.end()
    } catch (err) {
      if (!ac.signal.aborted) this.log.debug({ err, taskId, pieceNum: n }, 'upload failed')
      res.destroy()
    } finally {
      this.active--
      this.deps.metrics?.activeUploads.set(this.active)
      this.deps.store.unpin(taskId)
    }
  }
}
