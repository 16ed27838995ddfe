/**
 * Nydus RAFS v6 data blob: writer and reader.
 *
 * Layout written by `BlobWriter`, byte for byte what `nydus-image create --type tar-rafs
 * --features blob-toc --fs-version 6` (v2.2+) writes without `--blob-inline-meta` (each section is
 * *followed* by a 512-byte GNU tar header, so a reader can walk backwards from EOF):
 *
 *   [chunk data, compressed one by one, back to back]   [tar "image.blob"]
 *   [CI array, compressed with the chunk compressor if that shrinks it] [4096 B CI header] [tar "blob.meta"]
 *   [chunk digests, 32 B each]                           [tar "blob.digest"]
 *   [ToC: 128 B entries]                                  [tar "rafs.blob.toc"]  <- EOF
 *
 * (dragonflyoss/nydus:builder/src/core/blob.rs `Blob::dump_meta_data`, builder/src/lib.rs
 * `dump_toc`, builder/src/core/context.rs). The blob id is sha256 of the whole file.
 *
 * `BlobReader` reads such blobs (and older ones without ToC, given the bootstrap's blob table or
 * through the tar headers), checks every offset and size against the file size, and never returns
 * chunk bytes that fail decompression or their digest.
 */
import { preadFully } from '../io/index.ts'
import { createHash } from 'node:crypto'
import { open, rm, type FileHandle } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import { NaiadError, hasCode, ioError, throwIfAborted } from '../errors/index.ts'
import { chunkDigest } from '../digest/index.ts'
import { COMPRESSOR_ID, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, type BlobInfo, type ChunkDigester, type ChunkRef, type Compressor } from './types.ts'
import { ZSTD_LEVEL, compressChunk, decompressChunk } from './compress.ts'
import {
  BLOB_FEATURE, CHUNK_DIGEST_SIZE, CI_HEADER_SIZE, CI_MAGIC, CI_V2_FLAG, MAX_CHUNKS_PER_BLOB, TAR_HEADER_SIZE, TOC_ENTRY,
  TOC_ENTRY_SIZE, TOC_FLAG, TOC_MAX_SIZE, TOC_MIN_SIZE,
  ciEntrySize, compressorFromId, compressorFromTocFlags, decodeCiEntry, decodeCiHeader, decodeTarHeader, decodeTocEntry,
  encodeCiEntry, encodeCiHeader, encodeTarHeader, encodeTocEntry, roundUp4k, tocFlagsFor,
  type CiEntry, type CiHeader, type TocEntry
} from './blobfmt.ts'

const ZERO_DIGEST = Buffer.alloc(32)

function sha256 (...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return h.digest()
}

// =============================================================================================
// writer

export interface BlobWriterOptions {
  /** Where to write the blob file (created or truncated). */
  path: string
  chunkSize: number
  compressor: Compressor
  digester: ChunkDigester
  /** Chunk-info format: 1 (16 B entries, nydus-image's default) or 2 (24 B entries). */
  ciVersion?: 1 | 2
  /**
   * Chunks already stored, by hex digest: within this blob, in earlier layers' blobs, or in a
   * chunk dictionary. New chunks are added to it. It must hold chunks of the same digester.
   */
  dedup: Map<string, ChunkRef>
  /**
   * Compress zstd chunks in worker threads (default true), so that compression overlaps with
   * reading and decompressing the layer. The blob is byte-for-byte the same either way.
   */
  workers?: boolean
}

export interface BlobWriterStats {
  files: number
  /** File bytes passed to addFile. */
  bytesIn: number
  /** Chunks stored in this blob. */
  newChunks: number
  /** Chunks found in `dedup` (here or elsewhere) and not stored again. */
  dedupedChunks: number
}

/** Features of every blob we write (as nydus-image v2.2+ with `--features blob-toc`). */
export const WRITER_BASE_FEATURES = BLOB_FEATURE.ALIGNED | BLOB_FEATURE.HAS_TAR_HEADER | BLOB_FEATURE.HAS_TOC | BLOB_FEATURE.CAP_TAR_TOC

type WriterState = 'open' | 'finishing' | 'finished' | 'failed' | 'aborted'

/**
 * Streams one layer's file contents into one Nydus v6 data blob. Calls are serialized. Memory use
 * is bounded and independent of file sizes: the chunk being filled, a compression pipeline of at
 * most 8 chunks and max(16 MiB, 2 chunks) of input, and one write in flight. zstd compression runs
 * in a small pool of worker threads shared by all writers, so it overlaps with reading the layer.
 */
export class BlobWriter {
  /** Shared by every ChunkRef this writer creates; `finish()` fills in the final values. */
  readonly blob: BlobInfo
  readonly stats: BlobWriterStats = { files: 0, bytesIn: 0, newChunks: 0, dedupedChunks: 0 }
  private readonly path: string
  private readonly ciVersion: 1 | 2
  private readonly dedup: Map<string, ChunkRef>
  private readonly hash = createHash('sha256')
  private readonly refs: ChunkRef[] = []
  private state: WriterState = 'open'
  private lock: Promise<unknown> = Promise.resolve()
  private opening: Promise<FileHandle> | undefined
  private inflight: Promise<void> = Promise.resolve()
  /** Bytes handed to the file so far (= the offset of the next byte). */
  private pos = 0
  private uncompressedEnd = 0
  /** New chunks whose compression may still be running, in blob order. */
  private readonly pending: PendingChunk[] = []
  private pendingBytes = 0
  private readonly maxPendingBytes: number
  private readonly useWorkers: boolean

