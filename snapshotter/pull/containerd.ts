/**
 * A client for the containerd services `naiad pull` needs (content, images, leases, snapshots,
 * diff) on containerd's own gRPC socket, with our .proto files in lib/proto/containerd. Calls
 * carry the `containerd-namespace` header and, when given, the `containerd-lease` header, as
 * containerd's Go client does. gRPC failures become NaiadErrors: an unreachable socket is
 * NAIAD_PULL_CONTAINERD_UNAVAILABLE, an unknown snapshotter NAIAD_PULL_SNAPSHOTTER_UNKNOWN, any
 * other refusal NAIAD_PULL_CONTAINERD with containerd's gRPC code in `details.grpcCode` (the
 * pull reads NotFound = 5 and AlreadyExists = 6 from it).
 */
import type { Readable } from 'node:stream'
import * as grpc from '@grpc/grpc-js'
import { isNaiadError, NaiadError, throwIfAborted } from '../../lib/errors/index.ts'
import { loadProto } from '../../lib/proto/index.ts'
import type { Containerd, ContainerdCallOptions, ContentInfo, ImageRecord, PullDescriptor, SnapshotMount } from './types.ts'

export const GRPC_NOT_FOUND = 5
export const GRPC_ALREADY_EXISTS = 6

const MAX_MSG = 16 * 1024 * 1024
/** Bytes per Write message (containerd's own client sends 1 MiB). */
const WRITE_CHUNK = 1024 * 1024

const PROTOS = {
  content: 'containerd/services/content/v1/content.proto',
  images: 'containerd/services/images/v1/images.proto',
  leases: 'containerd/services/leases/v1/leases.proto',
  snapshots: 'containerd/services/snapshots/v1/snapshots.proto',
  diff: 'containerd/services/diff/v1/diff.proto'
} as const
type ServiceName = keyof typeof PROTOS
const SERVICE_CLASS: Record<ServiceName, string> = { content: 'Content', images: 'Images', leases: 'Leases', snapshots: 'Snapshots', diff: 'Diff' }

const ctorCache = new Map<ServiceName, grpc.ServiceClientConstructor>()
function ctor (name: ServiceName): grpc.ServiceClientConstructor {
  let c = ctorCache.get(name)
  if (c === undefined) {
    let o = loadProto(PROTOS[name]) as Record<string, unknown>
    for (const part of ['containerd', 'services', name, 'v1']) o = o[part] as Record<string, unknown>
    c = o[SERVICE_CLASS[name]] as grpc.ServiceClientConstructor
    ctorCache.set(name, c)
  }
  return c
}

export interface ContainerdClientOptions {
  /** containerd's gRPC socket (`/run/containerd/containerd.sock`). */
  readonly address: string
  /** containerd namespace of every call. */
  readonly namespace: string
  /** Deadline of each unary call (default 120 s; Apply of a big layer takes a while). */
  readonly timeoutMs?: number
}

interface DescriptorMsg { mediaType: string, digest: string, size: number, annotations: Record<string, string> }
interface TimestampMsg { seconds: number, nanos: number }
interface ContentInfoMsg { digest: string, size: number, labels: Record<string, string> }
interface ImageMsg { name: string, labels: Record<string, string>, target: DescriptorMsg | null }
interface MountMsg { type: string, source: string, target: string, options: string[] }
interface WriteResponseMsg { action: string, offset: number, total: number, digest: string }

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientUnaryCall

function nowMsg (): TimestampMsg {
  const ms = Date.now()
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 }
}

function descMsg (d: PullDescriptor): DescriptorMsg {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size, annotations: { ...(d.annotations ?? {}) } }
}

