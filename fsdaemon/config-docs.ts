/**
 * docs/config/fsd.md, generated from the schema (fsdaemon/config.ts). `npm run gen:docs` rewrites
 * it; test/unit/fsdaemon/config.test.ts fails when it is stale.
 */
import { configReference } from '../lib/config/index.ts'
import { fsdConfigSchema } from './config.ts'

export function fsdConfigDoc (): string {
  return [
    '# `naiad fsd` configuration (`/etc/naiad/fsd.toml`)',
    '',
    '<!-- generated from fsdaemon/config.ts by `npm run gen:docs`; do not edit -->',
    '',
    'TOML. Unknown keys are rejected (`NAIAD_CFG_INVALID`, every problem listed with its path). Sizes are',
    'strings with a unit (`"4MiB"`), durations too (`"30s"`). A missing file at the default path means',
    'all defaults; a missing file named with `--config` is an error. Command-line flags win over the file.',
    'A fully commented example: [systemd/etc/naiad/fsd.toml](../../systemd/etc/naiad/fsd.toml).',
    'Operation: [docs/fsdaemon.md](../fsdaemon.md).',
    '',
    configReference(fsdConfigSchema)
  ].join('\n')
}