  constructor (opts: BlobWriterOptions) {
    const { chunkSize, compressor, digester } = opts
    if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE || (chunkSize & (chunkSize - 1)) !== 0) {
      throw new NaiadError('NAIAD_FMT_OPTION', `chunk size ${chunkSize} is not a power of two in 4KiB..16MiB`)
    }
    if (compressor !== 'none' && compressor !== 'lz4_block' && compressor !== 'zstd') {
      throw new NaiadError('NAIAD_FMT_OPTION', `compressor ${JSON.stringify(compressor)} is not one of zstd, lz4_block, none`)
    }
    if (digester !== 'blake3' && digester !== 'sha256') {
      throw new NaiadError('NAIAD_FMT_OPTION', `digester ${JSON.stringify(digester)} is not one of blake3, sha256`)
    }
    const ciVersion = opts.ciVersion ?? 1
    if (ciVersion !== 1 && ciVersion !== 2) throw new NaiadError('NAIAD_FMT_OPTION', `CI version ${String(ciVersion)} is not 1 or 2`)
    if (ciVersion === 2 && chunkSize === MAX_CHUNK_SIZE) {
      // a 16 MiB chunk stored raw has compressed size 0x1000000, one more than CI v2's 24-bit field
      throw new NaiadError('NAIAD_FMT_OPTION', 'CI v2 cannot describe 16 MiB chunks stored uncompressed; use a smaller chunk size or CI v1')
    }
    this.path = opts.path
    this.ciVersion = ciVersion
    this.dedup = opts.dedup
    this.useWorkers = opts.workers ?? true
    this.maxPendingBytes = Math.max(2 * chunkSize, PIPELINE_BYTES)
    this.blob = {
      blobId: '',
      chunkSize,
      chunkCount: 0,
      compressor,
      digester,
      features: WRITER_BASE_FEATURES | (ciVersion === 2 ? BLOB_FEATURE.CHUNK_INFO_V2 : 0),
      compressedSize: 0,
      uncompressedSize: 0,
      tocSize: 0,
      tocDigest: Buffer.alloc(32),
      ciCompressor: 'none',
      ciOffset: 0,
      ciCompressedSize: 0,
      ciUncompressedSize: 0
    }
  }

  /**
   * Add one regular file's content: `size` bytes delivered by `data` in pieces of any size.
   * Returns one ChunkRef per chunkSize piece of the file, in order (empty for an empty file);
   * refs of chunks found in `dedup` may point at other blobs. Throws NAIAD_FMT_CORRUPT if `data`
   * delivers more or fewer than `size` bytes.
   *
   * Chunks are compressed in the background: `compressedOffset`, `compressedSize` and
   * `compressed` of refs to this blob's new chunks are final once `settle()` or `finish()`
   * resolves (until then `compressedOffset` is -1). Everything else in a ref is final at once.
   */
  async addFile (data: AsyncIterable<Buffer | Uint8Array>, size: number, opts: { signal?: AbortSignal } = {}): Promise<ChunkRef[]> {
    return await this.serialize(async () => await this.addFileLocked(data, size, opts.signal))
  }

  private async addFileLocked (data: AsyncIterable<Buffer | Uint8Array>, size: number, signal: AbortSignal | undefined): Promise<ChunkRef[]> {
    this.checkOpen()
    if (!Number.isSafeInteger(size) || size < 0) throw new NaiadError('NAIAD_INTERNAL', `addFile: invalid size ${size}`)
    throwIfAborted(signal)
    const cs = this.blob.chunkSize
    const refs: ChunkRef[] = []
    let cur: Buffer | undefined
    let fill = 0
    let consumed = 0
    try {
      for await (const piece of data) {
        throwIfAborted(signal)
        if (piece.length === 0) continue
        if (piece.length > size - consumed) {
          throw new NaiadError('NAIAD_FMT_CORRUPT', `file content is longer than its declared size of ${size} bytes`)
        }
        let off = 0
        while (off < piece.length) {
          cur ??= Buffer.allocUnsafe(Math.min(cs, size - consumed))
          const n = Math.min(cur.length - fill, piece.length - off)
          cur.set(piece.subarray(off, off + n), fill)
          fill += n
          off += n
          consumed += n
          if (fill === cur.length) {
            refs.push(await this.addChunk(cur))
            cur = undefined
            fill = 0
            throwIfAborted(signal)
          }
        }
      }
    } finally {
      this.stats.bytesIn += consumed
    }
    if (consumed !== size) {
      throw new NaiadError('NAIAD_FMT_CORRUPT', `file content ends after ${consumed} of its declared ${size} bytes`)
    }
    this.stats.files++
    return refs
  }

  private async addChunk (chunk: Buffer): Promise<ChunkRef> {
    const digest = chunkDigest(this.blob.digester, chunk)
    const key = digest.toString('hex')
    const hit = this.dedup.get(key)
    if (hit !== undefined && hit.uncompressedSize === chunk.length) {
      this.stats.dedupedChunks++
      return hit
    }
    if (this.blob.chunkCount >= MAX_CHUNKS_PER_BLOB) {
      throw new NaiadError('NAIAD_FMT_LIMIT', `blob has more than ${MAX_CHUNKS_PER_BLOB} chunks (2^24 chunks per blob)`)
    }
    if (this.uncompressedEnd + roundUp4k(chunk.length) > 2 ** 44) {
      throw new NaiadError('NAIAD_FMT_LIMIT', 'blob uncompressed size exceeds 16 TiB (44-bit uncompressed offsets)')
    }
    const ref: ChunkRef = {
      blob: this.blob,
      index: this.blob.chunkCount,
      digest,
      compressedOffset: -1, // set when the chunk is appended, in order
      compressedSize: 0,
      uncompressedOffset: this.uncompressedEnd,
      uncompressedSize: chunk.length,
      compressed: false
    }
    this.refs.push(ref)
    this.blob.chunkCount++
    this.uncompressedEnd += roundUp4k(chunk.length)
    this.stats.newChunks++
    this.dedup.set(key, ref)

    const size = chunk.length
    const pool = this.useWorkers && this.blob.compressor === 'zstd' && size >= WORKER_MIN_CHUNK ? zstdPool() : undefined
    let entry: PendingChunk
    if (pool !== undefined) {
      entry = { ref, size, result: pool.compress(chunk), done: undefined }
      entry.result.then(r => { entry.done = r }, () => undefined)
    } else {
      let r: Compressed
      try {
        r = compressChunk(this.blob.compressor, chunk)
      } catch (err) {
        this.state = 'failed' // the chunk is already registered
        throw err
      }
      entry = { ref, size, result: Promise.resolve(r), done: r }
    }
    this.pending.push(entry)
    this.pendingBytes += size
    await this.drain(false)
    return ref
  }

  /**
   * Append finished chunks in blob order. With `all`, wait for every pending chunk; otherwise
   * only for as many as needed to stay within the pipeline's memory budget.
   */
  private async drain (all: boolean): Promise<void> {
    try {
      for (;;) {
        const head = this.pending[0]
        if (head === undefined) return
        if (!all && head.done === undefined && this.pending.length <= PIPELINE_JOBS && this.pendingBytes <= this.maxPendingBytes) return
        const res = head.done ?? await head.result
        this.pending.shift()
        this.pendingBytes -= head.size
        const ref = head.ref
        if (this.pos + res.data.length > 2 ** 40) {
          throw new NaiadError('NAIAD_FMT_LIMIT', 'blob chunk data exceeds 1 TiB (40-bit compressed offsets)')
        }
        ref.compressedOffset = this.pos
        ref.compressedSize = res.data.length
        ref.compressed = res.compressed
        await this.append(res.data)
      }
    } catch (err) {
      // the blob is now inconsistent: only abort() is left
      if (this.state === 'open' || this.state === 'finishing') this.state = 'failed'
      throw err
    }
  }

  /** Wait until every chunk added so far is compressed and written: all refs are then final. */
  async settle (): Promise<void> {
    await this.serialize(async () => {
      this.checkOpen()
      await this.drain(true)
    })
  }

  /**
   * Append the metadata sections and the ToC, close the file and fill in `blob` (blobId = sha256
   * of the file). `blobMeta` is the blob's chunk-info table as nydusd caches it and as it goes into
   * the bootstrap layer as `image/<blob id>.blob.meta`: the uncompressed CI array zero-padded to a
   * 4 KiB boundary followed by the 4096-byte CI header (empty when the blob has no chunks).
   */
  async finish (): Promise<{ blob: BlobInfo, blobMeta: Buffer }> {
    return await this.serialize(async () => {
      this.checkOpen()
      this.state = 'finishing'
      try {
        const result = await this.finishLocked()
        this.state = 'finished'
        return result
      } catch (err) {
        if (this.state === 'finishing') this.state = 'failed'
        await this.inflight.catch(() => undefined)
        await this.closeFile()
        throw err
      }
    })
  }

  private async finishLocked (): Promise<{ blob: BlobInfo, blobMeta: Buffer }> {
    await this.drain(true)
    const blob = this.blob
    const count = this.refs.length
    const dataSize = this.pos
    const toc: Buffer[] = []

    await this.appendTar(TOC_ENTRY.BLOB_RAW, dataSize)
    // Nydus records sha256 of the chunk data *and* its tar header here (BlobContext::blob_hash)
    toc.push(encodeTocEntry({
      flags: TOC_FLAG.NONE,
      name: TOC_ENTRY.BLOB_RAW,
      digest: this.hash.copy().digest(),
      compressedOffset: 0,
      compressedSize: dataSize,
      uncompressedSize: this.uncompressedEnd
    }))

    let features = blob.features
    let blobMeta = Buffer.alloc(0)
    let ciCompressor: Compressor = 'none'
    let ciOffset = 0
    let ciCompressedSize = 0
    let ciUncompressedSize = 0
    if (count > 0) {
      features |= BLOB_FEATURE.INLINED_CHUNK_DIGEST
      const esz = ciEntrySize(this.ciVersion)
      const ci = Buffer.alloc(count * esz)
      for (let i = 0; i < count; i++) {
        const r = this.refs[i] as ChunkRef
        encodeCiEntry(ci, i * esz, r, this.ciVersion)
      }
      const stored = compressChunk(blob.compressor, ci)
      ciCompressor = stored.compressed ? blob.compressor : 'none'
      ciOffset = this.pos
      ciCompressedSize = stored.data.length
      ciUncompressedSize = ci.length
      const header = encodeCiHeader({
        features,
        ciCompressor: COMPRESSOR_ID[ciCompressor],
        ciEntries: count,
        ciOffset,
        ciCompressedSize,
        ciUncompressedSize,
        zranOffset: 0,
        zranSize: 0,
        zranCount: 0
      })
      await this.append(stored.data)
      await this.append(header)
      await this.appendTar(TOC_ENTRY.BLOB_META, ciCompressedSize + CI_HEADER_SIZE)
      toc.push(encodeTocEntry({
        flags: tocFlagsFor(ciCompressor),
        name: TOC_ENTRY.BLOB_META,
        digest: sha256(ci),
        compressedOffset: ciOffset,
        compressedSize: ciCompressedSize,
        uncompressedSize: ciUncompressedSize
      }))
      toc.push(encodeTocEntry({
        flags: TOC_FLAG.NONE,
        name: TOC_ENTRY.BLOB_META_HEADER,
        digest: sha256(header),
        compressedOffset: ciOffset + ciCompressedSize,
        compressedSize: CI_HEADER_SIZE,
        uncompressedSize: CI_HEADER_SIZE
      }))

      const digests = Buffer.allocUnsafe(count * CHUNK_DIGEST_SIZE)
      for (let i = 0; i < count; i++) (this.refs[i] as ChunkRef).digest.copy(digests, i * CHUNK_DIGEST_SIZE)
      const digestsOffset = this.pos
      await this.append(digests)
      await this.appendTar(TOC_ENTRY.BLOB_DIGEST, digests.length)
      toc.push(encodeTocEntry({
        flags: TOC_FLAG.NONE,
        name: TOC_ENTRY.BLOB_DIGEST,
        digest: sha256(digests),
        compressedOffset: digestsOffset,
        compressedSize: digests.length,
        uncompressedSize: digests.length
      }))

      blobMeta = Buffer.concat([ci, Buffer.alloc(roundUp4k(ci.length) - ci.length), header])
    }

    const tocData = Buffer.concat(toc)
    const tocHeader = encodeTarHeader(TOC_ENTRY.BLOB_TOC, tocData.length)
    await this.append(tocData)
    await this.append(tocHeader)

    await this.file() // a blob without any chunk still gets its file
    await this.inflight
    await this.closeFile(true)

    Object.assign(blob, {
      blobId: this.hash.digest('hex'),
      chunkCount: count,
      features,
      compressedSize: this.pos,
      uncompressedSize: this.uncompressedEnd,
      tocSize: tocData.length + TAR_HEADER_SIZE,
      tocDigest: sha256(tocData, tocHeader),
      ciCompressor,
      ciOffset,
      ciCompressedSize,
      ciUncompressedSize
    } satisfies Partial<BlobInfo>)
    return { blob, blobMeta }
  }

  /**
   * Stop writing and remove the blob file (also after `finish()`). Chunks of this blob are removed
   * from the dedup map, so no later layer can reference them.
   */
  async abort (): Promise<void> {
    this.state = 'aborted'
    this.pending.length = 0
    this.pendingBytes = 0
    for (const [k, r] of this.dedup) if (r.blob === this.blob) this.dedup.delete(k)
    await this.inflight.catch(() => undefined)
    await this.closeFile()
    try {
      await rm(this.path, { force: true })
    } catch (err) {
      throw ioError('remove blob', this.path, err)
    }
  }

  private checkOpen (): void {
    if (this.state === 'open') return
    if (this.state === 'aborted') throw new NaiadError('NAIAD_ABORTED', `blob writer for ${this.path} was aborted`)
    throw new NaiadError('NAIAD_CLOSED', `blob writer for ${this.path} is ${this.state}`)
  }

  private async serialize<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn, fn)
    this.lock = run.catch(() => undefined)
    return await run
  }

  private async file (): Promise<FileHandle> {
    this.opening ??= open(this.path, 'w').catch((err: unknown) => { throw ioError('create blob', this.path, err) })
    return await this.opening
  }

  private async closeFile (strict = false): Promise<void> {
    const opening = this.opening
    if (opening === undefined) return
    let fh: FileHandle
    try {
      fh = await opening
    } catch (err) {
      if (strict) throw err
      return
    }
    try {
      await fh.close()
    } catch (err) {
      if (strict) throw ioError('close blob', this.path, err)
    }
  }

  /**
   * Queue `buf` at the end of the file. Waits for the previous write first (backpressure: at most
   * one write in flight), then returns while the new one proceeds, so the next chunk can be
   * digested and compressed meanwhile.
   */
  private async append (buf: Buffer): Promise<void> {
    if (buf.length === 0) return
    const at = this.pos
    this.hash.update(buf)
    this.pos += buf.length
    await this.inflight
    const fh = await this.file()
    if (this.state === 'aborted') throw new NaiadError('NAIAD_ABORTED', `blob writer for ${this.path} was aborted`)
    const write = writeFully(fh, buf, at).catch((err: unknown) => { throw ioError('write blob', this.path, err) })
    write.catch(() => undefined) // surfaced by the next await of this.inflight
    this.inflight = write
  }

  private async appendTar (name: string, size: number): Promise<void> {
    await this.append(encodeTarHeader(name, size))
  }
}

