/**
 * `ImageStore`: the one interface through which the converter and fsdaemon read and write images,
 * whether they live in a registry (RegistryImageStore) or in an OCI image layout directory
 * (LayoutImageStore, layout.ts). A store is bound to one repository or one layout.
 */
import type { Readable } from 'node:stream'
import { parseDigest, sha256, type Digest } from '../digest/index.ts'
import { NaiadError } from '../errors/index.ts'
import { DEFAULT_TAG, type ImageReference, type RegistryReference } from '../oci/reference.ts'
import type { Descriptor } from '../oci/types.ts'
import type { AbortOptions, BlobSource, FetchedManifest, GetBlobOptions, PushBlobOptions, PushBlobResult, RegistryClient } from './client.ts'
import type { DirectRangeOutcome } from './direct-range.ts'

export type { AbortOptions, BlobSource, FetchedManifest, GetBlobOptions, PushBlobOptions, PushBlobResult } from './client.ts'

/**
 * Content-addressed access to one image repository.
 *
 * Errors are the same in both implementations: something absent is NAIAD_REG_NOT_FOUND (kind
 * NotFound); content that does not match its digest is NAIAD_DIGEST_MISMATCH; malformed
 * manifests NAIAD_OCI_BAD_MANIFEST; calls after close() NAIAD_CLOSED. Every method takes a
 * `signal`; an abort rejects with the signal's reason (an AbortError), also from a stream
 * returned earlier that is still being read. Construction does no I/O.
 */
export interface ImageStore {
  /** The reference the store was opened for (its tag/digest is the default for resolve). */
  readonly reference: ImageReference

  /**
   * The descriptor (media type, digest, size) a tag or digest points at: a manifest or an index.
   * Without an argument, the reference's digest, else its tag, else `latest`.
   */
  resolve (tagOrDigest?: string, opts?: AbortOptions): Promise<Descriptor>

  /**
   * A manifest or index with its exact bytes. A descriptor is fetched by its digest and checked
   * against its size; a tag is resolved first. The bytes always hash to `descriptor.digest`.
   */
  getManifest (target?: string | Descriptor, opts?: AbortOptions): Promise<FetchedManifest>

  /**
   * A blob's content as a stream. Whole blobs are verified against the digest while streaming
   * (the stream errors with NAIAD_DIGEST_MISMATCH at the end instead of ending cleanly). With
   * `range: [start, end]` (inclusive; end clamped at the blob's end) exactly those bytes; a
   * registry that ignores Range gives NAIAD_REG_RANGE_UNSUPPORTED.
   */
  getBlob (digest: Digest, opts?: GetBlobOptions): Promise<Readable>

  /** The size of a blob, or undefined if the store does not have it. */
  statBlob (digest: Digest, opts?: AbortOptions): Promise<number | undefined>

  /**
   * Stores a blob unless present (outcome `exists`; a registry may also `mount` it from one of
   * `mountFrom`'s repositories). The content must match `desc.digest` and `desc.size`, else
   * NAIAD_DIGEST_MISMATCH and nothing is stored. `source` is bytes or a factory of fresh streams.
   * Idempotent.
   */
  pushBlob (desc: Descriptor, source: BlobSource, opts?: PushBlobOptions): Promise<PushBlobResult>

  /**
   * Stores a manifest or index (validated first) and points a tag at it; with a digest (or
   * nothing) it is stored untagged. Blobs it references must be pushed first. Returns its
   * descriptor. Idempotent.
   */
  putManifest (bytes: Uint8Array, mediaType: string, tagOrDigest?: string, opts?: AbortOptions): Promise<Descriptor>

  /** Releases connections and handles; safe to call twice. */
  close (): Promise<void>
}

/** The default tag-or-digest of a reference: its digest, else its tag, else `latest`. */
export function defaultTarget (ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? DEFAULT_TAG
}

export interface RegistryImageStoreDeps {
  client: RegistryClient
}

export interface RegistryImageStoreOptions {
  reference: RegistryReference
  /** close() also closes the client (set by openImageStore, which created it). */
  ownsClient?: boolean
}

/** An ImageStore over one repository of a registry. */
export class RegistryImageStore implements ImageStore {
  readonly reference: RegistryReference
  private readonly client: RegistryClient
  private readonly ownsClient: boolean
  private closed: Promise<void> | undefined

  constructor (deps: RegistryImageStoreDeps, options: RegistryImageStoreOptions) {
    this.client = deps.client
    this.reference = options.reference
    this.ownsClient = options.ownsClient ?? false
  }

  private get repo (): string {
    if (this.closed !== undefined) throw new NaiadError('NAIAD_CLOSED', `image store for ${this.reference.registry}/${this.reference.repository} is closed`)
    return this.reference.repository
  }

  async resolve (tagOrDigest?: string, opts: AbortOptions = {}): Promise<Descriptor> {
    return await this.client.headManifest(this.repo, tagOrDigest ?? defaultTarget(this.reference), opts)
  }

  async getManifest (target?: string | Descriptor, opts: AbortOptions = {}): Promise<FetchedManifest> {
    const repo = this.repo
    if (target === undefined || typeof target === 'string') return await this.client.getManifest(repo, target ?? defaultTarget(this.reference), opts)
    const got = await this.client.getManifest(repo, parseDigest(target.digest), opts)
    if (got.bytes.length !== target.size) {
      throw new NaiadError('NAIAD_DIGEST_MISMATCH', `manifest ${repo}@${target.digest}: ${got.bytes.length} bytes, the descriptor says ${target.size}`)
    }
    return got
  }

  async getBlob (digest: Digest, opts: GetBlobOptions = {}): Promise<Readable> {
    return await this.client.getBlob(this.repo, digest, opts)
  }

  /** RegistryClient.readBlobRange for this repository (`served`: the bytes are in `into`). */
  async readBlobRange (digest: Digest, start: number, end: number, into: Buffer, opts: AbortOptions & { onProgress?: (filled: number) => void } = {}): Promise<DirectRangeOutcome> {
    return await this.client.readBlobRange(this.repo, digest, start, end, into, opts)
  }

  async statBlob (digest: Digest, opts: AbortOptions = {}): Promise<number | undefined> {
    return await this.client.statBlob(this.repo, digest, opts)
  }

  async pushBlob (desc: Descriptor, source: BlobSource, opts: PushBlobOptions = {}): Promise<PushBlobResult> {
    return await this.client.pushBlob(this.repo, desc, source, opts)
  }

  async putManifest (bytes: Uint8Array, mediaType: string, tagOrDigest?: string, opts: AbortOptions = {}): Promise<Descriptor> {
    return await this.client.putManifest(this.repo, tagOrDigest ?? sha256(bytes), bytes, mediaType, opts)
  }

  async close (): Promise<void> {
    this.closed ??= this.ownsClient ? this.client.close() : Promise.resolve()
    await this.closed
  }
}
