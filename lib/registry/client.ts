/**
 * An OCI distribution-spec client for one registry endpoint, on undici 7.
 *
 * - manifests: GET/HEAD/PUT by tag or digest, Accept listing OCI and Docker manifest and index
 *   types; content fetched by digest is verified against it;
 * - blobs: HEAD (size), GET whole (streamed through a digest check), GET a byte range (206 with a
 *   matching Content-Range required; a 200 is NAIAD_REG_RANGE_UNSUPPORTED), and uploads:
 *   HEAD first (skip if present), cross-repository mount, monolithic POST+PUT for small blobs,
 *   chunked POST+PATCH…+PUT otherwise; an upload interrupted by a transport failure or a
 *   retryable status restarts from a fresh source;
 * - auth, redirects, retries and timeouts as described in http.ts and auth.ts.
 *
 * Error codes: 401 NAIAD_REG_UNAUTHORIZED, 403 NAIAD_REG_DENIED, 404 NAIAD_REG_NOT_FOUND (except
 * where a method says it returns undefined), retries exhausted or unreachable
 * NAIAD_REG_UNAVAILABLE, idle timeout NAIAD_REG_TIMEOUT, content not matching its digest
 * NAIAD_DIGEST_MISMATCH, anything else NAIAD_REG_PROTOCOL. A caller's abort rejects with the
 * signal's reason (AbortError), also from a blob stream that is being read.
 */
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { Agent, type Dispatcher } from 'undici'
import { Digester, digestAlgorithm, isDigest, parseDigest, VerifyingStream, type Digest } from '../digest/index.ts'
import { isAbortError, isNaiadError, NaiadError, throwIfAborted } from '../errors/index.ts'
import { nullLogger, type Logger } from '../log/index.ts'
import { baseMediaType, MANIFEST_ACCEPT } from '../oci/media-types.ts'
import { MAX_MANIFEST_BYTES, parseManifestOrIndex } from '../oci/parse.ts'
import { isValidTag } from '../oci/reference.ts'
import type { Descriptor } from '../oci/types.ts'
import { Authenticator, repositoryScope } from './auth.ts'
import type { CredentialProvider } from './credentials.ts'
import { discard, networkError, readExcerpt, RETRYABLE_STATUS, safeUrl, statusError } from './errors.ts'
import { delay, header, RegistryHttp, type HttpPolicy, type HttpResponse, type SendOptions } from './http.ts'
import { DirectRangeReader, type DirectRangeOutcome } from './direct-range.ts'

export interface AbortOptions {
  signal?: AbortSignal
}

/** A manifest or index as fetched: exact bytes, media type, and its descriptor. */
export interface FetchedManifest {
  descriptor: Descriptor
  bytes: Buffer
  mediaType: string
}

export interface GetBlobOptions extends AbortOptions {
  /** Inclusive byte range `[start, end]`; `end` past the blob's end is clamped by the server. */
  range?: readonly [start: number, end: number]
  /** The blob's size if known: a whole-blob read must have exactly this many bytes. */
  size?: number
}

/**
 * Blob content for an upload: bytes, or a factory giving a fresh stream each time it is called
 * (an interrupted upload calls it again).
 */
export type BlobSource = Uint8Array | (() => Readable | Promise<Readable>)

export interface PushBlobOptions extends AbortOptions {
  /** Repositories on the same registry to try a cross-repository mount from, in order. */
  mountFrom?: readonly string[]
}

export interface PushBlobResult {
  descriptor: Descriptor
  /** `exists`: already there, nothing sent; `mounted`: linked from another repository. */
  outcome: 'exists' | 'mounted' | 'uploaded'
}

export interface RegistryClientOptions {
  /** `host[:port]` to connect to (registry-1.docker.io for Docker Hub). */
  endpoint: string
  /** Registry name for credential lookups (docker.io); defaults to `endpoint`. */
  registry?: string
  /**
   * `true`: plain HTTP. `'loopback'`: plain HTTP for localhost, 127.0.0.0/8 and [::1] only,
   * HTTPS for everything else. `false` (default): HTTPS.
   */
  plainHttp?: boolean | 'loopback'
  /** Idle timeout for response headers and between body pieces (default 30 s). */
  timeoutMs?: number
  /** Retries after a failed try (default 4). */
  retries?: number
  /** First backoff delay (default 200 ms); doubles per retry, with jitter. */
  retryBaseDelayMs?: number
  /** Longest single wait, also for Retry-After (default 30 s). */
  retryMaxDelayMs?: number
  /** Default 5. */
  maxRedirects?: number
  /** Bytes per PATCH in chunked uploads (default 16 MiB). */
  chunkSize?: number
  /** Blobs up to this size go up in one PUT (default 16 MiB); larger ones in chunks. */
  monolithicMaxBytes?: number
  userAgent?: string
}

