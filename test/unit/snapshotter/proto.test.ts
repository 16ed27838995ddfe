/**
 * Our snapshots.v1 proto against containerd 1.6.20's wire contract (field numbers and types from
 * the tables in shared/research/snapshotter.md): any drift breaks containerd silently, so pin it.
 */
import { dirname } from 'node:path'
import * as protoLoader from '@grpc/proto-loader'
import { describe, expect, it } from 'vitest'
import { snapshotsProtoPath } from '../../../snapshotter/grpc/proto.ts'

const P = 'containerd.services.snapshots.v1.'

// name → [field name, number, type (scalar, message/enum short name, or 'map' for map<string, string>), repeated]
const WANT: Record<string, Array<[string, number, string, boolean?]>> = {
  PrepareSnapshotRequest: [['snapshotter', 1, 'string'], ['key', 2, 'string'], ['parent', 3, 'string'], ['labels', 4, 'map', true]],
  PrepareSnapshotResponse: [['mounts', 1, 'Mount', true]],
  ViewSnapshotRequest: [['snapshotter', 1, 'string'], ['key', 2, 'string'], ['parent', 3, 'string'], ['labels', 4, 'map', true]],
  ViewSnapshotResponse: [['mounts', 1, 'Mount', true]],
  MountsRequest: [['snapshotter', 1, 'string'], ['key', 2, 'string']],
  MountsResponse: [['mounts', 1, 'Mount', true]],
  RemoveSnapshotRequest: [['snapshotter', 1, 'string'], ['key', 2, 'string']],
  CommitSnapshotRequest: [['snapshotter', 1, 'string'], ['name', 2, 'string'], ['key', 3, 'string'], ['labels', 4, 'map', true], ['parent', 5, 'string']],
  StatSnapshotRequest: [['snapshotter', 1, 'string'], ['key', 2, 'string']],
  StatSnapshotResponse: [['info', 1, 'Info']],
  UpdateSnapshotRequest: [['snapshotter', 1, 'string'], ['info', 2, 'Info'], ['update_mask', 3, 'FieldMask']],
  UpdateSnapshotResponse: [['info', 1, 'Info']],
  ListSnapshotsRequest: [['snapshotter', 1, 'string'], ['filters', 2, 'string', true]],
  ListSnapshotsResponse: [['info', 1, 'Info', true]],
  UsageRequest: [['snapshotter', 1, 'string'], ['key', 2, 'string']],
  UsageResponse: [['size', 1, 'int64'], ['inodes', 2, 'int64']],
  CleanupRequest: [['snapshotter', 1, 'string']],
  Info: [['name', 1, 'string'], ['parent', 2, 'string'], ['kind', 3, 'Kind'], ['created_at', 4, 'Timestamp'], ['updated_at', 5, 'Timestamp'], ['labels', 6, 'map', true]]
}

interface FieldDesc { name: string, number: number, type: string, typeName: string, label: string }

function load (): protoLoader.PackageDefinition {
  const file = snapshotsProtoPath()
  return protoLoader.loadSync(file, { keepCase: true, includeDirs: [dirname(dirname(dirname(dirname(dirname(file)))))] })
}

function fields (def: protoLoader.PackageDefinition, name: string): Array<[string, number, string, boolean?]> {
  const t = def[name] as protoLoader.MessageTypeDefinition | undefined
  expect(t, name).toBeDefined()
  const d = t!.type as unknown as { field: FieldDesc[], nestedType: Array<{ name: string, field: FieldDesc[], options: { mapEntry: boolean } | null }> }
  return d.field.map((f) => {
    // proto-loader keeps type names as written; a map field is a repeated nested mapEntry message
    const entry = d.nestedType.find((n) => n.name === f.typeName && n.options?.mapEntry === true)
    const isMap = entry !== undefined && entry.field.every((e) => e.type === 'TYPE_STRING')
    const type = isMap ? 'map' : f.typeName !== '' ? (f.typeName.split('.').pop() ?? '') : f.type.replace(/^TYPE_/, '').toLowerCase()
    const out: [string, number, string, boolean?] = [f.name, f.number, type]
    if (f.label === 'LABEL_REPEATED') out.push(true)
    return out
  })
}

describe('snapshots.v1 proto matches containerd 1.6.20', () => {
  const def = load()
  it.each(Object.keys(WANT))('%s', (name) => {
    expect(fields(def, P + name)).toEqual(WANT[name])
  })

  it('Mount, Kind and the service methods', () => {
    expect(fields(def, 'containerd.types.Mount')).toEqual([['type', 1, 'string'], ['source', 2, 'string'], ['target', 3, 'string'], ['options', 4, 'string', true]])
    const kind = def[P + 'Kind'] as protoLoader.EnumTypeDefinition
    expect((kind.type as unknown as { value: Array<{ name: string, number: number }> }).value.map((v) => [v.name, v.number])).toEqual([['UNKNOWN', 0], ['VIEW', 1], ['ACTIVE', 2], ['COMMITTED', 3]])
    const svc = def[P + 'Snapshots'] as protoLoader.ServiceDefinition
    expect(Object.fromEntries(Object.entries(svc).map(([k, m]) => [k, [m.path, m.requestStream, m.responseStream]]))).toEqual({
      Prepare: ['/containerd.services.snapshots.v1.Snapshots/Prepare', false, false],
      View: ['/containerd.services.snapshots.v1.Snapshots/View', false, false],
      Mounts: ['/containerd.services.snapshots.v1.Snapshots/Mounts', false, false],
      Commit: ['/containerd.services.snapshots.v1.Snapshots/Commit', false, false],
      Remove: ['/containerd.services.snapshots.v1.Snapshots/Remove', false, false],
      Stat: ['/containerd.services.snapshots.v1.Snapshots/Stat', false, false],
      Update: ['/containerd.services.snapshots.v1.Snapshots/Update', false, false],
      List: ['/containerd.services.snapshots.v1.Snapshots/List', false, true],
      Usage: ['/containerd.services.snapshots.v1.Snapshots/Usage', false, false],
      Cleanup: ['/containerd.services.snapshots.v1.Snapshots/Cleanup', false, false]
    })
  })
})
