/**
 * The snapshotter's configuration (/etc/naiad/snapshotter.toml). Unknown keys are rejected; every
 * key has a default, so an empty file (or none at the default path) is valid.
 */
import { s, type InferSchema } from '../lib/config/index.ts'

export const snapshotterConfigSchema = s.object({
  version: s.integer({ default: 1, min: 1, max: 1, description: 'configuration format version; must be 1' }),
  log: s.object({
    level: s.oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, { default: 'info', description: 'log level (JSON lines on stdout)' })
  }, { description: 'logging' }),
  root: s.object({
    dir: s.string({ default: '/var/lib/naiad/snapshotter', description: 'root directory: metadata.db (SQLite) and snapshots/<id>/{fs,work}; must be on a filesystem overlayfs accepts as upper (ext4, xfs)' })
  }, { description: 'where snapshots live' }),
  socket: s.object({
    path: s.string({ default: '/run/naiad/snapshotter.sock', description: 'Unix socket containerd dials ([proxy_plugins.nydus] address); at most 107 bytes' }),
    mode: s.integer({ default: 0o600, min: 0, max: 0o777, description: 'file mode of the socket (decimal in TOML; 384 = 0600)' })
  }, { description: 'the gRPC socket' }),
  fsdaemon: s.object({
    enable: s.boolean({ default: true, description: 'serve Nydus images lazily through the fsdaemon (false: Nydus images are only downloaded in full, if [fallback] materialize is on)' }),
    socket: s.string({ default: '/run/naiad/fsd.sock', description: 'control socket of the fsdaemon (one per node) that serves the Nydus images\' FUSE mounts' }),
    start: s.boolean({ default: true, description: 'start the fsdaemon when its socket does not answer (detached in its own session, so it outlives the snapshotter); false: it is run by its own unit (naiad-fsd.service)' }),
    binary: s.string({ default: '', description: 'the naiad entry point used to start it (`naiad fsd`); empty: the running naiad' }),
    config: s.string({ default: '', description: 'configuration file passed to the fsdaemon with --config; empty: its default (/etc/naiad/fsd.toml if it exists)' }),
    cache_dir: s.string({ default: '', description: 'chunk cache directory passed with --cache-dir; empty: the fsdaemon\'s configuration decides' }),
    state_dir: s.string({ default: '', description: 'state directory passed with --state-dir; empty: the fsdaemon\'s configuration decides' }),
    log_file: s.string({ default: '', description: 'file the started fsdaemon\'s output is appended to; empty: <root>/fsdaemon.log' }),
    start_timeout: s.duration({ default: '20s', description: 'how long a started fsdaemon may take to answer on its socket' }),
    plain_http: s.boolean({ default: false, description: 'plain HTTP to every registry (default: only loopback registries)' }),
    stop_on_exit: s.boolean({ default: false, description: 'stop the fsdaemon (unmounting every image) when the snapshotter exits; off by default, so running containers survive a snapshotter restart (tests use --stop-fsdaemon)' })
  }, { description: 'the FUSE daemon that serves Nydus images lazily (docs/snapshotter.md, "Nydus images")' }),
  cri_keychain: s.object({
    enable: s.boolean({ default: false, description: 'serve a CRI ImageService proxy for the kubelet (--image-service-endpoint) that forwards every call to containerd and keeps the registry credentials of each PullImage (image pull secrets) in memory, for the fsdaemon and the fallback to read private Nydus images with (containerd never gives them to a snapshotter)' }),
    socket: s.string({ default: '/run/naiad/cri-image.sock', description: 'Unix socket of the proxy: the kubelet\'s image service endpoint (unix:///run/naiad/cri-image.sock); at most 107 bytes' }),
    mode: s.integer({ default: 0o600, min: 0, max: 0o777, description: 'file mode of the proxy socket (decimal in TOML; 384 = 0600)' }),
    image_service_address: s.string({ default: '/run/containerd/containerd.sock', description: 'containerd\'s socket, whose CRI plugin serves runtime.v1.ImageService; every call is forwarded there unchanged' }),
    ttl: s.duration({ default: '24h', description: 'how long credentials are kept after the last PullImage that carried them' })
  }, { description: 'registry credentials from Kubernetes (docs/kubernetes.md, "Private images")' }),
  fallback: s.object({
    materialize: s.boolean({ default: true, description: 'when an image cannot be mounted lazily at container prepare (fsdaemon down, registry unreachable, bad bootstrap), download it in full into the bootstrap snapshot and use that; off: the prepare fails' })
  }, { description: 'what happens when the lazy path fails' })
})

export type SnapshotterConfig = InferSchema<typeof snapshotterConfigSchema>