/** Turns a gRPC failure of `what` into a NaiadError. */
export function containerdError (err: unknown, what: string, address: string): NaiadError {
  if (isNaiadError(err)) return err
  const e = err as Partial<grpc.ServiceError>
  const detail = e.details ?? e.message ?? String(err)
  const code = typeof e.code === 'number' ? e.code : -1
  if (code === grpc.status.UNAVAILABLE && /connect|ENOENT|ECONNREFUSED|No connection|EACCES/i.test(detail)) {
    return new NaiadError('NAIAD_PULL_CONTAINERD_UNAVAILABLE', `containerd does not answer on ${address} (${what}): ${detail}`, { cause: err, details: { grpcCode: code, address } })
  }
  if (/snapshotter not loaded/.test(detail)) {
    return new NaiadError('NAIAD_PULL_SNAPSHOTTER_UNKNOWN', `${what}: ${detail}`, { cause: err, details: { grpcCode: code } })
  }
  return new NaiadError('NAIAD_PULL_CONTAINERD', `${what}: ${detail} (gRPC ${grpc.status[code] ?? code})`, { cause: err, details: { grpcCode: code } })
}

/** The gRPC code containerd answered with, if `err` came from containerd. */
export function grpcCodeOf (err: unknown): number | undefined {
  if (!isNaiadError(err)) return undefined
  const c = (err.details as { grpcCode?: unknown } | undefined)?.grpcCode
  return typeof c === 'number' ? c : undefined
}

export class ContainerdClient implements Containerd {
  readonly #opts: ContainerdClientOptions
  readonly #clients = new Map<ServiceName, grpc.Client>()
  #channel: grpc.Channel | undefined
  #closed = false

  constructor (_deps: Record<string, never>, options: ContainerdClientOptions) {
    this.#opts = options
  }

  #client (name: ServiceName): grpc.Client {
    if (this.#closed) throw new NaiadError('NAIAD_CLOSED', 'containerd client is closed')
    let c = this.#clients.get(name)
    if (c === undefined) {
      const Ctor = ctor(name)
      const chanOpts = { 'grpc.max_receive_message_length': MAX_MSG, 'grpc.max_send_message_length': MAX_MSG }
      // one channel shared by the five service stubs
      this.#channel ??= new grpc.Channel(`unix:${this.#opts.address}`, grpc.credentials.createInsecure(), chanOpts)
      const channel = this.#channel
      c = new Ctor(`unix:${this.#opts.address}`, grpc.credentials.createInsecure(), { ...chanOpts, channelOverride: channel })
      this.#clients.set(name, c)
    }
    return c
  }

  #md (lease: string | undefined): grpc.Metadata {
    const md = new grpc.Metadata()
    md.set('containerd-namespace', this.#opts.namespace)
    if (lease !== undefined) md.set('containerd-lease', lease)
    return md
  }