// ---------------------------------------------------------------------------------------------
// zstd compression in worker threads

interface Compressed { data: Buffer, compressed: boolean }

interface PendingChunk {
  ref: ChunkRef
  size: number
  result: Promise<Compressed>
  /** The result once known (set synchronously for chunks compressed on this thread). */
  done: Compressed | undefined
}

/** Most chunks a writer keeps in its compression pipeline, and the least bytes it allows. */
const PIPELINE_JOBS = 8
const PIPELINE_BYTES = 16 << 20
/** Smaller chunks are compressed on the calling thread: a worker round trip would cost more. */
const WORKER_MIN_CHUNK = 32 << 10

/** The worker: one zstd context; compresses whole chunks, answers with a transferred buffer. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads')
const zstd = require(workerData.zstdPath)
const cctx = new zstd.CCtx()
parentPort.on('message', (m) => {
  try {
    const src = m.chunk
    const dst = Buffer.allocUnsafeSlow(zstd.compressBound(src.length))
    const n = cctx.compress(dst, src, m.level)
    if (n < src.length) parentPort.postMessage({ id: m.id, buf: dst.buffer, len: n }, [dst.buffer])
    else parentPort.postMessage({ id: m.id, raw: true })
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String(err && err.message ? err.message : err) })
  }
})
`

interface WorkerReply { id: number, buf?: ArrayBuffer, len?: number, raw?: boolean, error?: string }
interface PoolJob { id: number, chunk: Buffer, resolve: (r: Compressed) => void, reject: (e: unknown) => void }
interface PoolWorker { worker: Worker, job: PoolJob | undefined, served: number }

/** Compress on the calling thread: the same bytes the workers produce. */
function compressHere (job: PoolJob): void {
  try {
    job.resolve(compressChunk('zstd', job.chunk))
  } catch (err) {
    job.reject(err)
  }
}

