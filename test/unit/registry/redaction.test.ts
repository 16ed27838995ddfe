import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sha256 } from '../../../lib/digest/index.ts'
import { createLogger } from '../../../lib/log/index.ts'
import { DockerConfigCredentials, RegistryClient, staticCredentials } from '../../../lib/registry/index.ts'
import { startFakeRegistry, type FakeRegistry } from '../../helpers/fake-registry.ts'

const SECRET = 'hunter2-Sup3rSecret'
const USER = 'alice'

let dir: string
const fakes: FakeRegistry[] = []

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naiad-redact-'))
  await mkdir(join(dir, 'bin'))
  await writeFile(join(dir, 'bin', 'docker-credential-test'), `#!/bin/sh\nread host || true\nprintf '{"ServerURL":"%s","Username":"${USER}","Secret":"${SECRET}"}' "$host"\n`)
  await chmod(join(dir, 'bin', 'docker-credential-test'), 0o755)
})

afterAll(async () => {
  for (const f of fakes) await f.stop()
  await rm(dir, { recursive: true, force: true })
})

async function drain (s: Readable): Promise<void> {
  for await (const _ of s) { /* discard */ }
}

describe('credentials never reach the logs', () => {
  it('logs requests, token fetches, retries and failures at trace level without any secret', async () => {
    const lines: string[] = []
    const logger = createLogger({ service: 'test', level: 'trace', destination: { write: (s: string) => { lines.push(s) } } })

    const storage = await startFakeRegistry()
    const bearer = await startFakeRegistry({ auth: { type: 'bearer', username: USER, password: SECRET, tokenTtlSeconds: 60 }, redirectBlobsTo: storage })
    const basic = await startFakeRegistry({ auth: { type: 'basic', username: USER, password: SECRET } })
    fakes.push(storage, bearer, basic)

    await writeFile(join(dir, 'config.json'), JSON.stringify({
      credHelpers: { [bearer.host]: 'test' },
      auths: { [basic.host]: { auth: Buffer.from(`${USER}:${SECRET}`).toString('base64') } }
    }))
    const credentials = new DockerConfigCredentials({ logger, env: { DOCKER_CONFIG: dir, PATH: `${join(dir, 'bin')}:/usr/bin:/bin` } })
    const opts = { plainHttp: true, retryBaseDelayMs: 5, timeoutMs: 2000 } as const

    const d = bearer.addBlob('app', Buffer.from('content'))
    const c1 = new RegistryClient({ logger, credentials }, { ...opts, endpoint: bearer.host })
    await drain(await c1.getBlob('app', d))
    bearer.revokeTokens()
    bearer.fault({ method: 'HEAD', status: 503 })
    expect(await c1.statBlob('app', d)).toBe(7)
    await c1.putManifest('app', 'v1', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] })), 'application/vnd.oci.image.index.v1+json')

    const d2 = basic.addBlob('app', Buffer.from('x'))
    const c2 = new RegistryClient({ logger, credentials }, { ...opts, endpoint: basic.host })
    expect(await c2.statBlob('app', d2)).toBe(1)

    // Failures whose messages and logs must stay clean too.
    const errors: unknown[] = []
    const wrong = new RegistryClient({ logger, credentials: staticCredentials({ [bearer.host]: { username: USER, password: `${SECRET}-wrong` } }) }, { ...opts, endpoint: bearer.host })
    errors.push(await wrong.statBlob('app', d).catch((e: unknown) => e))
    bearer.fault({ method: 'GET', status: 500 })
    errors.push(await c1.getBlob('app', sha256('nope')).catch((e: unknown) => e))
    for (const e of errors) logger.error({ err: e }, 'operation failed')
    for (const c of [c1, c2, wrong]) await c.close()

    const out = lines.join('')
    expect(lines.length).toBeGreaterThan(10)
    expect(out).toContain('fetched registry token')
    expect(out).toContain('registry request')
    const basicValue = Buffer.from(`${USER}:${SECRET}`).toString('base64')
    const tokenRe = /fake-\d+-[0-9a-f-]{36}/
    for (const text of [out, ...errors.map(e => `${(e as Error).message} ${JSON.stringify(e)}`)]) {
      expect(text).not.toContain(SECRET)
      expect(text).not.toContain(basicValue)
      expect(text).not.toMatch(tokenRe)
      expect(text).not.toContain('sig=')
    }
    expect(errors.map(e => (e as { code: string }).code)).toEqual(['NAIAD_REG_UNAUTHORIZED', 'NAIAD_REG_PROTOCOL'])
  })
})
