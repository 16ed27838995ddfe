/**
 * BlobCache: the on-disk chunk cache of one data blob, shared by every mount of that blob.
 *
 *   <dir>/<blobId>.blob.data   sparse file of the blob's uncompressed size; each chunk's bytes at
 *                              its uncompressedOffset (exactly the EROFS device content, as in
 *                              nydusd's cache file)
 *   <dir>/<blobId>.chunk_map   header + 1 ready bit per chunk (chunk-map.ts)
 *
 * - Reads of ready chunks are preads of just the bytes asked for.
 * - A missing chunk is fetched once however many readers want it (single-flight); missing chunks
 *   wanted together are merged into Range requests (merge.ts).
 * - Every fetched chunk is decompressed and checked against its digest (in ChunkDecodePool worker
 *   threads, the same checks as BlobReader.decodeChunk)
 *   before it is written or served. Bytes that fail are never served: the chunk is fetched again
 *   with the source that served them excluded, `digestFailures` counts it and a warning names the
 *   blob, chunk and source. When no source serves good bytes: NAIAD_FS_CHUNK_CORRUPT.
 * - A chunk is ready in memory once written. The persisted bitmap only claims durable chunks:
 *   flush = snapshot the bits → fdatasync(data) → write the bitmap → fdatasync(bitmap), run
 *   `flushIntervalMs` after the first unflushed change and on close.
 * - A fetch started by prefetch that fails does not fail the on-demand reads that joined it: they
 *   fetch again on their own (nydus #468: prefetch must never poison on-demand reads).
 * - A chunk that cannot be written (disk full) is still served from memory, just not cached.
 *
 * Fetches run on the cache's own signal, not the reader's: a reader that gives up (its signal
 * aborts) stops waiting, while the fetch goes on for the others and fills the cache. close()
 * aborts fetches in flight.
 */