/**
 * A small pool of zstd workers shared by all writers of the process. Workers are unref'd while
 * idle, so they never keep the process alive. Chunks are copied to the workers (not transferred),
 * so if a worker dies its chunk is compressed on the calling thread instead; if workers cannot
 * start at all, everything is compressed on the calling thread.
 */
class ZstdPool {
  private readonly workers: PoolWorker[] = []
  private readonly queue: PoolJob[] = []
  private nextId = 1
  private broken = false

  constructor (private readonly size: number, private readonly zstdPath: string) {}

  async compress (chunk: Buffer): Promise<Compressed> {
    return await new Promise<Compressed>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, chunk, resolve, reject })
      this.dispatch()
    })
  }

  private dispatch (): void {
    while (this.queue.length > 0) {
      let w = this.workers.find(x => x.job === undefined)
      if (w === undefined && this.workers.length < this.size && !this.broken) {
        try {
          w = this.spawn()
        } catch {
          this.broken = true // no workers here (resource limits…)
        }
      }
      if (w === undefined) {
        if (this.workers.length > 0) return // all busy: wait for one
        for (const job of this.queue.splice(0)) compressHere(job)
        return
      }
      const job = this.queue.shift() as PoolJob
      w.job = job
      w.worker.ref()
      w.worker.postMessage({ id: job.id, chunk: job.chunk, level: ZSTD_LEVEL })
    }
  }

  private spawn (): PoolWorker {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { zstdPath: this.zstdPath } })
    const w: PoolWorker = { worker, job: undefined, served: 0 }
    worker.unref()
    worker.on('message', (m: WorkerReply) => {
      const job = w.job
      if (job === undefined || job.id !== m.id) return
      w.job = undefined
      w.served++
      worker.unref()
      if (m.raw === true) job.resolve({ data: job.chunk, compressed: false })
      else if (m.buf !== undefined && m.len !== undefined && m.len < job.chunk.length) job.resolve({ data: Buffer.from(m.buf, 0, m.len), compressed: true })
      else compressHere(job) // a worker error: let this thread report or redo it
      this.dispatch()
    })
    let gone = false
    const died = (): void => {
      if (gone) return
      gone = true
      const i = this.workers.indexOf(w)
      if (i >= 0) this.workers.splice(i, 1)
      if (w.served === 0) this.broken = true // it never worked: do not respawn forever
      const job = w.job
      w.job = undefined
      if (job !== undefined) compressHere(job)
      this.dispatch()
    }
    worker.on('error', died)
    worker.on('exit', died)
    this.workers.push(w)
    return w
  }
}

let sharedPool: ZstdPool | null | undefined

/** The process-wide zstd worker pool, or undefined if workers are not available. */
function zstdPool (): ZstdPool | undefined {
  if (sharedPool === undefined) {
    try {
      const zstdPath = createRequire(import.meta.url).resolve('zstd-napi/binding.js')
      sharedPool = new ZstdPool(Math.max(1, Math.min(4, availableParallelism())), zstdPath)
    } catch {
      sharedPool = null
    }
  }
  return sharedPool ?? undefined
}

async function writeFully (fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off)
    if (bytesWritten <= 0) throw new Error('short write')
    off += bytesWritten
  }
}

// =============================================================================================
// reader

