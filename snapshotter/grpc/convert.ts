/**
 * Proto ↔ domain conversions for snapshots.v1 (containerd's snapshots/proxy/convert.go), and the
 * error mapping: NaiadError kinds to gRPC status codes containerd's errdefs.FromGRPC understands,
 * with our precise code in the `naiad-error-code` metadata key so our client can rebuild it.
 */
import * as grpc from '@grpc/grpc-js'
import { CODES, isNaiadError, NaiadError, toGrpcStatus, type ErrorCode } from '../../lib/errors/index.ts'
import type { Mount, SnapshotInfo, SnapshotKind } from '../snapshotter.ts'
import type { InfoMsg, KindName, MountMsg, TimestampMsg } from './proto.ts'

const KIND_TO_MSG: Readonly<Record<SnapshotKind, KindName>> = { active: 'ACTIVE', view: 'VIEW', committed: 'COMMITTED' }

/** As containerd's proxy: anything but ACTIVE or VIEW (UNKNOWN too) is committed. */
export function kindFromMsg (k: KindName | string): SnapshotKind {
  return k === 'ACTIVE' ? 'active' : k === 'VIEW' ? 'view' : 'committed'
}

export function timestampToMsg (d: Date): TimestampMsg {
  const ms = d.getTime()
  const seconds = Math.floor(ms / 1000)
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 }
}

export function timestampFromMsg (t: TimestampMsg | null | undefined): Date {
  if (t === null || t === undefined) return new Date(0)
  return new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1_000_000))
}

export function infoToMsg (i: SnapshotInfo): InfoMsg {
  return { name: i.name, parent: i.parent, kind: KIND_TO_MSG[i.kind], createdAt: timestampToMsg(i.createdAt), updatedAt: timestampToMsg(i.updatedAt), labels: { ...i.labels } }
}

export function infoFromMsg (m: InfoMsg | null | undefined): SnapshotInfo {
  if (m === null || m === undefined) throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', 'info is required')
  return { name: m.name, parent: m.parent, kind: kindFromMsg(m.kind), labels: { ...m.labels }, createdAt: timestampFromMsg(m.createdAt), updatedAt: timestampFromMsg(m.updatedAt) }
}

export function mountToMsg (m: Mount): MountMsg {
  return { type: m.type, source: m.source, target: '', options: [...m.options] }
}

export function mountFromMsg (m: MountMsg): Mount {
  return { type: m.type, source: m.source, options: [...m.options] }
}

/**
 * A gRPC status for any thrown value. Cancellation becomes CANCELLED (1), as containerd's
 * errdefs.ToGRPC does for context.Canceled; the kinds map through GRPC_STATUS.
 */
export function toServiceError (err: unknown): grpc.ServiceError {
  const md = new grpc.Metadata()
  if (isNaiadError(err)) md.set('naiad-error-code', err.code)
  const message = err instanceof Error ? err.message : String(err)
  const e = new Error(message) as grpc.ServiceError
  e.code = err instanceof Error && err.name === 'AbortError' ? grpc.status.CANCELLED : toGrpcStatus(err)
  e.details = message
  e.metadata = md
  return e
}

const STATUS_TO_CODE: Readonly<Partial<Record<number, ErrorCode>>> = {
  [grpc.status.NOT_FOUND]: 'NAIAD_SNAP_NOT_FOUND',
  [grpc.status.ALREADY_EXISTS]: 'NAIAD_SNAP_ALREADY_EXISTS',
  [grpc.status.FAILED_PRECONDITION]: 'NAIAD_SNAP_NOT_ACTIVE',
  [grpc.status.INVALID_ARGUMENT]: 'NAIAD_SNAP_INVALID_ARGUMENT',
  [grpc.status.UNAVAILABLE]: 'NAIAD_SNAP_UNAVAILABLE',
  [grpc.status.CANCELLED]: 'NAIAD_ABORTED',
  [grpc.status.DEADLINE_EXCEEDED]: 'NAIAD_ABORTED'
}

/** A gRPC error as a NaiadError: the server's precise code when it sent one, else by status. */
export function fromServiceError (err: unknown, what: string): NaiadError {
  if (isNaiadError(err)) return err
  const e = err as Partial<grpc.ServiceError>
  const sent = e.metadata?.get('naiad-error-code')[0]
  const detail = e.details ?? e.message ?? String(err)
  if (typeof sent === 'string' && sent in CODES) return new NaiadError(sent as ErrorCode, detail, { cause: err })
  const code = (typeof e.code === 'number' ? STATUS_TO_CODE[e.code] : undefined) ?? 'NAIAD_INTERNAL'
  return new NaiadError(code, `${what}: ${detail}`, { cause: err })
}

