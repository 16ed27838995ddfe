/**
 * An ImageStore over an OCI image layout directory (image-spec `image-layout.md`): `oci-layout`,
 * `index.json` whose entries carry the tag in `org.opencontainers.image.ref.name`, and content in
 * `blobs/<algorithm>/<hex>`. Readable layouts come from umoci, skopeo (`oci:`), buildkit; written
 * ones are readable by them.
 *
 * A missing or empty directory reads as an empty store (NAIAD_REG_NOT_FOUND) and is created on the
 * first write; a directory with content but no `oci-layout` is NAIAD_OCI_LAYOUT.
 *
 * Writes are atomic: a blob or index.json is written to a temp file in the same directory, synced,
 * then renamed into place, so a crash leaves either the old or the new file, never a torn one.
 * index.json updates are serialised within one store; two processes writing the same layout at
 * once may lose a tag update (the last rename wins).
 */
import { randomUUID } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { addAbortSignal, Transform, type Readable, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Digester, digestAlgorithm, digestHex, isDigest, parseDigest, sha256, VerifyingStream, type Digest } from '../digest/index.ts'
import { ioError, isNaiadError, NaiadError, throwIfAborted } from '../errors/index.ts'
import { nullLogger, type Logger } from '../log/index.ts'
import { canonicalJson } from '../oci/canonical-json.ts'
import { Annotation, MediaType } from '../oci/media-types.ts'
import { MAX_MANIFEST_BYTES, parseIndex, parseManifestOrIndex } from '../oci/parse.ts'
import type { LayoutReference } from '../oci/reference.ts'
import type { Descriptor, Index } from '../oci/types.ts'
import { checkSource } from './client.ts'
import type { AbortOptions, BlobSource, FetchedManifest, GetBlobOptions, ImageStore, PushBlobOptions, PushBlobResult } from './store.ts'

export interface LayoutImageStoreDeps {
  logger?: Logger
}

export interface LayoutImageStoreOptions {
  reference: LayoutReference
}

const LAYOUT_VERSION = '1.0.0'

function notFound (msg: string): NaiadError {
  return new NaiadError('NAIAD_REG_NOT_FOUND', msg, { hint: 'check the layout directory and the tag (index.json lists the tags as org.opencontainers.image.ref.name)' })
}

function isEnoent (err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT'
}

/** Counts and hashes what flows through; fails once more than `limit` bytes pass. */
class Hashing extends Transform {
  readonly digester: Digester
  constructor (algorithm: 'sha256' | 'sha512', private readonly limit: number, private readonly what: string) {
    super()
    this.digester = new Digester(algorithm)
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.digester.update(chunk)
    if (this.digester.size > this.limit) { cb(new NaiadError('NAIAD_DIGEST_MISMATCH', `${this.what}: the source has more than the expected ${this.limit} bytes`)); return }
    cb(null, chunk)
  }
}

export class LayoutImageStore implements ImageStore {
  readonly reference: LayoutReference
  readonly dir: string
  private readonly logger: Logger
  private initialized: Promise<void> | undefined
  private indexLock: Promise<unknown> = Promise.resolve()
  private closed = false

  constructor (deps: LayoutImageStoreDeps, options: LayoutImageStoreOptions) {
    this.reference = options.reference
    this.dir = options.reference.dir
    this.logger = (deps.logger ?? nullLogger()).child({ component: 'registry.layout', dir: this.dir })
  }

  private check (): void {
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', `image layout store ${this.dir} is closed`)
  }

  /** Path of a blob file. */
  blobPath (digest: Digest): string {
    return join(this.dir, 'blobs', digestAlgorithm(digest), digestHex(digest))
  }

