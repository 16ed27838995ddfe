/** The conformance suite over the real Unix socket: LocalSnapshotter behind SnapshotsServer, driven by SnapshotsClient. */
import { join } from 'node:path'
import { nullLogger } from '../../lib/log/index.ts'
import { SnapshotsClient } from '../../snapshotter/grpc/client.ts'
import { SnapshotsServer } from '../../snapshotter/grpc/service.ts'
import { LocalSnapshotter } from '../../snapshotter/local/overlay.ts'
import { snapshotterConformance } from '../conformance/snapshotter.ts'

snapshotterConformance('local over gRPC (unix socket)', async ({ root }) => {
  const log = nullLogger()
  const local = new LocalSnapshotter({ log }, { root })
  const server = new SnapshotsServer({ snapshotter: local, log }, { socket: join(root, 's.sock') })
  await server.start()
  const snapshotter = new SnapshotsClient({}, { socket: server.socket, namespace: 'default' })
  return {
    snapshotter,
    cleanup: async () => {
      await snapshotter.close()
      await server.close()
      await local.close()
    }
  }
}, { mounts: true })
