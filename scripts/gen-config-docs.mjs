// Regenerates docs/config/*.md from the compiled schemas (run after `npm run build`).
import { mkdir, writeFile } from 'node:fs/promises'
import { fsdConfigDoc } from '../dist/fsdaemon/config-docs.js'
import { snapshotterConfigDoc } from '../dist/snapshotter/config-docs.js'

await mkdir('docs/config', { recursive: true })
await writeFile('docs/config/fsd.md', fsdConfigDoc())
await writeFile('docs/config/snapshotter.md', snapshotterConfigDoc())
try {
  const p2p = await import('../dist/p2p/config-docs.js')
  await writeFile('docs/config/peer.md', p2p.peerConfigDoc())
  await writeFile('docs/config/scheduler.md', p2p.schedulerConfigDoc())
} catch (err) {
  if (err.code !== 'ERR_MODULE_NOT_FOUND') throw err
}
process.stdout.write('wrote docs/config/*.md\n')
