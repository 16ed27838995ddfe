/**
 * What `naiad pull` needs from containerd and from a registry, in the pull's own words. The
 * containerd side is implemented by ContainerdClient (containerd.ts) over containerd's gRPC
 * socket; the registry side by lib/registry's ImageStore.
 */
import type { Readable } from 'node:stream'

export interface ContainerdCallOptions {
  /** Lease the call's new content and snapshots belong to (`containerd-lease` header). */
  readonly lease?: string
  readonly signal?: AbortSignal
}

export interface PullDescriptor {
  readonly mediaType: string
  readonly digest: string
  readonly size: number
  readonly annotations?: Readonly<Record<string, string>>
}

export interface ContentInfo { digest: string, size: number, labels: Record<string, string> }
export interface ImageRecord { name: string, labels: Record<string, string>, target: PullDescriptor }
export interface SnapshotMount { type: string, source: string, options: string[] }

/** The containerd services a pull drives (content, images, leases, snapshots, diff). */
export interface Containerd {
  createLease (id: string, labels: Record<string, string>, opts?: ContainerdCallOptions): Promise<string>
  deleteLease (id: string, opts?: ContainerdCallOptions): Promise<void>
  /** undefined if the content store does not have the blob. */
  contentInfo (digest: string, opts?: ContainerdCallOptions): Promise<ContentInfo | undefined>
  /** Sets (adds or replaces) these labels on a stored blob. */
  setContentLabels (digest: string, labels: Record<string, string>, opts?: ContainerdCallOptions): Promise<void>
  /** Stores a blob (verified against its digest and size) with labels; `exists` if it was there. */
  writeContent (desc: PullDescriptor, body: () => Promise<Readable | Uint8Array>, labels: Record<string, string>, opts?: ContainerdCallOptions): Promise<'written' | 'exists'>
  getImage (name: string, opts?: ContainerdCallOptions): Promise<ImageRecord | undefined>
  /** Creates the image record, or points an existing one at `target` and sets the labels. */
  putImage (name: string, target: PullDescriptor, labels: Record<string, string>, opts?: ContainerdCallOptions): Promise<'created' | 'updated'>
  /** True if the snapshot exists (in this namespace). */
  statSnapshot (snapshotter: string, key: string, opts?: ContainerdCallOptions): Promise<boolean>
  /** Mounts of the new active snapshot, or `exists` when the snapshotter answered AlreadyExists. */
  prepareSnapshot (snapshotter: string, key: string, parent: string, labels: Record<string, string>, opts?: ContainerdCallOptions): Promise<SnapshotMount[] | 'exists'>
  commitSnapshot (snapshotter: string, name: string, key: string, labels: Record<string, string>, opts?: ContainerdCallOptions): Promise<'committed' | 'exists'>
  removeSnapshot (snapshotter: string, key: string, opts?: ContainerdCallOptions): Promise<void>
  /** Applies a stored layer blob onto mounts; returns the applied (uncompressed) digest. */
  applyLayer (desc: PullDescriptor, mounts: readonly SnapshotMount[], opts?: ContainerdCallOptions): Promise<string>
}

/** Read access to the image's repository. */
export interface PullSource {
  /** The manifest or index the reference names, with its exact bytes. */
  getManifest (target?: string | PullDescriptor, opts?: { signal?: AbortSignal }): Promise<{ descriptor: PullDescriptor, bytes: Buffer, mediaType: string }>
  /** A blob's bytes (verified against its digest while streaming). */
  getBlob (digest: string, opts?: { signal?: AbortSignal, size?: number }): Promise<Readable>
}

export type LayerOutcome =
  /** the snapshot already existed: nothing to do */
  | 'present'
  /** the snapshotter took the layer as remote (Prepare answered AlreadyExists): not downloaded */
  | 'remote'
  /** downloaded from the registry and applied */
  | 'downloaded'
  /** the blob was already in the content store: applied without downloading */
  | 'applied'

export type PullProgress =
  | { type: 'resolved', reference: string, digest: string, mediaType: string, layers: number }
  | { type: 'layer', index: number, count: number, digest: string, size: number, outcome: LayerOutcome, durationMs: number }
  | { type: 'image', name: string, action: 'created' | 'updated' }
