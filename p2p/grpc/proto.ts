/**
 * The naiad.p2p.v1 proto, loaded at runtime with @grpc/proto-loader, and hand-written TypeScript
 * shapes of its messages as proto-loader decodes them (camelCase fields, numbers for 64-bit
 * integers, Buffers for bytes, enum names as strings, the `oneof` name set to the chosen field).
 * Only the p2p gRPC adapters (scheduler/grpc-server.ts, peer/scheduler-client.ts) use these.
 */
import type * as grpc from '@grpc/grpc-js'
import { loadProto, protoPath } from '../../lib/proto/index.ts'

const PROTO_REL = 'naiad/p2p/v1/scheduler.proto'

/** The .proto file (lib/proto/naiad/p2p/v1/scheduler.proto). */
export function schedulerProtoPath (): string {
  return protoPath(PROTO_REL)
}

let cached: grpc.GrpcObject | undefined

function load (): grpc.GrpcObject {
  cached ??= loadProto(PROTO_REL, { bytes: Buffer })
  return cached
}

interface SchedulerPackage {
  Scheduler: grpc.ServiceClientConstructor
}

function pkg (): SchedulerPackage {
  const naiad = load()['naiad'] as grpc.GrpcObject
  const p2p = naiad['p2p'] as grpc.GrpcObject
  return p2p['v1'] as unknown as SchedulerPackage
}

export function schedulerService (): grpc.ServiceDefinition {
  return pkg().Scheduler.service
}

export function schedulerClientConstructor (): grpc.ServiceClientConstructor {
  return pkg().Scheduler
}

// ---- message shapes --------------------------------------------------------------------------

export interface HostMsg {
  id: string
  hostname: string
  ip: string
  uploadPort: number
  seed: boolean
  uploadRateLimit: number
  uploadConcurrency: number
}

export interface PieceDigestMsg {
  number: number
  sha256: Buffer
  blockSha256: Buffer
}

export type PieceSourceName = 'PIECE_SOURCE_UNSPECIFIED' | 'PIECE_SOURCE_ORIGIN' | 'PIECE_SOURCE_PEER'
export type FailureReasonName = 'FAILURE_REASON_UNSPECIFIED' | 'FAILURE_REASON_TRANSPORT' | 'FAILURE_REASON_DIGEST_MISMATCH' | 'FAILURE_REASON_BUSY' | 'FAILURE_REASON_NOT_FOUND' | 'FAILURE_REASON_ORIGIN'
export type ActionName = 'ACTION_UNSPECIFIED' | 'ACTION_PARENTS' | 'ACTION_BACK_TO_SOURCE' | 'ACTION_WAIT' | 'ACTION_SKIPPED'

export interface RegisterPeerMsg { digest: string, pieceLength: number, contentLength: number, contentLengthKnown: boolean }
export interface RequestPiecesMsg { numbers: number[], originOnly?: boolean }
export interface PieceStartedMsg { number: number, parentHostId: string }
export interface PieceFinishedMsg { digest: PieceDigestMsg | null, source: PieceSourceName, parentHostId: string, length: number, costMs: number }
export interface PieceFailedMsg { number: number, parentHostId: string, reason: FailureReasonName, description: string }
export interface PeerFinishedMsg { contentLength: number }
export interface PeerFailedMsg { description: string, blobDigestMismatch: boolean }

export interface AnnouncePeerRequestMsg {
  hostId: string
  taskId: string
  peerId: string
  event?: 'register' | 'requestPieces' | 'pieceStarted' | 'pieceFinished' | 'pieceFailed' | 'peerFinished' | 'peerFailed'
  register?: RegisterPeerMsg | null
  requestPieces?: RequestPiecesMsg | null
  pieceStarted?: PieceStartedMsg | null
  pieceFinished?: PieceFinishedMsg | null
  pieceFailed?: PieceFailedMsg | null
  peerFinished?: PeerFinishedMsg | null
  peerFailed?: PeerFailedMsg | null
}

export interface TaskInfoMsg { contentLength: number, contentLengthKnown: boolean }
export interface PieceAssignmentMsg { number: number, action: ActionName, parentHostIds: string[], digest: PieceDigestMsg | null }
export interface PieceAssignmentsMsg { pieces: PieceAssignmentMsg[], hosts: HostMsg[] }

export interface AnnouncePeerResponseMsg {
  response?: 'registered' | 'assignments'
  registered?: TaskInfoMsg | null
  assignments?: PieceAssignmentsMsg | null
}

export interface AnnounceHostRequestMsg { host: HostMsg | null, activeUploads: number, uploadBytesPerSecond: number }
export interface AnnounceHostResponseMsg { reannounce: boolean }

export interface HeldTaskMsg { taskId: string, digest: string, contentLength: number, pieceLength: number, pieces: PieceDigestMsg[], complete: boolean }
export interface AnnounceTasksRequestMsg { hostId: string, tasks: HeldTaskMsg[], replace: boolean }
export interface AnnounceTasksResponseMsg { rejected: Array<{ taskId: string, number: number }> }

export interface LeaveTaskRequestMsg { hostId: string, taskId: string }
export interface LeaveHostRequestMsg { hostId: string }
export interface ListHostsRequestMsg { seedsOnly: boolean }
export interface HostStatusMsg { host: HostMsg | null, activeUploads: number, blocklistedUntilMs: number, measuredBandwidth: number, recentFailures: number }
export interface ListHostsResponseMsg { hosts: HostStatusMsg[] }
export interface StatTaskRequestMsg { taskId: string }
export interface StatTaskResponseMsg {
  known: boolean
  digest: string
  contentLength: number
  contentLengthKnown: boolean
  pieceCount: number
  recordedPieces: number
  holders: Array<{ hostId: string, pieces: number, complete: boolean }>
  originPermitsGranted: number
}
