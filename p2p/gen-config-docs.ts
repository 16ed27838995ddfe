/**
 * Writes docs/config/peer.md and docs/config/scheduler.md from the schemas (run from the repository
 * root after `npm run build`: `node dist/p2p/gen-config-docs.js`).
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { peerConfigDoc, schedulerConfigDoc } from './config-docs.ts'

await mkdir('docs/config', { recursive: true })
await writeFile('docs/config/peer.md', peerConfigDoc())
await writeFile('docs/config/scheduler.md', schedulerConfigDoc())
process.stdout.write('wrote docs/config/peer.md and docs/config/scheduler.md\n')
