import { describe, expect, it } from 'vitest'
import { formatReference, parseReference, parseRegistryReference, registryEndpoint } from '../../../lib/oci/index.ts'

const D = `sha256:${'a'.repeat(64)}`

describe('parseReference', () => {
  const ok: Array<[string, Record<string, unknown>]> = [
    ['busybox', { kind: 'registry', registry: 'docker.io', endpoint: 'registry-1.docker.io', repository: 'library/busybox', tag: 'latest' }],
    ['busybox:1.36', { registry: 'docker.io', repository: 'library/busybox', tag: '1.36' }],
    ['library/busybox', { registry: 'docker.io', repository: 'library/busybox', tag: 'latest' }],
    ['docker.io/busybox', { registry: 'docker.io', repository: 'library/busybox' }],
    ['index.docker.io/library/busybox', { registry: 'docker.io', endpoint: 'registry-1.docker.io', repository: 'library/busybox' }],
    ['user/app:v2', { registry: 'docker.io', repository: 'user/app', tag: 'v2' }],
    ['ghcr.io/org/team/app:1.0', { registry: 'ghcr.io', endpoint: 'ghcr.io', repository: 'org/team/app', tag: '1.0' }],
    ['localhost/app', { registry: 'localhost', repository: 'app', tag: 'latest' }],
    ['localhost:5000/app:dev', { registry: 'localhost:5000', endpoint: 'localhost:5000', repository: 'app', tag: 'dev' }],
    ['127.0.0.1:5000/a/b', { registry: '127.0.0.1:5000', repository: 'a/b', tag: 'latest' }],
    ['[::1]:5000/a', { registry: '[::1]:5000', repository: 'a' }],
    ['Registry.Example.com/app', { registry: 'Registry.Example.com', repository: 'app' }],
    [`busybox@${D}`, { repository: 'library/busybox', digest: D, tag: undefined }],
    [`busybox:1.36@${D}`, { repository: 'library/busybox', digest: D, tag: '1.36' }],
    [`host:5000/a/b@${D}`, { registry: 'host:5000', repository: 'a/b', digest: D }],
    ['a/b__c-d.e/f---g', { repository: 'a/b__c-d.e/f---g' }],
    ['oci:./img', { kind: 'layout', dir: './img', tag: undefined }],
    ['oci:/tmp/img:v1', { kind: 'layout', dir: '/tmp/img', tag: 'v1' }],
    [`oci:/tmp/img@${D}`, { kind: 'layout', dir: '/tmp/img', digest: D }],
    [`oci:/tmp/img:v1@${D}`, { kind: 'layout', dir: '/tmp/img', tag: 'v1', digest: D }],
    ['oci:/tmp/x:y/img', { kind: 'layout', dir: '/tmp/x:y/img' }]
  ]
  for (const [input, want] of ok) {
    it(`parses ${input}`, () => {
      const r = parseReference(input) as unknown as Record<string, unknown>
      for (const [k, v] of Object.entries(want)) expect(r[k], k).toEqual(v)
    })
  }

  const bad: Array<[string, RegExp]> = [
    ['', /empty/],
    ['Busybox', /lowercase/],
    ['docker.io/Library/busybox', /lowercase/],
    ['busybox:', /bad tag/],
    ['busybox:-x', /bad tag/],
    [`busybox:${'a'.repeat(129)}`, /bad tag/],
    ['busybox@sha256:abc', /bad digest/],
    [`busybox@md5:${'a'.repeat(32)}`, /bad digest/],
    ['a//b', /empty path component/],
    ['a/b/', /empty path component/],
    ['/a', /empty path component|no repository/],
    ['-a/b', /bad repository path component/],
    ['a/_b', /bad repository path component/],
    ['https://registry.example.com/app', /no URL scheme/],
    ['a b', /whitespace/],
    ['host:99999/app', /bad port/],
    ['host:5000/', /no repository name|empty path component/],
    ['oci:', /empty/],
    ['oci::tag', /empty/],
    [`example.com/${'a'.repeat(250)}`, /longer than 255/]
  ]
  for (const [input, why] of bad) {
    it(`rejects ${JSON.stringify(input.slice(0, 40))}`, () => {
      let err: unknown
      try { parseReference(input) } catch (e) { err = e }
      expect(err).toMatchObject({ code: 'NAIAD_REF_INVALID' })
      expect((err as Error).message).toMatch(why)
    })
  }

  it('round-trips through formatReference', () => {
    for (const s of ['busybox', 'localhost:5000/a/b:c', `ghcr.io/x/y@${D}`, 'oci:/tmp/i:t', `oci:/tmp/i@${D}`, `q.io/a:t@${D}`]) {
      const r = parseReference(s)
      expect(parseReference(formatReference(r))).toEqual(r)
    }
    expect(formatReference(parseReference('busybox'))).toBe('docker.io/library/busybox:latest')
  })

  it('parseRegistryReference refuses layouts', () => {
    expect(() => parseRegistryReference('oci:/x')).toThrow(/expected a registry reference/)
  })

  it('maps docker.io to its endpoint', () => {
    expect(registryEndpoint('docker.io')).toBe('registry-1.docker.io')
    expect(registryEndpoint('quay.io')).toBe('quay.io')
  })
})