export interface RegistryClientDeps {
  /** HTTP dispatcher (default: an own undici Agent, closed by close()). Not closed if injected. */
  dispatcher?: Dispatcher
  credentials?: CredentialProvider
  logger?: Logger
  /** Clock for token expiry (tests). */
  now?: () => number
  /** Jitter source (tests). */
  random?: () => number
}

const MiB = 1024 * 1024

/** Thrown inside an upload when a PATCH/PUT failed in a way that restarting the upload may fix. */
class UploadInterrupted extends Error {
  constructor (readonly error: NaiadError) { super(error.message) }
}

function isLoopback (host: string): boolean {
  const h = host.replace(/:\d+$/, '')
  return h === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '[::1]'
}

function checkRepository (repo: string): void {
  if (!/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(repo)) {
    throw new NaiadError('NAIAD_REF_INVALID', `not a repository name: ${JSON.stringify(repo.slice(0, 200))}`)
  }
}

function checkTagOrDigest (ref: string): void {
  if (!isValidTag(ref) && !isDigest(ref)) throw new NaiadError('NAIAD_REF_INVALID', `not a tag or digest: ${JSON.stringify(ref.slice(0, 200))}`)
}

function checkRange (range: readonly [number, number]): void {
  const [s, e] = range
  if (!Number.isSafeInteger(s) || !Number.isSafeInteger(e) || s < 0 || e < s) {
    throw new NaiadError('NAIAD_INTERNAL', `invalid byte range [${s}, ${e}]`)
  }
}

function digestOf (bytes: Uint8Array, algorithm: 'sha256' | 'sha512' = 'sha256'): Digest {
  const d = new Digester(algorithm)
  d.update(bytes)
  return d.digest()
}

/** Fails the stream unless exactly `length` bytes pass. */
class LengthCheck extends Transform {
  private n = 0
  constructor (private readonly length: number, private readonly what: string) { super() }
  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.n += chunk.length
    if (this.n > this.length) { cb(new NaiadError('NAIAD_REG_PROTOCOL', `${this.what}: the registry sent more than the ${this.length} bytes announced`)); return }
    cb(null, chunk)
  }

  override _flush (cb: TransformCallback): void {
    if (this.n !== this.length) { cb(new NaiadError('NAIAD_REG_UNAVAILABLE', `${this.what}: the body ended after ${this.n} of ${this.length} bytes`)); return }
    cb()
  }
}

export class RegistryClient {
  readonly endpoint: string
  readonly registry: string
  /** `http(s)://endpoint` */
  readonly baseUrl: string
  private readonly logger: Logger
  private readonly http: RegistryHttp
  private readonly auth: Authenticator
  private readonly policy: HttpPolicy
  private readonly chunkSize: number
  private readonly monolithicMaxBytes: number
  private readonly random: () => number
  private agent: Dispatcher | undefined
  private readonly injected: Dispatcher | undefined
  private direct: DirectRangeReader | undefined
  private closing: Promise<void> | undefined

  constructor (deps: RegistryClientDeps, options: RegistryClientOptions) {
    if (!/^[A-Za-z0-9.-]+(?::\d+)?$|^\[[0-9a-fA-F:]+\](?::\d+)?$/.test(options.endpoint)) {
      throw new NaiadError('NAIAD_REF_INVALID', `not a registry host: ${JSON.stringify(options.endpoint.slice(0, 200))}`)
    }
    this.endpoint = options.endpoint
    this.registry = options.registry ?? options.endpoint
    const plain = options.plainHttp === true || (options.plainHttp === 'loopback' && isLoopback(options.endpoint))
    this.baseUrl = `${plain ? 'http' : 'https'}://${options.endpoint}`
    this.logger = (deps.logger ?? nullLogger()).child({ component: 'registry', registry: this.registry })
    this.injected = deps.dispatcher
    this.random = deps.random ?? Math.random
    this.policy = {
      timeoutMs: options.timeoutMs ?? 30_000,
      retries: options.retries ?? 4,
      retryBaseDelayMs: options.retryBaseDelayMs ?? 200,
      retryMaxDelayMs: options.retryMaxDelayMs ?? 30_000,
      maxRedirects: options.maxRedirects ?? 5,
      userAgent: options.userAgent ?? 'naiad/0.1'
    }
    this.chunkSize = options.chunkSize ?? 16 * MiB
    this.monolithicMaxBytes = options.monolithicMaxBytes ?? 16 * MiB
    if (!(this.chunkSize > 0)) throw new NaiadError('NAIAD_INTERNAL', 'chunkSize must be positive')
    const dispatcher = (): Dispatcher => this.dispatcher()
    const tokenHttp = new RegistryHttp({ dispatcher, logger: this.logger, random: this.random }, this.policy)
    this.auth = new Authenticator({
      ...(deps.credentials !== undefined ? { credentials: deps.credentials } : {}),
      ...(deps.now !== undefined ? { now: deps.now } : {}),
      logger: this.logger,
      send: async (o) => await tokenHttp.send(o)
    }, { registry: this.registry })
    this.http = new RegistryHttp({ dispatcher, logger: this.logger, authorizer: this.auth, random: this.random }, this.policy)
  }

