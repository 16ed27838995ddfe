/**
 * Configuration schemas of `naiad peer` (/etc/naiad/peer.toml) and `naiad scheduler`
 * (/etc/naiad/scheduler.toml). Unknown keys are rejected; every field has a default and a
 * description, from which docs/config/peer.md and docs/config/scheduler.md are generated
 * (scripts: p2p/gen-config-docs.ts). The examples in systemd/etc/naiad/ are parsed by a test.
 */
import { s, type InferSchema } from '../lib/config/index.ts'
import { DEFAULT_PIECE_LENGTH, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH } from './protocol/index.ts'

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** `host:port`, `[v6]:port` or `unix:/path`. */
const LISTEN_RE = /^(unix:\/.+|\[[0-9a-fA-F:.]+\]:\d{1,5}|[A-Za-z0-9.-]*:\d{1,5})$/
const ORIGIN_RE = /^https?:\/\/[^/?#@\s]+$/

const version = s.integer({ min: 1, max: 1, default: 1, description: 'config format version; must be 1' })
const log = s.object({
  level: s.oneOf(LOG_LEVELS, { default: 'info', description: 'log level (JSON lines on stdout; credentials are redacted)' })
}, { description: 'logging' })

export const peerConfigSchema = s.object({
  version,
  host: s.object({
    id: s.string({ default: '', description: 'stable id of this host in the cluster (default: `<hostname>-<ip>`)' }),
    ip: s.string({ default: '', description: 'address other peers fetch pieces from (default: the first non-internal IPv4 address)' }),
    hostname: s.string({ default: '', description: 'host name reported to the scheduler (default: os.hostname())' })
  }, { description: 'how this node identifies itself to the scheduler and other peers' }),
  mirror: s.object({
    listen: s.string({ default: '127.0.0.1:65001', pattern: LISTEN_RE, description: 'registry-mirror endpoint for the fsdaemon (docs/mirror-contract.md): `host:port` or `unix:/path`; also serves /healthz and /metrics' }),
    allowed_origins: s.array(s.string({ pattern: ORIGIN_RE }), { default: [], description: 'origins (`https://registry.example`) that X-Naiad-Origin may name; empty allows any' })
  }, { description: 'the local registry mirror' }),
  upload: s.object({
    listen: s.string({ default: '0.0.0.0:65002', pattern: LISTEN_RE, description: 'upload server other peers fetch pieces from (`host:port`)' }),
    port: s.integer({ min: 0, max: 65535, default: 0, description: 'port advertised to the scheduler (default: the listen port)' }),
    rate_limit: s.size({ default: '0', description: 'upload bandwidth limit in bytes per second across all uploads (0: unlimited)' }),
    max_concurrent: s.integer({ min: 1, max: 1024, default: 4, description: 'piece uploads served at once (the scheduler assigns at most this many children); fewer give new pieces a larger share of a slow uplink, more keep the children\'s downlinks busy (4: bench/p2p N = 8 35.5 s with 2, 30.8-32.8 s with 4)' })
  }, { description: 'serving pieces to other peers' }),
  download: s.object({
    piece_length: s.size({ default: `${DEFAULT_PIECE_LENGTH / 1024 / 1024}MiB`, min: MIN_PIECE_LENGTH, max: MAX_PIECE_LENGTH, powerOfTwo: true, description: 'piece length, a power of two; must be the same on every peer of a cluster (it is part of the task id)' }),
    concurrent_pieces: s.integer({ min: 1, max: 256, default: 4, description: 'piece transfers at once per blob (read-ahead and prefetch wait while an on-demand transfer runs)' }),
    read_ahead_pieces: s.integer({ min: 0, max: 1024, default: 4, description: 'pieces fetched after the last piece a Range request overlaps' }),
    origin_read_ahead_pieces: s.integer({ min: 0, max: 1024, default: 16, description: 'once this peer is sent to the origin for a blob being read, it keeps asking for the pieces up to this many beyond the furthest one its readers asked for from the origin (only those no peer holds or fetches, under the scheduler\'s origin budget), so the origin link never idles between pieces; 0 disables' }),
    memory_pieces: s.integer({ min: 0, max: 4096, default: 16, description: 'complete pieces kept in memory after they are stored, so that local readers and uploads to other peers read them without a disk read and the blob digest is computed as they arrive (memory: this × piece_length); 0 disables' }),
    prefetch: s.boolean({ default: false, description: 'on the first request for a blob, fetch the whole blob in the background' }),
    piece_timeout: s.duration({ default: '30s', min: 100, description: 'a piece transfer that receives no bytes for this long fails and is retried elsewhere' }),
    wait_timeout: s.duration({ default: '30s', min: 100, description: 'how long to wait for the scheduler to assign a piece before asking again' }),
    max_attempts: s.integer({ min: 1, max: 100, default: 8, description: 'tries per piece (parents and origin) before a reader gets an error' })
  }, { description: 'fetching pieces' }),
  scheduler: s.object({
    address: s.string({ default: '', description: 'scheduler gRPC address (`host:port` or `unix:/path`); empty: no scheduler, every piece comes from the origin' }),
    connect_timeout: s.duration({ default: '2s', min: 10, description: 'time allowed to reach the scheduler before falling back to the origin' }),
    heartbeat_interval: s.duration({ default: '5s', min: 10, description: 'how often the host announces itself (the scheduler forgets hosts that stop)' }),
    retry_interval: s.duration({ default: '5s', min: 10, description: 'while the scheduler is unreachable, how often to try it again' })
  }, { description: 'the p2p scheduler' }),
  origin: s.object({
    timeout: s.duration({ default: '30s', min: 100, description: 'idle timeout of origin requests' }),
    retries: s.integer({ min: 0, max: 10, default: 2, description: 'retries of a failed origin request' }),
    docker_config: s.string({ default: '', description: 'docker config.json with this node\'s registry credentials (default: $DOCKER_CONFIG or ~/.docker/config.json)' })
  }, { description: 'fetching from the origin registry (with this node\'s credentials, or the requester\'s Authorization for its own requests)' }),
  storage: s.object({
    dir: s.string({ default: '/var/lib/naiad/p2p', description: 'piece store directory (one sparse file and one metadata file per task)' }),
    quota: s.size({ default: '20GiB', min: 1, description: 'disk quota of the piece store; least recently used tasks not in use are evicted beyond it' })
  }, { description: 'the on-disk piece store' }),
  seed: s.object({
    enabled: s.boolean({ default: false, description: 'run as a seed peer (same as --seed): preheat target, preferred parent for first downloads' }),
    accept_preheat: s.boolean({ default: true, description: 'accept POST /api/v1/preheat on the upload listener (only when the peer is a seed)' })
  }, { description: 'seed peers' }),
  metrics: s.object({
    listen: s.string({ default: '', pattern: /^$|^(unix:\/.+|\[[0-9a-fA-F:.]+\]:\d{1,5}|[A-Za-z0-9.-]*:\d{1,5})$/, description: 'an extra listener for /metrics (it is always on the mirror listener too)' })
  }, { description: 'Prometheus metrics' }),
  shutdown: s.object({
    grace: s.duration({ default: '10s', min: 0, description: 'on SIGTERM, time to finish in-flight requests before connections are cut' })
  }, { description: 'graceful shutdown' }),
  log,
  testing: s.object({
    fault_corrupt_uploads: s.boolean({ default: false, description: 'TEST ONLY: flip bits in every piece this peer uploads, to exercise corrupt-piece detection. Never enable in production' })
  }, { description: 'fault injection for tests; leave alone' })
})

export type PeerConfig = InferSchema<typeof peerConfigSchema>

export const schedulerConfigSchema = s.object({
  version,
  server: s.object({
    listen: s.string({ default: '0.0.0.0:65010', pattern: LISTEN_RE, description: 'gRPC listener (`host:port` or `unix:/path`)' })
  }, { description: 'the gRPC service (naiad.p2p.v1.Scheduler)' }),
  metrics: s.object({
    listen: s.string({ default: '127.0.0.1:65011', pattern: /^$|^(unix:\/.+|\[[0-9a-fA-F:.]+\]:\d{1,5}|[A-Za-z0-9.-]*:\d{1,5})$/, description: 'HTTP listener for /metrics and /healthz (empty: none)' })
  }, { description: 'Prometheus metrics' }),
  scheduling: s.object({
    candidate_parents: s.integer({ min: 1, max: 20, default: 3, description: 'parents offered per piece, best first (with parent_selection "score")' }),
    parent_selection: s.oneOf(['ring', 'score'] as const, { default: 'ring', description: '"ring": the downloads of a blob form a ring (by host id) and each child is offered first the holder nearest before it, so pieces flow around the ring relayed block by block and every uplink feeds its successor (bench/p2p at 100 Mbit/s, same machine, alternating runs: N = 8 34.9-35.3 s vs 39.2-44.1 s with "score", N = 4 and 16 equal; N = 16 at 20 Mbit/s 1.49-1.50x the bound vs 1.55-1.66x); "score": the evaluator\'s ranking alone (availability, load, bandwidth, fairness)' }),
    origin_budget_per_piece: s.integer({ min: 1, max: 1000, default: 1, description: 'concurrent origin fetches of one piece cluster-wide' }),
    origin_permits_per_peer: s.integer({ min: 1, max: 1000, default: 1, description: 'concurrent origin fetches one download may hold, so the origin fetches of a blob spread over the peers asking for it (no downlink carries two origin streams)' }),
    origin_concurrency_per_task: s.integer({ min: 1, max: 10000, default: 4, description: 'concurrent origin fetches of one blob cluster-wide (each origin stream shares its peer\'s downlink with that peer\'s other downloads: several keep the origin link busy)' }),
    permit_timeout: s.duration({ default: '2m', min: 100, description: 'an origin permit not reported within this is given to another peer' }),
    blocklist_ttl: s.duration({ default: '10m', min: 100, description: 'how long a parent that served a corrupt piece (or failed too often) is avoided cluster-wide' }),
    failure_threshold: s.integer({ min: 1, max: 1000, default: 3, description: 'transport failures within failure_window that blocklist a parent' }),
    failure_window: s.duration({ default: '1m', min: 100, description: 'window for counting a parent\'s recent failures' }),
    child_blocklist_ttl: s.duration({ default: '1m', min: 100, description: 'a parent that failed a download is skipped by that download for this long' })
  }, { description: 'parent selection and origin protection' }),
  hosts: s.object({
    ttl: s.duration({ default: '30s', min: 100, description: 'a host that stops heart-beating is forgotten after this long, with its pieces' }),
    sweep_interval: s.duration({ default: '1s', min: 10, description: 'how often expired hosts, permits and tasks are collected' }),
    task_ttl: s.duration({ default: '10m', min: 100, description: 'a task nobody holds or downloads is forgotten after this long' })
  }, { description: 'host and task bookkeeping' }),
  shutdown: s.object({
    grace: s.duration({ default: '5s', min: 0, description: 'on SIGTERM, time to end streams gracefully before the server is forced down' })
  }, { description: 'graceful shutdown' }),
  log
})

export type SchedulerConfig = InferSchema<typeof schedulerConfigSchema>
