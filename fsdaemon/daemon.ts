/**
 * The fsdaemon: serves any number of RAFS v6 mounts from one process (one daemon per node), all
 * sharing one chunk cache directory. For each mount it loads the bootstrap (from an image's
 * bootstrap layer, or a local file), builds the blob sources (configured mirrors, then the origin
 * registry, or a local blob directory), opens the blobs' caches, mounts FUSE and starts prefetch.
 *
 * Crash recovery: mounts are recorded in the state dir; on start, recorded mounts whose FUSE server
 * is gone are detached and mounted again (already cached chunks are not fetched again).
 */
import { mkdir, readFile, readdir, rmdir } from 'node:fs/promises'
import { NaiadError, isNaiadError } from '../lib/errors/index.ts'
import type { Logger } from '../lib/log/index.ts'
import type { CachedBlobInfo, DaemonInfo, MountInfo, MountRequest, BlobStats } from '../lib/fsdapi/index.ts'
import { Bootstrap } from '../lib/format/bootstrap.ts'
import type { BlobInfo, ChunkRef } from '../lib/format/types.ts'
import { loadNydusBootstrap } from '../lib/nydus/image.ts'
import { openImageStore } from '../lib/registry/open.ts'
import { DockerConfigCredentials } from '../lib/registry/credentials.ts'
import type { ImageStore } from '../lib/registry/store.ts'
import { parseReference, type RegistryReference } from '../lib/oci/reference.ts'
import { writeFile, rename, rm } from 'node:fs/promises'
import { closeSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { formatHolders } from '../lib/fsdapi/failover.ts'
import { FuseSession, unmountFuse, type FuseAdoption } from './fuse/session.ts'
import { RafsFilesystem } from './fs/rafs.ts'
import { KernelView, detach } from './fs/kernel-view.ts'
import { SourceChain } from './fetch/source-chain.ts'
import { RegistryRangeSource } from './fetch/registry-source.ts'
import { MirrorRangeSource } from './fetch/mirror-source.ts'
import { LocalDirRangeSource } from './fetch/local-source.ts'
import { MountCredentials } from './fetch/credentials.ts'
import { FetchGate } from './fetch/gate.ts'
import type { ChunkReader, RangeSource } from './types.ts'
import type { FsdConfig } from './config.ts'
import { StateStore, kernelMounts, naiadMounts, isStaleMount, pidAlive, type MountRecord } from './state.ts'
import { FsdMetrics } from './metrics.ts'
import type { CacheManager, BlobCacheLease } from './cache/index.ts'
import { Prefetcher, type PrefetchFile } from './prefetch/index.ts'

interface Mount {
  /** The request without its credentials (what the state file records). */
  request: MountRequest
  credentials: MountCredentials | undefined
  since: string
  bootstrap: Bootstrap
  fs: RafsFilesystem
  session: FuseSession
  chain: SourceChain
  caches: Map<BlobInfo, BlobCacheLease>
  store: ImageStore | undefined
  prefetch: Prefetcher | undefined
  /** The kernel's EROFS view of the image, for passthrough (undefined: off). */
  view: KernelView | undefined
  /** Where the session logs its passthrough open modes (with failover). */
  modeLog: string | undefined
  log: Logger
}

/** FUSE failover (lib/fsdapi/failover.ts); off unless `holdersFile` is set (the node daemon). */
export interface FailoverOptions {
  /** Where the holders of this daemon's /dev/fuse descriptors are listed. */
  holdersFile?: string
  /** Descriptors of a dead predecessor's connections, by mountpoint (`--fuse-fd`). */
  fuseFds?: ReadonlyMap<string, number>
}

const LOOPBACK = /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/

export class FsDaemon {
  private readonly mounts = new Map<string, Mount>()
  private readonly pending = new Map<string, Promise<MountInfo>>()
  private readonly state: StateStore
  private readonly gate = new FetchGate()
  private readonly started = Date.now()
  private closed: Promise<void> | undefined
  readonly metrics: FsdMetrics

  private cacheBytes = 0

  constructor (private readonly deps: { log: Logger, cache: CacheManager, version: string }, private readonly cfg: FsdConfig, private readonly failover: FailoverOptions = {}) {
    this.state = new StateStore(cfg.state.dir)
    this.metrics = new FsdMetrics(() => this.snapshot())
  }

  /** Opens the cache, then re-adopts recorded mounts: stale ones are detached and mounted again. */
  async start (): Promise<void> {
    await this.deps.cache.open()
    let records: MountRecord[] = []
    try {
      records = await this.state.load()
    } catch (err) {
      this.deps.log.warn({ err }, 'ignoring unreadable state file')
    }
    await this.sweepKernelViews(records)
    const live = await naiadMounts()
    const adopted = new Set<string>()
    for (const r of records) {
      const mp = r.request.mountpoint
      const inKernel = live.some(m => m.mountpoint === mp)
      if (inKernel && r.pid !== process.pid && pidAlive(r.pid) && !(await isStaleMount(mp))) {
        this.deps.log.warn({ mountpoint: mp, pid: r.pid }, 'mount is served by another live daemon; leaving it alone')
        continue
      }
      const fd = this.failover.fuseFds?.get(mp)
      if (inKernel && fd !== undefined && r.fuse !== undefined && r.fuse.resend && pidAlive(r.fuse.holderPid)) {
        try {
          await this.mount(r.request, { fd, adoption: r.fuse })
          adopted.add(mp)
          this.deps.log.info({ mountpoint: mp, pid: r.pid, holder: r.fuse.holderPid }, 'adopted the FUSE connection of the dead daemon: running containers go on')
          continue
        } catch (err) {
          this.deps.log.error({ err, mountpoint: mp }, 'could not adopt the FUSE connection; mounting again')
        }
      }
      // a holder keeps the dead connection alive: without it, the stale mount can be detached
      if (r.fuse !== undefined && r.pid !== process.pid && !pidAlive(r.pid) && pidAlive(r.fuse.holderPid)) {
        try { process.kill(-r.fuse.holderPid, 'SIGKILL') } catch {} // its process group
        for (let i = 0; i < 100 && pidAlive(r.fuse.holderPid); i++) await new Promise((resolve) => setTimeout(resolve, 20))
      }
      if (inKernel) {
        this.deps.log.info({ mountpoint: mp, pid: r.pid }, 'detaching the stale mount of a dead daemon')
        await unmountFuse(mp).catch((err: unknown) => { this.deps.log.warn({ err, mountpoint: mp }, 'detaching failed') })
      }
      try {
        await this.mount(r.request)
        this.deps.log.info({ mountpoint: mp }, 'remounted after restart')
      } catch (err) {
        this.deps.log.error({ err, mountpoint: mp }, 'could not remount after restart')
      }
    }
    // descriptors handed over for mounts not adopted
    for (const [mp, fd] of this.failover.fuseFds ?? []) {
      if (!adopted.has(mp)) { try { closeSync(fd) } catch {} }
    }
    // stale naiad mounts nobody recorded (e.g. a state dir that was wiped): detach them
    for (const m of live) {
      if (!this.mounts.has(m.mountpoint) && !records.some(r => r.request.mountpoint === m.mountpoint) && await isStaleMount(m.mountpoint)) {
        this.deps.log.info({ mountpoint: m.mountpoint }, 'detaching an unrecorded stale naiad mount')
        await unmountFuse(m.mountpoint).catch(() => {})
      }
    }
    await this.saveState()
  }

  private async saveState (): Promise<void> {
    const mounts = [...this.mounts.values()]
    await this.state.save(mounts.map(m => {
      const fuse = m.session.adoption
      return { request: m.request, since: m.since, pid: process.pid, ...(fuse !== undefined ? { fuse } : {}) }
    }))
    const file = this.failover.holdersFile
    if (file !== undefined) {
      const holders = mounts.flatMap(m => { const a = m.session.adoption; return a !== undefined ? [{ pid: a.holderPid, fd: a.fd, mountpoint: m.request.mountpoint }] : [] })
      try {
        if (holders.length === 0) {
          await rm(file, { force: true })
        } else {
          await writeFile(`${file}.tmp`, formatHolders(holders), { mode: 0o600 })
          await rename(`${file}.tmp`, file)
        }
      } catch (err) {
        this.deps.log.warn({ err, file }, 'cannot write the FUSE holders file: mounts will not survive a crash')
      }
    }
  }

  async mount (req: MountRequest, adopt?: { fd: number, adoption: FuseAdoption }): Promise<MountInfo> {
    if (this.closed !== undefined) throw new NaiadError('NAIAD_CLOSED', 'the fsdaemon is shutting down')
    const mp = req.mountpoint
    const have = this.mounts.get(mp)
    if (have !== undefined) {
      if (have.request.image === req.image && have.request.bootstrap === req.bootstrap && have.request.blobDir === req.blobDir) {
        if (req.credentials !== undefined && have.credentials !== undefined) {
          have.credentials.replace(req.credentials)
          have.log.info('registry credentials of the mount replaced (values not logged)')
        }
        return this.info(have)
      }
      throw new NaiadError('NAIAD_FS_MOUNT', `${mp} already serves ${have.request.image ?? have.request.bootstrap ?? '?'}`)
    }
    const inflight = this.pending.get(mp)
    if (inflight !== undefined) return await inflight
    const p = this.doMount(req, adopt).finally(() => { this.pending.delete(mp) })
    this.pending.set(mp, p)
    return await p
  }

  private async doMount (withCredentials: MountRequest, adopt?: { fd: number, adoption: FuseAdoption }): Promise<MountInfo> {
    // the credentials stay in `credentials` (memory); the request kept and saved has none
    const { credentials: given, ...req } = withCredentials
    const mp = req.mountpoint
    const log = this.deps.log.child({ mountpoint: mp, ...(req.image !== undefined ? { ref: req.image } : {}) })
    const t0 = Date.now()
    let store: ImageStore | undefined
    const sources: RangeSource[] = []
    const caches = new Map<BlobInfo, BlobCacheLease>()
    let chain: SourceChain | undefined
    let view: KernelView | undefined
    let credentials: MountCredentials | undefined
    try {
      if (adopt === undefined && await isStaleMount(mp)) {
        log.info('detaching a stale mount at the mountpoint')
        await unmountFuse(mp)
      }
      if (adopt === undefined) await mkdir(mp, { recursive: true })
      let bootstrap: Bootstrap | undefined
      if (req.bootstrap !== undefined) {
        let raw: Buffer
        try {
          raw = await readFile(req.bootstrap)
        } catch (err) {
          throw new NaiadError('NAIAD_FS_MOUNT', `cannot read the bootstrap ${req.bootstrap}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err })
        }
        bootstrap = Bootstrap.parse(raw)
      }
      if (req.image !== undefined) {
        const ref = parseReference(req.image)
        if (ref.kind !== 'registry') throw new NaiadError('NAIAD_CLI_USAGE', `image ${req.image} must be a registry reference`)
        const plain = req.plainHttp === true || this.cfg.fetch.plain_http
        credentials = new MountCredentials({ fallback: new DockerConfigCredentials({ logger: log }) }, { registry: ref.registry, ...(given !== undefined ? { given } : {}) })
        store = openImageStore(ref, { plainHttp: plain ? true : 'loopback', logger: log.child({ component: 'registry' }), credentials })
        bootstrap ??= (await loadNydusBootstrap(store)).bootstrap
        const origin = `${plain || LOOPBACK.test(ref.endpoint) ? 'http' : 'https'}://${ref.endpoint}`
        for (const m of this.cfg.mirrors) {
          const auth = credentials
          const mirror = new MirrorRangeSource({ logger: log.child({ component: 'mirror' }), authorization: async (signal) => await auth.authorization(signal) }, {
            url: m.url,
            sendAuthorization: m.pass_authorization,
            repository: (ref as RegistryReference).repository,
            origin,
            healthIntervalMs: m.health_check_interval,
            timeoutMs: this.cfg.fetch.timeout
          })
          mirror.start()
          sources.push(mirror)
        }
        sources.push(new RegistryRangeSource({ store, logger: log.child({ component: 'origin' }) }, { location: `${ref.registry}/${ref.repository}`, timeoutMs: this.cfg.fetch.timeout, retries: this.cfg.fetch.retries, direct: this.cfg.fetch.direct_http }))
      } else {
        sources.push(new LocalDirRangeSource({ logger: log }, { dir: req.blobDir! }))
      }
      if (bootstrap === undefined) throw new NaiadError('NAIAD_CLI_USAGE', 'mount request: give image or bootstrap')
      chain = new SourceChain({ sources, gate: this.gate, logger: log.child({ component: 'fetch' }) })
      for (const b of bootstrap.blobs) caches.set(b, await this.deps.cache.acquire(b))
      const cacheFor = (b: BlobInfo): ChunkReader => {
        const lease = caches.get(b)
        if (lease === undefined) throw new NaiadError('NAIAD_FMT_CORRUPT', `chunk of blob ${b.blobId}, which is not in the image's blob table`)
        return lease.cache
      }
      // kernel passthrough of wholly cached files (docs/decisions/0005-kernel-passthrough.md)
      const key = createHash('sha256').update(mp).digest('hex').slice(0, 16)
      const kdir = join(this.cfg.state.dir, 'kernel')
      const devices = bootstrap.blobs.map(b => cacheFor(b).dataPath)
      if (this.cfg.fuse.passthrough && devices.every(d => d !== undefined)) {
        await mkdir(kdir, { recursive: true, mode: 0o700 })
        view = new KernelView({ bootstrap: bootstrap.buffer, devices: devices as string[], log: log.child({ component: 'kernel-view' }) }, { mountpoint: join(kdir, key), bootstrapFile: join(kdir, `${key}.boot`) })
      }
      const modeLog = view !== undefined && this.failover.holdersFile !== undefined ? join(kdir, `${key}.modes`) : undefined
      const fs = new RafsFilesystem({ bootstrap, cacheFor, fetcher: chain, log: log.child({ component: 'fs' }), ...(view !== undefined ? { backing: view } : {}) }, { amplifyBytes: this.cfg.fetch.amplify, readaheadBytes: this.cfg.fetch.readahead })
      const session = new FuseSession({ fs, log: log.child({ component: 'fuse' }) }, {
        mountpoint: mp,
        fsname: req.image ?? 'naiad',
        cacheTimeoutSec: Math.max(1, Math.floor(this.cfg.fuse.cache_timeout / 1000)),
        allowOther: this.cfg.fuse.allow_other,
        readers: this.cfg.fuse.readers,
        maxRead: this.cfg.fuse.max_read,
        holder: this.failover.holdersFile !== undefined,
        passthrough: view !== undefined,
        ...(modeLog !== undefined ? { modeLog } : {})
      })
      try {
        if (adopt !== undefined) await session.adopt(adopt.fd, adopt.adoption)
        else await session.mount()
      } catch (err) {
        throw new NaiadError('NAIAD_FS_MOUNT', `mounting ${mp}: ${(err as Error).message}`, { cause: err })
      }
      const prefetchMode = req.prefetch ?? (this.cfg.prefetch.enable ? (this.cfg.prefetch.all ? 'all' : true) : false)
      let prefetch: Prefetcher | undefined
      if (prefetchMode !== false && (bootstrap.prefetchNids.length > 0 || prefetchMode === 'all')) {
        const files: PrefetchFile[] = bootstrap.prefetchNids.map(nid => ({ path: `nid ${nid}`, chunks: bootstrap.chunks(nid) }))
        prefetch = new Prefetcher({ cacheFor, fetcher: chain, gate: this.gate, logger: log.child({ component: 'prefetch' }) }, {
          files,
          ...(prefetchMode === 'all' ? { rest: () => allChunks(bootstrap) } : {}),
          concurrency: this.cfg.prefetch.concurrency,
          bandwidthBytesPerSec: this.cfg.prefetch.bandwidth
        })
        prefetch.start()
      }
      const m: Mount = { request: req, credentials, since: new Date().toISOString(), bootstrap, fs, session, chain, caches, store, prefetch, view, modeLog, log }
      this.mounts.set(mp, m)
      session.done().then(() => {
        if (this.mounts.get(mp) === m && this.closed === undefined) {
          log.warn('the kernel ended the FUSE session (unmounted from outside); releasing it')
          this.release(m).catch(() => {})
        }
      }, () => {})
      await this.saveState()
      log.info({ durationMs: Date.now() - t0, blobs: bootstrap.blobs.length, inodes: bootstrap.inodeCount, registryAuth: credentials?.given === true ? 'from the mount request' : 'the daemon\'s own' }, 'mounted')
      return this.info(m)
    } catch (err) {
      await view?.close().catch(() => {})
      for (const l of caches.values()) await l.release().catch(() => {})
      if (chain !== undefined) await chain.close().catch(() => {})
      else for (const s of sources) await s.close().catch(() => {})
      await store?.close().catch(() => {})
      log.error({ err }, 'mount failed')
      throw isNaiadError(err) ? err : new NaiadError('NAIAD_FS_MOUNT', `mounting ${mp}: ${(err as Error).message}`, { cause: err })
    }
  }

  /**
   * Detaches the kernel views (passthrough) a dead daemon left: each mount makes its own when it
   * needs one; files open in passthrough keep theirs until closed.
   */
  private async sweepKernelViews (records: readonly MountRecord[]): Promise<void> {
    const kdir = join(this.cfg.state.dir, 'kernel')
    const mps = new Set((await kernelMounts().catch(() => [])).map(m => m.mountpoint).filter(p => p.startsWith(kdir + '/')))
    for (const mp of mps) {
      this.deps.log.info({ mountpoint: mp }, 'detaching the kernel view of a dead daemon')
      await detach(mp)
    }
    // their bootstraps and mount points go too (each view writes its own again when it needs
    // it); the mode logs of recorded mounts stay, for the daemon that adopts them
    const keep = new Set(records.map(r => r.fuse?.modeLog).filter((x): x is string => x !== undefined))
    const entries = await readdir(kdir, { withFileTypes: true }).catch(() => [])
    for (const e of entries) {
      const p = join(kdir, e.name)
      if (e.isDirectory()) await rmdir(p).catch(() => {}) // (only if empty: not a live view)
      else if (!keep.has(p)) await rm(p, { force: true }).catch(() => {})
    }
  }

  private async release (m: Mount): Promise<void> {
    this.mounts.delete(m.request.mountpoint)
    await m.prefetch?.close()
    await m.session.close()
    await m.view?.close()
    if (m.modeLog !== undefined) await rm(m.modeLog, { force: true }).catch(() => {})
    await m.chain.close()
    await m.store?.close()
    for (const l of m.caches.values()) await l.release()
    await this.saveState()
  }

  async unmount (mountpoint: string): Promise<void> {
    const m = this.mounts.get(mountpoint)
    if (m === undefined) {
      if ((await naiadMounts()).some(x => x.mountpoint === mountpoint)) {
        await unmountFuse(mountpoint)
        return
      }
      throw new NaiadError('NAIAD_FS_NOT_MOUNTED', `no naiad mount at ${mountpoint}`)
    }
    await this.release(m)
    m.log.info('unmounted')
  }

  private blobStats (m: Mount): BlobStats[] {
    return [...m.caches.values()].map(l => l.cache.stats())
  }

  private info (m: Mount): MountInfo {
    const p = m.prefetch?.stats()
    const fuse = m.session.statistics() // (also folds the reads its reader threads answered into fs and cache statistics)
    return {
      mountpoint: m.request.mountpoint,
      ...(m.request.image !== undefined ? { image: m.request.image } : {}),
      ...(m.request.bootstrap !== undefined ? { bootstrap: m.request.bootstrap } : {}),
      labels: m.request.labels ?? {},
      since: m.since,
      files: m.bootstrap.inodeCount,
      reads: m.fs.readStats.reads,
      bytesRead: m.fs.readStats.bytes,
      eio: m.fs.readStats.eio,
      passthroughOpens: fuse.passthroughOpens,
      prefetch: p !== undefined ? { state: p.state, chunksDone: p.chunksDone, chunksTotal: p.chunksTotal } : { state: 'off', chunksDone: 0, chunksTotal: 0 },
      blobs: this.blobStats(m)
    }
  }

  async list (): Promise<MountInfo[]> {
    return [...this.mounts.values()].map(m => this.info(m))
  }

  snapshot (): { mounts: MountInfo[], cacheBytes: number, sources: Record<string, { bytes: number, errors: number, directReads: number }> } {
    const sources: Record<string, { bytes: number, errors: number, directReads: number }> = {}
    for (const m of this.mounts.values()) {
      for (const [name, s] of Object.entries(m.chain.stats())) {
        const agg = sources[name] ?? { bytes: 0, errors: 0, directReads: 0 }
        agg.bytes += s.bytes
        agg.errors += s.errors
        agg.directReads += s.directReads ?? 0
        sources[name] = agg
      }
    }
    return { mounts: [...this.mounts.values()].map(m => this.info(m)), cacheBytes: this.cacheBytes, sources }
  }

  /** Bytes the cache uses on disk (refreshed here and before each metrics scrape). */
  async refreshUsage (): Promise<number> {
    this.cacheBytes = (await this.deps.cache.usage()).totalBytes
    return this.cacheBytes
  }

  /** The chunk cache's blobs, with their disk use and how many mounts use them. */
  async cachedBlobs (): Promise<CachedBlobInfo[]> {
    const u = await this.deps.cache.usage()
    this.cacheBytes = u.totalBytes
    return u.blobs.map(b => ({ blobId: b.blobId, bytes: b.bytes, users: b.users, lastUsed: b.lastUsed }))
  }

  /** Deletes an unused blob's cache files (e.g. its image was removed); absent: nothing to do. */
  async removeBlob (blobId: string): Promise<void> {
    const users = [...this.mounts.values()].filter(m => m.bootstrap.blobs.some(b => b.blobId === blobId)).map(m => m.request.mountpoint)
    if (users.length > 0 || !(await this.deps.cache.remove(blobId))) {
      throw new NaiadError('NAIAD_FS_BLOB_IN_USE', `blob ${blobId} is used by ${users.length > 0 ? users.join(', ') : 'a mount'}; its cache stays`)
    }
    this.deps.log.info({ blobId }, 'blob cache removed')
  }

  async daemonInfo (): Promise<DaemonInfo> {
    return {
      version: this.deps.version,
      pid: process.pid,
      uptimeSec: Math.round((Date.now() - this.started) / 1000),
      mounts: this.mounts.size,
      cacheDir: this.cfg.cache.dir,
      cacheBytes: await this.refreshUsage(),
      cacheQuota: this.cfg.cache.quota,
      failover: this.failover.holdersFile !== undefined
    }
  }

  /**
   * Shuts down: with `unmount` (default) every mount is unmounted and forgotten; without, the
   * mounts are left in the kernel and in the state file for the next daemon to re-adopt.
   * Safe to call twice.
   */
  async close (opts: { unmount?: boolean } = {}): Promise<void> {
    this.closed ??= (async () => {
      for (const m of [...this.mounts.values()]) {
        if (opts.unmount === false) {
          await m.prefetch?.close()
          continue
        }
        await this.release(m).catch((err: unknown) => { m.log.warn({ err }, 'unmount during shutdown failed') })
      }
      await this.deps.cache.close()
    })()
    await this.closed
  }
}

/** Every chunk of every file, for "prefetch all". */
function * allChunks (b: Bootstrap): Generator<ChunkRef> {
  const seen = new Set<number>()
  const stack = [b.rootNid]
  while (stack.length > 0) {
    const nid = stack.pop()!
    for (const e of b.readdir(nid)) {
      if (seen.has(e.nid) || (e.name.length <= 2 && e.name.every(c => c === 0x2e))) continue
      seen.add(e.nid)
      if (e.type === 'dir') stack.push(e.nid)
      else if (e.type === 'file') yield * b.chunks(e.nid)
    }
  }
}