  /** Tokens fetched so far (for tests and metrics). */
  get tokenFetches (): number { return this.auth.tokenFetches }

  private dispatcher (): Dispatcher {
    if (this.closing !== undefined) throw new NaiadError('NAIAD_CLOSED', `registry client for ${this.endpoint} is closed`)
    if (this.injected !== undefined) return this.injected
    this.agent ??= new Agent({ connect: { timeout: this.policy.timeoutMs } })
    return this.agent
  }

  private url (path: string): URL {
    return new URL(`${this.baseUrl}${path}`)
  }

  private async send (opts: SendOptions): Promise<HttpResponse> {
    if (this.closing !== undefined) throw new NaiadError('NAIAD_CLOSED', `registry client for ${this.endpoint} is closed`)
    return await this.http.send(opts)
  }

  private async fail (res: HttpResponse, what: string, method: string): Promise<never> {
    const excerpt = await readExcerpt(res.body)
    throw statusError(res.status, excerpt, what, method, res.url, res.attempts)
  }

  /** Checks that the endpoint speaks the distribution API (GET /v2/, authenticating if asked). */
  async ping (opts: AbortOptions = {}): Promise<void> {
    const what = `registry API check of ${this.endpoint}`
    const res = await this.send({ method: 'GET', url: this.url('/v2/'), what, ...sig(opts) })
    if (res.status !== 200) await this.fail(res, what, 'GET')
    discard(res.body)
  }

