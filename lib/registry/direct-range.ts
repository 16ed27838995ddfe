/**
 * DirectRangeReader: reads one byte range of a plain-HTTP resource straight into a caller's
 * buffer. The kernel copies the response body from the socket into that buffer (net.Socket's
 * `onread` mode), with no HTTP library, no per-read allocation and no copy in JavaScript: the
 * fsdaemon's cold reads receive hundreds of MiB per second this way, which through undici cost a
 * socket buffer, a parser copy and a body copy per 64 KiB, and the garbage collections for them
 * (docs/decisions/0006-direct-range-reads.md has the numbers).
 *
 * It does one thing: GET with `Range: bytes=start-end` over keep-alive HTTP/1.1 connections
 * (idle ones are pooled per origin), and it accepts exactly one answer: 206 with a Content-Range
 * of exactly the bytes asked for and a Content-Length of their number. Every other answer
 * (200, 3xx, 401, 404, 5xx, a clamped range, chunked encoding) is `{ served: false }`, and the
 * caller asks again through its full client (redirects, re-authentication, retries, error
 * mapping live there, once). Transport failures throw NAIAD_REG_UNAVAILABLE, a stall longer than
 * the idle timeout NAIAD_REG_TIMEOUT, an abort the signal's reason; a kept-alive connection that
 * the server had closed is replaced once, transparently. The bytes are not verified here: the
 * caller checks what it got (the fsdaemon checks every chunk's digest).
 */
import { connect, type Socket } from 'node:net'
import { NaiadError } from '../errors/index.ts'

/**
 * The outcome of one read: the bytes are in the buffer, or the server answered otherwise. `stop`:
 * the answer says later ranges from this server will not be served directly either (a redirect,
 * a 206 in a form not taken, or no direct read possible at all), so a caller stops trying; other
 * answers (401 with an expired token, 404, 5xx) are about this request only.
 */
export type DirectRangeOutcome = { served: true } | { served: false, status: number, reason: string, stop: boolean }

export interface DirectRangeReaderOptions {
  /** Waiting for the response head, and between two reads of the body (default 30 s). */
  idleTimeoutMs?: number
  /** Idle connections kept per origin (default 16). */
  maxIdlePerOrigin?: number
}

export interface DirectRangeRequest {
  /** An http: URL (https is not read here: the caller's client does it). */
  url: URL
  /** Sent as they are (lower-case names), e.g. authorization and user-agent. */
  headers?: Readonly<Record<string, string>>
  /** Inclusive byte range; `into` must have exactly end - start + 1 bytes. */
  start: number
  end: number
  into: Buffer
  signal?: AbortSignal
  /**
   * Called as the body arrives: bytes [0, filled) of `into` hold the range's first bytes (not
   * called for an answer that is not served).
   */
  onProgress?: (filled: number) => void
}

/** Largest response head accepted. */
const MAX_HEAD = 64 * 1024
/** Body reads land in the caller's buffer while at least this much of it is left to fill. */
const MIN_DIRECT = 16 * 1024
const SCRATCH = 64 * 1024

/** What a connection is doing for the request it serves now. */
interface Exchange {
  start: number
  want: number
  into: Buffer
  /** Bytes of the body received; -1 while reading the head. */
  pos: number
  head: Buffer[]
  headBytes: number
  /** Close the connection after this answer (Connection: close, or more bytes than announced). */
  close: boolean
  /** Nothing of the response arrived yet (a dead kept-alive connection may be retried). */
  nothing: boolean
  onProgress: ((filled: number) => void) | undefined
  done: (err: Error | undefined, outcome?: DirectRangeOutcome) => void
}

interface Conn {
  socket: Socket
  origin: string
  scratch: Buffer
  ex: Exchange | undefined
  /** Requests this connection has served (0: new). */
  used: number
}

/** True for URLs this reader takes: http: only. */
export function isDirectUrl (url: URL): boolean {
  return url.protocol === 'http:'
}

