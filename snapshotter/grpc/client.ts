/**
 * A Snapshotter over containerd's snapshots.v1 on a Unix socket (containerd's
 * snapshots/proxy.NewSnapshotter). Used by the conformance suite over the wire and by debug tools;
 * errors come back as the NaiadErrors the server threw (code carried in metadata).
 */
import * as grpc from '@grpc/grpc-js'
import { NaiadError, throwIfAborted } from '../../lib/errors/index.ts'
import type { CreateOptions, Mount, OpOptions, SnapshotInfo, Snapshotter, Usage, WalkOptions } from '../snapshotter.ts'
import { fromServiceError, infoFromMsg, mountFromMsg, timestampToMsg } from './convert.ts'
import type { ListSnapshotsResponseMsg, MountsResponseMsg, StatSnapshotResponseMsg, UsageResponseMsg } from './proto.ts'
import { snapshotsClientConstructor } from './proto.ts'

export interface SnapshotsClientOptions {
  /** Unix socket path of the server. */
  readonly socket: string
  /** The `snapshotter` field of every request (containerd sends its proxy plugin name). */
  readonly snapshotterName?: string
  /** Sent as the `containerd-namespace` header, as containerd forwards it. */
  readonly namespace?: string
}

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientUnaryCall

export class SnapshotsClient implements Snapshotter {
  readonly #opts: SnapshotsClientOptions
  #client: grpc.Client | undefined
  #closed = false

  constructor (_deps: Record<string, never>, options: SnapshotsClientOptions) {
    this.#opts = options
  }

  #c (): grpc.Client {
    if (this.#closed) throw new NaiadError('NAIAD_CLOSED', 'snapshots client is closed')
    if (this.#client === undefined) {
      const Ctor = snapshotsClientConstructor()
      this.#client = new Ctor(`unix:${this.#opts.socket}`, grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': 16 * 1024 * 1024,
        'grpc.max_send_message_length': 16 * 1024 * 1024
      })
    }
    return this.#client
  }

  #md (): grpc.Metadata {
    const md = new grpc.Metadata()
    if (this.#opts.namespace !== undefined) md.set('containerd-namespace', this.#opts.namespace)
    return md
  }

  async #call<Res> (method: string, req: Record<string, unknown>, signal: AbortSignal | undefined): Promise<Res> {
    throwIfAborted(signal)
    const c = this.#c()
    const fn = (c as unknown as Record<string, UnaryFn>)[method]
    if (fn === undefined) throw new NaiadError('NAIAD_INTERNAL', `no method ${method}`)
    return await new Promise<Res>((resolve, reject) => {
      const call = fn.call(c, { snapshotter: this.#opts.snapshotterName ?? 'naiad', ...req }, this.#md(), {}, (err, res) => {
        signal?.removeEventListener('abort', onAbort)
        if (err !== null) reject(fromServiceError(err, method))
        else resolve(res as Res)
      })
      const onAbort = (): void => { call.cancel() }
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  async stat (key: string, opts: OpOptions = {}): Promise<SnapshotInfo> {
    return infoFromMsg((await this.#call<StatSnapshotResponseMsg>('Stat', { key }, opts.signal)).info)
  }

  async update (info: Pick<SnapshotInfo, 'name' | 'labels'>, fieldPaths: readonly string[] = [], opts: OpOptions = {}): Promise<SnapshotInfo> {
    const now = timestampToMsg(new Date(0))
    const res = await this.#call<StatSnapshotResponseMsg>('Update', {
      info: { name: info.name, parent: '', kind: 'UNKNOWN', createdAt: now, updatedAt: now, labels: { ...info.labels } },
      updateMask: { paths: [...fieldPaths] }
    }, opts.signal)
    return infoFromMsg(res.info)
  }

  async usage (key: string, opts: OpOptions = {}): Promise<Usage> {
    const r = await this.#call<UsageResponseMsg>('Usage', { key }, opts.signal)
    return { size: Number(r.size), inodes: Number(r.inodes) }
  }

  async mounts (key: string, opts: OpOptions = {}): Promise<Mount[]> {
    return (await this.#call<MountsResponseMsg>('Mounts', { key }, opts.signal)).mounts.map(mountFromMsg)
  }

  async prepare (key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return (await this.#call<MountsResponseMsg>('Prepare', { key, parent, labels: { ...opts.labels } }, opts.signal)).mounts.map(mountFromMsg)
  }

  async view (key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return (await this.#call<MountsResponseMsg>('View', { key, parent, labels: { ...opts.labels } }, opts.signal)).mounts.map(mountFromMsg)
  }

  async commit (name: string, key: string, opts: CreateOptions = {}): Promise<void> {
    await this.#call('Commit', { name, key, labels: { ...opts.labels } }, opts.signal)
  }

  async remove (key: string, opts: OpOptions = {}): Promise<void> {
    await this.#call('Remove', { key }, opts.signal)
  }

  async * walk (opts: WalkOptions = {}): AsyncIterable<SnapshotInfo> {
    throwIfAborted(opts.signal)
    const c = this.#c() as unknown as Record<string, (req: unknown, md: grpc.Metadata) => grpc.ClientReadableStream<ListSnapshotsResponseMsg>>
    const list = c['List']
    if (list === undefined) throw new NaiadError('NAIAD_INTERNAL', 'no method List')
    const stream = list.call(c, { snapshotter: this.#opts.snapshotterName ?? 'naiad', filters: [...(opts.filters ?? [])] }, this.#md())
    const onAbort = (): void => { stream.cancel() }
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      for await (const msg of stream as AsyncIterable<ListSnapshotsResponseMsg>) {
        for (const i of msg.info) yield infoFromMsg(i)
      }
    } catch (err) {
      throwIfAborted(opts.signal)
      throw fromServiceError(err, 'List')
    } finally {
      opts.signal?.removeEventListener('abort', onAbort)
      stream.cancel()
    }
  }

  async cleanup (opts: OpOptions = {}): Promise<void> {
    await this.#call('Cleanup', {}, opts.signal)
  }

  /** Closes the channel (not the server's snapshotter). Safe twice. */
  async close (): Promise<void> {
    this.#closed = true
    this.#client?.close()
    this.#client = undefined
  }
}
