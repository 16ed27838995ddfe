/**
 * Prometheus metrics of the peer and the scheduler (prom-client), each on its own Registry so that
 * several instances can live in one process (tests). Served at `/metrics` by the daemons.
 *
 * Naming: `naiad_p2p_peer_*` and `naiad_p2p_scheduler_*`; bytes as `_bytes_total`, latencies as
 * `_seconds` histograms. Labels are small closed sets, except `parent` (a host id), which is
 * bounded by the cluster's size.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'

export class PeerMetrics {
  readonly registry: Registry
  /** Piece bytes fetched, by source: `origin` or `peer`. */
  readonly pieceBytes: Counter<'source'>
  /** Pieces completed, by source. */
  readonly pieces: Counter<'source'>
  /** Time to fetch one piece, by source. */
  readonly pieceSeconds: Histogram<'source'>
  /** Pieces fetched from the origin, by why: `scheduler` (permit), `no-scheduler` (unreachable or unconfigured). */
  readonly backToSource: Counter<'reason'>
  /** Failed piece fetches from parents, by parent host and reason. */
  readonly parentFailures: Counter<'parent' | 'reason'>
  /** Pieces from parents that did not match their recorded digests. */
  readonly digestMismatches: Counter
  /** Tasks and bytes evicted from the piece store. */
  readonly evictions: Counter
  readonly evictedBytes: Counter
  readonly storeBytes: Gauge
  readonly storeQuotaBytes: Gauge
  /** Bytes served to local readers through the mirror, and to other peers through the upload server. */
  readonly mirrorBytes: Counter
  readonly uploadBytes: Counter
  readonly mirrorRequests: Counter<'method' | 'status'>
  readonly uploadRejected: Counter<'reason'>
  readonly activeUploads: Gauge
  readonly blobVerifications: Counter<'result'>
  readonly schedulerUp: Gauge

  constructor (opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry = new Registry()]
    if (opts.defaultMetrics === true) collectDefaultMetrics({ register: this.registry, prefix: 'naiad_p2p_peer_' })
    this.pieceBytes = new Counter({ name: 'naiad_p2p_peer_piece_bytes_total', help: 'piece bytes fetched, by source (origin or peer)', labelNames: ['source'], registers })
    this.pieces = new Counter({ name: 'naiad_p2p_peer_pieces_total', help: 'pieces fetched, by source', labelNames: ['source'], registers })
    this.pieceSeconds = new Histogram({ name: 'naiad_p2p_peer_piece_seconds', help: 'time to fetch one piece, by source', labelNames: ['source'], buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers })
    this.backToSource = new Counter({ name: 'naiad_p2p_peer_back_to_source_total', help: 'pieces fetched from the origin, by reason (scheduler permit, or no scheduler)', labelNames: ['reason'], registers })
    this.parentFailures = new Counter({ name: 'naiad_p2p_peer_parent_failures_total', help: 'failed piece fetches from parents, by parent host and reason', labelNames: ['parent', 'reason'], registers })
    this.digestMismatches = new Counter({ name: 'naiad_p2p_peer_piece_digest_mismatches_total', help: 'pieces from parents that did not match their recorded digests', registers })
    this.evictions = new Counter({ name: 'naiad_p2p_peer_evictions_total', help: 'tasks evicted from the piece store', registers })
    this.evictedBytes = new Counter({ name: 'naiad_p2p_peer_evicted_bytes_total', help: 'bytes evicted from the piece store', registers })
    this.storeBytes = new Gauge({ name: 'naiad_p2p_peer_store_bytes', help: 'bytes of pieces held in the store', registers })
    this.storeQuotaBytes = new Gauge({ name: 'naiad_p2p_peer_store_quota_bytes', help: 'piece store quota', registers })
    this.mirrorBytes = new Counter({ name: 'naiad_p2p_peer_mirror_bytes_total', help: 'bytes served to local readers through the mirror', registers })
    this.uploadBytes = new Counter({ name: 'naiad_p2p_peer_upload_bytes_total', help: 'piece bytes served to other peers', registers })
    this.mirrorRequests = new Counter({ name: 'naiad_p2p_peer_mirror_requests_total', help: 'mirror requests by method and status', labelNames: ['method', 'status'], registers })
    this.uploadRejected = new Counter({ name: 'naiad_p2p_peer_upload_rejected_total', help: 'piece uploads refused, by reason (busy, missing)', labelNames: ['reason'], registers })
    this.activeUploads = new Gauge({ name: 'naiad_p2p_peer_active_uploads', help: 'piece uploads in progress', registers })
    this.blobVerifications = new Counter({ name: 'naiad_p2p_peer_blob_verifications_total', help: 'complete blobs checked against their digest, by result', labelNames: ['result'], registers })
    this.schedulerUp = new Gauge({ name: 'naiad_p2p_peer_scheduler_up', help: '1 while the last heartbeat to the scheduler succeeded', registers })
  }
}

