import { nullLogger } from '../../../lib/log/index.ts'
import { LocalSnapshotter } from '../../../snapshotter/local/overlay.ts'
import { snapshotterConformance } from '../../conformance/snapshotter.ts'

snapshotterConformance('local (in process)', async ({ root }) => {
  const snapshotter = new LocalSnapshotter({ log: nullLogger() }, { root })
  return { snapshotter, cleanup: async () => { await snapshotter.close() } }
}, { mounts: true })
