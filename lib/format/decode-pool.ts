/**
 * ChunkDecodePool: decompresses and verifies data-blob chunks in worker threads, so a process
 * serving reads (the fsdaemon) keeps its main thread for I/O. Same contract as
 * `BlobReader.decodeChunk`: a chunk's bytes are returned only if they decompress to exactly its
 * uncompressed size and match its digest; otherwise that chunk's entry is the error
 * (NAIAD_FMT_TRUNCATED, NAIAD_FMT_DECOMPRESS or NAIAD_FMT_CHUNK_DIGEST) that decodeChunk throws.
 *
 * One job = the chunks of one fetched range: the range's bytes go to a worker (transferred, not
 * copied, when the caller says it owns them), the worker decodes every chunk into one new buffer
 * (packed in order) and transfers it back; the caller gets one subarray per chunk. zstd and raw
 * chunks are decoded in the workers; lz4_block chunks (and everything, if workers cannot start)
 * on the calling thread. Workers are unref'd while idle: they never keep the process alive.
 */
import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'
import { NaiadError } from '../errors/index.ts'
import { BlobReader } from './blob.ts'
import type { ChunkRef } from './types.ts'

/** The worker (CommonJS, evaluated: no file to locate from dist/ or from source). */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const { writeSync } = require('node:fs')
const zstd = require(workerData.zstdPath)
const { blake3 } = require(workerData.blakePath)
const dctx = new zstd.DCtx()
// with a file to write to, chunks are decoded into this buffer, reused for the thread's life
let scratch = Buffer.alloc(0)
const message = (err) => String(err && err.message ? err.message : err)
function writeOne (m, i, bytes, results, written) {
  try {
    let done = 0
    while (done < bytes.length) done += writeSync(m.fd, bytes, done, bytes.length - done, m.chunks[i].f + done)
    written[i] = true
    parentPort.postMessage({ id: m.id, progress: i })
  } catch (err) {
    results[i] = { unwritten: message(err) }
  }
}
parentPort.on('message', (m) => {
  const src = Buffer.from(m.buf, m.off, m.len)
  let out
  if (m.fd === undefined) {
    out = Buffer.allocUnsafeSlow(m.total)
  } else {
    if (scratch.length < m.total) scratch = Buffer.allocUnsafeSlow(Math.max(m.total, 2 * scratch.length))
    out = scratch
  }
  const results = []
  const written = m.chunks.map(() => false)
  let pos = 0
  for (const c of m.chunks) {
    const dst = out.subarray(pos, pos + c.u)
    pos += c.u
    const raw = src.subarray(c.o, c.o + c.c)
    // with a file: write each verified chunk at once and say so, so its readers go on while
    // the next chunks of the range are decoded
    if (m.fd !== undefined && results.length > 0 && results[results.length - 1] === null) writeOne(m, results.length - 1, out.subarray(pos - c.u - m.chunks[results.length - 1].u, pos - c.u), results, written)
    try {
      if (c.z) {
        let n
        try {
          n = dctx.decompress(dst, raw)
        } catch (err) {
          results.push({ code: 'NAIAD_FMT_DECOMPRESS', message: 'zstd: ' + message(err) })
          continue
        }
        if (n !== c.u) { results.push({ code: 'NAIAD_FMT_DECOMPRESS', message: 'zstd: decoded ' + n + ' bytes, expected ' + c.u }); continue }
      } else {
        if (raw.length !== c.u) { results.push({ code: 'NAIAD_FMT_DECOMPRESS', message: 'raw chunk has ' + raw.length + ' bytes, expected ' + c.u }); continue }
        raw.copy(dst)
      }
      const d = c.h === 'blake3' ? blake3(dst) : createHash('sha256').update(dst).digest()
      if (!d.equals(c.d)) { results.push({ code: 'NAIAD_FMT_CHUNK_DIGEST' }); continue }
      results.push(null)
    } catch (err) {
      results.push({ code: 'NAIAD_FMT_DECOMPRESS', message: message(err) })
    }
  }
  if (m.fd === undefined) {
    parentPort.postMessage({ id: m.id, out: out.buffer, results }, [out.buffer])
    return
  }
  const last = m.chunks.length - 1
  if (last >= 0 && results[last] === null) writeOne(m, last, out.subarray(pos - m.chunks[last].u, pos), results, written)
  // the fetched bytes go back too, for the caller to reuse; chunks that could not be written go
  // back to be served from memory
  const input = m.back ? { input: m.buf } : {}
  const inputT = m.back ? [m.buf] : []
  if (written.every((w, k) => w || results[k].code !== undefined)) {
    parentPort.postMessage({ id: m.id, results: results.map((r, k) => written[k] ? { written: true } : r), ...input }, inputT)
    return
  }
  const back = Buffer.from(out.subarray(0, pos))
  parentPort.postMessage({ id: m.id, out: back.buffer, outOff: back.byteOffset, results: results.map((r, k) => written[k] ? { written: true } : r), ...input }, back.byteOffset === 0 && back.buffer.byteLength === back.length ? [back.buffer, ...inputT] : inputT)
})
`

interface WireChunk { o: number, c: number, u: number, f: number, z: boolean, h: string, d: Uint8Array }
interface WireResult { code?: string, message?: string, written?: true, unwritten?: string }
interface Reply { id: number, progress?: number, out?: ArrayBuffer, outOff?: number, input?: ArrayBuffer, results: Array<WireResult | null> }
interface Job {
  id: number
  refs: readonly ChunkRef[]
  data: Buffer
  dataStart: number
  owned: boolean
  onInput: ((input: ArrayBuffer) => void) | undefined
  onWritten: ((index: number) => void) | undefined
  resolve: (r: DecodeResult[]) => void
}

/**
 * Per chunk: its bytes; `WRITTEN` (decodeInto wrote it to the file); an `Unwritten` (verified
 * bytes that could not be written); or the error that says why its bytes are bad.
 */
export type DecodeResult = Buffer | typeof WRITTEN | Unwritten | NaiadError

export const WRITTEN = 'written' as const

export class Unwritten {
  constructor (readonly data: Buffer, readonly cause: string) {}
}

interface PoolWorker { worker: Worker, jobs: Map<number, Job> }

export interface DecodeIntoOptions {
  owned?: boolean
  onWritten?: (index: number) => void
  onInput?: (input: ArrayBuffer) => void
}

export interface ChunkDecodePoolOptions {
  /** Worker threads (default 2; 0 decodes on the calling thread). */
  workers?: number
}

export class ChunkDecodePool {
  private readonly size: number
  private readonly workers: PoolWorker[] = []
  private nextId = 1
  private next = 0
  private broken = false
  private paths: { zstdPath: string, blakePath: string } | undefined

  constructor (options: ChunkDecodePoolOptions = {}) {
    this.size = Math.max(0, Math.floor(options.workers ?? 2))
  }

  /** Worker threads running now (they start on first use). */
  get running (): number { return this.workers.length }

  /**
   * Decodes `refs` (sorted by compressed offset, all inside `data`, whose first byte is at
   * `dataStart` in the blob). `owned`: the caller hands `data` over (its ArrayBuffer may be
   * transferred to a worker and detached here); otherwise it is copied, unless it is on a
   * SharedArrayBuffer: then the workers read it in place (the caller keeps it unchanged until
   * this settles, or accepts that chunks read while it changed fail their digest check). Every
   * chunk's entry is its bytes or its error; rejects only for a ref outside `data`
   * (NAIAD_INTERNAL, a caller bug).
   */
  async decode (refs: readonly ChunkRef[], data: Buffer, dataStart: number, owned = false): Promise<Array<Buffer | NaiadError>> {
    return await this.run(refs, data, dataStart, owned, undefined) as Array<Buffer | NaiadError>
  }

  /**
   * Like decode, but verified chunks are written to the file `fd` (each at its
   * uncompressedOffset) by the worker and come back as WRITTEN, so their bytes never cross to
   * the calling thread; bytes that could not be written come back as Unwritten. The caller must
   * keep `fd` open until this settles. Without workers (or for lz4 chunks) nothing is written:
   * the results are bytes, as from decode(). Options: `owned` as for decode; `onWritten(i)` as
   * soon as refs[i] is in the file (before the rest of the range is decoded); with `owned`,
   * `onInput` gets the ArrayBuffer that held `data` back once the worker is done with it (for
   * reuse; never when the chunks were decoded on this thread, whose results may be views of it).
   */
  async decodeInto (fd: number, refs: readonly ChunkRef[], data: Buffer, dataStart: number, opts: DecodeIntoOptions = {}): Promise<DecodeResult[]> {
    return await this.run(refs, data, dataStart, opts.owned ?? false, fd, opts)
  }

  private async run (refs: readonly ChunkRef[], data: Buffer, dataStart: number, owned: boolean, fd: number | undefined, opts: DecodeIntoOptions = {}): Promise<DecodeResult[]> {
    const onInput = opts.onInput
    for (const r of refs) {
      if (r.compressedOffset < dataStart || r.compressedOffset + r.compressedSize > dataStart + data.length) {
        throw new NaiadError('NAIAD_INTERNAL', `chunk ${r.index} (${r.compressedOffset}+${r.compressedSize}) is outside the ${data.length} bytes at ${dataStart}`)
      }
    }
    const w = refs.length > 0 && refs.every(r => !r.compressed || r.blob.compressor === 'zstd' || r.blob.compressor === 'none') ? this.pick() : undefined
    if (w === undefined) return decodeHere(refs, data, dataStart)
    return await new Promise((resolve) => {
      const job: Job = { id: this.nextId++, refs, data, dataStart, owned, onInput, onWritten: opts.onWritten, resolve }
      w.jobs.set(job.id, job)
      if (w.jobs.size === 1) w.worker.ref()
      const chunks: WireChunk[] = refs.map(r => ({
        o: r.compressedOffset - dataStart,
        c: r.compressedSize,
        u: r.uncompressedSize,
        f: r.uncompressedOffset,
        z: r.compressed && r.blob.compressor === 'zstd',
        h: r.blob.digester,
        d: new Uint8Array(r.digest) // a copy: the digest is a view into the bootstrap, which postMessage would clone whole
      }))
      const total = refs.reduce((n, r) => n + r.uncompressedSize, 0)
      // shared memory is shared (not copied, not transferred); an owned buffer's ArrayBuffer is
      // transferred; anything else is copied first
      const shared = data.buffer instanceof SharedArrayBuffer
      const give = owned && !shared
      const buf = shared || give ? data.buffer : data.buffer.slice(data.byteOffset, data.byteOffset + data.length)
      const off = shared || give ? data.byteOffset : 0
      const back = give && onInput !== undefined
      w.worker.postMessage({ id: job.id, buf, off, len: data.length, total, chunks, back, ...(fd !== undefined ? { fd } : {}) }, shared ? [] : [buf as ArrayBuffer])
    })
  }

  private pick (): PoolWorker | undefined {
    if (this.size === 0) return undefined
    if (this.workers.length < this.size && !this.broken) {
      try {
        this.spawn()
      } catch {
        this.broken = true
      }
    }
    if (this.workers.length === 0) return undefined
    // the least busy worker, round robin among equals
    let best: PoolWorker | undefined
    for (let k = 0; k < this.workers.length; k++) {
      const w = this.workers[(this.next + k) % this.workers.length]!
      if (best === undefined || w.jobs.size < best.jobs.size) best = w
    }
    this.next++
    return best
  }

  private spawn (): void {
    this.paths ??= (() => {
      const req = createRequire(import.meta.url)
      return { zstdPath: req.resolve('zstd-napi/binding.js'), blakePath: req.resolve('@napi-rs/blake-hash') }
    })()
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: this.paths })
    const w: PoolWorker = { worker, jobs: new Map() }
    worker.unref()
    worker.on('message', (m: Reply) => {
      const job = w.jobs.get(m.id)
      if (job === undefined) return
      if (m.progress !== undefined) { job.onWritten?.(m.progress); return }
      w.jobs.delete(m.id)
      if (w.jobs.size === 0) worker.unref()
      if (m.input !== undefined) job.onInput?.(m.input)
      const out = m.out !== undefined ? Buffer.from(m.out, m.outOff ?? 0) : Buffer.alloc(0)
      const res: DecodeResult[] = []
      let pos = 0
      job.refs.forEach((r, i) => {
        const e = m.results[i]
        const bytes = (): Buffer => out.subarray(pos, pos + r.uncompressedSize)
        if (e === null || e === undefined) res.push(bytes())
        else if (e.written === true) res.push(WRITTEN)
        else if (e.unwritten !== undefined) res.push(new Unwritten(bytes(), e.unwritten))
        else res.push(wireError(r, e))
        pos += r.uncompressedSize
      })
      job.resolve(res)
    })
    let gone = false
    const died = (err?: unknown): void => {
      if (gone) return
      gone = true
      const i = this.workers.indexOf(w)
      if (i >= 0) this.workers.splice(i, 1)
      this.broken = true // do not respawn forever
      // the data of transferred jobs is gone with the worker: report them as failed decodes (the
      // cache fetches such chunks again); copied jobs are decoded here
      for (const job of w.jobs.values()) {
        if (job.data.buffer.byteLength === 0) {
          job.resolve(job.refs.map(r => new NaiadError('NAIAD_FMT_DECOMPRESS', `chunk ${r.index} of blob ${r.blob.blobId}: the decoder thread died (${err instanceof Error ? err.message : 'exit'})`)))
        } else {
          job.resolve(decodeHere(job.refs, job.data, job.dataStart))
        }
      }
      w.jobs.clear()
    }
    worker.on('error', died)
    worker.on('exit', () => { died() })
    this.workers.push(w)
  }

  /** Stops the workers (jobs in flight are decoded on the calling thread or fail). Safe twice. */
  async close (): Promise<void> {
    this.broken = true
    await Promise.all(this.workers.map(async w => await w.worker.terminate()))
  }
}

function wireError (r: ChunkRef, e: WireResult): NaiadError {
  if (e.code === 'NAIAD_FMT_CHUNK_DIGEST') {
    return new NaiadError('NAIAD_FMT_CHUNK_DIGEST', `chunk ${r.index} of blob ${r.blob.blobId} does not match its ${r.blob.digester} digest ${r.digest.toString('hex')}`)
  }
  return new NaiadError('NAIAD_FMT_DECOMPRESS', `chunk ${r.index} of blob ${r.blob.blobId}: ${e.message ?? 'cannot decompress'}`)
}

function decodeHere (refs: readonly ChunkRef[], data: Buffer, dataStart: number): Array<Buffer | NaiadError> {
  return refs.map(r => {
    try {
      return BlobReader.decodeChunk(r, data.subarray(r.compressedOffset - dataStart, r.compressedOffset - dataStart + r.compressedSize))
    } catch (err) {
      if (err instanceof NaiadError) return err
      return new NaiadError('NAIAD_FMT_DECOMPRESS', `chunk ${r.index} of blob ${r.blob.blobId}: ${String(err)}`, { cause: err })
    }
  })
}
