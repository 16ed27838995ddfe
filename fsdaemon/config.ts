/**
 * The fsdaemon's configuration (/etc/naiad/fsd.toml). Unknown keys are rejected; every key has a
 * default, so an empty file (or none at the default path) is a valid configuration.
 * docs/config/fsd.md is generated from this schema.
 */
import { s, type InferSchema } from '../lib/config/index.ts'

export const fsdConfigSchema = s.object({
  version: s.integer({ default: 1, min: 1, max: 1, description: 'configuration format version; must be 1' }),
  log: s.object({
    level: s.oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, { default: 'info', description: 'log level (JSON lines on stdout)' })
  }, { description: 'logging' }),
  socket: s.object({
    path: s.string({ default: '/run/naiad/fsd.sock', description: 'Unix socket of the control API (created with mode 0600)' })
  }, { description: 'the control API socket' }),
  state: s.object({
    dir: s.string({ default: '/var/lib/naiad/fsd', description: 'where the daemon records its mounts, so a restarted daemon cleans stale mounts and remounts them' })
  }, { description: 'daemon state' }),
  cache: s.object({
    dir: s.string({ default: '/var/lib/naiad/cache', description: 'chunk cache: <blob>.blob.data (sparse, uncompressed) and <blob>.chunk_map per blob, shared by all mounts' }),
    quota: s.size({ default: '20GiB', description: 'disk quota for the cache; whole blobs no mount uses are evicted, least recently used first' }),
    flush_interval: s.duration({ default: '1s', description: 'how often the persisted ready-bitmaps are brought up to date (after the data is durable)' })
  }, { description: 'the on-disk chunk cache' }),
  fetch: s.object({
    max_request_size: s.size({ default: '8MiB', description: 'adjacent missing chunks are merged into one Range request up to this size (chunks are decoded as their bytes arrive, so a larger request only costs memory)' }),
    readahead: s.size({ default: '32MiB', description: 'while a file is read sequentially, keep this much of what follows fetching in the background (0: off)' }),
    amplify: s.size({ default: '1MiB', description: 'on a miss, also fetch the following chunks of the same file up to this many bytes' }),
    timeout: s.duration({ default: '30s', description: 'idle timeout of one request to a source' }),
    retries: s.integer({ default: 3, min: 0, max: 20, description: 'retries per source (with backoff) before falling back to the next source' }),
    plain_http: s.boolean({ default: false, description: 'use plain HTTP for every registry (default: only loopback registries)' }),
    decoder_threads: s.integer({ default: 0, min: 0, max: 64, description: 'threads that decompress, verify and cache fetched chunks; 0: one fewer than the CPUs, at least 1 and at most 4 (on 2 vCPUs one thread beat two: 0.74-0.88 s vs 0.79-1.05 s per cold 256 MiB read)' }),
    direct_http: s.boolean({ default: true, description: 'read plain-HTTP Range responses of the origin straight into the cache\'s buffers, without an HTTP library (anything but a 206 of exactly the bytes asked for is asked again through it; a registry that redirects blobs or answers ranges chunked turns this off for itself)' })
  }, { description: 'fetching chunks from blob sources' }),
  mirrors: s.array(s.object({
    url: s.string({ pattern: /^https?:\/\/[^/\s]+\/?$/, description: 'base URL of the mirror, e.g. http://127.0.0.1:65001 (the node\'s p2p peer)' }),
    health_check_interval: s.duration({ default: '5s', description: 'how often /healthz is polled' }),
    pass_authorization: s.boolean({ default: false, description: 'send the origin credential to this mirror (only for a mirror on this node: it uses it for the origin and never forwards it); off by default: the node peer uses the node credentials' })
  }), { default: [], description: 'mirrors tried before the origin, in order (docs/mirror-contract.md)' }),
  prefetch: s.object({
    enable: s.boolean({ default: true, description: 'after mounting, fetch the files of the image\'s prefetch table in the background' }),
    all: s.boolean({ default: false, description: 'then fetch every other chunk of the image too' }),
    concurrency: s.integer({ default: 4, min: 1, max: 64, description: 'concurrent prefetch requests' }),
    bandwidth: s.size({ default: '0', description: 'prefetch bandwidth limit in bytes per second, e.g. "50MiB"; 0 means unlimited. On-demand reads always go first' })
  }, { description: 'background prefetch' }),
  fuse: s.object({
    readers: s.integer({ default: 2, min: 1, max: 16, description: 'concurrent reads of /dev/fuse per mount' }),
    max_read: s.size({ default: '1MiB', min: 4096, max: 1048576, description: 'largest READ the kernel sends (bytes)' }),
    cache_timeout: s.duration({ default: '8760h', description: 'how long the kernel may cache entries and attributes (images are immutable)' }),
    allow_other: s.boolean({ default: true, description: 'let users other than root use the mount (containers need it)' }),
    passthrough: s.boolean({ default: true, description: 'hand files whose chunks are all cached to the kernel (FUSE passthrough onto a private kernel EROFS mount of the image over the cache files; Linux 6.12+ and the native addon, else ignored): their reads and mmaps no longer reach the daemon' })
  }, { description: 'FUSE' }),
  metrics: s.object({
    enable: s.boolean({ default: true, description: 'serve Prometheus metrics at GET /metrics on the control socket' })
  }, { description: 'metrics' })
})

export type FsdConfig = InferSchema<typeof fsdConfigSchema>
