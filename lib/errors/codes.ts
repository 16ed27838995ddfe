import type { ErrorKind } from './kinds.ts'

export interface CodeSpec {
  readonly kind: ErrorKind
  /** One line: what went wrong. */
  readonly summary: string
  /** What the user can do about it. */
  readonly hint: string
}

/**
 * Every stable error code naiad emits. docs/errors.md lists the same codes (a test keeps the two
 * in step). Codes are `NAIAD_<AREA>_<WHAT>`; never rename one, only add.
 */
export const CODES = {
  // configuration
  NAIAD_CFG_INVALID: { kind: 'InvalidArgument', summary: 'the configuration file does not match the schema', hint: 'fix every key the message lists; unknown keys are rejected, see docs/config/' },
  NAIAD_CFG_NOT_FOUND: { kind: 'NotFound', summary: 'an explicitly named configuration file does not exist', hint: 'check the --config path' },
  NAIAD_CFG_PARSE: { kind: 'InvalidArgument', summary: 'the configuration file is not valid TOML', hint: 'the message names the line and column' },

  // command line
  NAIAD_CLI_USAGE: { kind: 'InvalidArgument', summary: 'a command-line flag or argument is invalid', hint: 'run the command with --help' },
  NAIAD_CLI_CHECK_MISMATCH: { kind: 'DataLoss', summary: 'naiad check found differences between source and converted image', hint: 'the diff lists each differing entry; reconvert the image' },

  // digests
  NAIAD_DIGEST_INVALID: { kind: 'InvalidArgument', summary: 'a digest string is malformed', hint: 'digests look like sha256:<64 lowercase hex>' },
  NAIAD_DIGEST_MISMATCH: { kind: 'DataLoss', summary: 'content does not match its digest', hint: 'the source is corrupt or was changed in transit; retry, or check the registry or mirror' },
  NAIAD_DIGEST_UNSUPPORTED: { kind: 'NotImplemented', summary: 'the digest algorithm is not supported', hint: 'use sha256' },

  // references and OCI objects
  NAIAD_REF_INVALID: { kind: 'InvalidArgument', summary: 'an image reference cannot be parsed', hint: 'use host[:port]/repo[:tag][@digest] or oci:<dir>[:<tag>]' },
  NAIAD_OCI_BAD_MANIFEST: { kind: 'InvalidArgument', summary: 'a manifest, index or config is malformed', hint: 'the registry returned something that is not a valid OCI or Docker schema2 document' },
  NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE: { kind: 'NotImplemented', summary: 'a manifest or layer has a media type naiad does not handle', hint: 'supported: OCI and Docker schema2 manifests and indexes; tar, tar+gzip, tar+zstd layers' },
  NAIAD_OCI_NO_PLATFORM: { kind: 'NotFound', summary: 'no manifest in the index matches the requested platform', hint: 'pass --platform os/arch (or all); the message lists what the index offers' },
  NAIAD_OCI_LAYOUT: { kind: 'InvalidArgument', summary: 'an OCI image layout directory is missing or malformed', hint: 'the directory needs oci-layout and index.json' },

  // registry
  NAIAD_REG_UNAUTHORIZED: { kind: 'Unauthenticated', summary: 'the registry refused the credentials (401)', hint: 'log in (docker login) or check ~/.docker/config.json; tokens may have expired' },
  NAIAD_REG_DENIED: { kind: 'PermissionDenied', summary: 'the registry denied access (403)', hint: 'the credentials lack pull or push rights on this repository' },
  NAIAD_REG_NOT_FOUND: { kind: 'NotFound', summary: 'the registry has no such manifest or blob (404)', hint: 'check the reference, tag and repository name' },
  NAIAD_REG_UNAVAILABLE: { kind: 'Unavailable', summary: 'the registry could not be reached or kept failing', hint: 'check the address, --plain-http for HTTP registries, and the network; retried with backoff before failing' },
  NAIAD_REG_PROTOCOL: { kind: 'Internal', summary: 'the registry answered in a way the distribution spec does not allow', hint: 'the message quotes the status and body; a proxy in front of the registry may be interfering' },
  NAIAD_REG_RANGE_UNSUPPORTED: { kind: 'FailedPrecondition', summary: 'the registry ignored a Range request', hint: 'lazy loading needs HTTP Range support on blob GETs' },
  NAIAD_REG_TIMEOUT: { kind: 'DeadlineExceeded', summary: 'a registry request timed out', hint: 'raise the timeout or check the network' },
  NAIAD_REG_CREDENTIAL_HELPER: { kind: 'Unauthenticated', summary: 'a docker credential helper failed', hint: 'run the docker-credential-<helper> named in the message by hand to see why' },

  // format (RAFS v6 bootstrap and data blob)
  NAIAD_FMT_TRUNCATED: { kind: 'DataLoss', summary: 'a bootstrap or blob ends before a structure it declares', hint: 'the file is truncated; fetch it again' },
  NAIAD_FMT_BAD_MAGIC: { kind: 'DataLoss', summary: 'a magic number is wrong: not a RAFS v6 bootstrap or Nydus blob', hint: 'check that the file is a RAFS v6 (EROFS) bootstrap or a Nydus v6 blob' },
  NAIAD_FMT_UNSUPPORTED: { kind: 'NotImplemented', summary: 'the image uses a RAFS feature naiad does not read', hint: 'the message names the feature (e.g. RAFS v5, ZRAN, encryption, batch chunks)' },
  NAIAD_FMT_CORRUPT: { kind: 'DataLoss', summary: 'a bootstrap or blob field is out of range or inconsistent', hint: 'the message names the field; the image is corrupt or was written by a buggy tool' },
  NAIAD_FMT_CHUNK_DIGEST: { kind: 'DataLoss', summary: 'a chunk does not match its digest', hint: 'the blob is corrupt; it is never served; fetch again from another source' },
  NAIAD_FMT_DECOMPRESS: { kind: 'DataLoss', summary: 'a chunk failed to decompress', hint: 'the blob is corrupt or uses an unexpected compressor' },
  NAIAD_FMT_OPTION: { kind: 'InvalidArgument', summary: 'a format option is invalid', hint: 'chunk size: power of two 4KiB..16MiB; compressor: zstd, lz4_block, none; digest: blake3, sha256' },
  NAIAD_FMT_LIMIT: { kind: 'ResourceExhausted', summary: 'the image exceeds a RAFS v6 limit', hint: 'the message names the limit (e.g. 255 blobs per image, 2^24 chunks per blob)' },

  // layers (tar input)
  NAIAD_TAR_CORRUPT: { kind: 'DataLoss', summary: 'a layer tar or its gzip stream is truncated or corrupt', hint: 'the source layer is damaged; pull it again or rebuild the image' },
  NAIAD_TAR_UNSAFE_PATH: { kind: 'InvalidArgument', summary: 'a layer entry has an absolute path or a ".." component', hint: 'the layer tries to write outside the root filesystem; rebuild it with relative paths' },
  NAIAD_TAR_UNSAFE_LINK: { kind: 'InvalidArgument', summary: 'a hard link in a layer points outside the image or at nothing', hint: 'rebuild the layer; hard links must name an earlier entry inside the image' },
  NAIAD_TAR_UNSUPPORTED: { kind: 'NotImplemented', summary: 'a layer holds a tar entry type naiad cannot convert', hint: 'the message names the entry and its type' },

  // fsdaemon (mounts and the control API)
  NAIAD_FS_DAEMON_UNAVAILABLE: { kind: 'Unavailable', summary: 'the fsdaemon control socket does not answer', hint: 'check that `naiad fsd` runs (systemctl status naiad-fsd, or the snapshotter that starts it) and the socket path' },
  NAIAD_FS_MOUNT: { kind: 'FailedPrecondition', summary: 'a FUSE mount could not be made', hint: 'the mountpoint must be an empty directory; /dev/fuse must exist (modprobe fuse); mounting needs root' },
  NAIAD_FS_NOT_MOUNTED: { kind: 'NotFound', summary: 'no naiad mount at that mountpoint', hint: 'list mounts with `naiad fsd ls`' },
  NAIAD_FS_STATE: { kind: 'DataLoss', summary: 'the fsdaemon state file is unreadable', hint: 'it is rewritten on the next mount; stale mounts are still found in /proc/mounts' },
  // fsdaemon byte plane (cache, sources, prefetch)
  NAIAD_FS_SOURCES_EXHAUSTED: { kind: 'Unavailable', summary: 'no blob source was left to try for a byte range', hint: 'every source was excluded or failed; the message names each source and its cause' },
  NAIAD_FS_CHUNK_CORRUPT: { kind: 'DataLoss', summary: 'no source served bytes that match a chunk\'s digest', hint: 'the bad bytes were never served or cached; the message names the sources that served them: check the mirror, or the blob in the registry' },
  NAIAD_FS_BLOB_NOT_FOUND: { kind: 'NotFound', summary: 'a local blob directory has no file for the blob', hint: 'blob files are named by blob id (64 hex characters) in --blob-dir' },
  NAIAD_FS_BLOB_IN_USE: { kind: 'FailedPrecondition', summary: 'a blob\'s cache cannot be removed while a mount uses it', hint: 'unmount the images that use the blob first (`naiad fsd ls` lists them); the snapshotter releases caches when their images are removed' },
  NAIAD_FS_CACHE_LOCKED: { kind: 'FailedPrecondition', summary: 'the cache directory is in use by another daemon', hint: 'run one fsdaemon per cache dir; the message names the process holding it' },
  NAIAD_FS_NO_HANDOVER: { kind: 'FailedPrecondition', summary: 'the fsdaemon cannot hand its mounts over', hint: 'only the node daemon (control socket, FUSE holders: started by the snapshotter or naiad-fsd.service) hands over; a standalone --mountpoint daemon would break its mount' },
  NAIAD_FS_HANDOVER_TIMEOUT: { kind: 'DeadlineExceeded', summary: 'no new fsdaemon answered after a handover', hint: 'the mounts wait for one: start it through its supervisor (the snapshotter starts it at the next prepare, systemd for naiad-fsd.service) or restart the snapshotter; its log says why it did not start' },

  // p2p (peer, scheduler, preheat)
  NAIAD_P2P_BAD_REQUEST: { kind: 'InvalidArgument', summary: 'a request to the p2p mirror is not a content-addressed blob request or has a bad header', hint: 'the mirror serves GET/HEAD /v2/<repo>/blobs/<digest> with X-Naiad-Origin; manifests and tokens go to the registry directly' },
  NAIAD_P2P_ORIGIN_NOT_ALLOWED: { kind: 'PermissionDenied', summary: 'X-Naiad-Origin names a registry the peer is not allowed to contact', hint: 'add the origin to [mirror] allowed_origins in peer.toml, or leave the list empty to allow any' },
  NAIAD_P2P_RANGE_NOT_SATISFIABLE: { kind: 'InvalidArgument', summary: 'a Range request starts past the end of the blob', hint: 'the response carries Content-Range: bytes */<size>' },
  NAIAD_P2P_PIECE_DIGEST_MISMATCH: { kind: 'DataLoss', summary: 'a piece from a parent peer does not match the digest recorded by the scheduler', hint: 'the piece is discarded, the parent reported and blocklisted, and the piece fetched elsewhere; repeated mismatches point at a faulty host' },
  NAIAD_P2P_BLOB_DIGEST_MISMATCH: { kind: 'DataLoss', summary: 'a completely downloaded blob does not match its digest', hint: 'the stored pieces are dropped and fetched again; if it persists the origin serves corrupt content' },
  NAIAD_P2P_PARENT_FAILED: { kind: 'Unavailable', summary: 'a parent peer failed to deliver a piece', hint: 'transient: the piece is fetched from another parent or the origin' },
  NAIAD_P2P_PIECE_UNAVAILABLE: { kind: 'Unavailable', summary: 'no parent and no origin could deliver a piece', hint: 'check the origin registry and the network; the message names the last cause' },
  NAIAD_P2P_SCHEDULER_UNAVAILABLE: { kind: 'Unavailable', summary: 'the p2p scheduler cannot be reached', hint: 'peers fall back to the origin meanwhile; check [scheduler] address in peer.toml and that `naiad scheduler` runs' },
  NAIAD_P2P_UNKNOWN_HOST: { kind: 'FailedPrecondition', summary: 'the scheduler does not know the host (no heartbeat yet, or it was forgotten)', hint: 'the peer announces itself again and retries; check that its heartbeats reach the scheduler' },
  NAIAD_P2P_STORE_FULL: { kind: 'ResourceExhausted', summary: 'the piece store is full and nothing can be evicted', hint: 'raise [storage] quota in peer.toml; pieces of tasks in use are never evicted' },
  NAIAD_P2P_STORE_CORRUPT: { kind: 'DataLoss', summary: 'piece store metadata on disk is unreadable or inconsistent', hint: 'the task is dropped from the store and fetched again when needed' },
  NAIAD_P2P_UNKNOWN_TASK: { kind: 'NotFound', summary: 'the task or piece is not held by this peer or known to the scheduler', hint: 'the scheduler\'s view may be stale; the requester tries another parent' },
  NAIAD_P2P_BUSY: { kind: 'ResourceExhausted', summary: 'the peer is at its upload concurrency limit', hint: 'the requester tries another parent; raise [upload] max_concurrent to serve more at once' },
  NAIAD_P2P_PREHEAT_FAILED: { kind: 'Unavailable', summary: 'preheating an image on the seed peers failed', hint: 'the message names the blob and the seed; check that seed peers run with --seed and can reach the registry' },
  NAIAD_P2P_NO_SEEDS: { kind: 'FailedPrecondition', summary: 'the scheduler knows no seed peers to preheat', hint: 'start `naiad peer --seed` on the seed hosts, or name peers with --peer' },

  // snapshotter (containerd proxy snapshotter)
  NAIAD_SNAP_NOT_FOUND: { kind: 'NotFound', summary: 'the snapshot (or its parent) does not exist', hint: 'containerd treats this as "not here"; list snapshots with `ctr snapshots --snapshotter nydus ls`' },
  NAIAD_SNAP_ALREADY_EXISTS: { kind: 'AlreadyExists', summary: 'a snapshot with this key already exists', hint: 'keys are unique across active, view and committed snapshots; remove the old one or pick another key' },
  NAIAD_SNAP_NOT_ACTIVE: { kind: 'FailedPrecondition', summary: 'the operation needs an active snapshot (commit) or a non-committed one (mounts)', hint: 'views cannot be committed and committed snapshots have no mounts; prepare or view on top of them instead' },
  NAIAD_SNAP_HAS_CHILDREN: { kind: 'FailedPrecondition', summary: 'the snapshot still has children and cannot be removed', hint: 'remove the children first; containerd\'s garbage collector does this children first' },
  NAIAD_SNAP_PARENT_NOT_COMMITTED: { kind: 'InvalidArgument', summary: 'the parent of a new snapshot is not committed', hint: 'only committed snapshots can be parents; commit the active snapshot first' },
  NAIAD_SNAP_INVALID_ARGUMENT: { kind: 'InvalidArgument', summary: 'a snapshot key, label, filter or update field path is invalid', hint: 'the message names the field; labels are limited to 4096 bytes (key + value) and updates accept only `labels` and `labels.<key>`' },
  NAIAD_SNAP_STORE: { kind: 'DataLoss', summary: 'the snapshotter metadata database is unreadable or inconsistent', hint: 'the message names the database file and the SQLite error; restore it from a backup or move it away and let containerd re-pull' },
  NAIAD_SNAP_SOCKET: { kind: 'InvalidArgument', summary: 'the snapshotter cannot listen on its Unix socket', hint: 'the path must be shorter than 108 bytes and its directory writable; another snapshotter may be running' },
  NAIAD_SNAP_FSD_START: { kind: 'Unavailable', summary: 'the snapshotter could not start the fsdaemon that serves Nydus images', hint: 'the message names the fsdaemon log file ([fsdaemon] log_file); check [fsdaemon] binary, config and /dev/fuse; the snapshotter falls back to a full download meanwhile' },
  NAIAD_SNAP_REMOTE: { kind: 'Unavailable', summary: 'a Nydus image could neither be mounted lazily nor downloaded in full for a container snapshot', hint: 'the message gives both causes (fsdaemon, registry reachability and credentials, image reference label); fix one and prepare again' },
  NAIAD_SNAP_UNAVAILABLE: { kind: 'Unavailable', summary: 'the snapshotter could not be reached over its socket', hint: 'check that `naiad snapshotter` runs and the socket path is the one containerd (proxy_plugins) uses' },

  // naiad pull (into containerd)
  NAIAD_PULL_CONTAINERD_UNAVAILABLE: { kind: 'Unavailable', summary: 'containerd does not answer on its gRPC socket', hint: 'check that containerd runs and pass its socket with --address (default /run/containerd/containerd.sock); root is usually needed' },
  NAIAD_PULL_CONTAINERD: { kind: 'FailedPrecondition', summary: 'containerd refused a request of the pull', hint: 'the message names the service, the method and containerd\'s own error; containerd\'s log has more' },
  NAIAD_PULL_SNAPSHOTTER_UNKNOWN: { kind: 'NotFound', summary: 'containerd has no snapshotter of that name', hint: 'add naiad as [proxy_plugins.nydus] in containerd\'s config.toml and restart containerd, or pass --snapshotter' },
  NAIAD_PULL_APPLY: { kind: 'FailedPrecondition', summary: 'containerd could not unpack a layer onto its snapshot', hint: 'a Nydus blob layer reaching this point means the snapshotter did not take it as remote: check the snapshotter log; otherwise the message quotes containerd\'s error' },
  NAIAD_PULL_DIFF_ID_MISMATCH: { kind: 'DataLoss', summary: 'an unpacked layer does not match the diff id in the image config', hint: 'the image is inconsistent (config and layers from different builds); rebuild or re-push it' },

  // naiad install / uninstall
  NAIAD_INSTALL_SOURCE: { kind: 'FailedPrecondition', summary: 'the suite to install is incomplete (not built, or a file is missing)', hint: 'run `npm ci && npm run build` in the checkout, then `naiad install` again' },
  NAIAD_INSTALL_CONFLICT: { kind: 'FailedPrecondition', summary: 'a file naiad install would write exists and was not written by naiad install', hint: 'the message names the file; move it away, or pass --force to replace it' },
  NAIAD_INSTALL_NOT_INSTALLED: { kind: 'NotFound', summary: 'no naiad installation (install manifest) under this root and prefix', hint: 'pass the same --root and --prefix as to naiad install' },
  NAIAD_INSTALL_CONTAINERD_CONFIG: { kind: 'InvalidArgument', summary: 'containerd\'s config.toml cannot be merged with the naiad snippet', hint: 'the message names the file and the problem; merge /etc/naiad/containerd-snippet.toml by hand (docs/containerd.md)' },

  // generic
  NAIAD_ABORTED: { kind: 'Aborted', summary: 'the operation was cancelled', hint: 'it was interrupted by a signal or a caller' },
  NAIAD_CLOSED: { kind: 'FailedPrecondition', summary: 'the component was already closed', hint: 'this is a bug in the caller' },
  NAIAD_INTERNAL: { kind: 'Internal', summary: 'an unexpected internal error', hint: 'please report it with the log' },
  NAIAD_IO: { kind: 'Unavailable', summary: 'a local file operation failed', hint: 'the message names the path and the system error (disk full, permissions)' }
} as const satisfies Record<string, CodeSpec>

export type ErrorCode = keyof typeof CODES
