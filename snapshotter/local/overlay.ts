/**
 * The local snapshotter: plain overlayfs snapshots, as containerd's overlayfs snapshotter lays
 * them out. Under `root`:
 *
 *     metadata.db            the MetaStore (SQLite)
 *     snapshots/<id>/fs      the snapshot's own layer (upperdir of an active snapshot)
 *     snapshots/<id>/work    overlayfs workdir
 *
 * Mounts: a snapshot with no parent is a bind mount of its fs/ (read-only for a view); a view of
 * one parent is a read-only bind mount of that parent's fs/; otherwise an `overlay` mount with
 * lowerdir = the parents' fs/ dirs, nearest first, plus upperdir/workdir for an active snapshot.
 *
 * Nydus images (with a RemoteFilesystem and/or a Materializer; see docs/snapshotter.md):
 * - Prepare of a layer labelled `containerd.io/snapshot/nydus-blob=true` with
 *   `containerd.io/snapshot.ref` (containerd's unpacker) commits it at once under the ref name,
 *   keeping labels and parent, and answers AlreadyExists: containerd skips its download.
 * - The bootstrap layer (`nydus-bootstrap=true`) is a normal snapshot containerd unpacks:
 *   `snapshots/<id>/fs/image/image.boot`.
 * - An active snapshot or view whose parent chain holds a bootstrap snapshot gets an overlay whose
 *   lowest lowerdir is that image's filesystem, owned by the bootstrap snapshot and shared by all
 *   its users: the fsdaemon's FUSE mount at `snapshots/<id>/mnt` (bootstrap file + blobs read
 *   lazily from the image's repository), or, when that fails, the image written out in full at
 *   `snapshots/<id>/rootfs` (Materializer). Which one is recorded in the metastore
 *   (remote_lowers). The FUSE mount is released when the last user is removed.
 *
 * Crash safety: a new snapshot's directories are made under a temporary name and renamed to its id
 * inside the metadata transaction; a removed snapshot's directory is renamed away inside the
 * transaction and deleted after it commits. A crash leaves at worst an unreferenced directory,
 * which `cleanup` deletes.
 */
