/**
 * Fixtures for the byte-plane tests (cache, fetch, prefetch): real Nydus v6 data blobs written by
 * lib/format's BlobWriter, a node:http blob server with Range support that counts requests and
 * bytes and can be made slow, failing, unhealthy or corrupt, and a logger that records lines.
 */
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rename, rm } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { BlobWriter } from '../../../lib/format/blob.ts'
import type { BlobInfo, ChunkRef, Compressor } from '../../../lib/format/types.ts'
import { createLogger, type Logger } from '../../../lib/log/index.ts'

export interface TestBlob {
  /** Directory holding the blob file, named by its id. */
  dir: string
  path: string
  blob: BlobInfo
  /** Chunk refs in file order (one file of `chunks` chunks; every chunk distinct). */
  refs: ChunkRef[]
  /** The uncompressed file content. */
  content: Buffer
  /** The blob file. */
  bytes: Buffer
  /** Uncompressed bytes of chunk i. */
  chunk: (i: number) => Buffer
  cleanup: () => Promise<void>
}

function prng (seed: number): () => number {
  let s = seed >>> 0 || 1
  return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s }
}

/** Half random, half text: every chunk differs and compresses a little. */
function content (n: number, chunkSize: number, seed: number): Buffer {
  const r = prng(seed)
  const out = Buffer.alloc(n)
  const text = Buffer.from('the quick brown fox jumps over the lazy dog; ')
  for (let off = 0; off < n; off += chunkSize) {
    const end = Math.min(n, off + chunkSize)
    const half = off + Math.floor((end - off) / 2)
    for (let i = off; i < half; i++) out[i] = r() & 0xff
    for (let i = half; i < end; i++) out[i] = text[(i - half) % text.length] as number
  }
  return out
}

export async function buildBlob (opts: { chunks: number, chunkSize?: number, compressor?: Compressor, seed?: number, lastChunkBytes?: number }): Promise<TestBlob> {
  const chunkSize = opts.chunkSize ?? 4096
  const dir = await mkdtemp(join(tmpdir(), 'naiad-fsd-blob-'))
  const tmpPath = join(dir, 'blob.tmp')
  const w = new BlobWriter({ path: tmpPath, chunkSize, compressor: opts.compressor ?? 'zstd', digester: 'blake3', dedup: new Map(), workers: false })
  const size = (opts.chunks - 1) * chunkSize + (opts.lastChunkBytes ?? chunkSize)
  const data = content(size, chunkSize, opts.seed ?? 7)
  async function * one (): AsyncGenerator<Buffer> { yield data }
  const refs = await w.addFile(one(), data.length)
  const { blob } = await w.finish()
  const path = join(dir, blob.blobId)
  await rename(tmpPath, path)
  const bytes = await readFile(path)
  if (createHash('sha256').update(bytes).digest('hex') !== blob.blobId) throw new Error('blob id mismatch')
  if (blob.chunkCount !== opts.chunks) throw new Error(`expected ${opts.chunks} distinct chunks, got ${blob.chunkCount}`)
  return {
    dir,
    path,
    blob,
    refs,
    content: data,
    bytes,
    chunk: (i) => data.subarray(i * chunkSize, Math.min(data.length, (i + 1) * chunkSize)),
    cleanup: async () => { await rm(dir, { recursive: true, force: true }) }
  }
}

export interface SeenRequest {
  method: string
  path: string
  range?: string
  headers: http.IncomingHttpHeaders
  /** Body bytes sent. */
  bytes: number
  status: number
  at: number
}

export interface BlobServer {
  url: string
  host: string
  /** Blob requests (not /healthz) so far. */
  requests: () => SeenRequest[]
  /** Response body bytes of blob requests so far. */
  bytesServed: () => number
  reset: () => void
  /** Delay before answering each blob request (ms). */
  delayMs: number
  /** Answer blob requests with this status (e.g. 503), or undefined to serve. */
  failStatus: number | undefined
  /** X-Naiad-Error-Source on failures. */
  errorSource: string | undefined
  /** /healthz answers 200 when true, 503 otherwise. */
  healthy: boolean
  healthChecks: number
  /** Flip one byte at this blob offset in every response that covers it. */
  corruptAt: number | undefined
  /** Ignore Range and send the whole blob with 200. */
  ignoreRange: boolean
  /** Cut the body off after this many bytes (then destroy the socket). */
  truncateAfter: number | undefined
  /** Called when a blob request arrives, before it is answered. */
  onRequest: ((r: SeenRequest) => void) | undefined
  stop: () => Promise<void>
}

