import { Agent } from 'undici'
import { afterEach, describe, expect, it } from 'vitest'
import { sha256 } from '../../../lib/digest/index.ts'
import { nullLogger } from '../../../lib/log/index.ts'
import { parseWwwAuthenticate, RegistryClient, parseRetryAfter, staticCredentials, statusError, summarizeBody } from '../../../lib/registry/index.ts'
import { RegistryHttp } from '../../../lib/registry/http.ts'
import { startFakeRegistry, type FakeRegistry } from '../../helpers/fake-registry.ts'

const fakes: FakeRegistry[] = []
afterEach(async () => { for (const f of fakes.splice(0)) await f.stop() })

describe('WWW-Authenticate parsing', () => {
  it('parses bearer and basic challenges with quoted and token values', () => {
    expect(parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull' } }
    ])
    expect(parseWwwAuthenticate('Basic realm="Registry Realm"')).toEqual([{ scheme: 'basic', params: { realm: 'Registry Realm' } }])
    expect(parseWwwAuthenticate('Bearer realm=x, error=invalid_token , error_description="a \\"quoted\\" thing"')).toEqual([
      { scheme: 'bearer', params: { realm: 'x', error: 'invalid_token', error_description: 'a "quoted" thing' } }
    ])
    expect(parseWwwAuthenticate(['Basic realm="a"', 'Bearer realm="b"']).map(c => c.scheme)).toEqual(['basic', 'bearer'])
    expect(parseWwwAuthenticate('Negotiate')).toEqual([{ scheme: 'negotiate', params: {} }])
    expect(parseWwwAuthenticate(undefined)).toEqual([])
  })
})

describe('Retry-After and error messages', () => {
  it('parses delta seconds and HTTP dates', () => {
    expect(parseRetryAfter('3')).toBe(3000)
    expect(parseRetryAfter(new Date(Date.now() + 5000).toUTCString())! > 3000).toBe(true)
    expect(parseRetryAfter('soon')).toBeUndefined()
    expect(parseRetryAfter(undefined)).toBeUndefined()
  })

  it('maps statuses to codes and quotes a short, redacted body', () => {
    const body = JSON.stringify({ errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] })
    expect(statusError(401, '', 'x', 'GET', 'http://h/v2/').code).toBe('NAIAD_REG_UNAUTHORIZED')
    expect(statusError(403, body, 'x', 'GET', 'http://h/v2/')).toMatchObject({ code: 'NAIAD_REG_DENIED', message: 'x: HTTP 403 from GET http://h/v2/: DENIED: requested access to the resource is denied' })
    expect(statusError(404, '', 'x', 'GET', 'http://h/').code).toBe('NAIAD_REG_NOT_FOUND')
    expect(statusError(503, '', 'x', 'GET', 'http://h/', 5).message).toContain('after 5 attempts')
    expect(statusError(503, '', 'x', 'GET', 'http://h/').code).toBe('NAIAD_REG_UNAVAILABLE')
    expect(statusError(500, '', 'x', 'GET', 'http://h/').code).toBe('NAIAD_REG_PROTOCOL')
    expect(statusError(400, '', 'x', 'GET', 'http://h/p?X-Amz-Signature=abc').message).not.toContain('Signature')
    expect(summarizeBody('proxy says: Authorization: Bearer abc.def.ghi and password=hunter2\n' + 'x'.repeat(500))).toMatch(/^proxy says: Authorization: Bearer \[REDACTED\] and password=\[REDACTED\] x+…$/)
  })
})

describe('RegistryHttp', () => {
  it('drops caller-set credentials on a cross-origin redirect', async () => {
    const storage = await startFakeRegistry()
    const reg = await startFakeRegistry({ redirectBlobsTo: storage })
    fakes.push(storage, reg)
    const d = reg.addBlob('app', Buffer.from('x'))
    const agent = new Agent()
    const http = new RegistryHttp({ dispatcher: () => agent, logger: nullLogger() }, { timeoutMs: 2000, retries: 0, retryBaseDelayMs: 1, retryMaxDelayMs: 1, maxRedirects: 3, userAgent: 't' })
    const res = await http.send({ method: 'GET', url: new URL(`${reg.url}/v2/app/blobs/${d}`), headers: { Authorization: 'Basic c2VjcmV0', Cookie: 'a=b', 'X-Other': 'kept' }, what: 't' })
    expect(await res.body.text()).toBe('x')
    expect(res.url.origin).toBe(storage.url)
    expect(reg.requests[0]?.headers.authorization).toBe('Basic c2VjcmV0')
    expect(storage.requests[0]?.headers.authorization).toBeUndefined()
    expect(storage.requests[0]?.headers.cookie).toBeUndefined()
    expect(storage.requests[0]?.headers['x-other']).toBe('kept')
    await agent.close()
  })

  it('stops after too many redirects', async () => {
    const a = await startFakeRegistry()
    fakes.push(a)
    const b = await startFakeRegistry({ redirectBlobsTo: a })
    fakes.push(b)
    const d = b.addBlob('app', Buffer.from('x'))
    const c = new RegistryClient({}, { endpoint: b.host, plainHttp: true, maxRedirects: 0 })
    await expect(c.getBlob('app', d)).rejects.toMatchObject({ code: 'NAIAD_REG_PROTOCOL' })
    await c.close()
  })
})

describe('Authenticator', () => {
  it('shares one token fetch among concurrent requests', async () => {
    const f = await startFakeRegistry({ auth: { type: 'bearer', username: 'u', password: 'p' } })
    fakes.push(f)
    const ds = Array.from({ length: 8 }, (_, i) => f.addBlob('app', Buffer.from(`blob ${i}`)))
    const c = new RegistryClient({ credentials: staticCredentials({ [f.host]: { username: 'u', password: 'p' } }) }, { endpoint: f.host, plainHttp: true })
    await c.ping() // learn the challenge
    const sizes = await Promise.all(ds.map(async d => await c.statBlob('app', d)))
    expect(sizes.every(s => s !== undefined && s > 0)).toBe(true)
    // One token for /v2/ (no scope), one for repository:app:pull.
    expect(f.tokensIssued).toBe(2)
    expect(c.tokenFetches).toBe(2)
    await c.close()
  })

  it('stops waiting for a token when the caller aborts', async () => {
    const f = await startFakeRegistry({ auth: { type: 'bearer' } })
    fakes.push(f)
    f.fault({ path: '/token', delayMs: 5000 })
    const c = new RegistryClient({}, { endpoint: f.host, plainHttp: true })
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 100)
    const t0 = Date.now()
    await expect(c.statBlob('app', sha256('x'), { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' })
    expect(Date.now() - t0).toBeLessThan(2000)
    await c.close()
  })
})