/** Random access to a blob's bytes (a local file, an HTTP Range client, a cache…). */
export interface BlobSource {
  size: number
  /** Exactly `length` bytes at `offset` (a shorter answer is treated as truncation). */
  read (offset: number, length: number, opts?: { signal?: AbortSignal }): Promise<Buffer>
}

export interface BlobReaderOptions {
  /** The blob's entry from the bootstrap's blob table: cross-checked, and used when the blob has no ToC. */
  blob?: BlobInfo
  /** Chunk compressor (default: `blob.compressor`; otherwise detected per chunk). */
  compressor?: Compressor
  /** Chunk digester (default: `blob.digester`; otherwise detected from the first chunk read). */
  digester?: ChunkDigester
  signal?: AbortSignal
}

/** One chunk as the blob's chunk-info table describes it. */
export interface BlobChunk {
  compressedOffset: number
  compressedSize: number
  uncompressedOffset: number
  uncompressedSize: number
  compressed: boolean
  /** The chunk's digest from the blob's digest array (INLINED_CHUNK_DIGEST blobs). */
  digest?: Buffer
  /** CRC32 of the uncompressed chunk (CI v2 with HAS_CRC32). */
  crc32?: number
}

interface Section { offset: number, size: number }

const UNSUPPORTED_FEATURES: ReadonlyArray<[number, string]> = [
  [BLOB_FEATURE.ZRAN, 'ZRAN (OCI-ref) blobs'],
  [BLOB_FEATURE.BATCH, 'batch chunks'],
  [BLOB_FEATURE.ENCRYPTED, 'encrypted blobs'],
  [BLOB_FEATURE.SEPARATE, 'separate blob meta'],
  [BLOB_FEATURE.TARFS, 'tarfs blobs']
]

function corrupt (msg: string): never {
  throw new NaiadError('NAIAD_FMT_CORRUPT', msg)
}

function isZstdFrame (b: Buffer): boolean {
  return b.length >= 4 && b.readUInt32LE(0) === 0xfd2fb528
}

export class BlobReader {
  readonly size: number
  /** Blob features from the CI header (or the blob table / ToC when there are no chunks). */
  readonly features: number
  readonly ciVersion: 1 | 2
  readonly chunkCount: number
  readonly ciHeader: CiHeader | undefined
  /** ToC entries, when the blob has a ToC. */
  readonly toc: readonly TocEntry[] | undefined
  /** sha256 of the ToC and its tar header, and their size (0 without ToC). */
  readonly tocDigest: Buffer
  readonly tocSize: number
  /** Chunk compressor and digester, when known (given, or detected from chunks read so far). */
  compressor: Compressor | undefined
  digester: ChunkDigester | undefined
  private readonly src: BlobSource
  private readonly entries: CiEntry[]
  private readonly digests: Buffer | undefined
  private readonly ciRaw: Buffer
  private readonly ciHeaderBytes: Buffer | undefined

  private constructor (init: {
    src: BlobSource
    features: number
    ciVersion: 1 | 2
    entries: CiEntry[]
    digests: Buffer | undefined
    ciRaw: Buffer
    ciHeader: CiHeader | undefined
    ciHeaderBytes: Buffer | undefined
    toc: TocEntry[] | undefined
    tocDigest: Buffer
    tocSize: number
    compressor: Compressor | undefined
    digester: ChunkDigester | undefined
  }) {
    this.src = init.src
    this.size = init.src.size
    this.features = init.features
    this.ciVersion = init.ciVersion
    this.entries = init.entries
    this.chunkCount = init.entries.length
    this.digests = init.digests
    this.ciRaw = init.ciRaw
    this.ciHeader = init.ciHeader
    this.ciHeaderBytes = init.ciHeaderBytes
    this.toc = init.toc
    this.tocDigest = init.tocDigest
    this.tocSize = init.tocSize
    this.compressor = init.compressor
    this.digester = init.digester
  }

