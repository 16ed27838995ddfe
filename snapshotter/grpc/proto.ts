/**
 * containerd's snapshots.v1 proto (our own copy in lib/proto/containerd), loaded at runtime with
 * @grpc/proto-loader, and the shapes of its messages as proto-loader decodes them (camelCase
 * fields, numbers for int64, enum names as strings, maps as objects). Only the adapters in this
 * folder use these; convert.ts maps them to the domain types.
 */
import { existsSync } from 'node:fs'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { NaiadError } from '../../lib/errors/index.ts'

const PROTO_REL = 'lib/proto/containerd/services/snapshots/v1/snapshots.proto'

/**
 * The .proto file: from the sources (`snapshotter/grpc/` → repo root two levels up) or from the
 * compiled `dist/snapshotter/grpc/` (three levels up); tsc does not copy .proto files.
 */
export function snapshotsProtoPath (): string {
  for (const up of ['../../', '../../../']) {
    const p = fileURLToPath(new URL(up + PROTO_REL, import.meta.url))
    if (existsSync(p)) return p
  }
  throw new NaiadError('NAIAD_INTERNAL', `cannot find ${PROTO_REL} next to ${fileURLToPath(import.meta.url)}`)
}

let cached: grpc.GrpcObject | undefined

function load (): grpc.GrpcObject {
  if (cached !== undefined) return cached
  const file = snapshotsProtoPath()
  // lib/proto is the include root: the proto imports "containerd/types/mount.proto"
  const includeRoot = dirname(dirname(dirname(dirname(dirname(file)))))
  cached = grpc.loadPackageDefinition(protoLoader.loadSync(file, {
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [includeRoot]
  }))
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
