/**
 * DirectRangeReader against real loopback servers: node:http for well-formed answers, raw
 * net servers for answers node:http would not send (split heads, extra bytes, cut bodies).
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { DirectRangeReader, parseHead } from '../../../lib/registry/direct-range.ts'

const execFileP = promisify(execFile)
const DATA = randomBytes(8 * 1024 * 1024 + 123)
const cleanup: Array<() => Promise<void> | void> = []
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f()
})

interface Seen { url: string, headers: IncomingMessage['headers'] }

/** An HTTP server answering Range GETs of DATA; `special(path)` may answer otherwise. */
async function httpServer (special?: (req: IncomingMessage, res: ServerResponse) => boolean): Promise<{ url: (p?: string) => URL, seen: Seen[], server: Server, sockets: () => number }> {
  const seen: Seen[] = []
  let sockets = 0
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', headers: req.headers })
    if (special?.(req, res) === true) return
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')
    if (m === null) { res.writeHead(200, { 'content-length': DATA.length }); res.end(DATA); return }
    const s = Number(m[1]); const e = Math.min(Number(m[2]), DATA.length - 1)
    res.writeHead(206, { 'content-length': e - s + 1, 'content-range': `bytes ${s}-${e}/${DATA.length}` })
    res.end(DATA.subarray(s, e + 1))
  })
  server.keepAliveTimeout = 60_000 // (idle connections stay open on the server's side)
  server.on('connection', () => { sockets++ })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  cleanup.push(async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) })
  const port = (server.address() as { port: number }).port
  return { url: (p = '/blob') => new URL(`http://127.0.0.1:${port}${p}`), seen, server, sockets: () => sockets }
}

