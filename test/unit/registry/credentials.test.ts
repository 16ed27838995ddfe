import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DockerConfigCredentials, hostKey, openImageStore } from '../../../lib/registry/index.ts'
import { startFakeRegistry } from '../../helpers/fake-registry.ts'
import { MediaType, canonicalJson } from '../../../lib/oci/index.ts'

let dir: string
let bin: string
let env: Record<string, string | undefined>

const b64 = (s: string): string => Buffer.from(s).toString('base64')

/** A docker-credential helper in a temp PATH dir, answering per host and logging its calls. */
const HELPER = `#!/bin/sh
read host || true
echo "$host" >> "$(dirname "$0")/calls.log"
case "$host" in
  *unknown*) echo "credentials not found in native keychain"; exit 1;;
  tokenhost*) printf '{"ServerURL":"%s","Username":"<token>","Secret":"refresh-xyz"}' "$host";;
  *) printf '{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}' "$host";;
esac
`

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naiad-creds-'))
  bin = join(dir, 'bin')
  await mkdir(bin)
  await writeFile(join(bin, 'docker-credential-test'), HELPER)
  await writeFile(join(bin, 'docker-credential-broken'), '#!/bin/sh\necho "boom: secret store locked" >&2\nexit 3\n')
  await writeFile(join(bin, 'docker-credential-garbage'), '#!/bin/sh\necho "this is not json"\n')
  for (const h of ['test', 'broken', 'garbage']) await chmod(join(bin, `docker-credential-${h}`), 0o755)
  await mkdir(join(dir, 'cfg'))
  await writeFile(join(dir, 'cfg', 'config.json'), JSON.stringify({
    auths: {
      'https://index.docker.io/v1/': { auth: b64('hub:hub-pw') },
      'reg.example.com': { username: 'u', password: 'p' },
      'http://tok.example.com/v1/': { identitytoken: 'idt' },
      'colon.example.com:5000': { auth: b64('a:b:c') },
      'rt.example.com': { registrytoken: 'rtok' }
    },
    credHelpers: {
      'helped.example.com': 'test',
      'tokenhost.example.com': 'test',
      'unknown.example.com': 'test',
      'broken.example.com': 'broken',
      'garbage.example.com': 'garbage',
      'missing.example.com': 'nosuchhelper'
    }
  }))
  env = { DOCKER_CONFIG: join(dir, 'cfg'), PATH: `${bin}:/usr/bin:/bin`, HOME: '/nonexistent' }
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('DockerConfigCredentials', () => {
  it('reads auths: base64 auth, username/password, identity and registry tokens, Docker Hub aliases', async () => {
    const c = new DockerConfigCredentials({ env })
    expect(c.path).toBe(join(dir, 'cfg', 'config.json'))
    expect(await c.get('docker.io')).toEqual({ username: 'hub', password: 'hub-pw' })
    expect(await c.get('registry-1.docker.io')).toEqual({ username: 'hub', password: 'hub-pw' })
    expect(await c.get('reg.example.com')).toEqual({ username: 'u', password: 'p' })
    expect(await c.get('tok.example.com')).toEqual({ identityToken: 'idt' })
    expect(await c.get('colon.example.com:5000')).toEqual({ username: 'a', password: 'b:c' })
    expect(await c.get('rt.example.com')).toEqual({ registryToken: 'rtok' })
    expect(await c.get('nothing.example.com')).toBeUndefined()
  })

  it('runs credHelpers with the host on stdin, caching answers', async () => {
    const c = new DockerConfigCredentials({ env })
    await rm(join(bin, 'calls.log'), { force: true })
    expect(await c.get('helped.example.com')).toEqual({ username: 'helper-user', password: 'helper-secret' })
    expect(await c.get('helped.example.com')).toEqual({ username: 'helper-user', password: 'helper-secret' })
    expect(await c.get('tokenhost.example.com')).toEqual({ identityToken: 'refresh-xyz' })
    expect(await c.get('unknown.example.com')).toBeUndefined()
    expect((await readFile(join(bin, 'calls.log'), 'utf8')).trim().split('\n')).toEqual(['helped.example.com', 'tokenhost.example.com', 'unknown.example.com'])
  })

  it('reports failing and missing helpers as NAIAD_REG_CREDENTIAL_HELPER', async () => {
    const c = new DockerConfigCredentials({ env })
    const broken = await c.get('broken.example.com').catch((e: unknown) => e)
    expect(broken).toMatchObject({ code: 'NAIAD_REG_CREDENTIAL_HELPER' })
    expect((broken as Error).message).toMatch(/docker-credential-broken get exited with 3: boom/)
    await expect(c.get('garbage.example.com')).rejects.toMatchObject({ code: 'NAIAD_REG_CREDENTIAL_HELPER' })
    const missing = await c.get('missing.example.com').catch((e: unknown) => e)
    expect(missing).toMatchObject({ code: 'NAIAD_REG_CREDENTIAL_HELPER' })
    expect((missing as Error).message).toMatch(/docker-credential-nosuchhelper is not on PATH/)
  })

  it('uses credsStore for every host, falling back to auths when the store knows nothing', async () => {
    const d = join(dir, 'store')
    await mkdir(d, { recursive: true })
    await writeFile(join(d, 'config.json'), JSON.stringify({ credsStore: 'test', auths: { 'unknown.example.com': { auth: b64('file:pw') } } }))
    const c = new DockerConfigCredentials({ env: { ...env, DOCKER_CONFIG: d } })
    expect(await c.get('anything.example.com')).toEqual({ username: 'helper-user', password: 'helper-secret' })
    expect(await c.get('unknown.example.com')).toEqual({ username: 'file', password: 'pw' })
  })

  it('finds ~/.docker/config.json without DOCKER_CONFIG; a missing file means no credentials', async () => {
    const home = join(dir, 'home')
    await mkdir(join(home, '.docker'), { recursive: true })
    await writeFile(join(home, '.docker', 'config.json'), JSON.stringify({ auths: { 'h.example.com': { auth: b64('x:y') } } }))
    expect(await new DockerConfigCredentials({ env: { HOME: home } }).get('h.example.com')).toEqual({ username: 'x', password: 'y' })
    expect(await new DockerConfigCredentials({ env: { HOME: join(dir, 'nohome') } }).get('h.example.com')).toBeUndefined()
  })

  it('reports a broken config file without quoting it', async () => {
    const d = join(dir, 'broken-cfg')
    await mkdir(d, { recursive: true })
    await writeFile(join(d, 'config.json'), '{"auths": {"x": {"auth": "c2VjcmV0OnB3"}} oops')
    const err = await new DockerConfigCredentials({ env: { DOCKER_CONFIG: d } }).get('x').catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'NAIAD_CFG_PARSE' })
    expect(JSON.stringify(err)).not.toContain('c2VjcmV0OnB3')
    expect((err as Error).message).not.toContain('c2VjcmV0OnB3')
  })

  it('normalises host keys', () => {
    expect(hostKey('https://index.docker.io/v1/')).toBe('docker.io')
    expect(hostKey('registry-1.docker.io')).toBe('docker.io')
    expect(hostKey('http://Reg.Example.com:5000/v2/')).toBe('reg.example.com:5000')
  })

  it('authenticates a store end to end through DOCKER_CONFIG and a credential helper', async () => {
    const f = await startFakeRegistry({ auth: { type: 'bearer', username: 'helper-user', password: 'helper-secret' } })
    try {
      const d = join(dir, 'e2e')
      await mkdir(d, { recursive: true })
      await writeFile(join(d, 'config.json'), JSON.stringify({ credHelpers: { [f.host]: 'test' } }))
      const m = canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] })
      const digest = f.addManifest('team/app', m, MediaType.OciIndex, 'v1')
      const store = openImageStore(`${f.host}/team/app:v1`, { plainHttp: true, env: { ...env, DOCKER_CONFIG: d }, retryBaseDelayMs: 5 })
      expect(await store.resolve()).toEqual({ mediaType: MediaType.OciIndex, digest, size: m.length })
      expect(f.tokensIssued).toBe(1)
      await store.close()
      await store.close()
    } finally {
      await f.stop()
    }
  })
})
