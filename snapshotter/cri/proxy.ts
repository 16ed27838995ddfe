/**
 * naiad's CRI ImageService proxy: the kubelet's image endpoint (`--image-service-endpoint
 * unix:///run/naiad/cri-image.sock`, or `imageServiceEndpoint` in the kubelet config) points
 * here; every `runtime.v1.ImageService` call is forwarded unchanged (bytes, metadata, deadline,
 * status) to containerd's CRI plugin, and on the way the credentials of each PullImage are
 * recorded in the CriKeychain, so the snapshotter can give them to the fsdaemon when it mounts
 * the image. The kubelet's RuntimeService keeps talking to containerd directly.
 *
 * Messages are passed through as raw bytes (so fields we do not declare, such as the pull's
 * sandbox config, reach containerd intact); only PullImageRequest is decoded, with our own
 * proto subset (lib/proto/cri/runtime/v1/images.proto). Credentials are never logged.
 */
import * as grpc from '@grpc/grpc-js'
import { NaiadError } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import { loadProto } from '../../lib/proto/index.ts'
import { applySocketMode, prepareSocketPath } from '../grpc/socket.ts'
import type { CriAuthConfig, CriKeychain } from './keychain.ts'

const SERVICE = 'runtime.v1.ImageService'
/** Every method of runtime.v1.ImageService (k8s.io/cri-api v1); all unary. */
export const IMAGE_SERVICE_METHODS = ['ListImages', 'ImageStatus', 'PullImage', 'RemoveImage', 'ImageFsInfo'] as const

const raw = (b: Buffer): Buffer => b

interface PullImageRequest { image?: { image?: string } | null, auth?: CriAuthConfig | null }

function pullRequestDecoder (): (b: Buffer) => PullImageRequest {
  const pkg = loadProto('cri/runtime/v1/images.proto') as unknown as { runtime: { v1: { ImageService: { service: Record<string, grpc.MethodDefinition<PullImageRequest, unknown>> } } } }
  const def = pkg.runtime.v1.ImageService.service['PullImage']
  if (def === undefined) throw new NaiadError('NAIAD_INTERNAL', 'cri proto has no PullImage')
  return (b) => def.requestDeserialize(b)
}

export interface CriImageProxyDeps {
  keychain: CriKeychain
  log?: Logger
}

export interface CriImageProxyOptions {
  /** Where the kubelet connects (Unix socket path). */
  socket: string
  /** File mode of the socket (default 0600). */
  mode?: number
  /** containerd's socket (its CRI plugin serves runtime.v1.ImageService there). */
  upstream: string
}

export class CriImageProxy {
  private readonly server = new grpc.Server({ 'grpc.max_receive_message_length': 16 << 20, 'grpc.max_send_message_length': 16 << 20 })
  private readonly upstream: grpc.Client
  private readonly log: Logger
  private readonly decodePull = pullRequestDecoder()
  private started = false
  private closing: Promise<void> | undefined

  constructor (private readonly deps: CriImageProxyDeps, private readonly opts: CriImageProxyOptions) {
    this.log = (deps.log ?? nullLogger()).child({ component: 'snapshotter.cri-proxy' })
    this.upstream = new grpc.Client(`unix:${opts.upstream}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 << 20, 'grpc.max_send_message_length': 16 << 20 })
    const definition: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {}
    const impl: grpc.UntypedServiceImplementation = {}
    for (const m of IMAGE_SERVICE_METHODS) {
      const path = `/${SERVICE}/${m}`
      definition[m] = { path, requestStream: false, responseStream: false, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw, originalName: m }
      impl[m] = (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => { this.forward(m, path, call, callback) }
    }
    this.server.addService(definition as grpc.ServiceDefinition, impl)
  }

  private forward (method: string, path: string, call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>): void {
    if (method === 'PullImage') {
      try {
        const req = this.decodePull(call.request)
        const image = req.image?.image ?? ''
        if (this.deps.keychain.remember(image, req.auth)) this.log.info({ image }, 'recorded pull credentials for the image (values not logged)')
      } catch (err) {
        // a request we cannot decode still goes to containerd, which answers it
        this.log.warn({ err: (err as Error).message }, 'cannot decode PullImageRequest; forwarding it unchanged')
      }
    }
    const deadline = call.getDeadline()
    const options: grpc.CallOptions = deadline === Infinity ? {} : { deadline }
    const upstreamCall = this.upstream.makeUnaryRequest(path, raw, raw, call.request, call.metadata, options, (err, res) => {
      if (err !== null) {
        this.log.debug({ method, code: err.code, details: err.details }, 'containerd answered with an error')
        callback(err, null)
        return
      }
      callback(null, res)
    })
    call.on('cancelled', () => { upstreamCall.cancel() })
  }

  async start (): Promise<void> {
    if (this.started) return
    await prepareSocketPath(this.opts.socket)
    await new Promise<void>((resolve, reject) => {
      this.server.bindAsync(`unix:${this.opts.socket}`, grpc.ServerCredentials.createInsecure(), (err) => {
        if (err !== null) { reject(new NaiadError('NAIAD_SNAP_SOCKET', `cannot listen on ${this.opts.socket}: ${err.message}`, { cause: err })); return }
        resolve()
      })
    })
    await applySocketMode(this.opts.socket, this.opts.mode ?? 0o600)
    this.started = true
    this.log.info({ socket: this.opts.socket, upstream: this.opts.upstream }, 'CRI image service proxy listening')
  }

  /** Stops accepting, lets calls in flight finish (up to 10 s), closes the upstream. Safe twice. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => { this.server.forceShutdown(); resolve() }, 10_000)
        this.server.tryShutdown(() => { clearTimeout(t); resolve() })
      })
      this.upstream.close()
    })()
    await this.closing
  }
}
