/**
 * What the snapshotter needs from whatever serves remote (lazily fetched) layers, in the
 * snapshotter's words (stargz's fs.FileSystem; B3 of the style guide). The implementation over the
 * fsdaemon control API (lib/fsdapi) comes with the remote-snapshot path; nothing implements this
 * yet. Failures are NaiadErrors; on any failure the snapshotter falls back to a normal download.
 */
import type { Labels } from '../snapshotter.ts'

export interface RemoteOptions {
  readonly signal?: AbortSignal
}

export interface RemoteFilesystem {
  /**
   * Makes the image layer described by `labels` (containerd.io/snapshot/nydus-* and cri.* labels)
   * readable at `mountpoint`. On failure the mountpoint is left clean (nothing mounted).
   */
  mount (mountpoint: string, labels: Labels, opts?: RemoteOptions): Promise<void>
  /**
   * Checks that a mount made earlier (possibly by a previous snapshotter process) still serves;
   * called when a layer is reused and for every remote snapshot after a restart.
   */
  check (mountpoint: string, labels: Labels, opts?: RemoteOptions): Promise<void>
  /** Unmounts and releases what only this mount used. Unmounting nothing is not an error. */
  unmount (mountpoint: string, opts?: RemoteOptions): Promise<void>
}