  /**
   * Open a blob: trailing tar header → ToC (512 B..64 KiB, a multiple of 128, sha256 checked
   * against `blob.tocDigest` when given) → CI header + CI array → chunk digests. Without a ToC the
   * CI location comes from `opts.blob` (the bootstrap's blob table) or from the tar headers.
   */
  static async open (src: BlobSource, opts: BlobReaderOptions = {}): Promise<BlobReader> {
    const size = src.size
    const info = opts.blob
    const signal = opts.signal
    if (!Number.isSafeInteger(size) || size < 0) corrupt(`invalid blob size ${size}`)
    if (info !== undefined && info.compressedSize > 0 && size !== info.compressedSize) {
      if (size < info.compressedSize) throw new NaiadError('NAIAD_FMT_TRUNCATED', `blob has ${size} bytes, the blob table says ${info.compressedSize}`)
      corrupt(`blob has ${size} bytes, the blob table says ${info.compressedSize}`)
    }
    const read = async (offset: number, length: number, what: string): Promise<Buffer> => {
      if (offset < 0 || length < 0 || offset + length > size) {
        throw new NaiadError('NAIAD_FMT_TRUNCATED', `${what} at ${offset}+${length} lies beyond the end of the ${size}-byte blob`)
      }
      if (length === 0) return Buffer.alloc(0)
      const b = await src.read(offset, length, { signal })
      if (b.length !== length) throw new NaiadError('NAIAD_FMT_TRUNCATED', `short read of ${what}: ${b.length} of ${length} bytes at ${offset}`)
      return b
    }

    // --- locate the sections from the end
    let toc: TocEntry[] | undefined
    let tocDigest: Buffer = Buffer.alloc(32)
    let tocSize = 0
    /** where metadata ends (everything before the ToC) */
    let metaEnd = size
    let ciLoc: { offset: number, compressedSize: number, uncompressedSize: number, compressor: Compressor | undefined, digest?: Buffer, headerDigest?: Buffer } | undefined
    let digestsLoc: (Section & { digest?: Buffer }) | undefined
    let hasTarHeaders = false
    let legacyHeaderAtEof = false

    if (size < TAR_HEADER_SIZE) throw new NaiadError('NAIAD_FMT_TRUNCATED', `blob of ${size} bytes is too small to hold a tar header`)
    let tail: { name: string, size: number } | undefined
    try {
      tail = decodeTarHeader(await read(size - TAR_HEADER_SIZE, TAR_HEADER_SIZE, 'trailing tar header'))
      hasTarHeaders = true
    } catch (err) {
      if (!hasCode(err, 'NAIAD_FMT_BAD_MAGIC')) throw err
      // blobs from before tar headers end with the CI header
      if (size >= CI_HEADER_SIZE && (await read(size - 4, 4, 'CI header magic')).readUInt32LE(0) === CI_MAGIC) {
        legacyHeaderAtEof = true
      } else if (info === undefined || info.ciCompressedSize === 0) {
        throw err
      }
    }

    if (tail !== undefined && tail.name === TOC_ENTRY.BLOB_TOC) {
      const total = tail.size + TAR_HEADER_SIZE
      if (tail.size % TOC_ENTRY_SIZE !== 0) corrupt(`ToC size ${tail.size} is not a multiple of ${TOC_ENTRY_SIZE}`)
      if (total < TOC_MIN_SIZE || total > TOC_MAX_SIZE) corrupt(`ToC size ${total} is outside ${TOC_MIN_SIZE}..${TOC_MAX_SIZE}`)
      if (total > size) throw new NaiadError('NAIAD_FMT_TRUNCATED', `ToC of ${total} bytes is larger than the ${size}-byte blob`)
      if (info !== undefined && info.tocSize > 0 && info.tocSize !== total) corrupt(`ToC is ${total} bytes, the blob table says ${info.tocSize}`)
      const tocBuf = await read(size - total, total, 'ToC')
      tocDigest = sha256(tocBuf)
      tocSize = total
      if (info !== undefined && info.tocSize > 0 && !info.tocDigest.equals(ZERO_DIGEST) && !info.tocDigest.equals(tocDigest)) {
        corrupt(`ToC sha256 ${tocDigest.toString('hex')} does not match the blob table's ${info.tocDigest.toString('hex')}`)
      }
      metaEnd = size - total
      toc = []
      for (let off = 0; off < tail.size; off += TOC_ENTRY_SIZE) toc.push(decodeTocEntry(tocBuf, off))
      const byName = new Map<string, TocEntry>()
      for (const e of toc) {
        if (e.name === TOC_ENTRY.BLOB_RAW) continue // its offset is unreliable in old blobs; chunk data starts at 0
        if (e.compressedOffset + e.compressedSize > metaEnd) corrupt(`ToC entry ${e.name} (${e.compressedOffset}+${e.compressedSize}) runs past the ToC at ${metaEnd}`)
        if (!byName.has(e.name)) byName.set(e.name, e)
      }
      const meta = byName.get(TOC_ENTRY.BLOB_META)
      if (meta !== undefined) {
        const hdr = byName.get(TOC_ENTRY.BLOB_META_HEADER)
        if (hdr !== undefined && (hdr.compressedOffset !== meta.compressedOffset + meta.compressedSize || hdr.compressedSize !== CI_HEADER_SIZE)) {
          corrupt(`ToC entry ${TOC_ENTRY.BLOB_META_HEADER} (${hdr.compressedOffset}+${hdr.compressedSize}) does not follow ${TOC_ENTRY.BLOB_META}`)
        }
        ciLoc = {
          offset: meta.compressedOffset,
          compressedSize: meta.compressedSize,
          uncompressedSize: meta.uncompressedSize,
          compressor: compressorFromTocFlags(meta.flags, `ToC entry ${TOC_ENTRY.BLOB_META}`),
          digest: meta.digest,
          ...(hdr !== undefined ? { headerDigest: hdr.digest } : {})
        }
      }
      const dg = byName.get(TOC_ENTRY.BLOB_DIGEST)
      if (dg !== undefined) {
        if (compressorFromTocFlags(dg.flags, `ToC entry ${TOC_ENTRY.BLOB_DIGEST}`) !== 'none' || dg.compressedSize !== dg.uncompressedSize) {
          throw new NaiadError('NAIAD_FMT_UNSUPPORTED', 'compressed chunk digest arrays are not supported')
        }
        digestsLoc = { offset: dg.compressedOffset, size: dg.compressedSize, digest: dg.digest }
      }
    } else if (info !== undefined && info.ciCompressedSize > 0) {
      ciLoc = { offset: info.ciOffset, compressedSize: info.ciCompressedSize, uncompressedSize: info.ciUncompressedSize, compressor: info.ciCompressor }
    } else if (tail !== undefined) {
      // no ToC: walk the tar headers backwards (what the snapshotter does for pre-ToC blobs)
      let cur = size
      for (let n = 0; n < 16 && cur >= TAR_HEADER_SIZE; n++) {
        const h = decodeTarHeader(await read(cur - TAR_HEADER_SIZE, TAR_HEADER_SIZE, 'tar header'))
        const start = cur - TAR_HEADER_SIZE - h.size
        if (start < 0) corrupt(`tar header ${JSON.stringify(h.name)} declares ${h.size} bytes, more than precede it`)
        if (h.name === TOC_ENTRY.BLOB_META) {
          if (h.size < CI_HEADER_SIZE) corrupt(`${TOC_ENTRY.BLOB_META} section of ${h.size} bytes cannot hold the CI header`)
          const hdr = decodeCiHeader(await read(start + h.size - CI_HEADER_SIZE, CI_HEADER_SIZE, 'CI header'))
          if (hdr.ciOffset !== start || hdr.ciCompressedSize !== h.size - CI_HEADER_SIZE) corrupt(`CI header (${hdr.ciOffset}+${hdr.ciCompressedSize}) does not match its ${TOC_ENTRY.BLOB_META} section (${start}+${h.size - CI_HEADER_SIZE})`)
          ciLoc = { offset: start, compressedSize: hdr.ciCompressedSize, uncompressedSize: hdr.ciUncompressedSize, compressor: undefined }
        } else if (h.name === TOC_ENTRY.BLOB_DIGEST) {
          digestsLoc = { offset: start, size: h.size }
        }
        if (h.name === TOC_ENTRY.BLOB_RAW) break
        cur = start
      }
    } else if (legacyHeaderAtEof) {
      const hdr = decodeCiHeader(await read(size - CI_HEADER_SIZE, CI_HEADER_SIZE, 'CI header'))
      ciLoc = { offset: hdr.ciOffset, compressedSize: hdr.ciCompressedSize, uncompressedSize: hdr.ciUncompressedSize, compressor: undefined }
      metaEnd = size
    }

    if (info !== undefined && ciLoc !== undefined && info.ciCompressedSize > 0) {
      if (info.ciOffset !== ciLoc.offset || info.ciCompressedSize !== ciLoc.compressedSize || info.ciUncompressedSize !== ciLoc.uncompressedSize) {
        corrupt(`CI at ${ciLoc.offset}+${ciLoc.compressedSize} (${ciLoc.uncompressedSize} uncompressed), the blob table says ${info.ciOffset}+${info.ciCompressedSize} (${info.ciUncompressedSize})`)
      }
    }

    const compressor = opts.compressor ?? info?.compressor
    const digester = opts.digester ?? info?.digester

    // --- no chunk-info table: a blob without chunks
    if (ciLoc === undefined) {
      if (toc === undefined) corrupt('blob has neither a ToC nor a chunk-info table')
      if (info !== undefined && info.chunkCount > 0) corrupt(`blob has no chunk-info table, the blob table says ${info.chunkCount} chunks`)
      return new BlobReader({
        src,
        features: info?.features ?? (WRITER_BASE_FEATURES),
        ciVersion: 1,
        entries: [],
        digests: undefined,
        ciRaw: Buffer.alloc(0),
        ciHeader: undefined,
        ciHeaderBytes: undefined,
        toc,
        tocDigest,
        tocSize,
        compressor,
        digester
      })
    }

    // --- CI header and CI array
    const ciEnd = ciLoc.offset + ciLoc.compressedSize + CI_HEADER_SIZE
    if (ciEnd > metaEnd) corrupt(`chunk-info table at ${ciLoc.offset}+${ciLoc.compressedSize} (+ ${CI_HEADER_SIZE} B header) runs past ${metaEnd}`)
    const ciBuf = await read(ciLoc.offset, ciLoc.compressedSize + CI_HEADER_SIZE, 'chunk-info table')
    const headerBytes = Buffer.from(ciBuf.subarray(ciLoc.compressedSize))
    const header = decodeCiHeader(headerBytes)
    if (ciLoc.headerDigest !== undefined && !ciLoc.headerDigest.equals(ZERO_DIGEST) && !ciLoc.headerDigest.equals(sha256(headerBytes))) {
      corrupt('CI header does not match its sha256 in the ToC')
    }
    if (header.ciOffset !== ciLoc.offset || header.ciCompressedSize !== ciLoc.compressedSize || header.ciUncompressedSize !== ciLoc.uncompressedSize) {
      corrupt(`CI header says ${header.ciOffset}+${header.ciCompressedSize} (${header.ciUncompressedSize}), its location says ${ciLoc.offset}+${ciLoc.compressedSize} (${ciLoc.uncompressedSize})`)
    }
    const ciCompressor = compressorFromId(header.ciCompressor, 'CI header')
    if (ciLoc.compressor !== undefined && ciLoc.compressor !== ciCompressor) corrupt(`CI compressor is ${ciCompressor} in the header, ${ciLoc.compressor} in the ToC/blob table`)
    const features = header.features
    for (const [bit, what] of UNSUPPORTED_FEATURES) {
      if ((features & bit) !== 0) throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `${what} are not supported (blob features 0x${features.toString(16)})`)
    }
    if ((features & BLOB_FEATURE.ALIGNED) === 0) throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `unaligned chunks (RAFS v5 blobs) are not supported (blob features 0x${features.toString(16)})`)
    const ciVersion: 1 | 2 = (features & BLOB_FEATURE.CHUNK_INFO_V2) !== 0 ? 2 : 1
    const esz = ciEntrySize(ciVersion)
    const count = header.ciEntries
    if (count === 0 || count > MAX_CHUNKS_PER_BLOB) corrupt(`CI header declares ${count} chunks`)
    if (header.ciUncompressedSize !== count * esz) corrupt(`CI array is ${header.ciUncompressedSize} bytes, ${count} v${ciVersion} entries need ${count * esz}`)
    if (info !== undefined && info.chunkCount > 0 && info.chunkCount !== count) corrupt(`CI header declares ${count} chunks, the blob table ${info.chunkCount}`)
    const ciRaw = decompressChunk(ciCompressor, Buffer.from(ciBuf.subarray(0, ciLoc.compressedSize)), header.ciUncompressedSize)
    if (ciLoc.digest !== undefined && !ciLoc.digest.equals(ZERO_DIGEST) && !ciLoc.digest.equals(sha256(ciRaw))) {
      corrupt('chunk-info array does not match its sha256 in the ToC')
    }

    // chunk data lies before the chunk-info table
    const dataEnd = ciLoc.offset
    const entries: CiEntry[] = new Array<CiEntry>(count)
    for (let i = 0; i < count; i++) {
      const e = decodeCiEntry(ciRaw, i * esz, ciVersion)
      if (e.flags !== undefined) {
        if ((e.flags & ~0x1f) !== 0) corrupt(`chunk ${i}: unknown CI flags 0x${e.flags.toString(16)}`)
        if ((e.flags & (CI_V2_FLAG.ZRAN | CI_V2_FLAG.BATCH | CI_V2_FLAG.ENCRYPTED)) !== 0) {
          throw new NaiadError('NAIAD_FMT_UNSUPPORTED', `chunk ${i}: ZRAN, batch and encrypted chunks are not supported (flags 0x${e.flags.toString(16)})`)
        }
      }
      if (e.compressedSize === 0) corrupt(`chunk ${i}: compressed size 0`)
      if (e.compressedOffset + e.compressedSize > dataEnd) {
        corrupt(`chunk ${i} (${e.compressedOffset}+${e.compressedSize}) points past the chunk data, which ends at ${dataEnd}`)
      }
      if (!e.compressed && e.compressedSize !== e.uncompressedSize) corrupt(`chunk ${i}: stored raw but ${e.compressedSize} != ${e.uncompressedSize} bytes`)
      entries[i] = e
    }

    // --- chunk digests
    let digests: Buffer | undefined
    if ((features & BLOB_FEATURE.INLINED_CHUNK_DIGEST) !== 0) {
      if (digestsLoc === undefined && hasTarHeaders && toc === undefined) {
        // without ToC the digest array follows the blob.meta tar header
        digestsLoc = { offset: ciEnd + TAR_HEADER_SIZE, size: count * CHUNK_DIGEST_SIZE }
      }
      if (digestsLoc === undefined) corrupt('blob declares inlined chunk digests but has no digest array')
      if (digestsLoc.size !== count * CHUNK_DIGEST_SIZE) corrupt(`chunk digest array is ${digestsLoc.size} bytes, ${count} chunks need ${count * CHUNK_DIGEST_SIZE}`)
      if (digestsLoc.offset + digestsLoc.size > metaEnd) corrupt(`chunk digest array at ${digestsLoc.offset}+${digestsLoc.size} runs past ${metaEnd}`)
      digests = await read(digestsLoc.offset, digestsLoc.size, 'chunk digest array')
      if (digestsLoc.digest !== undefined && !digestsLoc.digest.equals(ZERO_DIGEST) && !digestsLoc.digest.equals(sha256(digests))) {
        corrupt('chunk digest array does not match its sha256 in the ToC')
      }
    }

    return new BlobReader({
      src,
      features,
      ciVersion,
      entries,
      digests,
      ciRaw,
      ciHeader: header,
      ciHeaderBytes: headerBytes,
      toc,
      tocDigest,
      tocSize,
      compressor,
      digester
    })
  }

  /** Chunk `i` as the chunk-info table describes it. */
  chunk (i: number): BlobChunk {
    const e = this.entries[i]
    if (e === undefined) corrupt(`chunk index ${i} is out of range (blob has ${this.chunkCount} chunks)`)
    const out: BlobChunk = {
      compressedOffset: e.compressedOffset,
      compressedSize: e.compressedSize,
      uncompressedOffset: e.uncompressedOffset,
      uncompressedSize: e.uncompressedSize,
      compressed: e.compressed
    }
    if (this.digests !== undefined) out.digest = Buffer.from(this.digests.subarray(i * CHUNK_DIGEST_SIZE, (i + 1) * CHUNK_DIGEST_SIZE))
    if (e.flags !== undefined && (e.flags & CI_V2_FLAG.HAS_CRC32) !== 0 && e.data !== undefined) out.crc32 = Number(e.data & 0xffffffffn)
    return out
  }

  /** Chunk `i` as a ChunkRef of `blob` (needs the digest array). */
  chunkRef (i: number, blob: BlobInfo): ChunkRef {
    const c = this.chunk(i)
    if (c.digest === undefined) throw new NaiadError('NAIAD_FMT_UNSUPPORTED', 'blob has no inlined chunk digests')
    return {
      blob,
      index: i,
      digest: c.digest,
      compressedOffset: c.compressedOffset,
      compressedSize: c.compressedSize,
      uncompressedOffset: c.uncompressedOffset,
      uncompressedSize: c.uncompressedSize,
      compressed: c.compressed,
      ...(c.crc32 !== undefined ? { crc32: c.crc32 } : {})
    }
  }

  /**
   * Fetch, decompress and verify chunk `i`. Throws NAIAD_FMT_DECOMPRESS or NAIAD_FMT_CHUNK_DIGEST
   * rather than return bytes that do not match.
   */
  async readChunk (i: number, opts: { signal?: AbortSignal } = {}): Promise<Buffer> {
    const c = this.chunk(i)
    const raw = await this.src.read(c.compressedOffset, c.compressedSize, opts)
    if (raw.length !== c.compressedSize) throw new NaiadError('NAIAD_FMT_TRUNCATED', `short read of chunk ${i}: ${raw.length} of ${c.compressedSize} bytes`)
    let compressor = this.compressor
    if (c.compressed && compressor === undefined) compressor = isZstdFrame(raw) ? 'zstd' : 'lz4_block'
    const data = decompressChunk(c.compressed ? (compressor as Compressor) : 'none', raw, c.uncompressedSize)
    if (c.compressed && this.compressor === undefined) this.compressor = compressor
    if (c.digest !== undefined) {
      if (this.digester !== undefined) {
        if (!chunkDigest(this.digester, data).equals(c.digest)) throw digestError(i, this.digester)
      } else {
        const found = (['blake3', 'sha256'] as const).find(d => chunkDigest(d, data).equals(c.digest as Buffer))
        if (found === undefined) throw digestError(i, 'blake3 or sha256')
        this.digester = found
      }
    }
    return data
  }

  /**
   * Decompress and verify one chunk fetched by the caller (e.g. a FUSE daemon's own Range
   * request): `compressedBytes` must be exactly the chunk's stored bytes.
   */
  static decodeChunk (ref: ChunkRef, compressedBytes: Buffer): Buffer {
    if (compressedBytes.length !== ref.compressedSize) {
      throw new NaiadError('NAIAD_FMT_TRUNCATED', `chunk ${ref.index} of blob ${ref.blob.blobId}: got ${compressedBytes.length} bytes, expected ${ref.compressedSize}`)
    }
    const data = decompressChunk(ref.compressed ? ref.blob.compressor : 'none', compressedBytes, ref.uncompressedSize)
    if (!chunkDigest(ref.blob.digester, data).equals(ref.digest)) {
      throw new NaiadError('NAIAD_FMT_CHUNK_DIGEST', `chunk ${ref.index} of blob ${ref.blob.blobId} does not match its ${ref.blob.digester} digest ${ref.digest.toString('hex')}`)
    }
    return data
  }

  /**
   * The chunk-info table in nydusd's cache layout (`<blob id>.blob.meta`): the uncompressed CI
   * array zero-padded to 4 KiB, then the 4096-byte CI header. Empty for a blob without chunks.
   */
  blobMeta (): Buffer {
    if (this.ciHeaderBytes === undefined) return Buffer.alloc(0)
    return Buffer.concat([this.ciRaw, Buffer.alloc(roundUp4k(this.ciRaw.length) - this.ciRaw.length), this.ciHeaderBytes])
  }
}

