/**
 * CacheManager: owns the cache directory of a daemon.
 *
 * - `acquire(blob)` opens the blob's BlobCache (or shares the open one: one per blob id, however
 *   many mounts use it) and returns a lease; `release()` on the last lease flushes and closes it.
 * - Last use is tracked per blob (in memory, and as the chunk_map's mtime across restarts).
 * - A disk quota (allocated bytes of the cache files, sparse holes not counted) is enforced by
 *   evicting whole blobs that no lease holds, least recently used first: after each release,
 *   every `quotaCheckIntervalMs`, and on `enforceQuota()`. A blob in use is never evicted; if
 *   the blobs in use alone exceed the quota, a warning says so.
 * - An exclusive lock (lock.ts) keeps a second daemon off the directory.
 * - `close()` closes every open cache (flushing its bitmap) and releases the lock. Reopening
 *   the directory later finds the ready chunks of every blob again.
 */
import { readdir, rm, stat, utimes, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { NaiadError, ioError } from '../../lib/errors/index.ts'
import type { ChunkDecodePool } from '../../lib/format/decode-pool.ts'
import type { BlobInfo } from '../../lib/format/types.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import { checkBlobId } from '../fetch/util.ts'
import { BlobCache, type BlobCacheOptions } from './blob-cache.ts'
import { lockDir, type DirLock } from './lock.ts'

export interface CacheManagerDeps {
  logger?: Logger
  /** Decodes fetched chunks for every blob cache (default: the process-wide pool). */
  decoder?: ChunkDecodePool
  /** Clock (tests). */
  now?: () => number
}

export interface CacheManagerOptions extends Pick<BlobCacheOptions, 'maxRequestBytes' | 'maxGapBytes' | 'flushIntervalMs'> {
  dir: string
  /** Disk quota in bytes; 0 (default) means unlimited. */
  quotaBytes?: number
  /** Period of the background usage scan and quota check (default 30 s; 0 disables the timer). */
  quotaCheckIntervalMs?: number
}

export interface BlobCacheLease {
  readonly cache: BlobCache
  /** Gives the cache back; the last release closes it. Safe twice. */
  release: () => Promise<void>
}

export interface CachedBlob {
  blobId: string
  /** Allocated bytes of its cache files. */
  bytes: number
  /** Leases held now. */
  users: number
  /** Milliseconds since the epoch. */
  lastUsed: number
}

export interface CacheUsage {
  dir: string
  quotaBytes: number
  totalBytes: number
  blobs: CachedBlob[]
  evictions: number
  evictedBytes: number
}

const FILE = /^([0-9a-f]{64})\.(blob\.data|chunk_map)$/

interface Entry { cache: BlobCache, users: number }

export class CacheManager {
  readonly dir: string
  readonly quotaBytes: number
  private readonly log: Logger
  private readonly decoder: ChunkDecodePool | undefined
  private readonly now: () => number
  private readonly cacheOptions: Pick<BlobCacheOptions, 'maxRequestBytes' | 'maxGapBytes' | 'flushIntervalMs'>
  private readonly quotaCheckIntervalMs: number
  private readonly entries = new Map<string, Entry>()
  private readonly lastUsed = new Map<string, number>()
  private lock: DirLock | undefined
  private chain: Promise<unknown> = Promise.resolve()
  private state: 'new' | 'opening' | 'open' | 'closed' = 'new'
  private opening: Promise<void> | undefined
  private closing: Promise<void> | undefined
  private timer: NodeJS.Timeout | undefined
  private evictions = 0
  private evictedBytes = 0
  private lastTotal = 0

  constructor (deps: CacheManagerDeps, options: CacheManagerOptions) {
    this.dir = options.dir
    this.quotaBytes = options.quotaBytes ?? 0
    this.quotaCheckIntervalMs = options.quotaCheckIntervalMs ?? 30_000
    if (!(this.quotaBytes >= 0) || !(this.quotaCheckIntervalMs >= 0)) {
      throw new NaiadError('NAIAD_CFG_INVALID', `cache quota ${this.quotaBytes} and check interval ${this.quotaCheckIntervalMs} must not be negative`)
    }
    this.log = (deps.logger ?? nullLogger()).child({ component: 'fsdaemon.cache', dir: options.dir })
    this.decoder = deps.decoder
    this.now = deps.now ?? Date.now
    this.cacheOptions = {
      ...(options.maxRequestBytes !== undefined ? { maxRequestBytes: options.maxRequestBytes } : {}),
      ...(options.maxGapBytes !== undefined ? { maxGapBytes: options.maxGapBytes } : {}),
      ...(options.flushIntervalMs !== undefined ? { flushIntervalMs: options.flushIntervalMs } : {})
    }
  }

  /** Runs `fn` after every structural operation queued before it (acquire, release, evict). */
  private async serial<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn)
    this.chain = run.catch(() => undefined)
    return await run
  }

  /** Creates the directory, takes its lock (NAIAD_FS_CACHE_LOCKED if taken), enforces the quota. Idempotent. */
  async open (): Promise<void> {
    if (this.state === 'closed') throw new NaiadError('NAIAD_CLOSED', `cache manager for ${this.dir} is closed`)
    this.opening ??= (async () => {
      this.state = 'opening'
      try {
        await mkdir(this.dir, { recursive: true, mode: 0o700 })
      } catch (err) {
        this.state = 'closed'
        throw ioError('create cache dir', this.dir, err)
      }
      try {
        this.lock = await lockDir(this.dir)
      } catch (err) {
        this.state = 'closed'
        throw err
      }
      this.state = 'open'
      const usage = await this.usage()
      this.log.info({ blobs: usage.blobs.length, bytes: usage.totalBytes, quotaBytes: this.quotaBytes }, 'cache opened')
      await this.enforceQuota()
      if (this.quotaCheckIntervalMs > 0) this.scheduleCheck()
    })()
    await this.opening
  }

  private scheduleCheck (): void {
    this.timer = setTimeout(() => {
      this.timer = undefined
      const check = this.quotaBytes > 0 ? this.enforceQuota() : this.usage()
      check
        .catch((err: unknown) => { this.log.warn({ err }, 'quota check failed') })
        .finally(() => { if (this.state === 'open') this.scheduleCheck() })
    }, this.quotaCheckIntervalMs)
    this.timer.unref()
  }

  private checkOpen (): void {
    if (this.state !== 'open') throw new NaiadError(this.state === 'closed' ? 'NAIAD_CLOSED' : 'NAIAD_INTERNAL', `cache manager for ${this.dir} is ${this.state === 'closed' ? 'closed' : 'not open'}`)
  }

  /**
   * The shared cache of `blob`, opened if needed. Every acquire needs one release. Throws
   * NAIAD_FMT_CORRUPT if the blob id is known with a different shape (chunk count, size).
   */
  async acquire (blob: BlobInfo): Promise<BlobCacheLease> {
    this.checkOpen()
    checkBlobId(blob.blobId)
    const cache = await this.serial(async () => {
      this.checkOpen()
      let e = this.entries.get(blob.blobId)
      if (e !== undefined) {
        const b = e.cache.blob
        if (b.chunkCount !== blob.chunkCount || b.uncompressedSize !== blob.uncompressedSize) {
          throw new NaiadError('NAIAD_FMT_CORRUPT', `blob ${blob.blobId} is in use with ${b.chunkCount} chunks / ${b.uncompressedSize} bytes, now asked for with ${blob.chunkCount} / ${blob.uncompressedSize}`)
        }
        e.users++
      } else {
        const c = new BlobCache({ logger: this.log, ...(this.decoder !== undefined ? { decoder: this.decoder } : {}) }, { ...this.cacheOptions, dir: this.dir, blob })
        await c.open()
        e = { cache: c, users: 1 }
        this.entries.set(blob.blobId, e)
      }
      this.lastUsed.set(blob.blobId, this.now())
      return e.cache
    })
    let released = false
    return {
      cache,
      release: async () => {
        if (released) return
        released = true
        await this.release(blob.blobId)
      }
    }
  }

  private async release (blobId: string): Promise<void> {
    await this.serial(async () => {
      const e = this.entries.get(blobId)
      if (e === undefined) return
      e.users--
      const now = this.now()
      this.lastUsed.set(blobId, now)
      if (e.users > 0) return
      this.entries.delete(blobId)
      await e.cache.close()
      // the chunk_map's mtime carries the last use across restarts
      const t = new Date(now)
      await utimes(e.cache.mapPath, t, t).catch(() => undefined)
    })
    if (this.state === 'open' && this.quotaBytes > 0) {
      await this.enforceQuota().catch((err: unknown) => { this.log.warn({ err }, 'quota check failed') })
    }
  }

  /** Blobs in the directory with their disk use, users and last use. */
  async usage (): Promise<CacheUsage> {
    const byId = new Map<string, CachedBlob>()
    let names: string[]
    try {
      names = await readdir(this.dir)
    } catch (err) {
      throw ioError('list cache dir', this.dir, err)
    }
    for (const name of names) {
      const m = FILE.exec(name)
      if (m === null) continue
      const id = m[1] as string
      let st
      try {
        st = await stat(join(this.dir, name))
      } catch {
        continue // evicted meanwhile
      }
      const b = byId.get(id) ?? { blobId: id, bytes: 0, users: this.entries.get(id)?.users ?? 0, lastUsed: 0 }
      b.bytes += st.blocks * 512
      // the chunk_map's mtime is the last use (set on release); the data file's only if alone
      if (m[2] === 'chunk_map' || b.lastUsed === 0) b.lastUsed = st.mtimeMs
      byId.set(id, b)
    }
    for (const b of byId.values()) {
      const known = this.lastUsed.get(b.blobId)
      if (known !== undefined) b.lastUsed = known
    }
    const blobs = [...byId.values()].sort((a, b) => a.lastUsed - b.lastUsed || a.blobId.localeCompare(b.blobId))
    this.lastTotal = blobs.reduce((n, b) => n + b.bytes, 0)
    return {
      dir: this.dir,
      quotaBytes: this.quotaBytes,
      totalBytes: this.lastTotal,
      blobs,
      evictions: this.evictions,
      evictedBytes: this.evictedBytes
    }
  }

  /**
   * Evicts unused blobs, least recently used first, until the cache fits its quota (no-op
   * without a quota). Returns the evicted blob ids.
   */
  async enforceQuota (): Promise<string[]> {
    if (this.quotaBytes <= 0) return []
    return await this.serial(async () => {
      if (this.state !== 'open') return []
      const usage = await this.usage()
      let total = usage.totalBytes
      const evicted: string[] = []
      for (const b of usage.blobs) {
        if (total <= this.quotaBytes) break
        if (this.entries.has(b.blobId)) continue
        await this.removeFiles(b.blobId)
        total -= b.bytes
        this.evictions++
        this.evictedBytes += b.bytes
        evicted.push(b.blobId)
        this.log.info({ blobId: b.blobId, bytes: b.bytes, lastUsed: new Date(b.lastUsed).toISOString() }, 'evicted an unused blob from the cache')
      }
      this.lastTotal = total
      if (total > this.quotaBytes) {
        this.log.warn({ totalBytes: total, quotaBytes: this.quotaBytes, inUse: this.entries.size }, 'cache over quota: the remaining blobs are in use')
      }
      return evicted
    })
  }

  /** Removes an unused blob's cache files (e.g. when its image is deleted). False if it is in use. */
  async remove (blobId: string): Promise<boolean> {
    checkBlobId(blobId)
    this.checkOpen()
    return await this.serial(async () => {
      if (this.entries.has(blobId)) return false
      await this.removeFiles(blobId)
      return true
    })
  }

  private async removeFiles (blobId: string): Promise<void> {
    for (const suffix of ['chunk_map', 'blob.data']) {
      const p = join(this.dir, `${blobId}.${suffix}`)
      try {
        await rm(p, { force: true })
      } catch (err) {
        throw ioError('remove cache file', p, err)
      }
    }
    this.lastUsed.delete(blobId)
  }

  /**
   * Disk use of the cache as of the last scan (open, each quota check, `usage()`; the background
   * check runs every `quotaCheckIntervalMs`). For metrics; `usage()` is exact.
   */
  usageBytes (): number { return this.lastTotal }

  /** Blob ids with an open cache and their lease counts. */
  inUse (): Record<string, number> {
    const out: Record<string, number> = {}
    for (const [id, e] of this.entries) out[id] = e.users
    return out
  }

  /** Flushes the ready bits of every open cache; they stay open (a handover ends the process next). */
  async flush (): Promise<void> {
    await Promise.all([...this.entries.values()].map(async e => { await e.cache.flush() }))
  }

  /** Flushes and closes every open cache (leases become unusable), releases the lock. Safe twice. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      await this.opening?.catch(() => undefined)
      if (this.timer !== undefined) clearTimeout(this.timer)
      this.timer = undefined
      const wasOpen = this.state === 'open'
      this.state = 'closed'
      if (!wasOpen) return
      await this.serial(async () => {
        const all = [...this.entries.values()]
        this.entries.clear()
        await Promise.all(all.map(async e => { await e.cache.close() }))
      })
      await this.lock?.release()
      this.log.info('cache closed')
    })()
    await this.closing
  }
}