  /** Reads and validates oci-layout and index.json (NAIAD_OCI_LAYOUT if missing or malformed). */
  async readIndex (): Promise<Index> {
    this.check()
    let layout: string
    try {
      layout = await readFile(join(this.dir, 'oci-layout'), 'utf8')
    } catch (err) {
      if (!isEnoent(err)) throw ioError('cannot read', join(this.dir, 'oci-layout'), err)
      // A missing or empty directory is an image store with nothing in it (NotFound, as a registry
      // says for an unknown repository); a directory with other things in it is not a layout.
      const entries = await readdir(this.dir).catch((e: unknown) => { if (isEnoent(e)) return []; throw ioError('cannot list', this.dir, e) })
      if (entries.length === 0) throw notFound(`there is no OCI image layout at ${this.dir} (missing or empty directory)`)
      throw new NaiadError('NAIAD_OCI_LAYOUT', `${this.dir} is not an OCI image layout: it has no oci-layout file`, { cause: err })
    }
    try {
      const v = JSON.parse(layout) as { imageLayoutVersion?: unknown }
      if (typeof v.imageLayoutVersion !== 'string') throw new Error('no imageLayoutVersion')
    } catch (err) {
      throw new NaiadError('NAIAD_OCI_LAYOUT', `${join(this.dir, 'oci-layout')} is malformed: ${(err as Error).message}`, { cause: err })
    }
    let bytes: Buffer
    try {
      bytes = await readFile(join(this.dir, 'index.json'))
    } catch (err) {
      if (isEnoent(err)) throw new NaiadError('NAIAD_OCI_LAYOUT', `${this.dir} is not an OCI image layout: it has no index.json`, { cause: err })
      throw ioError('cannot read', join(this.dir, 'index.json'), err)
    }
    try {
      return parseIndex(bytes, MediaType.OciIndex)
    } catch (err) {
      throw new NaiadError('NAIAD_OCI_LAYOUT', `${join(this.dir, 'index.json')} is malformed: ${(err as Error).message}`, { cause: err })
    }
  }

  /** Tags in index.json, in order. */
  async tags (opts: AbortOptions = {}): Promise<string[]> {
    throwIfAborted(opts.signal)
    const index = await this.readIndex()
    return index.manifests.map(d => d.annotations?.[Annotation.RefName]).filter((t): t is string => t !== undefined)
  }

  async resolve (tagOrDigest?: string, opts: AbortOptions = {}): Promise<Descriptor> {
    throwIfAborted(opts.signal)
    const index = await this.readIndex()
    const target = tagOrDigest ?? this.reference.digest ?? this.reference.tag
    if (target === undefined) {
      // An untagged reference to a layout with a single image means that image.
      if (index.manifests.length === 1) return plain(index.manifests[0] as Descriptor)
      return this.byTag(index, 'latest')
    }
    if (isDigest(target)) {
      const entry = index.manifests.find(d => d.digest === target)
      if (entry !== undefined) return plain(entry)
      const bytes = await this.readSmallBlob(target, opts)
      const doc = parseManifestOrIndex(bytes)
      return { mediaType: doc.kind === 'index' ? doc.index.mediaType : doc.manifest.mediaType, digest: target, size: bytes.length }
    }
    return this.byTag(index, target)
  }

  private byTag (index: Index, tag: string): Descriptor {
    const hits = index.manifests.filter(d => d.annotations?.[Annotation.RefName] === tag)
    const hit = hits[hits.length - 1]
    if (hit === undefined) {
      const tags = index.manifests.map(d => d.annotations?.[Annotation.RefName]).filter(t => t !== undefined)
      throw notFound(`layout ${this.dir} has no tag ${JSON.stringify(tag)}; it has ${tags.length === 0 ? 'no tags' : tags.map(t => JSON.stringify(t)).join(', ')}`)
    }
    return plain(hit)
  }

  /** Reads a whole blob of at most MAX_MANIFEST_BYTES and checks its digest. */
  private async readSmallBlob (digest: Digest, opts: AbortOptions): Promise<Buffer> {
    throwIfAborted(opts.signal)
    const path = this.blobPath(digest)
    let bytes: Buffer
    try {
      const st = await stat(path)
      if (st.size > MAX_MANIFEST_BYTES) throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', `${digest} in ${this.dir} is ${st.size} bytes, too large for a manifest`)
      bytes = await readFile(path)
    } catch (err) {
      if (isNaiadError(err)) throw err
      if (isEnoent(err)) throw notFound(`layout ${this.dir} has no blob ${digest}`)
      throw ioError('cannot read', path, err)
    }
    const d = new Digester(digestAlgorithm(digest))
    d.update(bytes)
    const got = d.digest()
    if (got !== digest) throw new NaiadError('NAIAD_DIGEST_MISMATCH', `blob file ${path} hashes to ${got}`, { details: { expected: digest, got } })
    return bytes
  }

