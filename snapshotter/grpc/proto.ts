/**
 * containerd's snapshots.v1 proto (our own copy in lib/proto/containerd), loaded at runtime with
 * @grpc/proto-loader, and the shapes of its messages as proto-loader decodes them (camelCase
 * fields, numbers for int64, enum names as strings, maps as objects). Only the adapters in this
 * folder use these; convert.ts maps them to the domain types.
 */
import type * as grpc from '@grpc/grpc-js'
import { loadProto, protoPath } from '../../lib/proto/index.ts'

const PROTO_REL = 'containerd/services/snapshots/v1/snapshots.proto'

/** The .proto file (lib/proto/containerd/services/snapshots/v1/snapshots.proto). */
export function snapshotsProtoPath (): string {
  return protoPath(PROTO_REL)
}

let cached: grpc.GrpcObject | undefined

function load (): grpc.GrpcObject {
  cached ??= loadProto(PROTO_REL)
  return cached
}

function pkg (): { Snapshots: grpc.ServiceClientConstructor } {
  const containerd = load()['containerd'] as grpc.GrpcObject
  const services = containerd['services'] as grpc.GrpcObject
  const snapshots = services['snapshots'] as grpc.GrpcObject
  return snapshots['v1'] as unknown as { Snapshots: grpc.ServiceClientConstructor }
}

export function snapshotsService (): grpc.ServiceDefinition {
  return pkg().Snapshots.service
}

export function snapshotsClientConstructor (): grpc.ServiceClientConstructor {
  return pkg().Snapshots
}

// ---- message shapes ------------------------------------------------------------------------

export interface MountMsg { type: string, source: string, target?: string, options: string[] }
export interface TimestampMsg { seconds: number, nanos: number }
export type KindName = 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED'
export interface InfoMsg {
  name: string
  parent: string
  kind: KindName
  createdAt: TimestampMsg | null
  updatedAt: TimestampMsg | null
  labels: Record<string, string>
}
export interface CreateSnapshotRequestMsg { snapshotter: string, key: string, parent: string, labels: Record<string, string> }
export interface MountsResponseMsg { mounts: MountMsg[] }
export interface KeyRequestMsg { snapshotter: string, key: string }
export interface CommitSnapshotRequestMsg { snapshotter: string, name: string, key: string, labels: Record<string, string>, parent?: string }
export interface StatSnapshotResponseMsg { info: InfoMsg | null }
export interface UpdateSnapshotRequestMsg { snapshotter: string, info: InfoMsg | null, updateMask: { paths: string[] } | null }
export interface ListSnapshotsRequestMsg { snapshotter: string, filters: string[] }
export interface ListSnapshotsResponseMsg { info: InfoMsg[] }
export interface UsageResponseMsg { size: number, inodes: number }
export interface CleanupRequestMsg { snapshotter: string }