export class SchedulerMetrics {
  readonly registry: Registry
  readonly hosts: Gauge
  readonly tasks: Gauge
  readonly activePeers: Gauge
  /** Piece assignments by action: parents, back_to_source, wait, skipped (origin read-ahead declined). */
  readonly assignments: Counter<'action'>
  /**
   * Why a request was answered WAIT: no_source (nobody holds or receives the piece and the origin
   * budget is spent), no_usable_holder (holders, none usable: blocklisted, a cycle), copying (every
   * holder is copying it to someone already), slots (no holder has a free upload slot),
   * predecessor (ring: the child's predecessor is about to receive it and will relay it).
   */
  readonly waits: Counter<'reason'>
  /** Piece reports by source and outcome. */
  readonly pieceReports: Counter<'source' | 'result'>
  readonly blocklisted: Counter<'reason'>
  readonly blocklistSize: Gauge
  readonly hostsExpired: Counter
  readonly permitsExpired: Counter
  readonly scheduleSeconds: Histogram

  constructor (opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry = new Registry()]
    if (opts.defaultMetrics === true) collectDefaultMetrics({ register: this.registry, prefix: 'naiad_p2p_scheduler_' })
    this.hosts = new Gauge({ name: 'naiad_p2p_scheduler_hosts', help: 'hosts known (heart-beating)', registers })
    this.tasks = new Gauge({ name: 'naiad_p2p_scheduler_tasks', help: 'tasks known', registers })
    this.activePeers = new Gauge({ name: 'naiad_p2p_scheduler_active_peers', help: 'downloads in progress (open AnnouncePeer streams)', registers })
    this.assignments = new Counter({ name: 'naiad_p2p_scheduler_assignments_total', help: 'piece assignments by action (parents, back_to_source, wait, skipped)', labelNames: ['action'], registers })
    this.waits = new Counter({ name: 'naiad_p2p_scheduler_waits_total', help: 'WAIT answers by reason (no_source, no_usable_holder, copying, slots, predecessor)', labelNames: ['reason'], registers })
    this.pieceReports = new Counter({ name: 'naiad_p2p_scheduler_piece_reports_total', help: 'piece reports by source (origin, peer) and result (finished, failed, rejected)', labelNames: ['source', 'result'], registers })
    this.blocklisted = new Counter({ name: 'naiad_p2p_scheduler_blocklisted_total', help: 'hosts put on the cluster-wide blocklist, by reason (digest_mismatch, failures)', labelNames: ['reason'], registers })
    this.blocklistSize = new Gauge({ name: 'naiad_p2p_scheduler_blocklisted_hosts', help: 'hosts on the cluster-wide blocklist now', registers })
    this.hostsExpired = new Counter({ name: 'naiad_p2p_scheduler_hosts_expired_total', help: 'hosts forgotten because they stopped heart-beating', registers })
    this.permitsExpired = new Counter({ name: 'naiad_p2p_scheduler_permits_expired_total', help: 'origin permits that timed out without a report', registers })
    this.scheduleSeconds = new Histogram({ name: 'naiad_p2p_scheduler_schedule_seconds', help: 'time to answer one request for pieces', buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1], registers })
  }
}
