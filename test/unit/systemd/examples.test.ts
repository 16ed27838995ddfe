/**
 * The files `naiad install` puts in /etc/naiad: each example configuration parses through its
 * daemon's real schema to exactly the defaults, names every key of the schema (set or commented
 * out), names no key the schema lacks, and explains each key with a comment; the containerd
 * snippet is TOML with the settings docs/containerd.md describes.
 */
import { readFileSync } from 'node:fs'
import { parse as parseToml } from 'smol-toml'
import { describe, expect, it } from 'vitest'
import { parseConfig, type FieldDoc, type Schema } from '../../../lib/config/index.ts'
import { fsdConfigSchema } from '../../../fsdaemon/config.ts'
import { peerConfigSchema, schedulerConfigSchema } from '../../../p2p/config.ts'
import { snapshotterConfigSchema } from '../../../snapshotter/config.ts'

const root = new URL('../../../', import.meta.url)
const read = (p: string): string => readFileSync(new URL(p, root), 'utf8')

const EXAMPLES: Array<[string, Schema<unknown>]> = [
  ['fsd.toml', fsdConfigSchema as Schema<unknown>],
  ['peer.toml', peerConfigSchema as Schema<unknown>],
  ['scheduler.toml', schedulerConfigSchema as Schema<unknown>],
  ['snapshotter.toml', snapshotterConfigSchema as Schema<unknown>]
]

interface KeyLine { key: string, line: number, commented: boolean, documented: boolean }

/** Keys of a commented TOML example: "section.key" for set and commented-out (`# key = …`) keys. */
function exampleKeys (text: string): KeyLine[] {
  const lines = text.split('\n')
  const out: KeyLine[] = []
  let section = ''
  let blockStart = 0
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!
    if (l.trim() === '') { blockStart = i + 1; continue }
    const h = /^#?\s*\[\[?([\w.]+)\]\]?\s*$/.exec(l)
    if (h !== null) { section = h[1]!; continue }
    const k = /^(#?)\s*([a-z_][a-z0-9_]*)\s*=/.exec(l)
    if (k === null) continue
    // the explanation is a comment line in the same block (a run of non-blank lines), above it
    let documented = false
    for (let j = blockStart; j < i; j++) if (/^#\s*[^\s[]/.test(lines[j]!) && !/^#\s*[a-z_]+\s*=/.test(lines[j]!)) documented = true
    out.push({ key: section === '' ? k[2]! : `${section}.${k[2]!}`, line: i + 1, commented: k[1] === '#', documented })
  }
  return out
}

function schemaKeys (schema: Schema<unknown>): string[] {
  const docs: FieldDoc[] = []
  schema.docs('', docs)
  return docs.filter(d => d.type !== 'table' && !d.type.startsWith('array of table')).map(d => d.path.replace('[]', ''))
}

describe('example configurations in systemd/etc/naiad', () => {
  it.each(EXAMPLES)('%s parses through the real schema to the defaults', (file, schema) => {
    const parsed = parseConfig(schema, read(`systemd/etc/naiad/${file}`), file)
    expect(parsed).toEqual(parseConfig(schema, ''))
  })

  it.each(EXAMPLES)('%s names every key of the schema, and only those, each explained by a comment', (file, schema) => {
    const keys = exampleKeys(read(`systemd/etc/naiad/${file}`))
    const want = schemaKeys(schema)
    expect(want.length).toBeGreaterThan(0)
    expect(want.filter(k => !keys.some(l => l.key === k)), 'schema keys missing from the example').toEqual([])
    expect(keys.filter(l => !want.includes(l.key)).map(l => `${l.key} (line ${l.line})`), 'keys the schema does not have').toEqual([])
    expect(keys.filter(l => !l.documented && l.key !== 'version').map(l => `${l.key} (line ${l.line})`), 'keys without an explaining comment').toEqual([])
  })

  it('the checks above catch a missing key, an unknown commented key and an unexplained key', () => {
    const text = '[log]\n# the level\nlevel = "info"\n\n[root]\ndir = "/x"\n# [socket]\n# pathh = "/y"\n'
    const keys = exampleKeys(text)
    expect(keys.map(k => [k.key, k.documented])).toEqual([['log.level', true], ['root.dir', false], ['socket.pathh', false]])
    expect(schemaKeys(snapshotterConfigSchema as Schema<unknown>).filter(k => !keys.some(l => l.key === k))).toContain('socket.path')
  })
})

describe('containerd snippet (systemd/containerd-snippet.toml)', () => {
  it('is TOML with the proxy plugin and the CRI settings lazy pulling needs', () => {
    const t = parseToml(read('systemd/containerd-snippet.toml')) as Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(t['version']).toBe(2)
    expect(t['proxy_plugins']['nydus']).toEqual({ type: 'snapshot', address: '/run/naiad/snapshotter.sock' })
    expect(t['plugins']['io.containerd.grpc.v1.cri']['containerd']).toEqual({ snapshotter: 'nydus', disable_snapshot_annotations: false, discard_unpacked_layers: false })
  })

  it('points containerd at the socket the snapshotter listens on by default', () => {
    const t = parseToml(read('systemd/containerd-snippet.toml')) as { proxy_plugins: { nydus: { address: string } } }
    expect(parseConfig(snapshotterConfigSchema, read('systemd/etc/naiad/snapshotter.toml')).socket.path).toBe(t.proxy_plugins.nydus.address)
  })
})
