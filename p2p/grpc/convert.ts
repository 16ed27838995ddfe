/**
 * Mapping between the naiad.p2p.v1 message shapes and the domain types, and between NaiadErrors
 * and gRPC statuses (the precise code travels in the `naiad-error-code` metadata key).
 */
import * as grpc from '@grpc/grpc-js'
import { CODES, isNaiadError, NaiadError, toGrpcStatus, type ErrorCode } from '../../lib/errors/index.ts'
import type { Assignments, FailureReason, HostInfo, HostStatus, PieceDigest, TaskStat } from '../protocol/index.ts'
import type { ActionName, AnnouncePeerResponseMsg, FailureReasonName, HostMsg, HostStatusMsg, PieceAssignmentsMsg, PieceDigestMsg, StatTaskResponseMsg } from './proto.ts'

export function hostFromMsg (m: HostMsg | null | undefined): HostInfo {
  if (m === null || m === undefined) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', 'host is required')
  return { id: m.id, hostname: m.hostname, ip: m.ip, uploadPort: m.uploadPort, seed: m.seed, uploadRateLimit: m.uploadRateLimit, uploadConcurrency: m.uploadConcurrency }
}

export function hostToMsg (h: HostInfo): HostMsg {
  return { id: h.id, hostname: h.hostname, ip: h.ip, uploadPort: h.uploadPort, seed: h.seed, uploadRateLimit: h.uploadRateLimit, uploadConcurrency: h.uploadConcurrency }
}

export function digestFromMsg (m: PieceDigestMsg | null | undefined): PieceDigest {
  if (m === null || m === undefined) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', 'piece digest is required')
  return { number: m.number, sha256: m.sha256, blocks: m.blockSha256 }
}

export function digestToMsg (d: PieceDigest): PieceDigestMsg {
  return { number: d.number, sha256: d.sha256, blockSha256: d.blocks }
}

const REASON_FROM: Record<FailureReasonName, FailureReason> = {
  FAILURE_REASON_UNSPECIFIED: 'transport',
  FAILURE_REASON_TRANSPORT: 'transport',
  FAILURE_REASON_DIGEST_MISMATCH: 'digest-mismatch',
  FAILURE_REASON_BUSY: 'busy',
  FAILURE_REASON_NOT_FOUND: 'not-found',
  FAILURE_REASON_ORIGIN: 'origin'
}

const REASON_TO: Record<FailureReason, FailureReasonName> = {
  transport: 'FAILURE_REASON_TRANSPORT',
  'digest-mismatch': 'FAILURE_REASON_DIGEST_MISMATCH',
  busy: 'FAILURE_REASON_BUSY',
  'not-found': 'FAILURE_REASON_NOT_FOUND',
  origin: 'FAILURE_REASON_ORIGIN'
}

export function reasonFromMsg (r: FailureReasonName): FailureReason {
  return REASON_FROM[r] ?? 'transport'
}

export function reasonToMsg (r: FailureReason): FailureReasonName {
  return REASON_TO[r]
}

export function assignmentsToMsg (a: Assignments): AnnouncePeerResponseMsg {
  return {
    assignments: {
      pieces: a.pieces.map(p => p.action === 'parents'
        ? { number: p.number, action: 'ACTION_PARENTS' as ActionName, parentHostIds: p.parents, digest: digestToMsg(p.digest) }
        : { number: p.number, action: (p.action === 'wait' ? 'ACTION_WAIT' : p.action === 'skipped' ? 'ACTION_SKIPPED' : 'ACTION_BACK_TO_SOURCE') as ActionName, parentHostIds: [], digest: null }),
      hosts: a.hosts.map(hostToMsg)
    }
  }
}

/** Assignments from the wire; a PARENTS entry without a digest or parents is dropped (never trusted). */
export function assignmentsFromMsg (m: PieceAssignmentsMsg): Assignments {
  const pieces: Assignments['pieces'] = []
  for (const p of m.pieces) {
    if (p.action === 'ACTION_PARENTS') {
      if (p.digest === null || p.digest === undefined || p.parentHostIds.length === 0) continue
      pieces.push({ number: p.number, action: 'parents', parents: p.parentHostIds, digest: digestFromMsg(p.digest) })
    } else if (p.action === 'ACTION_BACK_TO_SOURCE') {
      pieces.push({ number: p.number, action: 'back-to-source' })
    } else if (p.action === 'ACTION_SKIPPED') {
      pieces.push({ number: p.number, action: 'skipped' })
    } else {
      pieces.push({ number: p.number, action: 'wait' })
    }
  }
  return { pieces, hosts: m.hosts.map(hostFromMsg) }
}

export function hostStatusToMsg (h: HostStatus): HostStatusMsg {
  return { host: hostToMsg(h.host), activeUploads: h.activeUploads, blocklistedUntilMs: h.blocklistedUntil, measuredBandwidth: h.measuredBandwidth, recentFailures: h.recentFailures }
}

export function hostStatusFromMsg (m: HostStatusMsg): HostStatus {
  return { host: hostFromMsg(m.host), activeUploads: m.activeUploads, blocklistedUntil: m.blocklistedUntilMs, measuredBandwidth: m.measuredBandwidth, recentFailures: m.recentFailures }
}

export function taskStatToMsg (t: TaskStat | undefined): StatTaskResponseMsg {
  if (t === undefined) return { known: false, digest: '', contentLength: 0, contentLengthKnown: false, pieceCount: 0, recordedPieces: 0, holders: [], originPermitsGranted: 0 }
  return { known: true, digest: t.digest, contentLength: t.contentLength ?? 0, contentLengthKnown: t.contentLength !== undefined, pieceCount: t.pieceCount, recordedPieces: t.recordedPieces, holders: t.holders, originPermitsGranted: t.originPermitsGranted }
}

export function taskStatFromMsg (m: StatTaskResponseMsg): TaskStat | undefined {
  if (!m.known) return undefined
  return { digest: m.digest, contentLength: m.contentLengthKnown ? m.contentLength : undefined, pieceCount: m.pieceCount, recordedPieces: m.recordedPieces, holders: m.holders, originPermitsGranted: m.originPermitsGranted }
}

/** A NaiadError as a gRPC ServiceError (status from its kind, code in metadata). */
export function grpcError (err: unknown): grpc.ServiceError {
  const md = new grpc.Metadata()
  if (isNaiadError(err)) md.set('naiad-error-code', err.code)
  const e = new Error(err instanceof Error ? err.message : String(err)) as grpc.ServiceError
  e.code = toGrpcStatus(err)
  e.details = e.message
  e.metadata = md
  return e
}

/** A gRPC error as a NaiadError: the original code when the scheduler sent one. */
export function fromGrpcError (err: unknown, what: string): NaiadError {
  if (isNaiadError(err)) return err
  const e = err as Partial<grpc.ServiceError>
  const code = e.metadata?.get('naiad-error-code')[0]
  if (typeof code === 'string' && code in CODES) return new NaiadError(code as ErrorCode, `${what}: ${e.details ?? e.message ?? ''}`, { cause: err })
  return new NaiadError('NAIAD_P2P_SCHEDULER_UNAVAILABLE', `${what}: ${e.details ?? e.message ?? String(err)}`, { cause: err })
}
