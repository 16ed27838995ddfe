/**
 * The configuration references docs/config/peer.md and docs/config/scheduler.md, generated from
 * the schemas (p2p/config.ts). `npm run gen:docs` (or `node dist/p2p/gen-config-docs.js`) rewrites
 * them; a test fails when they are stale.
 */
import { configReference } from '../lib/config/index.ts'
import { peerConfigSchema, schedulerConfigSchema } from './config.ts'

const NOTE = '<!-- generated from p2p/config.ts by `npm run gen:docs` (or `node dist/p2p/gen-config-docs.js` after a build); do not edit -->'

export function peerConfigDoc (): string {
  return [
    '# `naiad peer` configuration (`/etc/naiad/peer.toml`)',
    '',
    NOTE,
    '',
    'TOML. Unknown keys are rejected (`NAIAD_CFG_INVALID`, every problem listed with its path). Sizes are',
    'strings with a unit (`"4MiB"`), durations too (`"30s"`). A missing file at the default path means',
    'all defaults; a missing file named with `--config` is an error. `--seed` overrides `seed.enabled`.',
    'A fully commented example: [systemd/etc/naiad/peer.toml](../../systemd/etc/naiad/peer.toml).',
    'Design and operation: [docs/p2p.md](../p2p.md).',
    '',
    configReference(peerConfigSchema)
  ].join('\n')
}

export function schedulerConfigDoc (): string {
  return [
    '# `naiad scheduler` configuration (`/etc/naiad/scheduler.toml`)',
    '',
    NOTE,
    '',
    'TOML. Unknown keys are rejected (`NAIAD_CFG_INVALID`). Durations are strings with a unit (`"30s"`).',
    'A fully commented example: [systemd/etc/naiad/scheduler.toml](../../systemd/etc/naiad/scheduler.toml).',
    'Design and operation: [docs/p2p.md](../p2p.md).',
    '',
    configReference(schedulerConfigSchema)
  ].join('\n')
}
