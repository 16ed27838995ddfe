import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { s, parseConfig, loadConfigFile, configReference, parseSize, parseDuration } from '../../../lib/config/index.ts'
import { isNaiadError } from '../../../lib/errors/index.ts'

const schema = s.object({
  version: s.integer({ min: 1, max: 1, description: 'config format version' }),
  log: s.object({ level: s.oneOf(['info', 'debug'] as const, { default: 'info', description: 'log level' }) }, { description: 'logging' }),
  cache: s.object({
    dir: s.string({ default: '/var/cache/naiad', description: 'where' }),
    quota: s.size({ default: '10GiB', description: 'disk quota' }),
    gc_interval: s.duration({ default: '1h', description: 'how often' })
  }),
  mirrors: s.array(s.object({ url: s.string({ pattern: /^https?:\/\// }) }), { default: [] })
})

describe('config', () => {
  it('fills defaults and parses units', () => {
    const c = parseConfig(schema, 'version = 1\n[cache]\nquota = "512MiB"\n')
    expect(c.log.level).toBe('info')
    expect(c.cache.quota).toBe(512 * 1024 * 1024)
    expect(c.cache.gc_interval).toBe(3_600_000)
    expect(c.mirrors).toEqual([])
    expect(Object.isFrozen(c.cache)).toBe(true)
  })

  it('rejects unknown keys and reports every problem with its path', () => {
    let err: unknown
    try {
      parseConfig(schema, 'version = 2\ntypo = 1\n[cache]\nquota = "lots"\nfetching_tieout = 3\n[[mirrors]]\nurl = "ftp://x"\n')
    } catch (e) { err = e }
    expect(isNaiadError(err) && err.code).toBe('NAIAD_CFG_INVALID')
    const msg = (err as Error).message
    expect(msg).toContain('version: must be <= 1')
    expect(msg).toContain('typo: unknown key')
    expect(msg).toContain('cache.quota')
    expect(msg).toContain('cache.fetching_tieout: unknown key')
    expect(msg).toContain('mirrors[0].url')
  })

  it('reports TOML syntax errors with a position', () => {
    expect(() => parseConfig(schema, 'version = = 1')).toThrow(/NAIAD|line/)
    try { parseConfig(schema, 'version = = 1') } catch (e) { expect(isNaiadError(e) && e.code).toBe('NAIAD_CFG_PARSE') }
  })

  it('missing file: defaults unless explicitly named', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'naiad-cfg-'))
    const withVersion = s.object({ version: s.integer({ default: 1 }) })
    expect((await loadConfigFile(withVersion, join(dir, 'none.toml'), false)).version).toBe(1)
    await expect(loadConfigFile(withVersion, join(dir, 'none.toml'), true)).rejects.toMatchObject({ code: 'NAIAD_CFG_NOT_FOUND' })
    await writeFile(join(dir, 'x.toml'), 'version = 1\n')
    expect((await loadConfigFile(withVersion, join(dir, 'x.toml'), true)).version).toBe(1)
  })

  it('generates a reference table from the schema', () => {
    const md = configReference(schema)
    expect(md).toContain('`cache.quota`')
    expect(md).toContain('disk quota')
  })

  it('parses sizes and durations', () => {
    expect(parseSize('4 KiB')).toBe(4096)
    expect(parseSize('1GB')).toBe(1e9)
    expect(parseSize('x')).toBeUndefined()
    expect(parseDuration('1h30m')).toBe(5_400_000)
    expect(parseDuration('500ms')).toBe(500)
    expect(parseDuration('5')).toBeUndefined()
  })
})
