import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { snapshotterConfigDoc } from '../../../snapshotter/config-docs.ts'

describe('snapshotter configuration reference', () => {
  it('docs/config/snapshotter.md is generated from the schema and up to date', () => {
    expect(readFileSync(new URL('../../../docs/config/snapshotter.md', import.meta.url), 'utf8')).toBe(snapshotterConfigDoc())
  })
})