/** A raw TCP server: `onRequest(socket, requestHead)` answers as it likes. */
async function rawServer (onRequest: (s: Socket, head: string) => void): Promise<URL> {
  const server: NetServer = createNetServer((s) => {
    let buf = ''
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1')
      const i = buf.indexOf('\r\n\r\n')
      if (i < 0) return
      const head = buf.slice(0, i)
      buf = buf.slice(i + 4)
      onRequest(s, head)
    })
    s.on('error', () => undefined)
  })
  const open = new Set<Socket>()
  server.on('connection', (s) => { open.add(s); s.on('close', () => open.delete(s)) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  cleanup.push(async () => { for (const s of open) s.destroy(); await new Promise(resolve => server.close(resolve)) })
  return new URL(`http://127.0.0.1:${(server.address() as { port: number }).port}/blob`)
}

function reader (opts: ConstructorParameters<typeof DirectRangeReader>[0] = {}): DirectRangeReader {
  const r = new DirectRangeReader(opts)
  cleanup.push(() => { r.close() })
  return r
}

describe('DirectRangeReader', () => {
  it('reads ranges exactly into the buffer, small and large, over one kept-alive connection', async () => {
    const srv = await httpServer()
    const r = reader()
    for (const [s, e] of [[0, 0], [10, 4095], [1000, 1000 + 5 * 1024 * 1024 - 1], [DATA.length - 70_000, DATA.length - 1], [0, DATA.length - 1]] as const) {
      const into = Buffer.alloc(e - s + 1, 0xee)
      expect(await r.read({ url: srv.url(), start: s, end: e, into, headers: { authorization: 'Bearer t', 'user-agent': 'naiad/test' } })).toEqual({ served: true })
      expect(into.equals(DATA.subarray(s, e + 1))).toBe(true)
    }
    // progress: bytes [0, filled) are in, rising to the whole range
    const seen: number[] = []
    const into = Buffer.alloc(3 * 1024 * 1024)
    await r.read({ url: srv.url(), start: 7, end: 7 + into.length - 1, into, onProgress: (f) => { seen.push(f); expect(into.subarray(0, f).equals(DATA.subarray(7, 7 + f))).toBe(true) } })
    expect(seen.length).toBeGreaterThan(1)
    expect(seen.every((f, i) => i === 0 || f > seen[i - 1]!)).toBe(true)
    expect(seen.at(-1)).toBe(into.length)
    expect(srv.sockets()).toBe(1)
    expect(r.connections).toBe(1)
    expect(r.idleConnections).toBe(1)
    // an idle connection does not keep a process alive
    // (the built module: the child is plain node)
    const built = new URL(import.meta.url.includes('/dist/test/') ? '../../../lib/registry/direct-range.js' : '../../../dist/lib/registry/direct-range.js', import.meta.url).pathname
    const script = `import { DirectRangeReader } from ${JSON.stringify(built)}
      const r = new DirectRangeReader(); const into = Buffer.alloc(10)
      console.log(JSON.stringify(await r.read({ url: new URL(${JSON.stringify(srv.url().href)}), start: 0, end: 9, into })), r.idleConnections)`
    const t0 = Date.now()
    const { stdout } = await execFileP(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000 })
    expect(stdout.trim()).toBe('{"served":true} 1')
    expect(Date.now() - t0).toBeLessThan(5_000)
    expect(srv.seen[0]!.headers).toMatchObject({ authorization: 'Bearer t', 'user-agent': 'naiad/test', range: 'bytes=0-0', host: srv.url().host })
  })

  it('reads concurrently over several connections', async () => {
    const srv = await httpServer()
    const r = reader()
    const parts = Array.from({ length: 8 }, (_, k) => [k * 1_000_000, k * 1_000_000 + 999_999] as const)
    const bufs = parts.map(([s, e]) => Buffer.alloc(e - s + 1))
    const out = await Promise.all(parts.map(async ([s, e], k) => await r.read({ url: srv.url(), start: s, end: e, into: bufs[k]! })))
    expect(out.every(o => o.served)).toBe(true)
    parts.forEach(([s, e], k) => { expect(bufs[k]!.equals(DATA.subarray(s, e + 1))).toBe(true) })
    expect(r.connections).toBe(8)
  })

  it('answers other than 206 with exactly the range are not served, and the reader stays usable', async () => {
    const srv = await httpServer((req, res) => {
      const p = req.url ?? ''
      if (p === '/redirect') { res.writeHead(307, { location: '/blob', 'content-length': 0 }); res.end(); return true }
      if (p === '/401') { res.writeHead(401, { 'www-authenticate': 'Bearer realm="x"', 'content-length': 2 }); res.end('no'); return true }
      if (p === '/404') { res.writeHead(404, { 'content-length': 2 }); res.end('{}'); return true }
      if (p === '/whole') { res.writeHead(200, { 'content-length': 100 }); res.end(DATA.subarray(0, 100)); return true }
      if (p === '/other-range') { res.writeHead(206, { 'content-length': 10, 'content-range': 'bytes 5-14/100' }); res.end(DATA.subarray(5, 15)); return true }
      if (p === '/clamped') { res.writeHead(206, { 'content-length': 5, 'content-range': 'bytes 0-4/5' }); res.end(DATA.subarray(0, 5)); return true }
      if (p === '/chunked') { res.writeHead(206, { 'content-range': 'bytes 0-9/100' }); res.write(DATA.subarray(0, 4)); res.end(DATA.subarray(4, 10)); return true }
      if (p === '/gzip') { res.writeHead(206, { 'content-range': 'bytes 0-9/100', 'content-length': 10, 'content-encoding': 'gzip' }); res.end(DATA.subarray(0, 10)); return true }
      return false
    })
    const r = reader()
    const cases: Array<[string, number, RegExp]> = [
      ['/redirect', 307, /status 307/], ['/401', 401, /status 401/], ['/404', 404, /status 404/], ['/whole', 200, /status 200/],
      ['/other-range', 206, /content-range bytes 5-14\/100 for bytes 0-9/], ['/clamped', 206, /content-range bytes 0-4\/5/], ['/chunked', 206, /transfer-encoding chunked/], ['/gzip', 206, /content-encoding gzip/]
    ]
    for (const [path, status, reason] of cases) {
      const out = await r.read({ url: srv.url(path), start: 0, end: 9, into: Buffer.alloc(10) })
      expect(out.served, path).toBe(false)
      expect(out).toMatchObject({ status, stop: status === 206 || status === 307 })
      if (!out.served) expect(out.reason).toMatch(reason)
    }
    const into = Buffer.alloc(10)
    expect((await r.read({ url: srv.url(), start: 3, end: 12, into })).served).toBe(true)
    expect(into.equals(DATA.subarray(3, 13))).toBe(true)
  })

  it('replaces a kept-alive connection the server closed meanwhile; honours Connection: close', async () => {
    const srv = await httpServer((req, res) => {
      if (req.url !== '/close') return false
      res.writeHead(206, { 'content-length': 4, 'content-range': 'bytes 0-3/100', connection: 'close' })
      res.end(DATA.subarray(0, 4))
      return true
    })
    const r = reader()
    const into = Buffer.alloc(100)
    expect((await r.read({ url: srv.url(), start: 0, end: 99, into })).served).toBe(true)
    expect(r.idleConnections).toBe(1)
    srv.server.closeIdleConnections()
    expect((await r.read({ url: srv.url(), start: 100, end: 199, into })).served).toBe(true)
    expect(into.equals(DATA.subarray(100, 200))).toBe(true)
    expect(r.connections).toBe(2)
    expect((await r.read({ url: srv.url('/close'), start: 0, end: 3, into: Buffer.alloc(4) })).served).toBe(true)
    await new Promise(resolve => setTimeout(resolve, 20))
    expect(r.idleConnections).toBe(0)
  })

  it('a body cut short is NAIAD_REG_UNAVAILABLE; a stall NAIAD_REG_TIMEOUT; neither leaves a connection behind', async () => {
    const url = await rawServer((s, head) => {
      const range = /range: bytes=(\d+)-(\d+)/i.exec(head)!
      const [a, b] = [Number(range[1]), Number(range[2])]
      s.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: ${b - a + 1}\r\nContent-Range: bytes ${a}-${b}/*\r\n\r\n`)
      if (head.includes('GET /cut')) { s.end(DATA.subarray(a, a + 1000)); return }
      s.write(DATA.subarray(a, a + 10)) // then nothing
    })
    const r = reader({ idleTimeoutMs: 300 })
    await expect(r.read({ url: new URL('/cut', url), start: 0, end: 99_999, into: Buffer.alloc(100_000) })).rejects.toMatchObject({ code: 'NAIAD_REG_UNAVAILABLE', message: expect.stringMatching(/body ended after 1000 of 100000 bytes/) })
    const t0 = Date.now()
    await expect(r.read({ url, start: 0, end: 99, into: Buffer.alloc(100) })).rejects.toMatchObject({ code: 'NAIAD_REG_TIMEOUT', message: expect.stringMatching(/10 of 100 bytes received/) })
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250)
    expect(r.idleConnections).toBe(0)
  })

  it('parses a head that arrives a few bytes at a time; bytes beyond the answer make the connection untrusted', async () => {
    const url = await rawServer((s, head) => {
      const range = /range: bytes=(\d+)-(\d+)/i.exec(head)!
      const [a, b] = [Number(range[1]), Number(range[2])]
      const h = Buffer.from(`HTTP/1.1 206 Partial Content\r\ncontent-range: bytes ${a}-${b}/${DATA.length}\r\nContent-Length: ${b - a + 1}\r\nX-Long: ${'y'.repeat(3000)}\r\n\r\n`)
      const parts: Buffer[] = []
      for (let i = 0; i < h.length; i += 7) parts.push(h.subarray(i, i + 7))
      const extra = head.includes('GET /extra') ? Buffer.from('garbage') : Buffer.alloc(0)
      const send = (k: number): void => {
        if (k < parts.length) { s.write(parts[k]!); setImmediate(() => { send(k + 1) }); return }
        s.write(Buffer.concat([DATA.subarray(a, b + 1), extra]))
      }
      send(0)
    })
    const r = reader()
    const into = Buffer.alloc(300_000)
    expect((await r.read({ url, start: 5, end: 300_004, into })).served).toBe(true)
    expect(into.equals(DATA.subarray(5, 300_005))).toBe(true)
    expect(r.idleConnections).toBe(1)
    const small = Buffer.alloc(10)
    expect((await r.read({ url: new URL('/extra', url), start: 0, end: 9, into: small })).served).toBe(true)
    expect(small.equals(DATA.subarray(0, 10))).toBe(true)
    await new Promise(resolve => setTimeout(resolve, 50))
    expect(r.idleConnections).toBe(0)
  })

  it('refuses malformed heads and over-long ones with NAIAD_REG_PROTOCOL', async () => {
    const url = await rawServer((s, head) => {
      if (head.includes('GET /bad')) { s.write('SPDY/9 nonsense\r\n\r\n'); return }
      s.write(`HTTP/1.1 206 OK\r\nX: ${'z'.repeat(70_000)}\r\n\r\n`)
    })
    const r = reader()
    await expect(r.read({ url: new URL('/bad', url), start: 0, end: 9, into: Buffer.alloc(10) })).rejects.toMatchObject({ code: 'NAIAD_REG_PROTOCOL', message: expect.stringMatching(/not an HTTP\/1.1 status line/) })
    await expect(r.read({ url, start: 0, end: 9, into: Buffer.alloc(10) })).rejects.toMatchObject({ code: 'NAIAD_REG_PROTOCOL', message: expect.stringMatching(/response head of more than/) })
    expect(parseHead('HTTP/1.1 206 Partial Content\r\nA: 1\r\na: 2\r\nB:x')).toEqual({ status: 206, headers: new Map([['a', '1'], ['b', 'x']]) })
    expect(parseHead('HTTP/1.1 200 OK\r\nno colon here')).toMatch(/malformed header line/)
  })

  it('aborts: before sending (the reason), and in the middle of a body (connection closed)', async () => {
    const url = await rawServer((s) => {
      s.write(`HTTP/1.1 206 OK\r\nContent-Length: 1000\r\nContent-Range: bytes 0-999/1000\r\n\r\n`)
      s.write(DATA.subarray(0, 100))
    })
    const r = reader()
    const pre = new AbortController()
    pre.abort(new Error('not wanted'))
    await expect(r.read({ url, start: 0, end: 999, into: Buffer.alloc(1000), signal: pre.signal })).rejects.toThrow('not wanted')
    const ac = new AbortController()
    const p = r.read({ url, start: 0, end: 999, into: Buffer.alloc(1000), signal: ac.signal })
    setTimeout(() => { ac.abort() }, 50)
    await expect(p).rejects.toMatchObject({ name: 'AbortError' })
    expect(r.idleConnections).toBe(0)
  })

  it('checks its arguments; close() fails reads in flight and later ones, and is safe twice', async () => {
    const url = await rawServer(() => undefined) // never answers
    const r = reader()
    await expect(r.read({ url: new URL('https://127.0.0.1/x'), start: 0, end: 1, into: Buffer.alloc(2) })).rejects.toMatchObject({ code: 'NAIAD_INTERNAL' })
    await expect(r.read({ url, start: 0, end: 9, into: Buffer.alloc(9) })).rejects.toMatchObject({ code: 'NAIAD_INTERNAL' })
    await expect(r.read({ url, start: 0, end: 9, into: Buffer.alloc(10), headers: { 'x-evil': 'a\r\nInjected: 1' } })).rejects.toMatchObject({ code: 'NAIAD_INTERNAL' })
    const p = r.read({ url, start: 0, end: 9, into: Buffer.alloc(10) })
    await new Promise(resolve => setTimeout(resolve, 50))
    r.close()
    r.close()
    await expect(p).rejects.toMatchObject({ code: 'NAIAD_REG_UNAVAILABLE' })
    await expect(r.read({ url, start: 0, end: 9, into: Buffer.alloc(10) })).rejects.toMatchObject({ code: 'NAIAD_CLOSED' })
  })

  it('a refused connection is NAIAD_REG_UNAVAILABLE', async () => {
    const srv = await httpServer()
    const url = srv.url()
    srv.server.closeAllConnections()
    await new Promise(resolve => srv.server.close(resolve))
    await expect(reader().read({ url, start: 0, end: 9, into: Buffer.alloc(10) })).rejects.toMatchObject({ code: 'NAIAD_REG_UNAVAILABLE', message: expect.stringMatching(/ECONNREFUSED/) })
  })
})