export class DirectRangeReader {
  private readonly idleTimeoutMs: number
  private readonly maxIdle: number
  private readonly idle = new Map<string, Conn[]>()
  private readonly busy = new Set<Conn>()
  private closed = false
  /** Connections opened so far (tests, statistics). */
  connections = 0

  constructor (options: DirectRangeReaderOptions = {}) {
    this.idleTimeoutMs = options.idleTimeoutMs ?? 30_000
    this.maxIdle = options.maxIdlePerOrigin ?? 16
    if (!(this.idleTimeoutMs > 0) || !(this.maxIdle >= 0)) throw new NaiadError('NAIAD_INTERNAL', `direct range reader: bad options ${this.idleTimeoutMs} ms, ${this.maxIdle} idle`)
  }

  async read (req: DirectRangeRequest): Promise<DirectRangeOutcome> {
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', 'direct range reader is closed')
    if (!isDirectUrl(req.url)) throw new NaiadError('NAIAD_INTERNAL', `direct range reader: not an http URL: ${req.url.protocol}`)
    const want = req.end - req.start + 1
    if (!Number.isSafeInteger(req.start) || req.start < 0 || !Number.isSafeInteger(want) || want <= 0 || req.into.length !== want) {
      throw new NaiadError('NAIAD_INTERNAL', `direct range reader: bad range ${req.start}-${req.end} for a buffer of ${req.into.length} bytes`)
    }
    if (req.signal?.aborted === true) throw abortError(req.signal)
    const origin = req.url.host
    const lines = [`GET ${req.url.pathname}${req.url.search} HTTP/1.1`, `host: ${req.url.host}`, `range: bytes=${req.start}-${req.end}`]
    for (const [k, v] of Object.entries(req.headers ?? {})) {
      if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) throw new NaiadError('NAIAD_INTERNAL', `direct range reader: header ${JSON.stringify(k)} has a line break`)
      if (k === 'host' || k === 'range') continue
      lines.push(`${k}: ${v}`)
    }
    const head = Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1')
    // a kept-alive connection may have been closed by the server meanwhile: then once more on a
    // new one (only if nothing of the answer arrived, so nothing is asked twice that was served)
    for (let attempt = 0; ; attempt++) {
      const conn = attempt === 0 ? this.takeIdle(origin) ?? this.open(req.url) : this.open(req.url)
      try {
        return await this.exchange(conn, head, req.start, want, req.into, req.signal, req.onProgress)
      } catch (err) {
        if (err instanceof StaleConnection && attempt === 0) continue
        if (err instanceof StaleConnection) throw err.cause
        throw err
      }
    }
  }

  private takeIdle (origin: string): Conn | undefined {
    const list = this.idle.get(origin)
    for (let c = list?.pop(); c !== undefined; c = list?.pop()) {
      if (!c.socket.destroyed) {
        c.socket.ref()
        return c
      }
    }
    return undefined
  }

  private open (url: URL): Conn {
    const port = url.port !== '' ? Number(url.port) : 80
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname
    const conn: Conn = { socket: undefined as unknown as Socket, origin: url.host, scratch: Buffer.allocUnsafe(SCRATCH), ex: undefined, used: 0 }
    const next = (): Buffer => {
      const ex = conn.ex
      if (ex === undefined || ex.pos < 0 || ex.want - ex.pos < MIN_DIRECT) return conn.scratch
      return ex.into.subarray(ex.pos, ex.want)
    }
    conn.socket = connect({ host, port, noDelay: true, onread: { buffer: next, callback: (n: number, buf: Uint8Array) => this.onData(conn, n, buf) } })
    this.connections++
    conn.socket.setTimeout(this.idleTimeoutMs)
    const gone = (err?: Error): void => {
      this.dropIdle(conn)
      const ex = conn.ex
      if (ex === undefined) return
      conn.ex = undefined
      const cause = new NaiadError('NAIAD_REG_UNAVAILABLE', ex.pos < 0
        ? `connection to ${conn.origin} closed before the response${err !== undefined ? `: ${err.message}` : ''}`
        : `the body ended after ${ex.pos} of ${ex.want} bytes${err !== undefined ? `: ${err.message}` : ''}`, err !== undefined ? { cause: err } : {})
      ex.done(ex.nothing && conn.used > 0 ? new StaleConnection(cause) : cause)
    }
    conn.socket.on('error', (err) => { gone(err) })
    conn.socket.on('end', () => { conn.socket.destroy(); gone() })
    conn.socket.on('close', () => { gone() })
    conn.socket.on('timeout', () => {
      const ex = conn.ex
      conn.socket.destroy()
      this.dropIdle(conn)
      if (ex === undefined) return
      conn.ex = undefined
      ex.done(new NaiadError('NAIAD_REG_TIMEOUT', `no data from ${conn.origin} for ${this.idleTimeoutMs} ms (${ex.pos < 0 ? 'waiting for the response' : `${ex.pos} of ${ex.want} bytes received`})`))
    })
    return conn
  }

  private async exchange (conn: Conn, head: Buffer, start: number, want: number, into: Buffer, signal: AbortSignal | undefined, onProgress: ((filled: number) => void) | undefined): Promise<DirectRangeOutcome> {
    this.busy.add(conn)
    return await new Promise<DirectRangeOutcome>((resolve, reject) => {
      const onAbort = (): void => {
        if (conn.ex === undefined) return
        conn.ex = undefined
        conn.socket.destroy()
        finish()
        reject(abortError(signal as AbortSignal))
      }
      const finish = (): void => {
        signal?.removeEventListener('abort', onAbort)
        this.busy.delete(conn)
      }
      conn.ex = {
        start,
        want,
        into,
        pos: -1,
        head: [],
        headBytes: 0,
        close: false,
        nothing: true,
        onProgress,
        done: (err, outcome) => {
          finish()
          if (err !== undefined) reject(err)
          else resolve(outcome as DirectRangeOutcome)
        }
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      conn.socket.write(head)
    })
  }

  private onData (conn: Conn, n: number, buf: Uint8Array): boolean {
    const ex = conn.ex
    if (ex === undefined) {
      // bytes nobody asked for (on an idle connection): the connection cannot be trusted
      conn.socket.destroy()
      this.dropIdle(conn)
      return false
    }
    ex.nothing = false
    if (ex.pos >= 0) {
      if (buf === conn.scratch) {
        // bytes beyond the announced length: the answer is complete, the connection untrusted
        if (n > ex.want - ex.pos) { ex.close = true; n = ex.want - ex.pos }
        conn.scratch.copy(ex.into, ex.pos, 0, n)
      }
      ex.pos += n
      ex.onProgress?.(ex.pos)
      if (ex.pos === ex.want) this.complete(conn, ex)
      return true
    }
    // the head (the first read lands in scratch; the body after it in `into`)
    ex.head.push(Buffer.from(buf.subarray(0, n)))
    ex.headBytes += n
    const all = ex.head.length === 1 ? ex.head[0]! : Buffer.concat(ex.head)
    const endOfHead = all.indexOf('\r\n\r\n')
    if (endOfHead < 0 || endOfHead > MAX_HEAD) {
      if (ex.headBytes > MAX_HEAD) return this.fail(conn, ex, `a response head of more than ${MAX_HEAD} bytes`)
      ex.head = [all]
      return true
    }
    const parsed = parseHead(all.subarray(0, endOfHead).toString('latin1'))
    const rest = all.subarray(endOfHead + 4)
    if (typeof parsed === 'string') return this.fail(conn, ex, parsed)
    ex.head = []
    const check = checkRangeHead(parsed, ex.start, ex.want)
    if (check !== undefined) {
      // not ours to handle: the caller asks again through its client; the body is not read
      conn.ex = undefined
      conn.socket.destroy()
      ex.done(undefined, { served: false, status: parsed.status, reason: check, stop: parsed.status === 206 || (parsed.status >= 300 && parsed.status < 400) })
      return false
    }
    ex.close = parsed.headers.get('connection')?.toLowerCase().split(',').some(t => t.trim() === 'close') === true
    if (rest.length > ex.want) ex.close = true // (as above: more than announced)
    ex.pos = rest.copy(ex.into, 0, 0, Math.min(rest.length, ex.want))
    if (ex.pos > 0) ex.onProgress?.(ex.pos)
    if (ex.pos === ex.want) this.complete(conn, ex)
    return true
  }

  private complete (conn: Conn, ex: Exchange): void {
    conn.ex = undefined
    conn.used++
    if (ex.close || this.closed) conn.socket.destroy()
    else this.keep(conn)
    ex.done(undefined, { served: true })
  }

  private fail (conn: Conn, ex: Exchange, why: string): false {
    conn.ex = undefined
    conn.socket.destroy()
    this.dropIdle(conn)
    ex.done(new NaiadError('NAIAD_REG_PROTOCOL', `${conn.origin}: ${why}`))
    return false
  }

  private keep (conn: Conn): void {
    let list = this.idle.get(conn.origin)
    if (list === undefined) { list = []; this.idle.set(conn.origin, list) }
    if (list.length >= this.maxIdle) { conn.socket.destroy(); return }
    // an idle connection does not keep the process alive
    conn.socket.unref()
    list.push(conn)
  }

  private dropIdle (conn: Conn): void {
    const list = this.idle.get(conn.origin)
    const i = list?.indexOf(conn) ?? -1
    if (i >= 0) list!.splice(i, 1)
  }

  /** Idle connections now (tests). */
  get idleConnections (): number {
    let n = 0
    for (const l of this.idle.values()) n += l.length
    return n
  }

  /** Closes every connection; reads in flight fail with NAIAD_REG_UNAVAILABLE. Safe twice. */
  close (): void {
    this.closed = true
    for (const l of this.idle.values()) for (const c of l) c.socket.destroy()
    this.idle.clear()
    for (const c of this.busy) c.socket.destroy()
  }
}

