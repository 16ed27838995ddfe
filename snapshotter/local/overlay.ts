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
 * Crash safety: a new snapshot's directories are made under a temporary name and renamed to its id
 * inside the metadata transaction; a removed snapshot's directory is renamed away inside the
 * transaction and deleted after it commits. A crash leaves at worst an unreferenced directory,
 * which `cleanup` deletes.
 */
import { renameSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { NaiadError, throwIfAborted } from '../../lib/errors/index.ts'
import type { Logger } from '../../lib/log/index.ts'
import { parseFilters } from '../filters.ts'
import { MetaStore, type SnapshotRecord } from '../storage/metastore.ts'
import type { CreateOptions, Mount, OpOptions, SnapshotInfo, Snapshotter, Usage, WalkOptions } from '../snapshotter.ts'
import { diskUsage } from './usage.ts'

export interface LocalSnapshotterDeps {
  readonly log: Logger
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

  constructor (deps: LocalSnapshotterDeps, options: LocalSnapshotterOptions) {
    this.#log = deps.log.child({ component: 'snapshotter.local' })
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
    if (r.kind === 'committed' && r.usage !== undefined) return r.usage
    return await diskUsage(this.#fs(r.id), opts.signal)
  }

  async mounts (key: string, opts: OpOptions = {}): Promise<Mount[]> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
    const r = s.mustGet(key)
    if (r.kind === 'committed') throw new NaiadError('NAIAD_SNAP_NOT_ACTIVE', `snapshot ${key} is committed and has no mounts; prepare or view on top of it`)
    return this.#mounts(s, r)
  }

  #mounts (s: MetaStore, r: SnapshotRecord): Mount[] {
    const parents = s.parentIds(r)
    const ro = r.kind === 'view'
    if (parents.length === 0) {
      return [{ type: 'bind', source: this.#fs(r.id), options: [ro ? 'ro' : 'rw', 'rbind'] }]
    }
    const lower = parents.map((id) => this.#fs(id))
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
    const tmp = await mkdtemp(join(this.#root, 'snapshots', 'new-'))
    this.#inFlight.add(tmp)
    try {
      await mkdir(join(tmp, 'fs'), { mode: 0o755 })
      if (kind === 'active') await mkdir(join(tmp, 'work'), { mode: 0o700 })
      throwIfAborted(opts.signal)
      const mounts = s.transaction(() => {
        const r = s.create(kind, key, parent, opts.labels)
        renameSync(tmp, this.#dir(r.id))
        return this.#mounts(s, r)
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
    s.commit(name, key, opts.labels, usage)
    this.#log.debug({ name, key }, 'snapshot committed')
  }

  async remove (key: string, opts: OpOptions = {}): Promise<void> {
    throwIfAborted(opts.signal)
    const s = await this.#ready()
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
      if (moved) await rm(trash, { recursive: true, force: true })
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
    const dir = join(this.#root, 'snapshots')
    const names = await readdir(dir)
    const ids = s.ids()
    for (const n of names) {
      throwIfAborted(opts.signal)
      if (/^\d+$/.test(n) && ids.has(Number(n))) continue
      if (this.#inFlight.has(join(dir, n))) continue
      this.#log.info({ dir: join(dir, n) }, 'cleanup: removing unreferenced snapshot directory')
      await rm(join(dir, n), { recursive: true, force: true })
    }
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#opened?.catch(() => {})
    this.#store.close()
  }
}