  /**
   * Fetches a manifest or index by tag or digest. The bytes are validated as a manifest or index
   * (NAIAD_OCI_BAD_MANIFEST, NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE); fetched by digest, they must hash
   * to it (NAIAD_DIGEST_MISMATCH). 404 → NAIAD_REG_NOT_FOUND.
   */
  async getManifest (repository: string, reference: string, opts: AbortOptions & { accept?: readonly string[] } = {}): Promise<FetchedManifest> {
    checkRepository(repository)
    checkTagOrDigest(reference)
    const what = `manifest ${repository}:${reference}`
    const res = await this.send({
      method: 'GET',
      url: this.url(`/v2/${repository}/manifests/${reference}`),
      headers: { accept: (opts.accept ?? MANIFEST_ACCEPT).join(', ') },
      scopes: [repositoryScope(repository, 'pull')],
      what,
      ...sig(opts)
    })
    if (res.status !== 200) await this.fail(res, what, 'GET')
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES, what)
    let digest: Digest
    if (isDigest(reference)) {
      digest = digestOf(bytes, digestAlgorithm(reference))
      if (digest !== reference) throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the registry sent content with digest ${digest}`, { details: { expected: reference, got: digest } })
    } else {
      digest = digestOf(bytes)
      const claimed = header(res.headers, 'docker-content-digest')
      if (claimed !== undefined && claimed.startsWith('sha256:') && claimed !== digest) {
        throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: Docker-Content-Digest says ${claimed} but the content hashes to ${digest}`, { details: { expected: claimed, got: digest } })
      }
    }
    // Digest first, then shape: corrupt bytes are a digest mismatch, not a bad manifest.
    const parsed = parseManifestOrIndex(bytes, header(res.headers, 'content-type'))
    const mediaType = parsed.kind === 'index' ? parsed.index.mediaType : parsed.manifest.mediaType
    return { descriptor: { mediaType, digest, size: bytes.length }, bytes, mediaType }
  }

  /**
   * Resolves a tag or digest to a descriptor with HEAD (falling back to GET when the registry
   * leaves out Docker-Content-Digest or the media type). 404 → NAIAD_REG_NOT_FOUND.
   */
  async headManifest (repository: string, reference: string, opts: AbortOptions = {}): Promise<Descriptor> {
    checkRepository(repository)
    checkTagOrDigest(reference)
    const what = `manifest ${repository}:${reference}`
    const res = await this.send({
      method: 'HEAD',
      url: this.url(`/v2/${repository}/manifests/${reference}`),
      headers: { accept: MANIFEST_ACCEPT.join(', ') },
      scopes: [repositoryScope(repository, 'pull')],
      what,
      ...sig(opts)
    })
    discard(res.body)
    if (res.status !== 200) throw statusError(res.status, '', what, 'HEAD', res.url, res.attempts)
    const claimed = header(res.headers, 'docker-content-digest')
    const mediaType = baseMediaType(header(res.headers, 'content-type') ?? '')
    const size = Number(header(res.headers, 'content-length'))
    if (claimed !== undefined && isDigest(claimed) && MANIFEST_ACCEPT.includes(mediaType) && Number.isSafeInteger(size) && size > 0) {
      if (isDigest(reference) && claimed !== reference) {
        throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: Docker-Content-Digest says ${claimed}`, { details: { expected: reference, got: claimed } })
      }
      return { mediaType, digest: parseDigest(claimed), size }
    }
    return (await this.getManifest(repository, reference, opts)).descriptor
  }

  /**
   * Uploads a manifest or index under a tag or its digest. The bytes are validated first; a
   * digest reference must be the digest of the bytes. Returns the stored descriptor.
   */
  async putManifest (repository: string, reference: string, bytes: Uint8Array, mediaType: string, opts: AbortOptions = {}): Promise<Descriptor> {
    checkRepository(repository)
    checkTagOrDigest(reference)
    parseManifestOrIndex(bytes, mediaType)
    const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const digest = digestOf(body, isDigest(reference) ? digestAlgorithm(reference) : 'sha256')
    const what = `manifest ${repository}:${reference}`
    if (isDigest(reference) && reference !== digest) {
      throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the manifest bytes hash to ${digest}`, { details: { expected: reference, got: digest } })
    }
    const res = await this.send({
      method: 'PUT',
      url: this.url(`/v2/${repository}/manifests/${reference}`),
      headers: { 'content-type': mediaType },
      body,
      scopes: [repositoryScope(repository, 'pull,push')],
      what,
      ...sig(opts)
    })
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) await this.fail(res, what, 'PUT')
    discard(res.body)
    const claimed = header(res.headers, 'docker-content-digest')
    if (claimed !== undefined && digestAlgorithm(digest) === 'sha256' && claimed.startsWith('sha256:') && claimed !== digest) {
      throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the registry stored it as ${claimed}, expected ${digest}`, { details: { expected: digest, got: claimed } })
    }
    this.logger.debug({ repository, reference, digest, size: body.length }, 'pushed manifest')
    return { mediaType, digest, size: body.length }
  }

  /** Deletes a manifest by digest (the registry must allow deletes). */
  async deleteManifest (repository: string, digest: Digest, opts: AbortOptions = {}): Promise<void> {
    checkRepository(repository)
    parseDigest(digest)
    const what = `manifest ${repository}@${digest}`
    const res = await this.send({ method: 'DELETE', url: this.url(`/v2/${repository}/manifests/${digest}`), scopes: [repositoryScope(repository, 'pull,push')], what, ...sig(opts) })
    if (res.status !== 202 && res.status !== 200) await this.fail(res, what, 'DELETE')
    discard(res.body)
  }

  /** Tags of a repository (all pages). */
  async listTags (repository: string, opts: AbortOptions = {}): Promise<string[]> {
    checkRepository(repository)
    const what = `tags of ${repository}`
    const out: string[] = []
    let url: URL | undefined = this.url(`/v2/${repository}/tags/list`)
    for (let page = 0; url !== undefined && page < 1000; page++) {
      const res: HttpResponse = await this.send({ method: 'GET', url, scopes: [repositoryScope(repository, 'pull')], what, ...sig(opts) })
      if (res.status !== 200) await this.fail(res, what, 'GET')
      const body = JSON.parse((await readLimited(res, 16 * MiB, what)).toString('utf8')) as { tags?: unknown }
      if (Array.isArray(body.tags)) for (const t of body.tags) if (typeof t === 'string') out.push(t)
      const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(header(res.headers, 'link') ?? '')?.[1]
      url = link !== undefined ? new URL(link, res.url) : undefined
    }
    return out
  }

  /** The size of a blob, or undefined if the repository does not have it. */
  async statBlob (repository: string, digest: Digest, opts: AbortOptions = {}): Promise<number | undefined> {
    checkRepository(repository)
    parseDigest(digest)
    return await this.headBlob(repository, digest, [repositoryScope(repository, 'pull')], opts.signal)
  }

  private async headBlob (repository: string, digest: Digest, scopes: string[], signal: AbortSignal | undefined): Promise<number | undefined> {
    const what = `blob ${repository}@${digest}`
    const res = await this.send({ method: 'HEAD', url: this.url(`/v2/${repository}/blobs/${digest}`), scopes, what, ...(signal !== undefined ? { signal } : {}) })
    discard(res.body)
    if (res.status === 404) return undefined
    if (res.status !== 200) throw statusError(res.status, '', what, 'HEAD', res.url, res.attempts)
    const size = Number(header(res.headers, 'content-length'))
    if (!Number.isSafeInteger(size) || size < 0) throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: HEAD answered without a valid Content-Length`)
    return size
  }

  /**
   * Streams a blob. A whole blob is verified against its digest (and `size` if given): the stream
   * fails with NAIAD_DIGEST_MISMATCH at its end rather than deliver wrong content silently. A range
   * read returns exactly the bytes of the range (clamped at the blob's end) and is not verified
   * (only whole blobs can be). The stream fails with NAIAD_REG_UNAVAILABLE / NAIAD_REG_TIMEOUT on
   * transport trouble and with the caller's AbortError on abort.
   */
  async getBlob (repository: string, digest: Digest, opts: GetBlobOptions = {}): Promise<Readable> {
    checkRepository(repository)
    parseDigest(digest)
    if (opts.range !== undefined) checkRange(opts.range)
    const what = `blob ${repository}@${digest}${opts.range !== undefined ? ` bytes ${opts.range[0]}-${opts.range[1]}` : ''}`
    const res = await this.send({
      method: 'GET',
      url: this.url(`/v2/${repository}/blobs/${digest}`),
      headers: opts.range !== undefined ? { range: `bytes=${opts.range[0]}-${opts.range[1]}` } : {},
      scopes: [repositoryScope(repository, 'pull')],
      what,
      ...sig(opts)
    })
    if (opts.range === undefined) {
      if (res.status !== 200) await this.fail(res, what, 'GET')
      const announced = Number(header(res.headers, 'content-length'))
      if (opts.size !== undefined && Number.isSafeInteger(announced) && announced !== opts.size) {
        discard(res.body)
        throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the registry announces ${announced} bytes, expected ${opts.size}`, { details: { expected: opts.size, got: announced } })
      }
      return this.wrapBody(res, what, new VerifyingStream(digest, opts.size))
    }
    const [start, end] = opts.range
    if (res.status === 200) {
      discard(res.body)
      throw new NaiadError('NAIAD_REG_RANGE_UNSUPPORTED', `${what}: ${safeUrl(res.url)} answered 200 (whole blob) to a Range request`, { details: { url: safeUrl(res.url) } })
    }
    if (res.status !== 206) await this.fail(res, what, 'GET')
    const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header(res.headers, 'content-range') ?? '')
    const gotStart = Number(cr?.[1])
    const gotEnd = Number(cr?.[2])
    const total = cr?.[3] === '*' ? undefined : Number(cr?.[3])
    if (cr === null || gotStart !== start || gotEnd > end || (gotEnd < end && total !== undefined && gotEnd !== total - 1) || (gotEnd < end && total === undefined)) {
      discard(res.body)
      throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: 206 with Content-Range ${JSON.stringify(header(res.headers, 'content-range') ?? '(none)')} does not match the request`)
    }
    return this.wrapBody(res, what, new LengthCheck(gotEnd - gotStart + 1, what))
  }

  /**
   * Reads bytes `start`–`end` (inclusive) of a blob straight into `into` (exactly that many
   * bytes) when the registry speaks plain HTTP and answers the range at once with 206: the kernel
   * copies the body into `into`, no HTTP library in between (DirectRangeReader,
   * docs/decisions/0006-direct-range-reads.md). Returns `served: false` when it did not: https or
   * an injected dispatcher (status 0), or any other answer (a redirect, 401, 404, 5xx, a clamped
   * range: its status); then getBlob with the range gets it, with redirects, re-authentication,
   * retries and error mapping. Throws
   * transport failures (NAIAD_REG_UNAVAILABLE, NAIAD_REG_TIMEOUT, NAIAD_REG_PROTOCOL for an
   * answer HTTP does not allow) and the signal's reason; nothing is retried here. The bytes are
   * not verified (a range cannot be). `onProgress(filled)`: bytes [0, filled) of `into` have
   * arrived.
   */
  async readBlobRange (repository: string, digest: Digest, start: number, end: number, into: Buffer, opts: AbortOptions & { onProgress?: (filled: number) => void } = {}): Promise<DirectRangeOutcome> {
    if (this.injected !== undefined || !this.baseUrl.startsWith('http:')) return { served: false, status: 0, reason: this.injected !== undefined ? 'an injected dispatcher' : 'https', stop: true }
    if (this.closing !== undefined) throw new NaiadError('NAIAD_CLOSED', `registry client for ${this.endpoint} is closed`)
    checkRepository(repository)
    parseDigest(digest)
    checkRange([start, end])
    const url = this.url(`/v2/${repository}/blobs/${digest}`)
    const authorization = await this.auth.authorization(url.origin, [repositoryScope(repository, 'pull')], opts.signal)
    const headers: Record<string, string> = { 'user-agent': this.policy.userAgent }
    if (authorization !== undefined) headers['authorization'] = authorization
    this.direct ??= new DirectRangeReader({ idleTimeoutMs: this.policy.timeoutMs })
    const what = `blob ${repository}@${digest} bytes ${start}-${end}`
    let out: DirectRangeOutcome
    try {
      out = await this.direct.read({ url, headers, start, end, into, ...sig(opts), ...(opts.onProgress !== undefined ? { onProgress: opts.onProgress } : {}) })
    } catch (err) {
      if (isNaiadError(err)) throw new NaiadError(err.code, `${what}: ${err.message}`, { cause: err, details: { url: safeUrl(url) } })
      throw err
    }
    if (!out.served) this.logger.debug({ url: safeUrl(url), status: out.status, reason: out.reason }, 'range not read directly; asking through the HTTP client')
    return out
  }

  /**
   * Pipes a response body into `tail`, turning transport failures of the body into naiad errors
   * (pipe() forwards no errors, so the mapping is ours); destroying `tail` releases the body.
   */
  private wrapBody (res: HttpResponse, what: string, tail: Transform): Readable {
    const body = res.body
    body.on('error', (err) => { tail.destroy(networkError(err, what, res.url, 1) as Error) })
    tail.on('close', () => { if (!body.destroyed) body.destroy() })
    body.pipe(tail)
    return tail
  }

  /**
   * Pushes a blob unless the repository has it: HEAD (outcome `exists`), then mount attempts from
   * `mountFrom` (outcome `mounted`), then an upload (outcome `uploaded`) — one PUT up to
   * `monolithicMaxBytes`, else PATCHes of `chunkSize`. The content is checked against
   * `desc.digest` and `desc.size` before the upload is committed (NAIAD_DIGEST_MISMATCH; the
   * upload session is cancelled). Transport failures and retryable statuses in the middle of an
   * upload restart it with a fresh source, up to `retries` times.
   */
  async pushBlob (repository: string, desc: Pick<Descriptor, 'digest' | 'size'> & Partial<Descriptor>, source: BlobSource, opts: PushBlobOptions = {}): Promise<PushBlobResult> {
    checkRepository(repository)
    parseDigest(desc.digest)
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) throw new NaiadError('NAIAD_INTERNAL', `pushBlob: invalid size ${desc.size}`)
    for (const f of opts.mountFrom ?? []) checkRepository(f)
    checkSource(source)
    const descriptor: Descriptor = { mediaType: desc.mediaType ?? 'application/octet-stream', ...desc }
    for (let attempt = 1; ; attempt++) {
      try {
        const outcome = await this.pushOnce(repository, descriptor, source, opts)
        this.logger.debug({ repository, digest: desc.digest, size: desc.size, outcome, attempt }, 'pushed blob')
        return { descriptor, outcome }
      } catch (err) {
        if (!(err instanceof UploadInterrupted)) throw err
        if (attempt > this.policy.retries) throw err.error
        const wait = this.http.backoff(attempt)
        this.logger.debug({ repository, digest: desc.digest, attempt, delayMs: wait, err: { message: err.message } }, 'blob upload interrupted, restarting')
        await delay(wait, opts.signal)
      }
    }
  }

  private async pushOnce (repository: string, desc: Descriptor, source: BlobSource, opts: PushBlobOptions): Promise<PushBlobResult['outcome']> {
    const from = (opts.mountFrom ?? []).filter(f => f !== repository)
    const scopes = [repositoryScope(repository, 'pull,push'), ...from.map(f => repositoryScope(f, 'pull'))]
    const signal = opts.signal
    const what = `blob ${repository}@${desc.digest}`
    const have = await this.headBlob(repository, desc.digest, scopes, signal)
    if (have !== undefined) {
      if (have !== desc.size) throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: the registry has it with size ${have}, expected ${desc.size}`)
      return 'exists'
    }
    const buffered = source instanceof Uint8Array ? Buffer.from(source.buffer, source.byteOffset, source.byteLength) : undefined
    if (buffered !== undefined) verifyBuffer(buffered, desc, what)

    // Mount attempts; a failed mount (202) hands out an upload session, kept for the last one.
    let location: URL | undefined
    for (let i = 0; i < from.length; i++) {
      const f = from[i] as string
      const url = this.url(`/v2/${repository}/blobs/uploads/`)
      url.searchParams.set('mount', desc.digest)
      url.searchParams.set('from', f)
      const res = await this.send({ method: 'POST', url, scopes, what: `${what} (mount from ${f})`, ...sig(opts) })
      if (res.status === 201) {
        discard(res.body)
        return 'mounted'
      }
      if (res.status !== 202) await this.fail(res, `${what} (mount from ${f})`, 'POST')
      discard(res.body)
      const loc = uploadLocation(res, what)
      if (i < from.length - 1) await this.cancelUpload(loc, scopes)
      else location = loc
    }
    if (location === undefined) {
      const res = await this.send({ method: 'POST', url: this.url(`/v2/${repository}/blobs/uploads/`), scopes, what: `${what} (start upload)`, ...sig(opts) })
      if (res.status !== 202) await this.fail(res, `${what} (start upload)`, 'POST')
      discard(res.body)
      location = uploadLocation(res, what)
    }

    const session = location
    const chunked = (): ChunkedUpload => new ChunkedUpload(session, async (loc, off, chunk) => await this.patchChunk(loc, off, chunk, scopes, what, signal))
    try {
      if (buffered !== undefined) {
        if (buffered.length <= this.monolithicMaxBytes) {
          await this.finishUpload(session, desc, buffered, scopes, what, signal)
        } else {
          const up = chunked()
          for (let off = 0; off < buffered.length; off += this.chunkSize) await up.patch(buffered.subarray(off, off + this.chunkSize))
          await this.finishUpload(up.location, desc, undefined, scopes, what, signal)
        }
        return 'uploaded'
      }
      const stream = await (source as () => Readable | Promise<Readable>)()
      try {
        if (desc.size <= this.monolithicMaxBytes) {
          const all = await readStream(stream, desc.size, what, signal)
          verifyBuffer(all, desc, what)
          await this.finishUpload(session, desc, all, scopes, what, signal)
          return 'uploaded'
        }
        const up = chunked()
        const digester = new Digester(digestAlgorithm(desc.digest))
        let pending: Buffer[] = []
        let pendingLen = 0
        for await (const c of stream) {
          throwIfAborted(signal)
          const chunk = typeof c === 'string' ? Buffer.from(c) : c as Buffer
          digester.update(chunk)
          if (digester.size > desc.size) throw mismatch(what, `more than the expected ${desc.size} bytes`, desc)
          pending.push(chunk)
          pendingLen += chunk.length
          while (pendingLen >= this.chunkSize) {
            const all = pending.length === 1 ? pending[0] as Buffer : Buffer.concat(pending)
            await up.patch(all.subarray(0, this.chunkSize))
            const rest = all.subarray(this.chunkSize)
            pending = rest.length > 0 ? [rest] : []
            pendingLen = rest.length
          }
        }
        if (pendingLen > 0) await up.patch(pending.length === 1 ? pending[0] as Buffer : Buffer.concat(pending))
        if (digester.size !== desc.size) throw mismatch(what, `${digester.size} bytes, expected ${desc.size}`, desc)
        const got = digester.digest()
        if (got !== desc.digest) throw mismatch(what, `content hashes to ${got}`, desc, got)
        await this.finishUpload(up.location, desc, undefined, scopes, what, signal)
        return 'uploaded'
      } finally {
        if (!stream.destroyed) stream.destroy()
      }
    } catch (err) {
      // Leave no half upload behind (best effort; the registry purges stale sessions anyway).
      if (!isAbortError(err)) await this.cancelUpload(session, scopes).catch(() => undefined)
      throw err
    }
  }

  /** PATCHes one chunk; returns the Location for the next request. */
  private async patchChunk (location: URL, offset: number, chunk: Buffer, scopes: string[], what: string, signal: AbortSignal | undefined): Promise<URL> {
    let res: HttpResponse
    try {
      res = await this.send({
        method: 'PATCH',
        url: location,
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${offset}-${offset + chunk.length - 1}` },
        body: chunk,
        scopes,
        retry: false,
        what: `${what} (chunk at ${offset})`,
        ...(signal !== undefined ? { signal } : {})
      })
    } catch (err) {
      throw interrupted(err)
    }
    if (res.status !== 202) {
      const e = statusError(res.status, await readExcerpt(res.body), `${what} (chunk at ${offset})`, 'PATCH', res.url, res.attempts)
      throw RETRYABLE_STATUS.has(res.status) ? new UploadInterrupted(e) : e
    }
    discard(res.body)
    const range = header(res.headers, 'range')
    if (range !== undefined) {
      const m = /^(?:bytes=)?0-(\d+)$/.exec(range)
      if (m === null || Number(m[1]) !== offset + chunk.length - 1) {
        throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: after the chunk at ${offset} the registry reports Range ${JSON.stringify(range)}, expected 0-${offset + chunk.length - 1}`)
      }
    }
    return uploadLocation(res, what)
  }

  private async finishUpload (location: URL, desc: Descriptor, body: Buffer | undefined, scopes: string[], what: string, signal: AbortSignal | undefined): Promise<void> {
    const url = new URL(location)
    url.searchParams.set('digest', desc.digest)
    let res: HttpResponse
    try {
      res = await this.send({
        method: 'PUT',
        url,
        headers: { 'content-type': 'application/octet-stream' },
        body: body ?? Buffer.alloc(0),
        scopes,
        retry: false,
        what: `${what} (commit upload)`,
        ...(signal !== undefined ? { signal } : {})
      })
    } catch (err) {
      throw interrupted(err)
    }
    if (res.status !== 201 && res.status !== 204 && res.status !== 200) {
      const excerpt = await readExcerpt(res.body)
      if (res.status === 400 && /DIGEST_INVALID|SIZE_INVALID/.test(excerpt)) {
        throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the registry rejected the upload: ${statusError(res.status, excerpt, what, 'PUT', res.url).message}`, { details: { expected: desc.digest } })
      }
      const e = statusError(res.status, excerpt, `${what} (commit upload)`, 'PUT', res.url, res.attempts)
      throw RETRYABLE_STATUS.has(res.status) ? new UploadInterrupted(e) : e
    }
    discard(res.body)
    const claimed = header(res.headers, 'docker-content-digest')
    if (claimed !== undefined && claimed !== desc.digest) {
      throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the registry stored the upload as ${claimed}`, { details: { expected: desc.digest, got: claimed } })
    }
  }

  private async cancelUpload (location: URL, scopes: string[]): Promise<void> {
    try {
      const res = await this.send({ method: 'DELETE', url: location, scopes, retry: false, what: 'cancel upload' })
      discard(res.body)
    } catch {
      // best effort
    }
  }

  /** Closes the own HTTP agent (an injected dispatcher is left open). Safe to call twice. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      this.direct?.close()
      const a = this.agent
      this.agent = undefined
      if (a !== undefined) await a.close()
    })()
    await this.closing
  }
}

/** The state of a chunked upload: where to send the next chunk, and its offset. */
class ChunkedUpload {
  private offset = 0
  constructor (public location: URL, private readonly send: (location: URL, offset: number, chunk: Buffer) => Promise<URL>) {}

  async patch (chunk: Buffer): Promise<void> {
    this.location = await this.send(this.location, this.offset, chunk)
    this.offset += chunk.length
  }
}

/** A blob source is bytes or a factory of streams (a stream itself could not be re-read on retry). */
export function checkSource (source: unknown): void {
  if (!(source instanceof Uint8Array) && typeof source !== 'function') {
    throw new NaiadError('NAIAD_INTERNAL', 'pushBlob: the source must be bytes or a function returning a fresh stream')
  }
}

function sig (opts: AbortOptions): { signal?: AbortSignal } {
  return opts.signal !== undefined ? { signal: opts.signal } : {}
}

function interrupted (err: unknown): unknown {
  if (isNaiadError(err) && (err.code === 'NAIAD_REG_UNAVAILABLE' || err.code === 'NAIAD_REG_TIMEOUT')) return new UploadInterrupted(err)
  return err
}

function mismatch (what: string, msg: string, desc: Descriptor, got?: string): NaiadError {
  return new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the source has ${msg}`, { details: { expected: desc.digest, ...(got !== undefined ? { got } : {}), size: desc.size } })
}

