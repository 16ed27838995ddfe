/**
 * Mount credentials: the control API accepts registry credentials with a mount request (what the
 * snapshotter passes from the CRI) and rejects malformed ones without quoting a value; a mount's
 * credentials answer only for its registry, else the daemon's own; the Authorization value handed
 * to a node-local mirror with pass_authorization; the registry client asks its provider again
 * after a 401 (a rotated secret reaches a long-lived mount).
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { FsdClient, type MountInfo, type MountRequest } from '../../../lib/fsdapi/index.ts'
import { nullLogger } from '../../../lib/log/index.ts'
import { Authenticator } from '../../../lib/registry/auth.ts'
import type { CredentialProvider, Credentials } from '../../../lib/registry/credentials.ts'
import { ControlServer } from '../../../fsdaemon/control/server.ts'
import { MountCredentials } from '../../../fsdaemon/fetch/credentials.ts'

const SECRET = 'hunter2-Xq9'

describe('control API: credentials in a mount request', () => {
  let dir = ''
  let server: ControlServer
  let client: FsdClient
  const got: MountRequest[] = []

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'naiad-ctl-'))
    const info = (req: MountRequest): MountInfo => ({ mountpoint: req.mountpoint, labels: {}, since: '', files: 0, reads: 0, bytesRead: 0, eio: 0, prefetch: { state: 'off', chunksDone: 0, chunksTotal: 0 }, blobs: [] })
    server = new ControlServer({
      target: {
        info: async () => { throw new Error('unused') },
        list: async () => [],
        mount: async (req) => { got.push(req); return info(req) },
        unmount: async () => {},
        blobs: async () => [],
        removeBlob: async () => {},
        metrics: async () => ''
      },
      log: nullLogger()
    }, { socketPath: join(dir, 'fsd.sock') })
    await server.start()
    client = new FsdClient({ socketPath: join(dir, 'fsd.sock') })
  })

  afterAll(async () => {
    await server.close()
    await server.close()
    rmSync(dir, { recursive: true, force: true })
  })

  const base = { mountpoint: '/mnt/x', bootstrap: '/b/image.boot', image: '127.0.0.1:5000/a/b:1' }

  it('passes user/password and tokens through to the daemon', async () => {
    await client.mount({ ...base, credentials: { username: 'u', password: SECRET } })
    await client.mount({ ...base, credentials: { registryToken: 'tok', identityToken: 'idt' } })
    expect(got.map((r) => r.credentials)).toEqual([{ username: 'u', password: SECRET }, { registryToken: 'tok', identityToken: 'idt' }])
  })

  it('rejects malformed credentials with NAIAD_CLI_USAGE, never quoting a value', async () => {
    const bad: unknown[] = [
      { username: 'u' },
      { password: SECRET },
      { username: 'u', password: SECRET, cookie: SECRET },
      { username: 'u', password: 7 },
      'u:' + SECRET,
      [SECRET]
    ]
    for (const credentials of bad) {
      const err = await client.mount({ ...base, credentials } as unknown as MountRequest).then(() => undefined, (e: Error & { code?: string }) => e)
      expect(err?.code, JSON.stringify(credentials)).toBe('NAIAD_CLI_USAGE')
      expect(err?.message).not.toContain(SECRET)
    }
    const local = await client.mount({ mountpoint: '/mnt/y', bootstrap: '/b/image.boot', blobDir: '/blobs', credentials: { username: 'u', password: SECRET } }).then(() => undefined, (e: Error & { code?: string }) => e)
    expect(local?.code).toBe('NAIAD_CLI_USAGE')
    expect(local?.message).toMatch(/credentials go with image/)
  })
})

describe('MountCredentials', () => {
  const node: CredentialProvider = { get: async (r) => r === 'other.example:5000' ? { username: 'node', password: 'nodepw' } : undefined }

  it('answers with the given credentials for the image\'s registry only, else the daemon\'s', async () => {
    const c = new MountCredentials({ fallback: node }, { registry: 'reg.example:5000', given: { username: 'pod', password: SECRET } })
    expect(c.given).toBe(true)
    expect(await c.get('reg.example:5000')).toEqual({ username: 'pod', password: SECRET })
    expect(await c.get('other.example:5000')).toEqual({ username: 'node', password: 'nodepw' })
    c.replace({ registryToken: 'rotated' })
    expect(await c.get('reg.example:5000')).toEqual({ registryToken: 'rotated' })
    const none = new MountCredentials({ fallback: node }, { registry: 'reg.example:5000' })
    expect(none.given).toBe(false)
    expect(await none.get('reg.example:5000')).toBeUndefined()
  })

  it('gives a node-local mirror Basic for a user and password, Bearer for a registry token, nothing otherwise', async () => {
    const basic = new MountCredentials({ fallback: node }, { registry: 'reg.example:5000', given: { username: 'pod', password: SECRET } })
    expect(await basic.authorization()).toBe(`Basic ${Buffer.from(`pod:${SECRET}`).toString('base64')}`)
    const bearer = new MountCredentials({ fallback: node }, { registry: 'reg.example:5000', given: { registryToken: 'tok' } })
    expect(await bearer.authorization()).toBe('Bearer tok')
    const idOnly = new MountCredentials({ fallback: node }, { registry: 'reg.example:5000', given: { identityToken: 'refresh' } })
    expect(await idOnly.authorization()).toBeUndefined()
    const fromNode = new MountCredentials({ fallback: node }, { registry: 'other.example:5000' })
    expect(await fromNode.authorization()).toBe(`Basic ${Buffer.from('node:nodepw').toString('base64')}`)
  })
})

describe('Authenticator asks its provider again after a 401', () => {
  it('uses rotated credentials for the next request', async () => {
    let current: Credentials = { username: 'u', password: 'old' }
    let asked = 0
    const auth = new Authenticator({
      credentials: { get: async () => { asked++; return current } },
      logger: nullLogger(),
      send: async () => { throw new Error('no token endpoint for basic auth') }
    }, { registry: 'reg.example:5000' })
    const origin = 'https://reg.example:5000'
    expect(await auth.onUnauthorized(origin, 'Basic realm="r"', [], undefined)).toBe(true)
    const first = await auth.authorization(origin, [])
    expect(first).toBe(`Basic ${Buffer.from('u:old').toString('base64')}`)
    current = { username: 'u', password: 'new' }
    // the registry rejects the old password: no retry of that request, but the provider is asked again
    expect(await auth.onUnauthorized(origin, 'Basic realm="r"', [], first)).toBe(false)
    expect(await auth.authorization(origin, [])).toBe(`Basic ${Buffer.from('u:new').toString('base64')}`)
    expect(asked).toBeGreaterThanOrEqual(2)
  })
})