import { execFile } from 'node:child_process'
import { renameSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { NaiadError, causeChain, hasCode, isNaiadError, throwIfAborted } from '../../lib/errors/index.ts'
import { Bootstrap } from '../../lib/format/bootstrap.ts'
import type { Logger } from '../../lib/log/index.ts'
import { parseFilters } from '../filters.ts'
import { LABEL_CRI_IMAGE_REF, LABEL_NYDUS_BLOB, LABEL_NYDUS_BOOTSTRAP, LABEL_SNAPSHOT_REF, LABEL_STARGZ_REFERENCE, imageRefOf, isTrue, layerDigestOf } from '../labels.ts'
import type { RemoteFilesystem, RemoteImage } from '../remote/filesystem.ts'
import { MetaStore, type SnapshotRecord } from '../storage/metastore.ts'
import type { CreateOptions, Mount, OpOptions, SnapshotInfo, Snapshotter, Usage, WalkOptions } from '../snapshotter.ts'
import { diskUsage } from './usage.ts'

const execFileP = promisify(execFile)

/** Writes a Nydus image's whole filesystem into a directory (the fallback of the lazy mount). */
export interface Materializer {
  /** Fills `dir` (created by the call) with the image's tree; throws a NaiadError on failure. */
  materialize (dir: string, image: RemoteImage, opts?: OpOptions): Promise<void>
}

export interface LocalSnapshotterDeps {
  readonly log: Logger
  /** Serves Nydus images lazily (the fsdaemon); without it and a materializer, Nydus layers are plain layers. */
  readonly remote?: RemoteFilesystem
  /** The full-download fallback when the lazy mount fails. */
  readonly materializer?: Materializer
}

/** Labels the snapshotter puts on its fsdaemon mounts, to find them again after a restart. */
export const MOUNT_LABEL_ROOT = 'naiad.io/snapshotter-root'
export const MOUNT_LABEL_SNAPSHOT = 'naiad.io/snapshot-id'

interface BootstrapInChain {
  /** The bootstrap snapshot. */
  readonly rec: SnapshotRecord
  /** Ids of the snapshots between the child and the bootstrap, nearest first. */
  readonly above: number[]
  /** Image reference from the labels of the bootstrap or of its parents. */
  readonly image: string | undefined
}

/** Detaches (lazily) every mount at or under `dir` (before a directory is deleted). */
async function detachMountsUnder (dir: string): Promise<void> {
  const text = await readFile('/proc/self/mounts', 'utf8')
  const mps = text.split('\n').map((l) => (l.split(' ')[1] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((mp) => mp === dir || mp.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length)
  for (const mp of mps) await execFileP('umount', ['-l', mp]).catch(() => {})
}

export interface LocalSnapshotterOptions {
  /** Root directory; created (mode 0700) on first use. */
  readonly root: string
}

function info (r: SnapshotRecord): SnapshotInfo {
  return { name: r.name, parent: r.parent, kind: r.kind, labels: r.labels, createdAt: r.createdAt, updatedAt: r.updatedAt }
}

export class LocalSnapshotter implements Snapshotter {
  readonly #log: Logger
  readonly #root: string
  readonly #store: MetaStore
  #opened: Promise<void> | undefined
  #closed = false
  /** Temporary directories of creates and removes in flight; cleanup leaves them alone. */
  readonly #inFlight = new Set<string>()
  readonly #remote: RemoteFilesystem | undefined
  readonly #materializer: Materializer | undefined
  /** Blob ids of each bootstrap snapshot's image (read once from its bootstrap). */
  readonly #blobIds = new Map<number, readonly string[]>()
  /**
   * Serialise the operations that mount or release image lower directories: per image (bootstrap
   * snapshot id), so a full download of one image never holds up the others; 'all' (start-up
   * recovery, Cleanup's scan of stray mounts) waits for every image's operations in flight and
   * holds new ones back until it is done.
   */
  readonly #imageLocks = new Map<number, Promise<unknown>>()
  #allLock: Promise<unknown> = Promise.resolve()

  constructor (deps: LocalSnapshotterDeps, options: LocalSnapshotterOptions) {
    this.#log = deps.log.child({ component: 'snapshotter.local' })
    this.#remote = deps.remote
    this.#materializer = deps.materializer
    this.#root = options.root
    this.#store = new MetaStore({}, { path: join(options.root, 'metadata.db') })
  }

  get root (): string { return this.#root }

  async #ready (): Promise<MetaStore> {
    if (this.#closed) throw new NaiadError('NAIAD_CLOSED', 'snapshotter is closed')
    this.#opened ??= (async () => {
      await mkdir(join(this.#root, 'snapshots'), { recursive: true, mode: 0o700 })
      this.#store.open()
    })()
    await this.#opened
    if (this.#closed) throw new NaiadError('NAIAD_CLOSED', 'snapshotter is closed')
    return this.#store
  }

  #dir (id: number): string { return join(this.#root, 'snapshots', String(id)) }
  #fs (id: number): string { return join(this.#dir(id), 'fs') }

  /** True when Nydus layers get the remote treatment (skip blobs, image lower directories). */
  get #nydus (): boolean { return this.#remote !== undefined || this.#materializer !== undefined }

  async #locked<T> (image: number | 'all', fn: () => Promise<T>): Promise<T> {
    if (image === 'all') {
      const run = Promise.all([this.#allLock, ...this.#imageLocks.values()]).then(fn, fn)
      this.#allLock = run.catch(() => {})
      return await run
    }
    const run = Promise.all([this.#allLock, this.#imageLocks.get(image)]).then(fn, fn)
    const tail = run.catch(() => {})
    this.#imageLocks.set(image, tail)
    void tail.then(() => { if (this.#imageLocks.get(image) === tail) this.#imageLocks.delete(image) })
    return await run
  }

  /** The nearest Nydus bootstrap snapshot in the chain starting at the committed `from`. */
  #bootstrapOf (s: MetaStore, from: SnapshotRecord): BootstrapInChain | undefined {
    if (!this.#nydus) return undefined
    const chain = [from, ...s.parentIds(from).map((id) => s.getById(id)).filter((r): r is SnapshotRecord => r !== undefined)]
    const i = chain.findIndex((r) => r.kind === 'committed' && isTrue(r.labels, LABEL_NYDUS_BOOTSTRAP))
    if (i < 0) return undefined
    const rec = chain[i] as SnapshotRecord
    let image: string | undefined
    for (const r of chain.slice(i)) {
      image = imageRefOf(r.labels)
      if (image !== undefined) break
    }
    return { rec, above: chain.slice(0, i).map((r) => r.id), image }
  }

  #bootstrapOfKey (s: MetaStore, r: SnapshotRecord): BootstrapInChain | undefined {
    if (r.parent === '') return undefined
    const p = s.get(r.parent)
    return p === undefined ? undefined : this.#bootstrapOf(s, p)
  }

  /**
   * Makes the image lower directory of bootstrap snapshot `b` available and returns it: the live
   * FUSE mount, a new one, or (fallback) the image written out in full. Call under #locked (the image's, or all).
   */
  async #ensureLower (s: MetaStore, b: BootstrapInChain, signal: AbortSignal | undefined, fallback = true): Promise<string> {
    const id = b.rec.id
    const have = s.remoteLower(id)
    if (have?.mode === 'materialized') return have.path
    const mp = join(this.#dir(id), 'mnt')
    const image: RemoteImage | undefined = b.image === undefined
      ? undefined
      : { bootstrap: join(this.#fs(id), 'image', 'image.boot'), image: b.image, labels: { [MOUNT_LABEL_ROOT]: this.#root, [MOUNT_LABEL_SNAPSHOT]: String(id) } }
    let lazyFailure: string
    if (image === undefined) {
      lazyFailure = `no image reference: neither the bootstrap snapshot ${b.rec.name} nor its parents carry containerd.io/snapshot/cri.image-ref or containerd.io/snapshot/remote/stargz.reference (pull with naiad pull, the CRI with disable_snapshot_annotations = false, or nerdctl)`
    } else if (this.#remote === undefined) {
      lazyFailure = 'the lazy path is disabled ([fsdaemon] enable = false)'
    } else {
      try {
        if (have?.mode === 'fuse' && await this.#remote.alive(mp, { ...(signal !== undefined ? { signal } : {}) })) {
          // newer CRI credentials for the image (a rotated pull secret) reach the live mount
          await this.#remote.refresh?.(mp, image, { ...(signal !== undefined ? { signal } : {}) }).catch((err: unknown) => {
            this.#log.warn({ err, snapshot: b.rec.name, image: image.image }, 'giving the image mount its current credentials failed; it keeps the ones it has')
          })
          return mp
        }
        if (have?.mode === 'fuse') this.#log.warn({ snapshot: b.rec.name, image: image.image, mountpoint: mp }, 'the FUSE mount of the image is gone (fsdaemon restarted or killed); mounting it again')
        // a mountpoint used before may still be the FUSE mount of a dead fsdaemon, whose holder
        // keeps it waiting for the next fsdaemon to adopt it: never touch it here (a stat would
        // wait too); the fsdaemon adopts it, or detaches it and mounts again
        if (have?.mode !== 'fuse') {
          await mkdir(mp, { recursive: true, mode: 0o755 }).catch((err: NodeJS.ErrnoException) => {
            // the stale mount of a dead fsdaemon is still there: the fsdaemon detaches it before mounting
            if (err.code !== 'ENOTCONN' && err.code !== 'ECONNABORTED') throw err
          })
        }
        await this.#remote.mount(mp, image, { ...(signal !== undefined ? { signal } : {}) })
        s.setRemoteLower({ snapshotId: id, mode: 'fuse', image: image.image, path: mp })
        this.#log.info({ snapshot: b.rec.name, image: image.image, mountpoint: mp }, 'image mounted lazily')
        return mp
      } catch (err) {
        if (signal?.aborted === true) throw err
        lazyFailure = causeChain(err).join(': ')
        this.#log.warn({ err, snapshot: b.rec.name, image: image.image }, 'lazy mount of the image failed; falling back to downloading it in full')
      }
    }
    if (image === undefined || this.#materializer === undefined || !fallback) {
      throw new NaiadError('NAIAD_SNAP_REMOTE', `Nydus image of snapshot ${b.rec.name}: ${lazyFailure}${this.#materializer === undefined ? '; the full-download fallback is disabled' : ''}`)
    }
    const dest = join(this.#dir(id), 'rootfs')
    const tmp = join(this.#dir(id), `rootfs.tmp-${process.pid}-${Date.now()}`)
    for (const n of await readdir(this.#dir(id))) {
      if (n.startsWith('rootfs.tmp-')) await rm(join(this.#dir(id), n), { recursive: true, force: true }) // a crash's leftovers
    }
    try {
      const t0 = Date.now()
      await this.#materializer.materialize(tmp, image, { ...(signal !== undefined ? { signal } : {}) })
      await rm(dest, { recursive: true, force: true })
      await rename(tmp, dest)
      s.setRemoteLower({ snapshotId: id, mode: 'materialized', image: image.image, path: dest })
      this.#log.warn({ snapshot: b.rec.name, image: image.image, dir: dest, ms: Date.now() - t0 }, 'image downloaded in full (fallback); containers of this image use it from now on')
      if (have?.mode === 'fuse') await this.#remote?.unmount(mp).catch(() => {})
      return dest
    } catch (err) {
      await rm(tmp, { recursive: true, force: true }).catch(() => {})
      throw new NaiadError('NAIAD_SNAP_REMOTE', `Nydus image ${image.image} of snapshot ${b.rec.name}: lazy mount failed (${lazyFailure}), and the full download failed too (${causeChain(err).join(': ')})`, { cause: err })
    }
  }

  /** Releases bootstrap snapshot `id`'s FUSE mount when no active snapshot or view uses it. Call under #locked (the image's, or all). */
  async #releaseIfUnused (s: MetaStore, id: number): Promise<void> {
    const l = s.remoteLower(id)
    if (l === undefined || l.mode !== 'fuse') return
    if (s.getById(id) !== undefined && s.activeDescendants(id) > 0) return
    try {
      await this.#remote?.unmount(l.path)
      this.#log.info({ mountpoint: l.path, image: l.image }, 'image unmounted: no snapshot uses it')
    } catch (err) {
      if (!hasCode(err, 'NAIAD_FS_DAEMON_UNAVAILABLE')) {
        this.#log.warn({ err, mountpoint: l.path }, 'unmounting an unused image failed; cleanup retries')
        return
      }
      // no fsdaemon: detach what is left in the kernel; a later fsdaemon that remounts it from its state file is cleaned up by cleanup
      await detachMountsUnder(l.path)
      this.#log.info({ mountpoint: l.path, image: l.image }, 'image released (the fsdaemon is not running): no snapshot uses it')
    }
    if (s.getById(id) !== undefined) s.deleteRemoteLower(id)
  }

  /**
   * After a (re)start: checks the image mounts of snapshots still in use (remounting the ones the
   * fsdaemon no longer serves), and releases the ones nobody uses. Failures are logged: the next
   * prepare or mounts call tries again, with the full-download fallback (never here: it could take
   * minutes before the snapshotter serves).
   */
  async recover (opts: OpOptions = {}): Promise<void> {
    const s = await this.#ready()
    if (this.#remote === undefined) return
    await this.#locked('all', async () => {
      for (const l of s.remoteLowers()) {
        throwIfAborted(opts.signal)
        if (l.mode !== 'fuse') continue
        const rec = s.getById(l.snapshotId)
        if (rec === undefined || s.activeDescendants(l.snapshotId) === 0) {
          await this.#releaseIfUnused(s, l.snapshotId)
          continue
        }
        const b = this.#bootstrapOf(s, rec)
        if (b === undefined) continue
        try {
          // lazy only: a full download here would keep the snapshotter from serving for minutes
          const p = await this.#ensureLower(s, b, opts.signal, false)
          this.#log.info({ snapshot: rec.name, image: l.image, lower: p }, 'image lower directory checked after start')
        } catch (err) {
          this.#log.error({ err, snapshot: rec.name, image: l.image }, 'image lower directory could not be restored; the next prepare tries again')
        }
      }
    }).catch((err: unknown) => { this.#log.warn({ err }, 'recovering image mounts failed') })
  }

  async stat (key: string, opts: OpOptions = {}): Promise<SnapshotInfo> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    return info(s.mustGet(key))
  }

  async update (i: Pick<SnapshotInfo, 'name' | 'labels'>, fieldPaths?: readonly string[], opts: OpOptions = {}): Promise<SnapshotInfo> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    return info(s.updateLabels(i.name, i.labels, fieldPaths))
  }

  async usage (key: string, opts: OpOptions = {}): Promise<Usage> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    const r = s.mustGet(key)
    if (r.kind === 'committed' && this.#remote?.cachedBytes !== undefined && isTrue(r.labels, LABEL_NYDUS_BLOB)) {
      // a data layer committed remotely holds nothing on disk here: its usage is what the
      // fsdaemon caches of its blob (what kubelet's image filesystem accounting should see)
      const digest = layerDigestOf(r.labels)
      if (digest?.startsWith('sha256:') === true) {
        const bytes = await this.#remote.cachedBytes(digest.slice('sha256:'.length), opts).catch(() => undefined)
        if (bytes !== undefined) return { size: bytes + (r.usage?.size ?? 0), inodes: r.usage?.inodes ?? 0 }
      }
    }
    if (r.kind === 'committed' && r.usage !== undefined) return r.usage
    return await diskUsage(this.#fs(r.id), opts.signal)
  }

  async mounts (key: string, opts: OpOptions = {}): Promise<Mount[]> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    const r = s.mustGet(key)
    if (r.kind === 'committed') throw new NaiadError('NAIAD_SNAP_NOT_ACTIVE', `snapshot ${key} is committed and has no mounts; prepare or view on top of it`)
    const b = this.#bootstrapOfKey(s, r)
    if (b === undefined) return this.#mounts(s, r)
    return await this.#locked(b.rec.id, async () => {
      const lower = await this.#ensureLower(s, b, opts.signal)
      return this.#mounts(s, r, { above: b.above, lower })
    })
  }

  /** `image`: the snapshot's chain holds a Nydus bootstrap; its lower directory replaces it and the layers below. */
  #mounts (s: MetaStore, r: SnapshotRecord, image?: { above: number[], lower: string }): Mount[] {
    const parents = image === undefined ? s.parentIds(r) : image.above
    const ro = r.kind === 'view'
    if (parents.length === 0 && image === undefined) {
      return [{ type: 'bind', source: this.#fs(r.id), options: [ro ? 'ro' : 'rw', 'rbind'] }]
    }
    const lower = parents.map((id) => this.#fs(id))
    if (image !== undefined) lower.push(image.lower)
    if (ro && lower.length === 1) {
      return [{ type: 'bind', source: lower[0] as string, options: ['ro', 'rbind'] }]
    }
    const options: string[] = []
    if (!ro) options.push(`workdir=${join(this.#dir(r.id), 'work')}`, `upperdir=${this.#fs(r.id)}`)
    options.push(`lowerdir=${lower.join(':')}`)
    return [{ type: 'overlay', source: 'overlay', options }]
  }

  async prepare (key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return await this.#create('active', key, parent, opts)
  }

  async view (key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return await this.#create('view', key, parent, opts)
  }

  async #create (kind: 'active' | 'view', key: string, parent: string, opts: CreateOptions): Promise<Mount[]> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    const labels = opts.labels ?? {}
    const ref = labels[LABEL_SNAPSHOT_REF]
    if (this.#nydus && kind === 'active' && ref !== undefined && ref !== '' && isTrue(labels, LABEL_NYDUS_BLOB)) {
      if (imageRefOf(labels) !== undefined) return await this.#commitRemote(s, key, ref, parent, opts)
      this.#log.warn({ key, ref }, 'Nydus data layer without an image reference label (containerd.io/snapshot/cri.image-ref or remote/stargz.reference): preparing it as a normal layer, so containerd downloads it and will fail to apply it; pull with naiad pull, the CRI (disable_snapshot_annotations = false) or nerdctl')
    }
    const p = parent !== '' ? s.get(parent) : undefined
    const b = p !== undefined && p.kind === 'committed' ? this.#bootstrapOf(s, p) : undefined
    if (b === undefined) return await this.#createPlain(s, kind, key, parent, opts)
    return await this.#locked(b.rec.id, async () => {
      if (s.get(key) !== undefined) throw new NaiadError('NAIAD_SNAP_ALREADY_EXISTS', `snapshot ${key} already exists`)
      const lower = await this.#ensureLower(s, b, opts.signal)
      return await this.#createPlain(s, kind, key, parent, opts, { above: b.above, lower })
    })
  }

  /**
   * A Nydus data layer: committed at once under its ref name (labels and parent kept, nothing to
   * download), then AlreadyExists, which tells containerd to skip the layer.
   */
  async #commitRemote (s: MetaStore, key: string, ref: string, parent: string, opts: CreateOptions): Promise<never> {
    const tmp = await mkdtemp(join(this.#root, 'snapshots', 'new-'))
    this.#inFlight.add(tmp)
    try {
      await mkdir(join(tmp, 'fs'), { mode: 0o755 })
      throwIfAborted(opts.signal)
      s.transaction(() => {
        s.create('active', key, parent, opts.labels)
        const r = s.commit(ref, key, opts.labels, { size: 0, inodes: 0 })
        renameSync(tmp, this.#dir(r.id))
      })
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      throw err
    } finally {
      this.#inFlight.delete(tmp)
    }
    this.#log.info({ key, ref, parent }, 'Nydus data layer committed remotely; containerd skips its download')
    throw new NaiadError('NAIAD_SNAP_ALREADY_EXISTS', `snapshot ${ref} already exists: Nydus data layer committed remotely (read lazily from the registry)`)
  }

  async #createPlain (s: MetaStore, kind: 'active' | 'view', key: string, parent: string, opts: CreateOptions, image?: { above: number[], lower: string }): Promise<Mount[]> {
    const tmp = await mkdtemp(join(this.#root, 'snapshots', 'new-'))
    this.#inFlight.add(tmp)
    try {
      await mkdir(join(tmp, 'fs'), { mode: 0o755 })
      if (kind === 'active') await mkdir(join(tmp, 'work'), { mode: 0o700 })
      throwIfAborted(opts.signal)
      const mounts = s.transaction(() => {
        const r = s.create(kind, key, parent, opts.labels)
        renameSync(tmp, this.#dir(r.id))
        return this.#mounts(s, r, image)
      })
      this.#log.debug({ key, parent, kind }, 'snapshot created')
      return mounts
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      throw err
    } finally {
      this.#inFlight.delete(tmp)
    }
  }

  async commit (name: string, key: string, opts: CreateOptions = {}): Promise<void> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    const r = s.mustGet(key)
    if (r.kind !== 'active') throw new NaiadError('NAIAD_SNAP_NOT_ACTIVE', `snapshot ${key} is ${r.kind}; only active snapshots can be committed`)
    const usage = await diskUsage(this.#fs(r.id), opts.signal)
    throwIfAborted(opts.signal)
    // a Nydus bootstrap layer keeps what finds its image even if the committer passes no labels
    // (containerd's unpacker passes the same labels as to Prepare; other clients may not)
    let labels = opts.labels
    if (this.#nydus && isTrue(r.labels, LABEL_NYDUS_BOOTSTRAP)) {
      labels = { ...labels }
      for (const k of [LABEL_NYDUS_BOOTSTRAP, LABEL_CRI_IMAGE_REF, LABEL_STARGZ_REFERENCE]) {
        const v = r.labels[k]
        if (v !== undefined && labels[k] === undefined) labels = { ...labels, [k]: v }
      }
    }
    s.commit(name, key, labels, usage)
    this.#log.debug({ name, key }, 'snapshot committed')
  }

  async remove (key: string, opts: OpOptions = {}): Promise<void> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    const r = s.get(key)
    const b = r !== undefined && r.kind !== 'committed' ? this.#bootstrapOfKey(s, r) : undefined
    const own = r !== undefined && s.remoteLower(r.id) !== undefined
    const image = r !== undefined && this.#isBootstrap(r)
    if (b === undefined && !own && !image) { await this.#removePlain(s, key); return }
    await this.#locked(b !== undefined ? b.rec.id : r!.id, async () => {
      // the image's blobs, read before its bootstrap goes
      const blobs = image && r !== undefined && s.childCount(r.id) === 0 ? await this.#blobsOf(r.id) : []
      // a bootstrap snapshot's own FUSE mount goes before its directory does (removal fails anyway while it has children)
      if (own && r !== undefined && s.childCount(r.id) === 0) await this.#releaseIfUnused(s, r.id)
      await this.#removePlain(s, key)
      if (b !== undefined) await this.#releaseIfUnused(s, b.rec.id)
      if (r !== undefined) this.#blobIds.delete(r.id)
      if (blobs.length > 0) await this.#releaseCaches(s, blobs, 'its image was removed', opts)
    })
  }

  #isBootstrap (r: SnapshotRecord): boolean {
    return this.#remote !== undefined && r.kind === 'committed' && isTrue(r.labels, LABEL_NYDUS_BOOTSTRAP)
  }

  /** The blob ids in bootstrap snapshot `id`'s blob table; none when it cannot be read. */
  async #blobsOf (id: number): Promise<readonly string[]> {
    const have = this.#blobIds.get(id)
    if (have !== undefined) return have
    try {
      const ids = Bootstrap.parse(await readFile(join(this.#fs(id), 'image', 'image.boot'))).blobs.map((x) => x.blobId)
      this.#blobIds.set(id, ids)
      return ids
    } catch (err) {
      this.#log.debug({ err, snapshot: id }, 'cannot read the blob table of a bootstrap snapshot')
      return []
    }
  }

  /**
   * Asks the fsdaemon to delete the caches of `candidates` that no bootstrap snapshot left in the
   * store lists (another image sharing a blob keeps it) and no mount uses. Logs; never throws:
   * a cache left behind is evicted under the fsdaemon's quota. Call under #locked (the image's, or all).
   */
  async #releaseCaches (s: MetaStore, candidates: readonly string[], why: string, opts: OpOptions): Promise<void> {
    if (this.#remote?.releaseBlobs === undefined) return
    try {
      const kept = new Set<string>()
      for (const r of s.all()) {
        if (this.#isBootstrap(r)) for (const id of await this.#blobsOf(r.id)) kept.add(id)
      }
      const free = [...new Set(candidates)].filter((id) => !kept.has(id))
      if (free.length === 0) return
      const released = await this.#remote.releaseBlobs(free, opts)
      if (released.length > 0) this.#log.info({ blobs: released, why }, 'released the chunk caches of blobs no image uses')
    } catch (err) {
      this.#log.warn({ err }, 'releasing blob caches failed; the fsdaemon\'s quota evicts them later')
    }
  }

  async #removePlain (s: MetaStore, key: string): Promise<void> {
    const trash = join(this.#root, 'snapshots', `rm-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`)
    let moved = false
    this.#inFlight.add(trash)
    try {
      s.transaction(() => {
        const r = s.remove(key)
        try {
          renameSync(this.#dir(r.id), trash)
          moved = true
        } catch (err) {
          // a directory already gone (crash during an earlier remove) must not block the metadata
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        }
      })
      if (moved) {
        await detachMountsUnder(trash)
        await rm(trash, { recursive: true, force: true })
      }
    } finally {
      this.#inFlight.delete(trash)
    }
    this.#log.debug({ key }, 'snapshot removed')
  }

  async * walk (opts: WalkOptions = {}): AsyncIterable<SnapshotInfo> {
    throwIfAborted(opts.signal)
    const match = parseFilters(opts.filters)
    const s = await this.#ready()
    for (const r of s.all()) {
      throwIfAborted(opts.signal)
      const i = info(r)
      if (match(i)) yield i
    }
  }

  async cleanup (opts: OpOptions = {}): Promise<void> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    if (this.#remote !== undefined) {
      await this.#locked('all', async () => {
        for (const l of s.remoteLowers()) await this.#releaseIfUnused(s, l.snapshotId)
        // mounts of ours the fsdaemon still serves but no record wants (crash between unmount and the record, or a restarted fsdaemon remounting them)
        let served: Array<{ mountpoint: string, labels: Readonly<Record<string, string>> }> = []
        try {
          served = await (this.#remote as RemoteFilesystem).list(opts)
        } catch (err) {
          if (!isNaiadError(err)) throw err
        }
        for (const m of served) {
          if (m.labels[MOUNT_LABEL_ROOT] !== this.#root) continue
          const id = Number(m.labels[MOUNT_LABEL_SNAPSHOT])
          const l = s.remoteLower(id)
          if (l !== undefined && l.mode === 'fuse' && l.path === m.mountpoint) continue
          this.#log.info({ mountpoint: m.mountpoint }, 'cleanup: unmounting an image mount no snapshot uses')
          await this.#remote?.unmount(m.mountpoint).catch((err: unknown) => { this.#log.warn({ err, mountpoint: m.mountpoint }, 'cleanup: unmount failed') })
        }
        // cached blobs of images removed while the fsdaemon was down, or before a crash
        const unused = await (this.#remote as RemoteFilesystem).unusedBlobs?.(opts).catch(() => []) ?? []
        if (unused.length > 0) await this.#releaseCaches(s, unused, 'cleanup: no image of the snapshotter lists them', opts)
      })
    }
    const dir = join(this.#root, 'snapshots')
    const names = await readdir(dir)
    const ids = s.ids()
    for (const n of names) {
      throwIfAborted(opts.signal)
      if (/^\d+$/.test(n) && ids.has(Number(n))) continue
      if (this.#inFlight.has(join(dir, n))) continue
      this.#log.info({ dir: join(dir, n) }, 'cleanup: removing unreferenced snapshot directory')
      await detachMountsUnder(join(dir, n))
      await rm(join(dir, n), { recursive: true, force: true })
    }
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#opened?.catch(() => {})
    await Promise.all([this.#allLock, ...this.#imageLocks.values()]).catch(() => {})
    this.#store.close()
    await this.#remote?.close()
  }
}
