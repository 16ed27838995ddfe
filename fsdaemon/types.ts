/**
 * The fsdaemon's internal contracts, in the words of their consumers:
 *
 *   FUSE session ──▶ RafsFilesystem (fs/) ──▶ BlobCache (cache/) ──▶ SourceChain (fetch/)
 *                                                 ▲                     ├─ mirrors (p2p peer…)
 *                        Prefetcher (prefetch/) ──┘                     ├─ origin registry
 *                                                                       └─ local blob dir
 *
 * - A `RangeSource` fetches raw (compressed) byte ranges of a data blob from one place.
 * - A `SourceChain` tries its sources in order (healthy mirrors first, the origin last) and can
 *   be told to skip a source that served bad bytes.
 * - A `BlobCache` owns one blob's on-disk cache (sparse file of uncompressed chunks + persisted
 *   ready-bitmap), fetches missing chunks through a chain (single-flight, adjacent chunks merged
 *   into one Range request), verifies every chunk against its digest, and serves reads.
 */
import type { BlobInfo, ChunkRef } from '../lib/format/types.ts'
import type { BlobStats } from '../lib/fsdapi/index.ts'

export type FetchPriority = 'ondemand' | 'prefetch'

export interface FetchOptions {
  signal?: AbortSignal
  priority?: FetchPriority
  /**
   * Where a source that reads a response body should put the bytes (a buffer of exactly `size`
   * bytes, e.g. from the cache's pool of reusable buffers); default: a new buffer.
   */
  alloc?: (size: number) => Buffer
  /**
   * Called while a source that can (the origin over plain HTTP) receives the range: bytes
   * [0, filled) of `data` (a buffer from `alloc`) hold the range's first bytes, from `source`
   * (set by the SourceChain). They may be written again, with what a retry receives, until the
   * fetch settles: a consumer checks what it reads (the cache verifies every chunk's digest on
   * its own copy of the decoded bytes).
   */
  onProgress?: (data: Buffer, filled: number, source?: string) => void
}

export interface RangeSource {
  /** Stable name for logs and metrics: `origin`, `mirror:http://127.0.0.1:65001`, `local:/dir`. */
  readonly name: string
  /** 'origin' | 'mirror' | 'local' */
  readonly kind: 'origin' | 'mirror' | 'local'
  /** Optional: ranges read so far straight into the caller's buffers (plain-HTTP direct reads). */
  directReads? (): number
  /**
   * Returns exactly the bytes [start, end] (inclusive) of the blob, or throws (NaiadError with a
   * REG/FS code; never returns short data).
   */
  fetch (blobId: string, start: number, end: number, opts?: FetchOptions): Promise<Buffer>
  /** False while a health check says the source should be skipped (mirrors). */
  healthy (): boolean
  close (): Promise<void>
}

export interface FetchResult {
  data: Buffer
  /** The name of the source that served it. */
  source: string
}

export interface ChunkFetcher {
  /**
   * Fetches [start, end] of a blob from the first healthy source that succeeds, skipping the
   * sources named in `exclude` (they served bad bytes for this range). Throws the last error when
   * every source failed.
   */
  fetchRange (blobId: string, start: number, end: number, opts?: FetchOptions & { exclude?: ReadonlySet<string> }): Promise<FetchResult>
}

/** A blob cache's counters: the same shape the control API reports per blob. */
export type BlobCacheStats = BlobStats

export interface ChunkReader {
  /**
   * Reads `length` bytes at `offset` within the uncompressed chunk `ref` (offset + length ≤
   * ref.uncompressedSize), fetching and verifying the chunk first if it is not cached. With
   * `into` (`length` bytes), cached bytes are read straight into it and it is returned; other
   * results (fresh from a fetch) may come in another buffer.
   */
  read (ref: ChunkRef, offset: number, length: number, fetcher: ChunkFetcher, opts?: FetchOptions & { into?: Buffer }): Promise<Buffer>
  /** Makes the chunks ready (fetching missing ones, merged), e.g. for prefetch. */
  ensure (refs: readonly ChunkRef[], fetcher: ChunkFetcher, opts?: FetchOptions): Promise<void>
  isReady (chunkIndex: number): boolean
  /**
   * If the chunk is ready in the cache file, reads `into.length` bytes at `offset` within it
   * straight into `into`, synchronously (a pread of the cache file, which is never on a FUSE
   * mount), and returns true. False when the chunk is not ready or the read fell short or failed:
   * the caller then uses read(), which fetches, retries and reports.
   */
  readReadySync? (ref: ChunkRef, offset: number, into: Buffer): boolean
  /** The cache file (chunk bytes at their uncompressedOffset), if there is one. */
  readonly dataPath?: string
  /** The ready bit of every chunk (bit i of byte i >> 3), in shared memory, read-only. */
  readonly readyBits?: Uint8Array
  /** Counts cache hits served by someone else from `dataPath` (FUSE reader threads). */
  countHits? (n: number): void
  readonly blob: BlobInfo
  stats (): BlobCacheStats
}
