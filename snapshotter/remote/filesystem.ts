/**
 * What the snapshotter needs from whatever serves remote (lazily fetched) Nydus images, in the
 * snapshotter's words (stargz's fs.FileSystem; B3 of the style guide). remote/fsd.ts implements it
 * over the fsdaemon control API (lib/fsdapi), starting the fsdaemon when it does not answer.
 * Failures are NaiadErrors; on a failure the snapshotter falls back (remote/materialize.ts).
 */

import type { Credentials } from '../../lib/registry/credentials.ts'

export interface RemoteOptions {
  readonly signal?: AbortSignal
}

/**
 * Registry credentials the snapshotter was handed for an image (the CRI keychain: what the kubelet
 * passed with PullImage). Undefined: the node's own (docker config.json) are used.
 */
export interface ImageCredentials {
  get (image: string): Credentials | undefined
}

/** A Nydus image to serve: the bootstrap containerd unpacked, and where its data blobs live. */
export interface RemoteImage {
  /** Absolute path of the RAFS bootstrap (`<bootstrap snapshot>/fs/image/image.boot`). */
  readonly bootstrap: string
  /** Image reference; the data blobs are read lazily from its repository. */
  readonly image: string
  /** Free-form labels kept with the mount (the snapshotter records its root and snapshot id). */
  readonly labels?: Readonly<Record<string, string>>
}

export interface RemoteFilesystem {
  /**
   * Makes `image` readable at `mountpoint`; idempotent (a live mount of the same image is kept).
   * On failure the mountpoint is left clean (nothing mounted).
   */
  mount (mountpoint: string, image: RemoteImage, opts?: RemoteOptions): Promise<void>
  /**
   * Gives the live mount at `mountpoint` the image's current credentials when they changed since
   * they were last given (a rotated pull secret, or a restarted server that lost them). Cheap
   * when nothing changed; optional for implementations without credentials.
   */
  refresh? (mountpoint: string, image: RemoteImage, opts?: RemoteOptions): Promise<void>
  /**
   * True when a mount made earlier (possibly by a previous snapshotter process, possibly served by
   * a restarted fsdaemon) serves at `mountpoint` now.
   */
  alive (mountpoint: string, opts?: RemoteOptions): Promise<boolean>
  /** The mountpoints served now (none when the server is not running; this never starts it). */
  list (opts?: RemoteOptions): Promise<Array<{ mountpoint: string, labels: Readonly<Record<string, string>> }>>
  /**
   * Deletes the cached data of these blobs where no mount uses them (their images were removed);
   * returns the blob ids whose caches are gone. Never starts a server. Optional.
   */
  releaseBlobs? (blobIds: readonly string[], opts?: RemoteOptions): Promise<string[]>
  /** Bytes of the blob's data cached on this node; undefined when unknown (no server runs). Optional. */
  cachedBytes? (blobId: string, opts?: RemoteOptions): Promise<number | undefined>
  /** The blobs with cached data that no mount uses now (none when no server runs). Optional. */
  unusedBlobs? (opts?: RemoteOptions): Promise<string[]>
  /** Unmounts and releases what only this mount used. Unmounting nothing is not an error. */
  unmount (mountpoint: string, opts?: RemoteOptions): Promise<void>
  /** Releases the client; stops the fsdaemon only if configured to. Safe to call twice. */
  close (): Promise<void>
}
