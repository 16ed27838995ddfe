/**
 * @packageDocumentation
 * The chunk cache: per blob a sparse file of uncompressed chunks (`<blobId>.blob.data`, the EROFS
 * device content) and a persisted ready-bitmap (`<blobId>.chunk_map`), shared by every mount.
 *
 * - `BlobCache` (a ChunkReader): single-flight, merged Range requests, every chunk verified before
 *   it is written or served, bitmap persisted only for durable data;
 * - `CacheManager`: owns the directory (lock, one BlobCache per blob with leases, LRU eviction of
 *   unused blobs under a disk quota).
 *
 * @example
 *   const caches = new CacheManager({ logger }, { dir: '/var/lib/naiad/cache', quotaBytes: 20 * 2 ** 30 })
 *   await caches.open()
 *   const lease = await caches.acquire(blob)
 *   const bytes = await lease.cache.read(ref, 0, 4096, chain)
 *   await lease.release()
 *   await caches.close()
 */
export { BlobCache, DEFAULT_MAX_REQUEST_BYTES, type BlobCacheDeps, type BlobCacheOptions, type BlobCacheDetailStats } from './blob-cache.ts'
export { CacheManager, type BlobCacheLease, type CacheManagerDeps, type CacheManagerOptions, type CacheUsage, type CachedBlob } from './cache-manager.ts'
export { planRequests, type RangeRequest } from './merge.ts'
export { lockDir, type DirLock } from './lock.ts'
export { CHUNK_MAP_MAGIC, CHUNK_MAP_VERSION, CHUNK_MAP_HEADER_SIZE, chunkMapSize, decodeChunkMap, encodeChunkMapHeader } from './chunk-map.ts'
