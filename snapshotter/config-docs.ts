/**
 * docs/config/snapshotter.md, generated from the schema (snapshotter/config.ts). `npm run gen:docs`
 * rewrites it; test/unit/snapshotter/config-docs.test.ts fails when it is stale.
 */
import { configReference } from '../lib/config/index.ts'
import { snapshotterConfigSchema } from './config.ts'

export function snapshotterConfigDoc (): string {
  return [
    '# `naiad snapshotter` configuration (`/etc/naiad/snapshotter.toml`)',
    '',
    '<!-- generated from snapshotter/config.ts by `npm run gen:docs`; do not edit -->',
    '',
    'TOML. Unknown keys are rejected (`NAIAD_CFG_INVALID`, every problem listed with its path). A missing',
    'file at the default path means all defaults; a missing file named with `--config` is an error.',
    'Operation: [docs/snapshotter.md](../snapshotter.md).',
    '',
    configReference(snapshotterConfigSchema)
  ].join('\n')
}