  async getManifest (target?: string | Descriptor, opts: AbortOptions = {}): Promise<FetchedManifest> {
    const desc = target === undefined || typeof target === 'string' ? await this.resolve(target, opts) : target
    const digest = parseDigest(desc.digest)
    const bytes = await this.readSmallBlob(digest, opts)
    if (bytes.length !== desc.size) {
      throw new NaiadError('NAIAD_DIGEST_MISMATCH', `manifest ${digest} in ${this.dir}: ${bytes.length} bytes, the descriptor says ${desc.size}`)
    }
    const doc = parseManifestOrIndex(bytes, desc.mediaType)
    const mediaType = doc.kind === 'index' ? doc.index.mediaType : doc.manifest.mediaType
    return { descriptor: { mediaType, digest, size: bytes.length }, bytes, mediaType }
  }

  async statBlob (digest: Digest, opts: AbortOptions = {}): Promise<number | undefined> {
    this.check()
    throwIfAborted(opts.signal)
    try {
      return (await stat(this.blobPath(parseDigest(digest)))).size
    } catch (err) {
      if (isEnoent(err)) return undefined
      throw ioError('cannot stat', this.blobPath(digest), err)
    }
  }

  async getBlob (digest: Digest, opts: GetBlobOptions = {}): Promise<Readable> {
    const size = await this.statBlob(digest, opts)
    if (size === undefined) throw notFound(`layout ${this.dir} has no blob ${digest}`)
    const path = this.blobPath(digest)
    let out: Readable
    if (opts.range !== undefined) {
      const [start, end] = opts.range
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
        throw new NaiadError('NAIAD_INTERNAL', `invalid byte range [${start}, ${end}]`)
      }
      if (start >= size) throw new NaiadError('NAIAD_REG_PROTOCOL', `blob ${digest} in ${this.dir}: range start ${start} is past its end (${size} bytes)`)
      out = createReadStream(path, { start, end: Math.min(end, size - 1) })
    } else {
      if (opts.size !== undefined && opts.size !== size) {
        throw new NaiadError('NAIAD_DIGEST_MISMATCH', `blob ${digest} in ${this.dir} has ${size} bytes, expected ${opts.size}`)
      }
      const file = createReadStream(path)
      const verify = new VerifyingStream(digest, size)
      file.on('error', (err) => verify.destroy(ioError('cannot read', path, err)))
      verify.on('close', () => file.destroy())
      out = file.pipe(verify)
    }
    return opts.signal !== undefined ? addAbortSignal(opts.signal, out) : out
  }

  private async ensureLayout (): Promise<void> {
    this.initialized ??= (async () => {
      try {
        await mkdir(join(this.dir, 'blobs', 'sha256'), { recursive: true })
      } catch (err) {
        throw ioError('cannot create', join(this.dir, 'blobs'), err)
      }
      try {
        await stat(join(this.dir, 'oci-layout'))
      } catch (err) {
        if (!isEnoent(err)) throw ioError('cannot stat', join(this.dir, 'oci-layout'), err)
        await writeAtomic(join(this.dir, 'oci-layout'), Buffer.from(JSON.stringify({ imageLayoutVersion: LAYOUT_VERSION })))
      }
      try {
        await stat(join(this.dir, 'index.json'))
      } catch (err) {
        if (!isEnoent(err)) throw ioError('cannot stat', join(this.dir, 'index.json'), err)
        await writeAtomic(join(this.dir, 'index.json'), canonicalJson({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }))
      }
      await this.readIndex()
    })()
    try {
      await this.initialized
    } catch (err) {
      this.initialized = undefined
      throw err
    }
  }

  async pushBlob (desc: Descriptor, source: BlobSource, opts: PushBlobOptions = {}): Promise<PushBlobResult> {
    this.check()
    throwIfAborted(opts.signal)
    const digest = parseDigest(desc.digest)
    checkSource(source)
    const what = `blob ${digest}`
    await this.ensureLayout()
    const have = await this.statBlob(digest)
    if (have === desc.size) return { descriptor: desc, outcome: 'exists' }
    const path = this.blobPath(digest)
    await mkdir(dirname(path), { recursive: true }).catch((err: unknown) => { throw ioError('cannot create', dirname(path), err) })
    if (source instanceof Uint8Array) {
      const got = sha256OrSha512(source, digest)
      if (source.byteLength !== desc.size || got !== digest) {
        throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the source has ${source.byteLength} bytes hashing to ${got}, expected ${desc.size} bytes`, { details: { expected: digest, got } })
      }
      await writeAtomic(path, source)
    } else {
      const tmp = `${path}.tmp-${randomUUID()}`
      try {
        const stream = await source()
        const hashing = new Hashing(digestAlgorithm(digest), desc.size, what)
        try {
          await pipeline(stream, hashing, createWriteStream(tmp, { flags: 'wx' }), ...(opts.signal !== undefined ? [{ signal: opts.signal }] : []))
        } catch (err) {
          if (isNaiadError(err) || (err as Error).name === 'AbortError') throw err
          throw ioError('cannot write', tmp, err)
        }
        const got = hashing.digester.digest()
        if (hashing.digester.size !== desc.size || got !== digest) {
          throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the source has ${hashing.digester.size} bytes hashing to ${got}, expected ${desc.size} bytes`, { details: { expected: digest, got } })
        }
        await syncFile(tmp)
        await rename(tmp, path).catch((err: unknown) => { throw ioError('cannot rename', tmp, err) })
      } catch (err) {
        await unlink(tmp).catch(() => undefined)
        throw err
      }
    }
    this.logger.debug({ digest, size: desc.size }, 'stored blob')
    return { descriptor: desc, outcome: 'uploaded' }
  }

  async putManifest (bytes: Uint8Array, mediaType: string, tagOrDigest?: string, opts: AbortOptions = {}): Promise<Descriptor> {
    this.check()
    throwIfAborted(opts.signal)
    const doc = parseManifestOrIndex(bytes, mediaType)
    const mt = doc.kind === 'index' ? doc.index.mediaType : doc.manifest.mediaType
    const digest = tagOrDigest !== undefined && isDigest(tagOrDigest) ? sha256OrSha512(bytes, tagOrDigest) : sha256(bytes)
    if (tagOrDigest !== undefined && isDigest(tagOrDigest) && tagOrDigest !== digest) {
      throw new NaiadError('NAIAD_DIGEST_MISMATCH', `manifest: the bytes hash to ${digest}, expected ${tagOrDigest}`, { details: { expected: tagOrDigest, got: digest } })
    }
    if (tagOrDigest !== undefined && !isDigest(tagOrDigest) && !/^[\w][\w.-]{0,127}$/.test(tagOrDigest)) {
      throw new NaiadError('NAIAD_REF_INVALID', `not a tag: ${JSON.stringify(tagOrDigest.slice(0, 200))}`)
    }
    const desc: Descriptor = { mediaType: mt, digest, size: bytes.byteLength }
    await this.pushBlob(desc, bytes, opts)
    if (tagOrDigest !== undefined && !isDigest(tagOrDigest)) {
      const tag = tagOrDigest
      await this.withIndexLock(async () => {
        const index = await this.readIndex()
        index.manifests = index.manifests.filter(d => d.annotations?.[Annotation.RefName] !== tag)
        index.manifests.push({ ...desc, annotations: { [Annotation.RefName]: tag } })
        await writeAtomic(join(this.dir, 'index.json'), canonicalJson(index))
      })
      this.logger.debug({ digest, tag }, 'tagged manifest')
    }
    return desc
  }

  private async withIndexLock<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.indexLock.then(fn, fn)
    this.indexLock = run.catch(() => undefined)
    return await run
  }

  async close (): Promise<void> {
    this.closed = true
    await this.indexLock
  }
}

function plain (d: Descriptor): Descriptor {
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size }
  if (d.artifactType !== undefined) out.artifactType = d.artifactType
  return out
}

function sha256OrSha512 (bytes: Uint8Array, like: Digest): Digest {
  const d = new Digester(digestAlgorithm(like))
  d.update(bytes)
  return d.digest()
}

async function syncFile (path: string): Promise<void> {
  let fh
  try {
    fh = await open(path, 'r')
    await fh.sync()
  } catch (err) {
    throw ioError('cannot sync', path, err)
  } finally {
    await fh?.close()
  }
}

/** Writes `data` to `path` via a synced temp file and a rename. */
export async function writeAtomic (path: string, data: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${randomUUID()}`
  try {
    const fh = await open(tmp, 'wx')
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw ioError('cannot write', path, err)
  }
}