/**
 * A registry-blob-API server over `blobs` (blob id → bytes): GET/HEAD /v2/<repo>/blobs/sha256:<id>
 * with single Range support, GET /healthz.
 */
export async function startBlobServer (blobs: Map<string, Buffer>): Promise<BlobServer> {
  let seen: SeenRequest[] = []
  let served = 0
  const state: Omit<BlobServer, 'url' | 'host' | 'requests' | 'bytesServed' | 'reset' | 'stop'> = {
    delayMs: 0,
    failStatus: undefined,
    errorSource: undefined,
    healthy: true,
    healthChecks: 0,
    corruptAt: undefined,
    ignoreRange: false,
    truncateAfter: undefined,
    onRequest: undefined
  }
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/'
    if (url === '/healthz') {
      state.healthChecks++
      res.writeHead(state.healthy ? 200 : 503, { 'content-type': 'text/plain' })
      res.end(state.healthy ? 'ok' : 'unhealthy')
      return
    }
    const entry: SeenRequest = { method: req.method ?? 'GET', path: url, headers: req.headers, bytes: 0, status: 0, at: Date.now() }
    if (typeof req.headers.range === 'string') entry.range = req.headers.range
    seen.push(entry)
    state.onRequest?.(entry)
    const answer = (): void => {
      const m = /^\/v2\/(.+)\/blobs\/sha256:([0-9a-f]{64})$/.exec(url)
      const blob = m !== null ? blobs.get(m[2] as string) : undefined
      if (state.failStatus !== undefined) {
        entry.status = state.failStatus
        res.writeHead(state.failStatus, state.errorSource !== undefined ? { 'x-naiad-error-source': state.errorSource } : {})
        res.end('failing on purpose')
        return
      }
      if (blob === undefined) {
        entry.status = 404
        res.writeHead(404, { 'content-type': 'application/json', 'x-naiad-error-source': 'origin' })
        res.end('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}')
        return
      }
      let start = 0
      let end = blob.length - 1
      let status = 200
      const r = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')
      if (r !== null && !state.ignoreRange) {
        start = Number(r[1])
        end = Math.min(Number(r[2]), blob.length - 1)
        if (start >= blob.length) {
          entry.status = 416
          res.writeHead(416, { 'content-range': `bytes */${blob.length}` })
          res.end()
          return
        }
        status = 206
      }
      let body = Buffer.from(blob.subarray(start, end + 1))
      if (state.corruptAt !== undefined && state.corruptAt >= start && state.corruptAt <= end) {
        body[state.corruptAt - start] = (body[state.corruptAt - start] as number) ^ 0xff
      }
      const headers: http.OutgoingHttpHeaders = { 'content-length': body.length, 'content-type': 'application/octet-stream' }
      if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${blob.length}`
      entry.status = status
      res.writeHead(status, headers)
      if (req.method === 'HEAD') { res.end(); return }
      if (state.truncateAfter !== undefined && state.truncateAfter < body.length) {
        body = body.subarray(0, state.truncateAfter)
        entry.bytes += body.length
        served += body.length
        res.write(body, () => { res.destroy() })
        return
      }
      entry.bytes += body.length
      served += body.length
      res.end(body)
    }
    if (state.delayMs > 0) setTimeout(answer, state.delayMs)
    else answer()
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
  const port = (server.address() as AddressInfo).port
  let stopping: Promise<void> | undefined
  const out = Object.assign(state, {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    requests: () => [...seen],
    bytesServed: () => served,
    reset: () => { seen = []; served = 0 },
    stop: async () => {
      stopping ??= new Promise<void>(resolve => { server.closeAllConnections(); server.close(() => resolve()) })
      await stopping
    }
  })
  return out
}

export interface LogLine {
  level: string
  msg: string
  [k: string]: unknown
}

/** A logger that records its JSON lines (debug and up). */
export function recordingLogger (): { logger: Logger, lines: LogLine[] } {
  const lines: LogLine[] = []
  const dest = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim() !== '') lines.push(JSON.parse(l) as LogLine)
      cb()
    }
  })
  return { logger: createLogger({ service: 'test', level: 'debug', destination: dest }), lines }
}

export async function tempDir (prefix = 'naiad-fsd-cache-'): Promise<{ dir: string, cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  return { dir, cleanup: async () => { await rm(dir, { recursive: true, force: true }) } }
}

export async function until (cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}