  async #call<Res> (service: ServiceName, method: string, req: Record<string, unknown>, opts: ContainerdCallOptions = {}): Promise<Res> {
    throwIfAborted(opts.signal)
    const c = this.#client(service)
    const fn = (c as unknown as Record<string, UnaryFn | undefined>)[method]
    if (fn === undefined) throw new NaiadError('NAIAD_INTERNAL', `no method ${service}.${method}`)
    const what = `containerd ${SERVICE_CLASS[service]}.${method}`
    return await new Promise<Res>((resolve, reject) => {
      const deadline = new Date(Date.now() + (this.#opts.timeoutMs ?? 120_000))
      const call = fn.call(c, req, this.#md(opts.lease), { deadline }, (err, res) => {
        opts.signal?.removeEventListener('abort', onAbort)
        if (err !== null) {
          if (opts.signal?.aborted === true) reject(opts.signal.reason)
          else reject(containerdError(err, what, this.#opts.address))
        } else resolve(res as Res)
      })
      const onAbort = (): void => { call.cancel() }
      opts.signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  // ---- leases ----------------------------------------------------------------------------

  async createLease (id: string, labels: Record<string, string>, opts: ContainerdCallOptions = {}): Promise<string> {
    const r = await this.#call<{ lease: { id: string } | null }>('leases', 'Create', { id, labels }, opts)
    return r.lease?.id ?? id
  }

  async deleteLease (id: string, opts: ContainerdCallOptions = {}): Promise<void> {
    await this.#call('leases', 'Delete', { id, sync: false }, opts)
  }

  // ---- content ---------------------------------------------------------------------------

  async contentInfo (digest: string, opts: ContainerdCallOptions = {}): Promise<ContentInfo | undefined> {
    try {
      const r = await this.#call<{ info: ContentInfoMsg | null }>('content', 'Info', { digest }, opts)
      if (r.info === null) return undefined
      return { digest: r.info.digest, size: Number(r.info.size), labels: { ...r.info.labels } }
    } catch (err) {
      if (grpcCodeOf(err) === GRPC_NOT_FOUND) return undefined
      throw err
    }
  }

  async setContentLabels (digest: string, labels: Record<string, string>, opts: ContainerdCallOptions = {}): Promise<void> {
    const paths = Object.keys(labels).map((k) => `labels.${k}`)
    if (paths.length === 0) return
    await this.#call('content', 'Update', { info: { digest, size: 0, createdAt: nowMsg(), updatedAt: nowMsg(), labels }, updateMask: { paths } }, opts)
  }

  async writeContent (desc: PullDescriptor, body: () => Promise<Readable | Uint8Array>, labels: Record<string, string>, opts: ContainerdCallOptions = {}): Promise<'written' | 'exists'> {
    throwIfAborted(opts.signal)
    const c = this.#client('content') as unknown as Record<string, (md: grpc.Metadata) => grpc.ClientDuplexStream<unknown, WriteResponseMsg>>
    const what = `containerd Content.Write ${desc.digest}`
    const stream = c['Write']!.call(c, this.#md(opts.lease))
    const responses: WriteResponseMsg[] = []
    let failure: unknown
    let ended = false
    let wake: (() => void) | undefined
    stream.on('data', (m: WriteResponseMsg) => { responses.push(m); wake?.() })
    stream.on('error', (err) => { failure = err; wake?.() })
    stream.on('end', () => { ended = true; wake?.() })
    const onAbort = (): void => { stream.cancel() }
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    const next = async (): Promise<WriteResponseMsg> => {
      for (;;) {
        const m = responses.shift()
        if (m !== undefined) return m
        if (failure !== undefined) throw failure
        if (ended) throw new NaiadError('NAIAD_PULL_CONTAINERD', `${what}: the stream ended without an answer`)
        await new Promise<void>((resolve) => { wake = resolve })
        wake = undefined
      }
    }
    const send = async (req: Record<string, unknown>): Promise<void> => {
      if (failure !== undefined) throw failure
      if (!stream.write(req)) await new Promise<void>((resolve) => { stream.once('drain', resolve); stream.once('error', () => { resolve() }) })
    }
    const ref = `naiad-pull-${desc.digest}`
    try {
      await send({ action: 'STAT', ref, total: desc.size, expected: desc.digest })
      await next()
      let offset = 0
      let pending = 0
      const src = await body()
      const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = src instanceof Uint8Array ? [src] : src
      for await (const piece of chunks) {
        for (let i = 0; i < piece.length; i += WRITE_CHUNK) {
          const data = piece.subarray(i, Math.min(piece.length, i + WRITE_CHUNK))
          await send({ action: 'WRITE', ref, offset, data })
          offset += data.length
          pending++
          // keep a bounded number of answers outstanding
          while (pending > 8) { await next(); pending-- }
        }
      }
      while (pending > 0) { await next(); pending-- }
      await send({ action: 'COMMIT', ref, offset, total: desc.size, expected: desc.digest, labels })
      const done = await next()
      stream.end()
      if (done.digest !== '' && done.digest !== desc.digest) {
        throw new NaiadError('NAIAD_DIGEST_MISMATCH', `${what}: containerd stored ${done.digest}`)
      }
      return 'written'
    } catch (err) {
      stream.cancel()
      if (opts.signal?.aborted === true) throw opts.signal.reason
      const e = containerdError(err, what, this.#opts.address)
      if (grpcCodeOf(e) === GRPC_ALREADY_EXISTS) {
        // someone committed the same blob meanwhile: keep it, add our labels
        await this.setContentLabels(desc.digest, labels, opts)
        return 'exists'
      }
      throw e
    } finally {
      opts.signal?.removeEventListener('abort', onAbort)
    }
  }

  // ---- images ----------------------------------------------------------------------------

  async getImage (name: string, opts: ContainerdCallOptions = {}): Promise<ImageRecord | undefined> {
    try {
      const r = await this.#call<{ image: ImageMsg | null }>('images', 'Get', { name }, opts)
      if (r.image === null || r.image.target === null) return undefined
      const t = r.image.target
      return { name: r.image.name, labels: { ...r.image.labels }, target: { mediaType: t.mediaType, digest: t.digest, size: Number(t.size) } }
    } catch (err) {
      if (grpcCodeOf(err) === GRPC_NOT_FOUND) return undefined
      throw err
    }
  }

  async putImage (name: string, target: PullDescriptor, labels: Record<string, string>, opts: ContainerdCallOptions = {}): Promise<'created' | 'updated'> {
    const image = { name, labels, target: descMsg(target), createdAt: nowMsg(), updatedAt: nowMsg() }
    try {
      await this.#call('images', 'Create', { image }, opts)
      return 'created'
    } catch (err) {
      if (grpcCodeOf(err) !== GRPC_ALREADY_EXISTS) throw err
    }
    await this.#call('images', 'Update', { image, updateMask: { paths: ['target', ...Object.keys(labels).map((k) => `labels.${k}`)] } }, opts)
    return 'updated'
  }

  // ---- snapshots -------------------------------------------------------------------------

  async statSnapshot (snapshotter: string, key: string, opts: ContainerdCallOptions = {}): Promise<boolean> {
    try {
      await this.#call('snapshots', 'Stat', { snapshotter, key }, opts)
      return true
    } catch (err) {
      if (grpcCodeOf(err) === GRPC_NOT_FOUND) return false
      throw err
    }
  }

  async prepareSnapshot (snapshotter: string, key: string, parent: string, labels: Record<string, string>, opts: ContainerdCallOptions = {}): Promise<SnapshotMount[] | 'exists'> {
    try {
      const r = await this.#call<{ mounts: MountMsg[] }>('snapshots', 'Prepare', { snapshotter, key, parent, labels }, opts)
      return r.mounts.map((m) => ({ type: m.type, source: m.source, options: [...m.options] }))
    } catch (err) {
      if (grpcCodeOf(err) === GRPC_ALREADY_EXISTS) return 'exists'
      throw err
    }
  }

  async commitSnapshot (snapshotter: string, name: string, key: string, labels: Record<string, string>, opts: ContainerdCallOptions = {}): Promise<'committed' | 'exists'> {
    try {
      await this.#call('snapshots', 'Commit', { snapshotter, name, key, labels }, opts)
      return 'committed'
    } catch (err) {
      if (grpcCodeOf(err) === GRPC_ALREADY_EXISTS) return 'exists'
      throw err
    }
  }

  async removeSnapshot (snapshotter: string, key: string, opts: ContainerdCallOptions = {}): Promise<void> {
    await this.#call('snapshots', 'Remove', { snapshotter, key }, opts)
  }

  // ---- diff ------------------------------------------------------------------------------

  async applyLayer (desc: PullDescriptor, mounts: readonly SnapshotMount[], opts: ContainerdCallOptions = {}): Promise<string> {
    const r = await this.#call<{ applied: DescriptorMsg | null }>('diff', 'Apply', {
      diff: descMsg(desc),
      mounts: mounts.map((m) => ({ type: m.type, source: m.source, target: '', options: [...m.options] })),
      payloads: {}
    }, opts)
    return r.applied?.digest ?? ''
  }

  /** Closes the channel. Safe twice. */
  async close (): Promise<void> {
    this.#closed = true
    for (const c of this.#clients.values()) c.close()
    this.#clients.clear()
    this.#channel?.close()
    this.#channel = undefined
  }
}