function verifyBuffer (buf: Buffer, desc: Descriptor, what: string): void {
  if (buf.length !== desc.size) throw mismatch(what, `${buf.length} bytes, expected ${desc.size}`, desc)
  const got = digestOf(buf, digestAlgorithm(desc.digest))
  if (got !== desc.digest) throw mismatch(what, `content that hashes to ${got}`, desc, got)
}

function uploadLocation (res: HttpResponse, what: string): URL {
  const loc = header(res.headers, 'location')
  if (loc === undefined || loc === '') throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: HTTP ${res.status} without a Location for the upload`)
  try {
    return new URL(loc, res.url)
  } catch (err) {
    throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: bad upload Location`, { cause: err })
  }
}

async function readLimited (res: HttpResponse, limit: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = []
  let n = 0
  try {
    for await (const chunk of res.body) {
      const b = chunk as Buffer
      n += b.length
      if (n > limit) {
        discard(res.body)
        throw new NaiadError('NAIAD_REG_PROTOCOL', `${what}: the response is larger than ${limit} bytes`)
      }
      parts.push(b)
    }
  } catch (err) {
    throw networkError(err, what, res.url, 1)
  }
  return Buffer.concat(parts)
}

async function readStream (stream: Readable, size: number, what: string, signal: AbortSignal | undefined): Promise<Buffer> {
  const parts: Buffer[] = []
  let n = 0
  for await (const c of stream) {
    throwIfAborted(signal)
    const b = typeof c === 'string' ? Buffer.from(c) : c as Buffer
    n += b.length
    if (n > size) throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: the source has more than the expected ${size} bytes`)
    parts.push(b)
  }
  return Buffer.concat(parts)
}
