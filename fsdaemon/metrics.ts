/**
 * Prometheus metrics of the fsdaemon, computed from the daemon's counters at scrape time (no
 * per-chunk or per-op work on the hot path).
 */
import { Registry, Gauge, collectDefaultMetrics } from 'prom-client'
import type { MountInfo } from '../lib/fsdapi/index.ts'

interface Snapshot { mounts: MountInfo[], cacheBytes: number, sources: Record<string, { bytes: number, errors: number, directReads: number }> }

export class FsdMetrics {
  readonly registry = new Registry()

  constructor (snapshot: () => Snapshot) {
    collectDefaultMetrics({ register: this.registry, prefix: 'naiad_fsd_process_' })
    const r = this.registry
    const g = (name: string, help: string, labelNames: string[], collect: (gauge: Gauge) => void): void => {
      new Gauge({ name, help, labelNames, registers: [r], collect () { collect(this) } })
    }
    g('naiad_fsd_mounts', 'mounts served', [], (x) => { x.set(snapshot().mounts.length) })
    g('naiad_fsd_cache_bytes', 'bytes used by the chunk cache on disk', [], (x) => { x.set(snapshot().cacheBytes) })
    g('naiad_fsd_source_bytes_total', 'compressed bytes fetched, per source', ['source'], (x) => {
      x.reset()
      for (const [source, s] of Object.entries(snapshot().sources)) x.set({ source }, s.bytes)
    })
    g('naiad_fsd_source_errors_total', 'failed fetches, per source', ['source'], (x) => {
      x.reset()
      for (const [source, s] of Object.entries(snapshot().sources)) x.set({ source }, s.errors)
    })
    g('naiad_fsd_source_direct_reads_total', 'Range responses read straight into the cache\'s buffers (plain HTTP, no HTTP library), per source', ['source'], (x) => {
      x.reset()
      for (const [source, s] of Object.entries(snapshot().sources)) x.set({ source }, s.directReads)
    })
    const perMount = (name: string, help: string, f: (m: MountInfo) => number): void => {
      g(name, help, ['mountpoint'], (x) => {
        x.reset()
        for (const m of snapshot().mounts) x.set({ mountpoint: m.mountpoint }, f(m))
      })
    }
    perMount('naiad_fsd_reads_total', 'file reads served', m => m.reads)
    perMount('naiad_fsd_read_bytes_total', 'file bytes served', m => m.bytesRead)
    perMount('naiad_fsd_eio_total', 'reads answered with EIO after every source failed', m => m.eio)
    perMount('naiad_fsd_passthrough_opens_total', 'opens of wholly cached files handed to the kernel (FUSE passthrough)', m => m.passthroughOpens)
    perMount('naiad_fsd_prefetch_chunks_done', 'chunks prefetched', m => m.prefetch.chunksDone)
    const perBlob = (name: string, help: string, f: (b: MountInfo['blobs'][number]) => number): void => {
      g(name, help, ['blob'], (x) => {
        x.reset()
        const seen = new Set<string>()
        for (const m of snapshot().mounts) {
          for (const b of m.blobs) {
            if (seen.has(b.blobId)) continue
            seen.add(b.blobId)
            x.set({ blob: b.blobId.slice(0, 16) }, f(b))
          }
        }
      })
    }
    perBlob('naiad_fsd_cache_hits_total', 'chunk reads served from the cache', b => b.cacheHits)
    perBlob('naiad_fsd_chunks_verified_total', 'chunks fetched and verified against their digest', b => b.chunksVerified)
    perBlob('naiad_fsd_digest_failures_total', 'chunks that failed verification (never served)', b => b.digestFailures)
    perBlob('naiad_fsd_ready_chunks', 'chunks in the cache', b => b.readyChunks)
  }

  async text (): Promise<string> {
    return await this.registry.metrics()
  }
}