/** A kept-alive connection was dead before it answered: try a new one. */
class StaleConnection extends Error {
  constructor (override readonly cause: Error) { super(cause.message) }
}

interface Head { status: number, headers: Map<string, string> }

/** The status and headers (lower-case names; a repeated header keeps its first value), or why not. */
export function parseHead (text: string): Head | string {
  const lines = text.split('\r\n')
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? '')
  if (m === null) return `not an HTTP/1.1 status line: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`
  const headers = new Map<string, string>()
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!
    const colon = line.indexOf(':')
    if (colon <= 0) return `a malformed header line: ${JSON.stringify(line.slice(0, 80))}`
    const name = line.slice(0, colon).trim().toLowerCase()
    if (!headers.has(name)) headers.set(name, line.slice(colon + 1).trim())
  }
  return { status: Number(m[1]), headers }
}

/** Undefined when the head announces exactly the bytes asked for, else why not. */
function checkRangeHead (h: Head, start: number, want: number): string | undefined {
  if (h.status !== 206) return `status ${h.status}`
  const cr = /^bytes (\d+)-(\d+)\/(?:\d+|\*)$/.exec(h.headers.get('content-range') ?? '')
  if (cr === null || Number(cr[1]) !== start || Number(cr[2]) !== start + want - 1) return `content-range ${h.headers.get('content-range') ?? '(none)'} for bytes ${start}-${start + want - 1}`
  if (h.headers.has('transfer-encoding')) return `transfer-encoding ${h.headers.get('transfer-encoding') ?? ''}`
  const coding = h.headers.get('content-encoding')
  if (coding !== undefined && coding.toLowerCase() !== 'identity') return `content-encoding ${coding}`
  const length = h.headers.get('content-length')
  if (length === undefined || !/^\d+$/.test(length) || Number(length) !== want) return `content-length ${length ?? '(none)'} for ${want} bytes`
  return undefined
}

function abortError (signal: AbortSignal): Error {
  const r: unknown = signal.reason
  return r instanceof Error ? r : new DOMException('This operation was aborted', 'AbortError')
}
