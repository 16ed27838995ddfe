import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { parseConfig } from '../../../lib/config/index.ts'
import { fsdConfigSchema } from '../../../fsdaemon/config.ts'
import { fsdConfigDoc } from '../../../fsdaemon/config-docs.ts'

const root = new URL('../../../', import.meta.url)

describe('fsdaemon configuration', () => {
  it('the commented example parses through the real schema and equals the defaults', () => {
    const example = parseConfig(fsdConfigSchema, readFileSync(new URL('systemd/etc/naiad/fsd.toml', root), 'utf8'), 'fsd.toml')
    expect(example).toEqual(parseConfig(fsdConfigSchema, ''))
    expect(example.fetch.max_request_size).toBe(8 * 1024 * 1024)
    expect(example.cache.flush_interval).toBe(1000)
  })

  it('rejects unknown keys and bad values with their paths', () => {
    expect(() => parseConfig(fsdConfigSchema, '[cache]\nquota = "lots"\n[fuse]\nreaderz = 2\n')).toThrow(/cache\.quota[\s\S]*fuse\.readerz: unknown key/)
    expect(() => parseConfig(fsdConfigSchema, '[[mirrors]]\nurl = "ftp://x"\n')).toThrow(/mirrors\[0\]\.url/)
  })

  it('docs/config/fsd.md is generated from the schema and up to date', () => {
    expect(readFileSync(new URL('docs/config/fsd.md', root), 'utf8')).toBe(fsdConfigDoc())
  })
})