import { setMaxListeners } from 'node:events'
import { constants, readSync } from 'node:fs'
import { mkdir, open, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { NaiadError, ioError, isNaiadError, throwIfAborted } from '../../lib/errors/index.ts'
import { ChunkDecodePool, Unwritten, WRITTEN } from '../../lib/format/decode-pool.ts'
import { type RangeBufferPool, sharedRangeBufferPool } from './buffer-pool.ts'
import type { BlobInfo, ChunkRef } from '../../lib/format/types.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { BlobCacheStats, ChunkFetcher, ChunkReader, FetchOptions, FetchPriority, FetchResult } from '../types.ts'
import { abortReason, checkBlobId, describeError, isOwnedBuffer, raceSignal } from '../fetch/util.ts'
import { CHUNK_MAP_HEADER_SIZE, bitmapBytes, chunkMapSize, clearBit, decodeChunkMap, encodeChunkMapHeader, popcount, setBit, testBit } from './chunk-map.ts'
import { planRequests, type RangeRequest } from './merge.ts'
import { preadFully } from '../../lib/io/index.ts'

export const DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024

export interface BlobCacheDeps {
  logger?: Logger
  /** Decompresses and verifies fetched chunks (default: one worker pool shared by the process). */
  decoder?: ChunkDecodePool
  /** Reusable buffers for fetched ranges (default: one pool shared by the process). */
  buffers?: RangeBufferPool
}

let sharedDecoder: ChunkDecodePool | undefined

/** The process-wide decoder: two worker threads, started on the first fetch. */
export function sharedChunkDecoder (): ChunkDecodePool {
  sharedDecoder ??= new ChunkDecodePool({ workers: 2 })
  return sharedDecoder
}

export interface BlobCacheOptions {
  /** The cache directory (created if missing). */
  dir: string
  blob: BlobInfo
  /** Largest merged Range request (default 1 MiB; one chunk larger than this goes alone). */
  maxRequestBytes?: number
  /** Largest gap between two chunks merged into one request (default maxRequestBytes / 128). */
  maxGapBytes?: number
  /** Delay between the first unflushed change and the flush of the bitmap (default 1000 ms). */
  flushIntervalMs?: number
}

/** BlobCacheStats plus counters the control API may show. */
export interface BlobCacheDetailStats extends BlobCacheStats {
  /** Range requests made. */
  requests: number
  /** Chunks fetched and verified but not cached because the write failed. */
  writeErrors: number
  /** Bitmap flushes done. */
  flushes: number
  /** Chunks being fetched now. */
  inflightChunks: number
  /** Chunks that failed verification, by the source that served them. */
  badBytesFrom: Record<string, number>
}

interface Inflight {
  /** The chunk's bytes, or undefined once it is ready in the cache file. */
  promise: Promise<Buffer | undefined>
  priority: FetchPriority
}

interface Deferred {
  promise: Promise<Buffer | undefined>
  resolve: (b: Buffer | undefined) => void
  reject: (e: Error) => void
}

function deferred (): Deferred {
  let resolve!: (b: Buffer | undefined) => void
  let reject!: (e: Error) => void
  const promise = new Promise<Buffer | undefined>((res, rej) => { resolve = res; reject = rej })
  promise.catch(() => { /* waiters handle it; nobody may be waiting */ })
  return { promise, resolve, reject }
}

type State = 'new' | 'opening' | 'open' | 'closing' | 'closed'

export class BlobCache implements ChunkReader {
  readonly blob: BlobInfo
  readonly dataPath: string
  readonly mapPath: string
  private readonly dir: string
  private readonly log: Logger
  private readonly decoder: ChunkDecodePool
  private readonly alloc: (size: number) => Buffer
  private readonly recycle: (ab: ArrayBufferLike) => void
  private readonly maxRequestBytes: number
  private readonly maxGapBytes: number
  private readonly flushIntervalMs: number
  private state: State = 'new'
  private opening: Promise<void> | undefined
  private closing: Promise<void> | undefined
  private dataFh: FileHandle | undefined
  private mapFh: FileHandle | undefined
  private ready: Uint8Array
  private persisted: Uint8Array
  private readyCount = 0
  private dirty = false
  private flushTimer: NodeJS.Timeout | undefined
  private flushChain: Promise<void> = Promise.resolve()
  private readonly inflight = new Map<number, Inflight>()
  private readonly running = new Set<Promise<void>>()
  private readonly ctl = new AbortController()
  private readonly bytesFetched: Record<string, number> = {}
  private readonly badBytesFrom: Record<string, number> = {}
  private readonly counters = { cacheHits: 0, chunksVerified: 0, digestFailures: 0, requests: 0, writeErrors: 0, flushes: 0 }

  constructor (deps: BlobCacheDeps, options: BlobCacheOptions) {
    const blob = options.blob
    checkBlobId(blob.blobId)
    if (!Number.isSafeInteger(blob.chunkCount) || blob.chunkCount < 0 || !Number.isSafeInteger(blob.uncompressedSize) || blob.uncompressedSize < 0) {
      throw new NaiadError('NAIAD_FMT_CORRUPT', `blob ${blob.blobId}: invalid chunk count ${blob.chunkCount} or size ${blob.uncompressedSize}`)
    }
    this.blob = blob
    this.dir = options.dir
    this.dataPath = join(options.dir, `${blob.blobId}.blob.data`)
    this.mapPath = join(options.dir, `${blob.blobId}.chunk_map`)
    this.log = (deps.logger ?? nullLogger()).child({ component: 'fsdaemon.cache', blobId: blob.blobId })
    this.decoder = deps.decoder ?? sharedChunkDecoder()
    const buffers = deps.buffers ?? sharedRangeBufferPool()
    // merged requests are at most maxRequestBytes: all share that capacity
    this.alloc = (size) => buffers.take(size, Math.max(size, this.maxRequestBytes))
    this.recycle = (ab) => { buffers.give(ab) }
    this.maxRequestBytes = options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES
    this.maxGapBytes = options.maxGapBytes ?? Math.floor(this.maxRequestBytes / 128)
    this.flushIntervalMs = options.flushIntervalMs ?? 1000
    if (!(this.maxRequestBytes > 0) || !(this.maxGapBytes >= 0) || !(this.flushIntervalMs >= 0)) {
      throw new NaiadError('NAIAD_CFG_INVALID', `blob cache: maxRequestBytes must be positive, maxGapBytes and flushIntervalMs not negative (got ${this.maxRequestBytes}, ${this.maxGapBytes}, ${this.flushIntervalMs})`)
    }
    // shared by every request in flight
    setMaxListeners(0, this.ctl.signal)
    this.ready = sharedBits(bitmapBytes(blob.chunkCount))
    this.persisted = new Uint8Array(this.ready.length)
  }

  // ------------------------------------------------------------------------------------------
  // lifecycle

  /**
   * Opens (or creates) the cache files and loads the persisted bitmap. A bitmap that does not
   * belong to this blob (size, magic, version, chunk count, blob size, blob id) or a data file of
   * the wrong size is untrusted: both are reset and the cache starts empty. Idempotent.
   */
  async open (): Promise<void> {
    if (this.state === 'closing' || this.state === 'closed') throw this.closedError()
    this.opening ??= this.doOpen()
    await this.opening
  }

  private async doOpen (): Promise<void> {
    this.state = 'opening'
    try {
      await mkdir(this.dir, { recursive: true })
    } catch (err) {
      throw ioError('create cache dir', this.dir, err)
    }
    const flags = constants.O_RDWR | constants.O_CREAT
    try {
      this.dataFh = await open(this.dataPath, flags, 0o600)
    } catch (err) {
      throw ioError('open cache file', this.dataPath, err)
    }
    try {
      this.mapFh = await open(this.mapPath, flags, 0o600)
      const [dst, mst] = await Promise.all([this.dataFh.stat(), this.mapFh.stat()])
      const want = chunkMapSize(this.blob.chunkCount)
      let bits: Uint8Array | undefined
      let reason: string | undefined
      if (mst.size === 0 && dst.size === 0) {
        reason = undefined // a new cache
      } else if (mst.size !== want) {
        reason = `chunk map is ${mst.size} bytes, expected ${want}`
      } else {
        const buf = Buffer.alloc(want)
        await readAll(this.mapFh, buf, 0)
        const decoded = decodeChunkMap(buf, this.blob)
        if ('untrusted' in decoded) reason = `chunk map: ${decoded.untrusted}`
        else if (dst.size !== this.blob.uncompressedSize) reason = `data file is ${dst.size} bytes, expected ${this.blob.uncompressedSize}`
        else bits = decoded.bits
      }
      if (bits === undefined) {
        if (reason !== undefined) this.log.warn({ reason, path: this.mapPath }, 'chunk map untrusted, starting the blob cache empty')
        // drop whatever data was there, then make the sparse file of the blob's size
        await this.dataFh.truncate(0)
        await this.dataFh.truncate(this.blob.uncompressedSize)
        await this.dataFh.datasync()
        bits = new Uint8Array(bitmapBytes(this.blob.chunkCount))
        await this.mapFh.truncate(0)
        await writeAll(this.mapFh, Buffer.concat([encodeChunkMapHeader(this.blob), Buffer.from(bits)]), 0)
        await this.mapFh.datasync()
      }
      // in shared memory: FUSE reader threads read it (only this thread writes it)
      this.ready = sharedBits(bits.length)
      this.ready.set(bits)
      this.persisted = Uint8Array.from(bits)
      this.readyCount = popcount(bits)
    } catch (err) {
      await this.dataFh?.close().catch(() => undefined)
      await this.mapFh?.close().catch(() => undefined)
      this.dataFh = undefined
      this.mapFh = undefined
      this.state = 'closed'
      throw isNaiadError(err) ? err : ioError('open chunk map', this.mapPath, err)
    }
    this.state = 'open'
    this.log.debug({ chunks: this.blob.chunkCount, readyChunks: this.readyCount }, 'blob cache opened')
  }

  /**
   * Aborts fetches in flight (their waiters get NAIAD_CLOSED), flushes the bitmap, closes the
   * files. Safe to call twice; later reads throw NAIAD_CLOSED.
   */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      await this.opening?.catch(() => undefined)
      if (this.state !== 'open') { this.state = 'closed'; return }
      this.state = 'closing'
      if (this.flushTimer !== undefined) clearTimeout(this.flushTimer)
      this.flushTimer = undefined
      this.ctl.abort(this.closedError())
      await Promise.allSettled([...this.running])
      try {
        await this.flush()
      } catch (err) {
        this.log.warn({ err }, 'cannot flush the chunk map on close; unflushed chunks will be fetched again')
      }
      await this.dataFh?.close().catch(() => undefined)
      await this.mapFh?.close().catch(() => undefined)
      this.state = 'closed'
      this.log.debug({ readyChunks: this.readyCount }, 'blob cache closed')
    })()
    await this.closing
  }

  private closedError (): NaiadError {
    return new NaiadError('NAIAD_CLOSED', `the cache of blob ${this.blob.blobId} is closed`)
  }

  private checkOpen (): void {
    if (this.state !== 'open') {
      if (this.state === 'new' || this.state === 'opening') throw new NaiadError('NAIAD_INTERNAL', `the cache of blob ${this.blob.blobId} is not open yet`)
      throw this.closedError()
    }
  }

  get isOpen (): boolean { return this.state === 'open' }

  // ------------------------------------------------------------------------------------------
  // reads

  isReady (chunkIndex: number): boolean {
    return testBit(this.ready, chunkIndex)
  }

  /** The ready bit of every chunk, in shared memory (read-only for other threads). */
  get readyBits (): Uint8Array { return this.ready }

  countHits (n: number): void {
    this.counters.cacheHits += n
  }

  readReadySync (ref: ChunkRef, offset: number, into: Buffer): boolean {
    if (this.state !== 'open' || !testBit(this.ready, ref.index) || ref.blob.blobId !== this.blob.blobId) return false
    const length = into.length
    if (length === 0 || offset < 0 || offset + length > ref.uncompressedSize || ref.uncompressedOffset + offset + length > this.blob.uncompressedSize) return false
    const fd = (this.dataFh as FileHandle).fd
    let got = 0
    try {
      while (got < length) {
        const n = readSync(fd, into, got, length - got, ref.uncompressedOffset + offset + got)
        if (n === 0) return false
        got += n
      }
    } catch {
      return false // read() tries again and deals with it
    }
    this.counters.cacheHits++
    return true
  }

  private checkRef (ref: ChunkRef): void {
    if (ref.blob.blobId !== this.blob.blobId) {
      throw new NaiadError('NAIAD_INTERNAL', `chunk of blob ${ref.blob.blobId} asked from the cache of blob ${this.blob.blobId}`)
    }
    if (!Number.isInteger(ref.index) || ref.index < 0 || ref.index >= this.blob.chunkCount ||
        ref.uncompressedOffset < 0 || ref.uncompressedOffset + ref.uncompressedSize > this.blob.uncompressedSize ||
        ref.compressedOffset < 0 || !(ref.compressedSize > 0)) {
      throw new NaiadError('NAIAD_FMT_CORRUPT', `chunk ${ref.index} of blob ${this.blob.blobId} (uncompressed ${ref.uncompressedOffset}+${ref.uncompressedSize}, compressed ${ref.compressedOffset}+${ref.compressedSize}) does not fit the blob (${this.blob.chunkCount} chunks, ${this.blob.uncompressedSize} bytes)`)
    }
  }

  async read (ref: ChunkRef, offset: number, length: number, fetcher: ChunkFetcher, opts: FetchOptions & { into?: Buffer } = {}): Promise<Buffer> {
    this.checkOpen()
    this.checkRef(ref)
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > ref.uncompressedSize) {
      throw new NaiadError('NAIAD_INTERNAL', `read of ${length} bytes at ${offset} of chunk ${ref.index} (${ref.uncompressedSize} bytes) of blob ${this.blob.blobId}`)
    }
    throwIfAborted(opts.signal)
    if (length === 0) return Buffer.alloc(0)
    let waited = false
    for (let round = 0; round < 4; round++) {
      if (testBit(this.ready, ref.index)) {
        let b: Buffer | undefined
        try {
          b = await this.pread(ref.uncompressedOffset + offset, length, opts.into)
        } catch (err) {
          if (this.state !== 'open') throw err
          // a disk error on the cache file is not the reader's problem: fetch the chunk again
          // (served from memory if it cannot be written back either)
          this.forget(ref.index, `cannot read the cache file: ${describeError(err)}`)
          b = undefined
        }
        if (b !== undefined) {
          // a chunk this call waited for (fetched, then read back from the file) is no hit
          if (!waited) this.counters.cacheHits++
          return b
        }
        // the cache file lost data under us (truncated by hand): forget the chunk, fetch it again
        this.forget(ref.index, 'short read from the cache file')
      }
      const data = await this.waitChunk(ref, fetcher, opts)
      waited = true
      if (data !== undefined) return data.subarray(offset, offset + length)
    }
    throw new NaiadError('NAIAD_INTERNAL', `chunk ${ref.index} of blob ${this.blob.blobId} keeps disappearing from the cache`)
  }

  async ensure (refs: readonly ChunkRef[], fetcher: ChunkFetcher, opts: FetchOptions = {}): Promise<void> {
    this.checkOpen()
    throwIfAborted(opts.signal)
    const want: ChunkRef[] = []
    const seen = new Set<number>()
    for (const r of refs) {
      this.checkRef(r)
      if (seen.has(r.index) || testBit(this.ready, r.index)) continue
      seen.add(r.index)
      want.push(r)
    }
    if (want.length === 0) return
    this.startFetch(want, fetcher, opts.priority ?? 'ondemand')
    const results = await Promise.allSettled(want.map(async r => await this.waitChunk(r, fetcher, opts)))
    for (const r of results) if (r.status === 'rejected') throw r.reason
  }

  /** Resolves with the chunk's bytes when this call fetched them or joined a fetch, undefined if it is ready on disk. */
  private async waitChunk (ref: ChunkRef, fetcher: ChunkFetcher, opts: FetchOptions): Promise<Buffer | undefined> {
    const priority = opts.priority ?? 'ondemand'
    for (let attempt = 0; ; attempt++) {
      if (testBit(this.ready, ref.index)) return undefined
      this.checkOpen()
      let f = this.inflight.get(ref.index)
      if (f === undefined) {
        this.startFetch([ref], fetcher, priority)
        f = this.inflight.get(ref.index) as Inflight
      }
      try {
        return await raceSignal(f.promise, opts.signal)
      } catch (err) {
        if (opts.signal?.aborted === true) throw abortReason(opts.signal)
        if (attempt === 0 && f.priority === 'prefetch' && priority === 'ondemand' && this.state === 'open') {
          this.log.debug({ chunkIndex: ref.index, err: { message: describeError(err) } }, 'a prefetch fetch this read joined failed; fetching on demand')
          continue
        }
        throw err
      }
    }
  }

  private async pread (position: number, length: number, into?: Buffer): Promise<Buffer | undefined> {
    const fh = this.dataFh as FileHandle
    const buf = into !== undefined && into.length === length ? into : Buffer.allocUnsafe(length)
    let got: number
    try {
      got = await preadFully(fh, buf, position)
    } catch (err) {
      if (this.state !== 'open') throw this.closedError()
      throw ioError('read cache file', this.dataPath, err)
    }
    return got === length ? buf : undefined
  }

  private forget (index: number, reason: string): void {
    if (!testBit(this.ready, index)) return
    clearBit(this.ready, index)
    this.readyCount--
    this.dirty = true
    this.scheduleFlush()
    this.log.warn({ chunkIndex: index, reason }, 'cached chunk lost, fetching it again')
  }

  // ------------------------------------------------------------------------------------------
  // fetches

  /** Claims the chunks that are neither ready nor in flight and starts fetching them, merged. */
  private startFetch (refs: readonly ChunkRef[], fetcher: ChunkFetcher, priority: FetchPriority): void {
    const claim: ChunkRef[] = []
    const mine = new Map<number, Deferred>()
    for (const r of refs) {
      if (testBit(this.ready, r.index) || this.inflight.has(r.index) || mine.has(r.index)) continue
      const d = deferred()
      mine.set(r.index, d)
      this.inflight.set(r.index, { promise: d.promise, priority })
      claim.push(r)
    }
    if (claim.length === 0) return
    for (const req of planRequests(claim, this.maxRequestBytes, this.maxGapBytes)) {
      const p: Promise<void> = this.runRequest(req, fetcher, priority, mine)
        .catch((err: unknown) => {
          // not expected (runRequest settles every chunk itself); settle what is left
          this.log.error({ err }, 'chunk fetch failed unexpectedly')
          for (const c of req.chunks) this.settle(c.index, mine, err instanceof Error ? err : new Error(String(err)))
        })
        .finally(() => { this.running.delete(p) })
      this.running.add(p)
    }
  }

  private settle (index: number, mine: Map<number, Deferred>, result: Buffer | Error | undefined): void {
    const d = mine.get(index)
    if (d === undefined) return
    mine.delete(index)
    // out of the in-flight table first, so a waiter that retries starts a new fetch
    this.inflight.delete(index)
    if (result instanceof Error) d.reject(result)
    else d.resolve(result)
  }

  private async runRequest (req: RangeRequest, fetcher: ChunkFetcher, priority: FetchPriority, mine: Map<number, Deferred>): Promise<void> {
    const blobId = this.blob.blobId
    const exclude = new Set<string>()
    /** Sources that served bad bytes, per chunk. */
    const bad = new Map<number, string[]>()
    let pending: RangeRequest[] = [req]
    while (pending.length > 0) {
      const again: ChunkRef[] = []
      for (const r of pending) {
        // decode + verify in the decoder's worker threads, which also write verified chunks to
        // the cache file (their bytes never come back). Chunks go to the decoder as soon as their
        // bytes are in (streamed from a source that reports progress), the rest when the fetch
        // is done; every batch settles its own chunks.
        const jobs: Array<Promise<boolean>> = []
        let next = 0 // r.chunks[0, next) are with the decoder
        const dispatch = (data: Buffer, upto: number, source: string): void => {
          const batch = r.chunks.slice(next, upto)
          next = upto
          const job = this.decodeBatch(batch, data, r.start, source, mine, { exclude, bad, again })
          job.catch(() => { /* seen by Promise.all below; not unhandled while the fetch goes on */ })
          jobs.push(job)
        }
        const onProgress = (data: Buffer, filled: number, source?: string): void => {
          let k = next
          while (k < r.chunks.length && r.chunks[k]!.compressedOffset + r.chunks[k]!.compressedSize - r.start <= filled) k++
          if (k > next) dispatch(data, k, source ?? 'unknown')
        }
        let res: FetchResult
        try {
          res = await fetcher.fetchRange(blobId, r.start, r.end, { signal: this.ctl.signal, priority, exclude: new Set(exclude), alloc: this.alloc, onProgress })
        } catch (err) {
          await Promise.all(jobs)
          const closed = this.ctl.signal.aborted
          const rest = r.chunks.slice(next)
          if (!closed) this.log.warn({ start: r.start, end: r.end, chunks: rest.length, firstChunk: rest[0]?.index, err }, 'fetching chunks failed')
          for (const c of rest) this.settle(c.index, mine, closed ? this.closedError() : this.chunkError(c, err, bad.get(c.index)))
          continue
        }
        if (res.data.length !== r.end - r.start + 1) {
          await Promise.all(jobs)
          const err = new NaiadError('NAIAD_INTERNAL', `fetcher returned ${res.data.length} bytes for ${r.start}-${r.end} of blob ${blobId}`)
          for (const c of r.chunks.slice(next)) this.settle(c.index, mine, err)
          continue
        }
        this.counters.requests++
        this.bytesFetched[res.source] = (this.bytesFetched[res.source] ?? 0) + res.data.length
        if (next < r.chunks.length) dispatch(res.data, r.chunks.length, res.source)
        // the range's buffer is reused once no decoded chunk is a view of it
        const views = await Promise.all(jobs)
        if (!views.includes(true)) this.recycle(res.data.buffer)
      }
      pending = again.length > 0 ? planRequests(again, this.maxRequestBytes, this.maxGapBytes) : []
    }
  }

  /**
   * Decodes and verifies `batch` (all inside `data`, which starts at `dataStart` in the blob) and
   * settles each chunk: written to the cache file and ready; verified but not written (served
   * from memory); or bad (counted against `source`, which is excluded, and queued in `again`).
   * Resolves true when a chunk's bytes handed out are a view of `data` (it must not be reused).
   */
  private async decodeBatch (batch: readonly ChunkRef[], data: Buffer, dataStart: number, source: string, mine: Map<number, Deferred>,
    retry: { exclude: Set<string>, bad: Map<number, string[]>, again: ChunkRef[] }): Promise<boolean> {
    const fd = (this.dataFh as FileHandle).fd
    const done = new Set<number>()
    const settleWritten = (i: number): void => {
      if (done.has(i)) return
      done.add(i)
      const c = batch[i]!
      this.counters.chunksVerified++
      this.markReady(c)
      this.settle(c.index, mine, undefined)
    }
    const owned = !(data.buffer instanceof SharedArrayBuffer) && isOwnedBuffer(data)
    const decoded = await this.decoder.decodeInto(fd, batch, data, dataStart, { owned, onWritten: settleWritten })
    const good: Array<{ c: ChunkRef, data: Buffer }> = []
    let verified = 0
    let views = false
    batch.forEach((c, i) => {
      const d = decoded[i]!
      if (d === WRITTEN) {
        settleWritten(i) // (done already when the worker said so)
        return
      }
      if (d instanceof Unwritten) {
        verified++
        this.counters.writeErrors++
        this.log.warn({ chunkIndex: c.index, err: ioError('write cache file', this.dataPath, new Error(d.cause)) }, 'cannot cache a chunk; serving it from memory')
        this.settle(c.index, mine, d.data)
        return
      }
      if (!(d instanceof Error)) { verified++; views = true; good.push({ c, data: d }); return }
      this.counters.digestFailures++
      this.badBytesFrom[source] = (this.badBytesFrom[source] ?? 0) + 1
      retry.exclude.add(source)
      const list = retry.bad.get(c.index) ?? []
      list.push(source)
      retry.bad.set(c.index, list)
      this.log.warn({ chunkIndex: c.index, source, compressedOffset: c.compressedOffset, compressedSize: c.compressedSize, err: d },
        'chunk failed verification: not served, fetching it from another source')
      retry.again.push(c)
    })
    this.counters.chunksVerified += verified
    // chunks next to each other in the cache file (and in memory) are written with one write
    for (let i = 0; i < good.length;) {
      let j = i + 1
      while (j < good.length && adjacent(good[j - 1]!, good[j]!)) j++
      const group = good.slice(i, j)
      await this.commit(group)
      for (const g of group) this.settle(g.c.index, mine, g.data)
      i = j
    }
    return views
  }

  private chunkError (c: ChunkRef, err: unknown, badSources: string[] | undefined): NaiadError {
    const blobId = this.blob.blobId
    const cause = describeError(err)
    if (badSources !== undefined && badSources.length > 0) {
      return new NaiadError('NAIAD_FS_CHUNK_CORRUPT',
        `chunk ${c.index} of blob ${blobId} (bytes ${c.compressedOffset}+${c.compressedSize}): ${badSources.join(', ')} served bytes that do not match its ${this.blob.digester} digest, and no other source served good ones (${cause})`,
        { cause: err, details: { blobId, chunkIndex: c.index, badSources } })
    }
    if (isNaiadError(err)) {
      return new NaiadError(err.code, `chunk ${c.index} of blob ${blobId}: ${err.message}`, { cause: err, details: { ...err.details, blobId, chunkIndex: c.index } })
    }
    return new NaiadError('NAIAD_FS_SOURCES_EXHAUSTED', `chunk ${c.index} of blob ${blobId}: ${cause}`, { cause: err, details: { blobId, chunkIndex: c.index } })
  }

  /**
   * Writes verified chunks (adjacent in the cache file and in memory) and marks them ready; a
   * failed write only costs the caching.
   */
  private async commit (group: ReadonlyArray<{ c: ChunkRef, data: Buffer }>): Promise<void> {
    const first = group[0]!
    const last = group[group.length - 1]!
    const bytes = group.length === 1 ? first.data : Buffer.from(first.data.buffer, first.data.byteOffset, last.data.byteOffset + last.data.length - first.data.byteOffset)
    try {
      await writeAll(this.dataFh as FileHandle, bytes, first.c.uncompressedOffset)
    } catch (err) {
      this.counters.writeErrors += group.length
      this.log.warn({ chunkIndex: first.c.index, chunks: group.length, err: ioError('write cache file', this.dataPath, err) }, 'cannot cache a chunk; serving it from memory')
      return
    }
    for (const { c } of group) this.markReady(c)
  }

  /** A verified chunk is in the cache file: mark it ready (persisted by the next flush). */
  private markReady (c: ChunkRef): void {
    if (!testBit(this.ready, c.index)) {
      setBit(this.ready, c.index)
      this.readyCount++
    }
    this.dirty = true
    this.scheduleFlush()
  }

  // ------------------------------------------------------------------------------------------
  // persistence

  private scheduleFlush (): void {
    if (this.flushTimer !== undefined || this.state !== 'open') return
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined
      this.flush().catch((err: unknown) => { this.log.warn({ err }, 'cannot flush the chunk map; will retry') })
    }, this.flushIntervalMs)
    this.flushTimer.unref()
  }

  /**
   * Makes the persisted bitmap match the ready chunks: snapshot the bits, fdatasync the data file,
   * write the changed bitmap bytes, fdatasync the bitmap. Chunks that become ready meanwhile wait
   * for the next flush. Serialized; safe to call any time while open.
   */
  async flush (): Promise<void> {
    const run = this.flushChain.then(async () => { await this.flushOnce() })
    this.flushChain = run.catch(() => undefined)
    await run
  }

  private async flushOnce (): Promise<void> {
    const dataFh = this.dataFh
    const mapFh = this.mapFh
    if (!this.dirty || dataFh === undefined || mapFh === undefined || this.state === 'closed') return
    this.dirty = false
    const snap = Uint8Array.from(this.ready)
    let first = -1
    let last = -1
    for (let i = 0; i < snap.length; i++) {
      if (snap[i] !== this.persisted[i]) {
        if (first < 0) first = i
        last = i
      }
    }
    if (first < 0) return
    try {
      await dataFh.datasync()
      await writeAll(mapFh, Buffer.from(snap.buffer, snap.byteOffset + first, last - first + 1), CHUNK_MAP_HEADER_SIZE + first)
      await mapFh.datasync()
    } catch (err) {
      this.dirty = true
      if (this.state === 'open') this.scheduleFlush()
      throw ioError('flush chunk map', this.mapPath, err)
    }
    this.persisted = snap
    this.counters.flushes++
  }

  // ------------------------------------------------------------------------------------------
  // stats

  stats (): BlobCacheDetailStats {
    return {
      blobId: this.blob.blobId,
      chunks: this.blob.chunkCount,
      readyChunks: this.readyCount,
      bytesFetched: { ...this.bytesFetched },
      cacheHits: this.counters.cacheHits,
      chunksVerified: this.counters.chunksVerified,
      digestFailures: this.counters.digestFailures,
      requests: this.counters.requests,
      writeErrors: this.counters.writeErrors,
      flushes: this.counters.flushes,
      inflightChunks: this.inflight.size,
      badBytesFrom: { ...this.badBytesFrom }
    }
  }

  /** Chunks ready now (in memory; the persisted bitmap may lag by one flush). */
  get readyChunks (): number { return this.readyCount }
}

/** True when b follows a directly, both in the cache file and in memory (one write covers both). */
function adjacent (a: { c: ChunkRef, data: Buffer }, b: { c: ChunkRef, data: Buffer }): boolean {
  return b.c.uncompressedOffset === a.c.uncompressedOffset + a.c.uncompressedSize &&
    b.data.buffer === a.data.buffer && b.data.byteOffset === a.data.byteOffset + a.data.length
}

function sharedBits (bytes: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(Math.max(1, bytes)), 0, bytes)
}

async function readAll (fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let got = 0
  while (got < buf.length) {
    const n = (await fh.read(buf, got, buf.length - got, position + got)).bytesRead
    if (n === 0) throw new NaiadError('NAIAD_IO', `short read: ${got} of ${buf.length} bytes`)
    got += n
  }
}

async function writeAll (fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0
  while (done < buf.length) {
    const n = (await fh.write(buf, done, buf.length - done, position + done)).bytesWritten
    done += n
  }
}
