/**
 * @packageDocumentation
 * The fsdaemon's blob sources: where compressed byte ranges of data blobs come from.
 *
 * - `RegistryRangeSource`: the origin registry, through lib/registry (auth, retries, deadlines);
 * - `MirrorRangeSource`: an HTTP mirror per docs/mirror-contract.md (the node's p2p peer), with a
 *   periodic /healthz check;
 * - `LocalDirRangeSource`: a directory of blob files named by blob id;
 * - `SourceChain`: the ChunkFetcher that tries them in order, with fallback and per-source stats;
 * - `FetchGate`: keeps prefetch behind on-demand fetches (one per daemon).
 *
 * @example
 *   const gate = new FetchGate()
 *   const mirror = new MirrorRangeSource({ logger }, { url: 'http://127.0.0.1:65001', repository: 'app', origin: 'https://registry.example' })
 *   const chain = new SourceChain({ sources: [mirror, new RegistryRangeSource({ store, logger })], gate, logger })
 *   mirror.start()
 *   const { data, source } = await chain.fetchRange(blobId, 0, 4095)
 */
export { RegistryRangeSource, type BlobRangeStore, type RegistryRangeSourceDeps, type RegistryRangeSourceOptions } from './registry-source.ts'
export { MirrorRangeSource, type MirrorRangeSourceDeps, type MirrorRangeSourceOptions, type MirrorStats } from './mirror-source.ts'
export { LocalDirRangeSource, type LocalDirRangeSourceDeps, type LocalDirRangeSourceOptions } from './local-source.ts'
export { SourceChain, type SourceChainDeps, type SourceChainOptions, type SourceStats, type SourceCause } from './source-chain.ts'
export { FetchGate, type FetchGateDeps, type FetchGateOptions } from './gate.ts'
