/**
 * @packageDocumentation
 * Background prefetch of a mount: the prefetch table's files first, then optionally the rest,
 * with bounded concurrency and bandwidth, always behind on-demand reads (FetchGate).
 *
 * @example
 *   const p = new Prefetcher({ cacheFor, fetcher: chain, gate: chain.gate, logger }, { files, rest: allChunks, concurrency: 4, bandwidthBytesPerSec: 0 })
 *   p.start()
 *   … p.stats() …
 *   await p.close()
 */
export { Prefetcher, type PrefetchFile, type PrefetcherDeps, type PrefetcherOptions, type PrefetchState, type PrefetchStats } from './prefetcher.ts'
export { Throttle } from './throttle.ts'
