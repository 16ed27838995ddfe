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
    socket: s.string({ default: '/run/naiad/fsd.sock', description: 'control socket of the fsdaemon that serves remote (Nydus) layers; used by the remote path (not yet enabled)' })
  }, { description: 'the FUSE daemon used for remote snapshots' })
})

export type SnapshotterConfig = InferSchema<typeof snapshotterConfigSchema>