function digestError (i: number, digester: string): NaiadError {
  return new NaiadError('NAIAD_FMT_CHUNK_DIGEST', `chunk ${i} does not match its ${digester} digest`)
}

// =============================================================================================
// local files

export interface FileBlobSource extends BlobSource {
  close (): Promise<void>
  [Symbol.asyncDispose] (): Promise<void>
}

/** A BlobSource over a local file (keeps the file open until `close()`). */
export async function fileBlobSource (path: string): Promise<FileBlobSource> {
  let fh: FileHandle
  let size: number
  try {
    fh = await open(path, 'r')
    size = (await fh.stat()).size
  } catch (err) {
    throw ioError('open blob', path, err)
  }
  const close = async (): Promise<void> => { await fh.close().catch(() => undefined) }
  return {
    size,
    async read (offset: number, length: number, opts: { signal?: AbortSignal } = {}): Promise<Buffer> {
      throwIfAborted(opts.signal)
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw new NaiadError('NAIAD_INTERNAL', `invalid read of ${length} bytes at ${offset}`)
      }
      if (offset + length > size) throw new NaiadError('NAIAD_FMT_TRUNCATED', `read of ${length} bytes at ${offset} is beyond the end of ${path} (${size} bytes)`)
      const buf = Buffer.allocUnsafe(length)
      let got: number
      try {
        got = await preadFully(fh, buf, offset)
      } catch (err) {
        throw ioError('read blob', path, err)
      }
      if (got !== length) throw new NaiadError('NAIAD_FMT_TRUNCATED', `${path} ended at ${offset + got}, expected ${length} bytes at ${offset}`)
      return buf
    },
    close,
    [Symbol.asyncDispose]: close
  }
}
