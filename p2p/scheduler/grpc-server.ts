/**
 * The gRPC adapter of the scheduler: naiad.p2p.v1.Scheduler over @grpc/grpc-js, translating
 * messages to SchedulerService calls and NaiadErrors to gRPC statuses (the error code travels in
 * the `naiad-error-code` metadata key). No decisions are made here.
 */
import type * as grpc from '@grpc/grpc-js'
import { NaiadError } from '../../lib/errors/index.ts'
import type { Logger } from '../../lib/log/index.ts'
import { assignmentsToMsg, digestFromMsg, grpcError, hostFromMsg, hostStatusToMsg, reasonFromMsg, taskStatToMsg } from '../grpc/convert.ts'
import type {
  AnnounceHostRequestMsg, AnnounceHostResponseMsg, AnnouncePeerRequestMsg, AnnouncePeerResponseMsg, AnnounceTasksRequestMsg, AnnounceTasksResponseMsg,
  LeaveHostRequestMsg, LeaveTaskRequestMsg, ListHostsRequestMsg, ListHostsResponseMsg, StatTaskRequestMsg, StatTaskResponseMsg
} from '../grpc/proto.ts'
import { schedulerService } from '../grpc/proto.ts'
import type { PeerSession, SchedulerService } from './service.ts'

type Handler<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void

function unary<Req, Res> (fn: (req: Req) => Res): Handler<Req, Res> {
  return (call, cb) => {
    try {
      cb(null, fn(call.request))
    } catch (err) {
      cb(grpcError(err), null)
    }
  }
}

/** The service implementation for grpc.Server#addService. */
export function schedulerHandlers (service: SchedulerService, logger: Logger): grpc.UntypedServiceImplementation {
  const log = logger.child({ component: 'p2p.scheduler.grpc' })
  const announcePeer = (call: grpc.ServerDuplexStream<AnnouncePeerRequestMsg, AnnouncePeerResponseMsg>): void => {
    let session: PeerSession | undefined
    let ended = false
    const end = (err?: unknown): void => {
      if (ended) return
      ended = true
      session?.close()
      if (err !== undefined) call.destroy(grpcError(err))
      else call.end()
    }
    call.on('data', (req: AnnouncePeerRequestMsg) => {
      if (ended) return
      try {
        if (session === undefined) {
          if (req.event !== 'register' || req.register === null || req.register === undefined) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', 'the first message of AnnouncePeer must be register')
          const r = req.register
          session = service.openPeer({ peerId: req.peerId, hostId: req.hostId, taskId: req.taskId, digest: r.digest, pieceLength: r.pieceLength, contentLength: r.contentLengthKnown ? r.contentLength : undefined }, {
            assignments: (a) => { if (!ended) call.write(assignmentsToMsg(a)) },
            close: (err) => { end(err) }
          })
          const size = session.taskInfo.contentLength
          call.write({ registered: { contentLength: size ?? 0, contentLengthKnown: size !== undefined } })
          return
        }
        switch (req.event) {
          case 'requestPieces': session.requestPieces(req.requestPieces?.numbers ?? [], req.requestPieces?.originOnly === true); break
          case 'pieceStarted': if (req.pieceStarted !== null && req.pieceStarted !== undefined) session.pieceStarted(req.pieceStarted.number, req.pieceStarted.parentHostId); break
          case 'pieceFinished': {
            const f = req.pieceFinished
            if (f === null || f === undefined) break
            session.pieceFinished({ digest: digestFromMsg(f.digest), source: f.source === 'PIECE_SOURCE_ORIGIN' ? 'origin' : 'peer', parentHostId: f.parentHostId, length: f.length, costMs: f.costMs })
            break
          }
          case 'pieceFailed': {
            const f = req.pieceFailed
            if (f === null || f === undefined) break
            session.pieceFailed({ number: f.number, parentHostId: f.parentHostId, reason: reasonFromMsg(f.reason), description: f.description.slice(0, 500) })
            break
          }
          case 'peerFinished': session.finished(req.peerFinished?.contentLength ?? 0); break
          case 'peerFailed': session.failed(req.peerFailed?.description.slice(0, 500) ?? '', req.peerFailed?.blobDigestMismatch === true); break
          default: throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `unexpected AnnouncePeer event ${String(req.event)}`)
        }
      } catch (err) {
        log.debug({ err, peerId: req.peerId }, 'AnnouncePeer request refused')
        end(err)
      }
    })
    call.on('end', () => end())
    call.on('error', () => end())
    call.on('cancelled', () => end())
  }

  return {
    announcePeer,
    announceHost: unary<AnnounceHostRequestMsg, AnnounceHostResponseMsg>((req) => service.announceHost(hostFromMsg(req.host))),
    announceTasks: unary<AnnounceTasksRequestMsg, AnnounceTasksResponseMsg>((req) => ({
      rejected: service.announceTasks(req.hostId, req.tasks.map(t => ({ taskId: t.taskId, digest: t.digest, contentLength: t.contentLength, pieceLength: t.pieceLength, pieces: t.pieces.map(digestFromMsg), complete: t.complete })), req.replace)
    })),
    leaveTask: unary<LeaveTaskRequestMsg, Record<string, never>>((req) => { service.leaveTask(req.hostId, req.taskId); return {} }),
    leaveHost: unary<LeaveHostRequestMsg, Record<string, never>>((req) => { service.leaveHost(req.hostId); return {} }),
    listHosts: unary<ListHostsRequestMsg, ListHostsResponseMsg>((req) => ({
      hosts: service.listHosts(req.seedsOnly).map(hostStatusToMsg)
    })),
    statTask: unary<StatTaskRequestMsg, StatTaskResponseMsg>((req) => taskStatToMsg(service.statTask(req.taskId)))
  }
}

export { schedulerService }
