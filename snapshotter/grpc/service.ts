/**
 * The gRPC adapter: serves any Snapshotter as containerd's containerd.services.snapshots.v1.Snapshots
 * on a Unix socket (containerd's contrib/snapshotservice FromSnapshotter). No decisions are made
 * here: messages are converted, the snapshotter called, errors mapped to gRPC statuses.
 *
 * Keys arrive as containerd's metadata layer writes them (`<namespace>/<seq>/<key>`, or a bare
 * ChainID for remote snapshots) and are used as they are; the `containerd-namespace` header is
 * logged but never required (GC calls carry none).
 */
import * as grpc from '@grpc/grpc-js'
import { NaiadError } from '../../lib/errors/index.ts'
import type { Logger } from '../../lib/log/index.ts'
import type { Snapshotter } from '../snapshotter.ts'
import { infoFromMsg, infoToMsg, mountToMsg, toServiceError } from './convert.ts'
import type {
  CleanupRequestMsg, CommitSnapshotRequestMsg, CreateSnapshotRequestMsg, InfoMsg, KeyRequestMsg, ListSnapshotsRequestMsg, ListSnapshotsResponseMsg,
  MountsResponseMsg, StatSnapshotResponseMsg, UpdateSnapshotRequestMsg, UsageResponseMsg
} from './proto.ts'
import { snapshotsService } from './proto.ts'
import { applySocketMode, prepareSocketPath } from './socket.ts'

/** containerd's proxy client sends and accepts up to 16 MiB. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024
/** Infos per List message, as containerd's reference server. */
const LIST_BATCH = 100

type Handler<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void

/** The handlers for grpc.Server#addService. */
export function snapshotsHandlers (sn: Snapshotter, logger: Logger): grpc.UntypedServiceImplementation {
  const log = logger.child({ component: 'snapshotter.grpc' })

  function unary<Req, Res> (method: string, fn: (req: Req, signal: AbortSignal) => Promise<Res>): Handler<Req, Res> {
    return (call, cb) => {
      const ac = new AbortController()
      call.on('cancelled', () => { ac.abort() })
      const ns = call.metadata.get('containerd-namespace')[0]
      fn(call.request, ac.signal).then((res) => { cb(null, res) }, (err: unknown) => {
        log.debug({ err, method, namespace: ns, request: call.request }, 'request failed')
        cb(toServiceError(err), null)
      })
    }
  }

  const empty = {}
  return {
    Prepare: unary<CreateSnapshotRequestMsg, MountsResponseMsg>('Prepare', async (r, signal) => ({ mounts: (await sn.prepare(r.key, r.parent, { labels: r.labels, signal })).map(mountToMsg) })),
    View: unary<CreateSnapshotRequestMsg, MountsResponseMsg>('View', async (r, signal) => ({ mounts: (await sn.view(r.key, r.parent, { labels: r.labels, signal })).map(mountToMsg) })),
    Mounts: unary<KeyRequestMsg, MountsResponseMsg>('Mounts', async (r, signal) => ({ mounts: (await sn.mounts(r.key, { signal })).map(mountToMsg) })),
    Commit: unary<CommitSnapshotRequestMsg, object>('Commit', async (r, signal) => { await sn.commit(r.name, r.key, { labels: r.labels, signal }); return empty }),
    Remove: unary<KeyRequestMsg, object>('Remove', async (r, signal) => { await sn.remove(r.key, { signal }); return empty }),
    Stat: unary<KeyRequestMsg, StatSnapshotResponseMsg>('Stat', async (r, signal) => ({ info: infoToMsg(await sn.stat(r.key, { signal })) })),
    Update: unary<UpdateSnapshotRequestMsg, StatSnapshotResponseMsg>('Update', async (r, signal) => {
      const info = infoFromMsg(r.info)
      return { info: infoToMsg(await sn.update({ name: info.name, labels: info.labels }, r.updateMask?.paths ?? [], { signal })) }
    }),
    Usage: unary<KeyRequestMsg, UsageResponseMsg>('Usage', async (r, signal) => await sn.usage(r.key, { signal })),
    Cleanup: unary<CleanupRequestMsg, object>('Cleanup', async (_r, signal) => { await sn.cleanup({ signal }); return empty }),
    List: (call: grpc.ServerWritableStream<ListSnapshotsRequestMsg, ListSnapshotsResponseMsg>) => {
      const ac = new AbortController()
      call.on('cancelled', () => { ac.abort() })
      void (async () => {
        let batch: InfoMsg[] = []
        for await (const i of sn.walk({ filters: call.request.filters, signal: ac.signal })) {
          batch.push(infoToMsg(i))
          if (batch.length >= LIST_BATCH) {
            call.write({ info: batch })
            batch = []
          }
        }
        if (batch.length > 0) call.write({ info: batch })
        call.end()
      })().catch((err: unknown) => {
        log.debug({ err, method: 'List', filters: call.request.filters }, 'request failed')
        call.emit('error', toServiceError(err))
      })
    }
  }
}

export interface SnapshotsServerDeps {
  readonly snapshotter: Snapshotter
  readonly log: Logger
}

export interface SnapshotsServerOptions {
  /** Unix socket path (at most 107 bytes). */
  readonly socket: string
  /** Mode of the socket file; default 0600 (containerd runs as root). */
  readonly mode?: number
  /** How long close() waits for calls in flight before cancelling them; default 5 s. */
  readonly drainMs?: number
}

/** The gRPC server on a Unix socket. start() listens; close() drains and stops (safe twice). */
export class SnapshotsServer {
  readonly #sn: Snapshotter
  readonly #log: Logger
  readonly #opts: Required<SnapshotsServerOptions>
  #server: grpc.Server | undefined
  #closing: Promise<void> | undefined

  constructor (deps: SnapshotsServerDeps, options: SnapshotsServerOptions) {
    this.#sn = deps.snapshotter
    this.#log = deps.log
    this.#opts = { mode: 0o600, drainMs: 5000, ...options }
  }

  get socket (): string { return this.#opts.socket }

  async start (): Promise<void> {
    if (this.#closing !== undefined) throw new NaiadError('NAIAD_CLOSED', 'server is closed')
    if (this.#server !== undefined) return
    const path = this.#opts.socket
    await prepareSocketPath(path)
    const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES, 'grpc.max_send_message_length': MAX_MESSAGE_BYTES })
    server.addService(snapshotsService(), snapshotsHandlers(this.#sn, this.#log))
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix:${path}`, grpc.ServerCredentials.createInsecure(), (err) => {
        if (err !== null) reject(new NaiadError('NAIAD_SNAP_SOCKET', `listen on ${path}: ${err.message}`, { cause: err }))
        else resolve()
      })
    })
    this.#server = server
    await applySocketMode(path, this.#opts.mode)
    this.#log.info({ socket: path }, 'snapshotter listening')
  }

  async close (): Promise<void> {
    this.#closing ??= (async () => {
      const server = this.#server
      if (server === undefined) return
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => { server.forceShutdown(); resolve() }, this.#opts.drainMs)
        t.unref()
        server.tryShutdown(() => { clearTimeout(t); resolve() })
      })
    })()
    await this.#closing
  }
}
