/**
 * The fsdaemon's control API: JSON over HTTP on a Unix socket (default /run/naiad/fsd.sock, mode
 * 0600), versioned paths. The fsdaemon serves it; the snapshotter and `naiad fsd mount|umount|ls`
 * are clients. docs/fsdaemon.md documents it for operators (curl --unix-socket works).
 *
 *   GET    /api/v1/daemon                 DaemonInfo
 *   GET    /api/v1/mounts                 MountInfo[]
 *   POST   /api/v1/mounts                 MountRequest → MountInfo   (idempotent per mountpoint:
 *                                         the same request again answers the existing mount)
 *   DELETE /api/v1/mounts?mountpoint=DIR  204                        (idempotent)
 *   GET    /api/v1/blobs                  CachedBlobInfo[]           (the chunk cache's blobs)
 *   DELETE /api/v1/blobs/<blob id>        204 (idempotent); NAIAD_FS_BLOB_IN_USE while mounted
 *   GET    /metrics                       Prometheus text
 *
 * Errors: HTTP status from the error kind, body `{ "error": { code, kind, message, hint } }`.
 */
import http from 'node:http'
import { NaiadError, type ErrorCode } from '../errors/index.ts'
import type { Credentials } from '../registry/credentials.ts'

export interface MountRequest {
  mountpoint: string
  /**
   * A Nydus image reference. Alone: the bootstrap layer is fetched from the registry and the data
   * blobs are read lazily from the image's repository. With `bootstrap`: the local bootstrap file
   * is used and only the data blobs come (lazily) from the image's repository (what the
   * snapshotter does: containerd already unpacked the bootstrap layer).
   */
  image?: string
  /** A local bootstrap file, with `image` (blobs from the registry) or `blobDir` (local blobs). */
  bootstrap?: string
  /** A directory of blob files named by blob id (with `bootstrap`, instead of `image`). */
  blobDir?: string
  /** Plain HTTP to the image's registry (default: loopback registries only). */
  plainHttp?: boolean
  /** Prefetch the image's prefetch table (default true); 'all' also fetches the rest in background. */
  prefetch?: boolean | 'all'
  /** Free-form labels kept with the mount (the snapshotter stores its snapshot ids here). */
  labels?: Record<string, string>
  /**
   * Credentials for the image's registry (with `image`), e.g. what the CRI handed to containerd
   * with the pull; instead of the daemon's docker config.json. Kept in memory only: never written
   * to the state file, never listed, never logged. Sent again for a live mount of the same image,
   * they replace the ones it has (a rotated pull secret).
   */
  credentials?: Credentials
}

export interface BlobStats {
  blobId: string
  chunks: number
  readyChunks: number
  bytesFetched: Record<string, number>
  cacheHits: number
  chunksVerified: number
  digestFailures: number
}

export interface MountInfo {
  mountpoint: string
  image?: string
  bootstrap?: string
  labels: Record<string, string>
  since: string
  files: number
  reads: number
  /** File bytes the daemon served (reads in passthrough never reach it). */
  bytesRead: number
  eio: number
  /** Opens of files handed to the kernel (FUSE passthrough onto the cache; fuse.passthrough). */
  passthroughOpens: number
  prefetch: { state: string, chunksDone: number, chunksTotal: number }
  blobs: BlobStats[]
}

/** A blob in the fsdaemon's chunk cache. */
export interface CachedBlobInfo {
  blobId: string
  /** Allocated bytes of its cache files. */
  bytes: number
  /** Mounts using it now. */
  users: number
  /** Last use, milliseconds since the epoch. */
  lastUsed: number
}

export interface DaemonInfo {
  version: string
  pid: number
  uptimeSec: number
  mounts: number
  cacheDir: string
  cacheBytes: number
  cacheQuota: number
  /**
   * True when every mount's FUSE connection is kept by a holder (the node daemon): a crash or a
   * handover (SIGUSR2, `naiad fsctl handover`) leaves the mounts to the next daemon.
   */
  failover?: boolean
}

export interface FsdClientOptions {
  socketPath: string
  timeoutMs?: number
}

/** A small client of the control API. */
export class FsdClient {
  constructor (private readonly opts: FsdClientOptions) {}

  private request<T> (method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
      const req = http.request({
        socketPath: this.opts.socketPath,
        method,
        path,
        headers: data !== undefined ? { 'content-type': 'application/json', 'content-length': data.length } : {},
        timeout: this.opts.timeoutMs ?? 120_000,
        ...(signal !== undefined ? { signal } : {})
      }, (res) => {
        const parts: Buffer[] = []
        res.on('data', (c: Buffer) => { parts.push(c) })
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8')
          if ((res.statusCode ?? 500) >= 400) {
            try {
              const e = (JSON.parse(text) as { error: { code: ErrorCode, message: string, hint?: string } }).error
              reject(new NaiadError(e.code, e.message, e.hint !== undefined ? { hint: e.hint } : {}))
            } catch {
              reject(new NaiadError('NAIAD_INTERNAL', `fsdaemon answered ${String(res.statusCode)}: ${text.slice(0, 200)}`))
            }
            return
          }
          if (res.statusCode === 204 || text === '') { resolve(undefined as T); return }
          try {
            resolve((res.headers['content-type'] ?? '').includes('json') ? JSON.parse(text) as T : text as T)
          } catch (err) {
            reject(err)
          }
        })
        res.on('error', reject)
      })
      req.on('timeout', () => { req.destroy(new NaiadError('NAIAD_FS_DAEMON_UNAVAILABLE', `fsdaemon at ${this.opts.socketPath} did not answer in time`)) })
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err instanceof NaiadError) { reject(err); return }
        if (err.name === 'AbortError') { reject(err); return }
        reject(new NaiadError('NAIAD_FS_DAEMON_UNAVAILABLE', `cannot reach the fsdaemon at ${this.opts.socketPath}: ${err.code ?? err.message}`, { cause: err }))
      })
      req.end(data)
    })
  }

  async daemon (signal?: AbortSignal): Promise<DaemonInfo> { return await this.request('GET', '/api/v1/daemon', undefined, signal) }
  async list (signal?: AbortSignal): Promise<MountInfo[]> { return await this.request('GET', '/api/v1/mounts', undefined, signal) }
  async mount (req: MountRequest, signal?: AbortSignal): Promise<MountInfo> { return await this.request('POST', '/api/v1/mounts', req, signal) }
  async unmount (mountpoint: string, signal?: AbortSignal): Promise<void> { await this.request('DELETE', `/api/v1/mounts?mountpoint=${encodeURIComponent(mountpoint)}`, undefined, signal) }
  async blobs (signal?: AbortSignal): Promise<CachedBlobInfo[]> { return await this.request('GET', '/api/v1/blobs', undefined, signal) }
  /** Deletes an unused blob's cache files (nothing cached: no error). */
  async removeBlob (blobId: string, signal?: AbortSignal): Promise<void> { await this.request('DELETE', `/api/v1/blobs/${encodeURIComponent(blobId)}`, undefined, signal) }
  async metrics (signal?: AbortSignal): Promise<string> { return await this.request('GET', '/metrics', undefined, signal) }
}
