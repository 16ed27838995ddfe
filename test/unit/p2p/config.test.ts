import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { parseConfig, validateConfig } from '../../../lib/config/index.ts'
import { peerConfigDoc, schedulerConfigDoc } from '../../../p2p/config-docs.ts'
import { peerConfigSchema, schedulerConfigSchema } from '../../../p2p/config.ts'
import { parseListen } from '../../../p2p/net.ts'

const root = new URL('../../../', import.meta.url)
const read = (p: string): string => readFileSync(new URL(p, root), 'utf8')

describe('peer config', () => {
  it('has working defaults', () => {
    const c = validateConfig(peerConfigSchema, {})
    expect(c.mirror.listen).toBe('127.0.0.1:65001')
    expect(c.download.piece_length).toBe(4 * 1024 * 1024)
    expect(c.download.piece_timeout).toBe(30_000)
    expect(c.storage.quota).toBe(20 * 1024 ** 3)
    expect(c.testing.fault_corrupt_uploads).toBe(false)
    expect(Object.isFrozen(c.download)).toBe(true)
  })

  it('rejects unknown keys and bad values, reporting every problem with its path', () => {
    let err: unknown
    try {
      parseConfig(peerConfigSchema, [
        'version = 1',
        'typo = 1',
        '[download]',
        'piece_length = "3MiB"',
        'piece_timeot = "1s"',
        '[mirror]',
        'listen = "nowhere"',
        'allowed_origins = ["ftp://x"]',
        '[storage]',
        'quota = "lots"'
      ].join('\n'))
    } catch (e) { err = e }
    expect(err).toMatchObject({ code: 'NAIAD_CFG_INVALID' })
    const msg = (err as Error).message
    for (const p of ['typo: unknown key', 'download.piece_length: must be a power of two', 'download.piece_timeot: unknown key', 'mirror.listen', 'mirror.allowed_origins[0]', 'storage.quota']) expect(msg).toContain(p)
  })

  it('rejects another version', () => {
    expect(() => parseConfig(peerConfigSchema, 'version = 2')).toThrow(expect.objectContaining({ code: 'NAIAD_CFG_INVALID' }))
  })

  it('the commented example parses through the real schema and equals the defaults', () => {
    const c = parseConfig(peerConfigSchema, read('systemd/etc/naiad/peer.toml'), 'peer.toml')
    expect(c).toEqual(validateConfig(peerConfigSchema, {}))
  })
})

describe('scheduler config', () => {
  it('has working defaults and rejects unknown keys', () => {
    const c = validateConfig(schedulerConfigSchema, {})
    expect(c.scheduling.origin_budget_per_piece).toBe(1)
    expect(c.hosts.ttl).toBe(30_000)
    expect(() => parseConfig(schedulerConfigSchema, '[scheduling]\norigin_budget = 2')).toThrow(/scheduling.origin_budget: unknown key/)
  })

  it('the commented example parses through the real schema and equals the defaults', () => {
    const c = parseConfig(schedulerConfigSchema, read('systemd/etc/naiad/scheduler.toml'), 'scheduler.toml')
    expect(c).toEqual(validateConfig(schedulerConfigSchema, {}))
  })
})

describe('generated docs', () => {
  it('docs/config/peer.md and scheduler.md are up to date (node dist/p2p/gen-config-docs.js)', () => {
    expect(read('docs/config/peer.md')).toBe(peerConfigDoc())
    expect(read('docs/config/scheduler.md')).toBe(schedulerConfigDoc())
  })
})

describe('listen addresses', () => {
  it.each([
    ['127.0.0.1:65001', { kind: 'tcp', host: '127.0.0.1', port: 65001 }],
    [':65002', { kind: 'tcp', host: '0.0.0.0', port: 65002 }],
    ['[::1]:80', { kind: 'tcp', host: '::1', port: 80 }],
    ['unix:/run/naiad/peer.sock', { kind: 'unix', path: '/run/naiad/peer.sock' }],
    ['unix:///run/naiad/peer.sock', { kind: 'unix', path: '/run/naiad/peer.sock' }]
  ])('%s', (s, want) => {
    expect(parseListen(s)).toEqual(want)
  })

  it.each(['nowhere', 'host:99999', 'unix:relative', `unix:/${'x'.repeat(120)}`])('%s is refused', (s) => {
    expect(() => parseListen(s)).toThrow(expect.objectContaining({ code: 'NAIAD_CFG_INVALID' }))
  })
})
