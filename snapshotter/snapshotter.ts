/**
 * The domain contract of naiad's snapshotter: containerd's `snapshots.Snapshotter` in TypeScript.
 * The gRPC adapter (grpc/service.ts) serves any implementation as containerd's
 * `containerd.services.snapshots.v1.Snapshots`; grpc/client.ts is the same interface over a socket.
 *
 * A snapshot is a filesystem tree: a chain of committed layers (parents) plus, for an active
 * snapshot, a writable layer on top. Kinds:
 * - `active`: created by prepare; writable; can be committed into a committed snapshot.
 * - `view`: created by view; read-only; can never be committed.
 * - `committed`: created by commit; immutable; the only kind that can be a parent.
 *
 * Active snapshots and views are named by their `key`, committed ones by their `name`; both share
 * one namespace (a key cannot be reused while any snapshot holds it).
 *
 * Errors are NaiadErrors whose kind containerd understands (mapped to gRPC statuses at the
 * adapter): `NotFound` (missing snapshot or parent), `AlreadyExists` (key taken),
 * `FailedPrecondition` (commit of a non-active snapshot, mounts of a committed one, removal of a
 * snapshot that has children), `InvalidArgument` (parent not committed, bad label or update path).
 * Note that `AlreadyExists` from prepare is also a signal: a remote snapshotter throws it after
 * committing the layer itself (see snapshotter/remote/), and containerd then skips the download.
 */
import type { Mount } from './mount.ts'

export type { Mount } from './mount.ts'

export type SnapshotKind = 'active' | 'view' | 'committed'

export type Labels = Readonly<Record<string, string>>

export interface SnapshotInfo {
  /** Key (active, view) or name (committed). */
  readonly name: string
  /** Name of the committed parent; '' when there is none. */
  readonly parent: string
  readonly kind: SnapshotKind
  readonly labels: Labels
  readonly createdAt: Date
  readonly updatedAt: Date
}

export interface Usage {
  /** Bytes used by the snapshot's own layer (not its parents). */
  readonly size: number
  /** Inodes used by the snapshot's own layer. */
  readonly inodes: number
}

export interface OpOptions {
  readonly signal?: AbortSignal
}

export interface CreateOptions extends OpOptions {
  /** Labels of the new snapshot. */
  readonly labels?: Labels
}

export interface WalkOptions extends OpOptions {
  /**
   * containerd filter strings (`name==x`, `parent=="y"`, `kind==active`,
   * `labels."containerd.io/snapshot.ref"==z`, comma = AND); a snapshot is listed when it matches
   * any of them, all are listed when there are none.
   */
  readonly filters?: readonly string[]
}

export interface Snapshotter {
  /** Metadata of the snapshot named `key` (any kind). NotFound when it does not exist. */
  stat (key: string, opts?: OpOptions): Promise<SnapshotInfo>
  /**
   * Changes the mutable fields of `info.name`: only the labels. `fieldPaths` lists what to change:
   * `labels` replaces all labels, `labels.<key>` sets one key (an empty value deletes it). No paths
   * means all mutable fields (replace the labels). Any other path is InvalidArgument. Returns the
   * updated info (updatedAt advanced).
   */
  update (info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldPaths?: readonly string[], opts?: OpOptions): Promise<SnapshotInfo>
  /**
   * Disk usage of the snapshot's own layer. For an active snapshot this walks the writable layer
   * now, so it can be expensive; for a committed one it may be cached.
   */
  usage (key: string, opts?: OpOptions): Promise<Usage>
  /**
   * The mounts of an active snapshot or view, as returned by prepare or view. FailedPrecondition
   * for a committed snapshot, NotFound for an unknown key.
   */
  mounts (key: string, opts?: OpOptions): Promise<Mount[]>
  /**
   * Creates an active snapshot `key` on top of the committed `parent` ('' for none) and returns
   * the mounts that produce its filesystem; the caller mounts them and writes into the top layer.
   * AlreadyExists when `key` is taken (or, for a remote snapshotter, when the layer named by the
   * `containerd.io/snapshot.ref` label was committed remotely), NotFound for an unknown parent,
   * InvalidArgument for a parent that is not committed.
   */
  prepare (key: string, parent: string, opts?: CreateOptions): Promise<Mount[]>
  /** Like prepare, but the snapshot is a read-only view (mounts are read-only, never committable). */
  view (key: string, parent: string, opts?: CreateOptions): Promise<Mount[]>
  /**
   * Turns the active snapshot `key` into the committed snapshot `name`; `key` disappears. The
   * new snapshot keeps the parent, gets `opts.labels` and a fresh updatedAt. NotFound for an
   * unknown key, FailedPrecondition when key is not active, AlreadyExists when `name` is taken.
   * The caller must have unmounted the snapshot first.
   */
  commit (name: string, key: string, opts?: CreateOptions): Promise<void>
  /**
   * Removes the snapshot `key` (any kind) and its data. FailedPrecondition while it has children,
   * NotFound when it does not exist. containerd's GC calls this children first, then cleanup.
   */
  remove (key: string, opts?: OpOptions): Promise<void>
  /** Every snapshot matching the filters, in no particular order (see WalkOptions). */
  walk (opts?: WalkOptions): AsyncIterable<SnapshotInfo>
  /**
   * Frees resources no snapshot references (directories left by a crash between the metadata
   * transaction and the file system work). Optional in containerd; ours always implements it.
   */
  cleanup (opts?: OpOptions): Promise<void>
  /** Releases the snapshotter; safe to call twice. Later calls of other methods fail NAIAD_CLOSED. */
  close (): Promise<void>
}
