/**
 * The snapshotter's metadata store: one SQLite database (better-sqlite3, WAL, synchronous=FULL)
 * holding every snapshot's key, parent, kind, labels and times. It plays the role of containerd's
 * snapshots/storage bolt metastore. Every mutating snapshotter operation runs in one transaction
 * (`transaction(fn)`), so a crash at any point leaves either the old or the new state; file system
 * work that must agree with the metadata runs inside the same transaction (a throw rolls back) and
 * `cleanup` removes directories no row references.
 *
 * Ids are allocated by SQLite (AUTOINCREMENT: never reused, so a directory left by a crash can
 * never be mistaken for a new snapshot's). Parents are stored by id.
 */
import Database from 'better-sqlite3'
import { NaiadError } from '../../lib/errors/index.ts'
import { validateLabels } from '../labels.ts'
import type { Labels, SnapshotInfo, SnapshotKind, Usage } from '../snapshotter.ts'

export interface SnapshotRecord extends SnapshotInfo {
  readonly id: number
  /** Usage recorded at commit time (committed snapshots only). */
  readonly usage: Usage | undefined
}

/**
 * The lower directory of a Nydus image, owned by its bootstrap snapshot: a FUSE mount served by
 * the fsdaemon (`fuse`), or the image's filesystem written out in full by the fallback
 * (`materialized`).
 */
export interface RemoteLower {
  readonly snapshotId: number
  readonly mode: 'fuse' | 'materialized'
  /** Image reference the blobs are read from. */
  readonly image: string
  /** The directory used as overlay lowerdir. */
  readonly path: string
}

interface Row {
  id: number
  key: string
  parent_id: number | null
  parent_key: string | null
  kind: SnapshotKind
  labels: string
  created_at: number
  updated_at: number
  size: number | null
  inodes: number | null
}

export interface MetaStoreOptions {
  /** Path of the database file; its directory must exist. */
  readonly path: string
}

const SCHEMA_VERSION = 1

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
  kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
  labels TEXT NOT NULL DEFAULT '{}',
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  size INTEGER,
  inodes INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS remote_lowers (
  snapshot_id INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
  mode TEXT NOT NULL CHECK (mode IN ('fuse', 'materialized')),
  image TEXT NOT NULL,
  path TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);
`

const SELECT = 'SELECT s.*, p.key AS parent_key FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id'

function toRecord (r: Row): SnapshotRecord {
  let labels: Record<string, string>
  try {
    labels = JSON.parse(r.labels) as Record<string, string>
  } catch (err) {
    throw new NaiadError('NAIAD_SNAP_STORE', `snapshot ${r.key}: labels are not JSON`, { cause: err })
  }
  return {
    id: r.id,
    name: r.key,
    parent: r.parent_key ?? '',
    kind: r.kind,
    labels,
    createdAt: new Date(r.created_at),
    updatedAt: new Date(r.updated_at),
    usage: r.size === null || r.inodes === null ? undefined : { size: r.size, inodes: r.inodes }
  }
}

export class MetaStore {
  readonly #path: string
  #db: Database.Database | undefined
  #closed = false

  constructor (_deps: Record<string, never>, options: MetaStoreOptions) {
    this.#path = options.path
  }

  /** Opens (creating if needed) the database. Idempotent. */
  open (): void {
    if (this.#closed) throw new NaiadError('NAIAD_CLOSED', 'metadata store is closed')
    if (this.#db !== undefined) return
    let db: Database.Database
    try {
      db = new Database(this.#path)
      db.pragma('journal_mode = WAL')
      db.pragma('synchronous = FULL')
      db.pragma('foreign_keys = ON')
      db.pragma('busy_timeout = 5000')
      db.exec(SCHEMA)
      const v = db.prepare('SELECT v FROM meta WHERE k = ?').get('schema_version') as { v: string } | undefined
      if (v === undefined) db.prepare('INSERT INTO meta (k, v) VALUES (?, ?)').run('schema_version', String(SCHEMA_VERSION))
      else if (Number(v.v) !== SCHEMA_VERSION) throw new NaiadError('NAIAD_SNAP_STORE', `${this.#path}: schema version ${v.v}, this naiad reads ${SCHEMA_VERSION}`)
    } catch (err) {
      if (err instanceof NaiadError) throw err
      throw new NaiadError('NAIAD_SNAP_STORE', `open ${this.#path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
    }
    this.#db = db
  }

  get #d (): Database.Database {
    if (this.#db === undefined) throw new NaiadError('NAIAD_CLOSED', this.#closed ? 'metadata store is closed' : 'metadata store is not open')
    return this.#db
  }

  /**
   * Runs fn in one IMMEDIATE transaction: all of it commits, or a throw rolls all of it back.
   * Nested calls join the outer transaction.
   */
  transaction<T> (fn: () => T): T {
    const d = this.#d
    if (d.inTransaction) return fn()
    return d.transaction(fn).immediate()
  }

  get (key: string): SnapshotRecord | undefined {
    const r = this.#d.prepare(`${SELECT} WHERE s.key = ?`).get(key) as Row | undefined
    return r === undefined ? undefined : toRecord(r)
  }

  getById (id: number): SnapshotRecord | undefined {
    const r = this.#d.prepare(`${SELECT} WHERE s.id = ?`).get(id) as Row | undefined
    return r === undefined ? undefined : toRecord(r)
  }

  mustGet (key: string): SnapshotRecord {
    const r = this.get(key)
    if (r === undefined) throw new NaiadError('NAIAD_SNAP_NOT_FOUND', `snapshot ${key} does not exist`)
    return r
  }

  /** The ids of the parent chain of `rec`, nearest parent first. */
  parentIds (rec: SnapshotRecord): number[] {
    const rows = this.#d.prepare(`
      WITH RECURSIVE chain(id, parent_id, depth) AS (
        SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
        UNION ALL SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent_id
      ) SELECT id FROM chain WHERE depth > 0 ORDER BY depth`).all(rec.id) as Array<{ id: number }>
    return rows.map((r) => r.id)
  }

  childCount (id: number): number {
    return (this.#d.prepare('SELECT COUNT(*) AS n FROM snapshots WHERE parent_id = ?').get(id) as { n: number }).n
  }

  /**
   * Creates an active snapshot or view. AlreadyExists when key is taken, NotFound for an unknown
   * parent, InvalidArgument for a parent that is not committed.
   */
  create (kind: 'active' | 'view', key: string, parent: string, labels: Labels | undefined, now = Date.now()): SnapshotRecord {
    if (key === '') throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', 'snapshot key must not be empty')
    const l = validateLabels(labels)
    return this.transaction(() => {
      if (this.get(key) !== undefined) throw new NaiadError('NAIAD_SNAP_ALREADY_EXISTS', `snapshot ${key} already exists`)
      let parentId: number | null = null
      if (parent !== '') {
        const p = this.get(parent)
        if (p === undefined) throw new NaiadError('NAIAD_SNAP_NOT_FOUND', `parent snapshot ${parent} does not exist`)
        if (p.kind !== 'committed') throw new NaiadError('NAIAD_SNAP_PARENT_NOT_COMMITTED', `parent ${parent} is ${p.kind}, not committed`)
        parentId = p.id
      }
      const info = this.#d.prepare('INSERT INTO snapshots (key, parent_id, kind, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(key, parentId, kind, JSON.stringify(l), now, now)
      return this.getById(Number(info.lastInsertRowid)) as SnapshotRecord
    })
  }

  /**
   * Commits the active snapshot `key` as `name` (same id, so its directories stay where they
   * are). NotFound, FailedPrecondition (not active) or AlreadyExists (name taken).
   */
  commit (name: string, key: string, labels: Labels | undefined, usage: Usage | undefined, now = Date.now()): SnapshotRecord {
    if (name === '') throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', 'snapshot name must not be empty')
    const l = validateLabels(labels)
    return this.transaction(() => {
      const a = this.mustGet(key)
      if (a.kind !== 'active') throw new NaiadError('NAIAD_SNAP_NOT_ACTIVE', `snapshot ${key} is ${a.kind}; only active snapshots can be committed`)
      if (name !== key && this.get(name) !== undefined) throw new NaiadError('NAIAD_SNAP_ALREADY_EXISTS', `snapshot ${name} already exists`)
      this.#d.prepare("UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated_at = ?, size = ?, inodes = ? WHERE id = ?")
        .run(name, JSON.stringify(l), now, usage?.size ?? null, usage?.inodes ?? null, a.id)
      return this.getById(a.id) as SnapshotRecord
    })
  }

  /** Deletes the snapshot `key`. NotFound, or FailedPrecondition while it has children. */
  remove (key: string): SnapshotRecord {
    return this.transaction(() => {
      const r = this.mustGet(key)
      const n = this.childCount(r.id)
      if (n > 0) throw new NaiadError('NAIAD_SNAP_HAS_CHILDREN', `snapshot ${key} has ${n} child snapshot${n === 1 ? '' : 's'}`)
      this.#d.prepare('DELETE FROM snapshots WHERE id = ?').run(r.id)
      return r
    })
  }

  /** Updates the labels following field paths (see Snapshotter.update). */
  updateLabels (key: string, labels: Labels, fieldPaths: readonly string[] | undefined, now = Date.now()): SnapshotRecord {
    const given = validateLabels(labels)
    return this.transaction(() => {
      const r = this.mustGet(key)
      let next: Record<string, string> = { ...r.labels }
      const paths = fieldPaths ?? []
      if (paths.length === 0) {
        next = given
      } else {
        for (const p of paths) {
          if (p === 'labels') {
            next = { ...given }
          } else if (p.startsWith('labels.') && p.length > 'labels.'.length) {
            const k = p.slice('labels.'.length)
            const v = given[k]
            if (v === undefined || v === '') delete next[k]
            else next[k] = v
          } else {
            throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', `cannot update field ${JSON.stringify(p)}: only labels and labels.<key> are mutable`)
          }
        }
      }
      validateLabels(next)
      this.#d.prepare('UPDATE snapshots SET labels = ?, updated_at = ? WHERE id = ?').run(JSON.stringify(next), Math.max(now, r.updatedAt.getTime() + 1), r.id)
      return this.getById(r.id) as SnapshotRecord
    })
  }

  /**
   * The number of active snapshots and views whose parent chain holds snapshot `id` (the users of
   * a Nydus bootstrap snapshot's lower directory).
   */
  activeDescendants (id: number): number {
    return (this.#d.prepare(`
      WITH RECURSIVE d(id) AS (
        SELECT id FROM snapshots WHERE parent_id = ?
        UNION ALL SELECT s.id FROM snapshots s JOIN d ON s.parent_id = d.id
      ) SELECT COUNT(*) AS n FROM snapshots WHERE id IN (SELECT id FROM d) AND kind != 'committed'`).get(id) as { n: number }).n
  }

  /** The lower directory recorded for the Nydus bootstrap snapshot `id` (see RemoteLower). */
  remoteLower (id: number): RemoteLower | undefined {
    const r = this.#d.prepare('SELECT * FROM remote_lowers WHERE snapshot_id = ?').get(id) as { snapshot_id: number, mode: RemoteLower['mode'], image: string, path: string } | undefined
    return r === undefined ? undefined : { snapshotId: r.snapshot_id, mode: r.mode, image: r.image, path: r.path }
  }

  remoteLowers (): RemoteLower[] {
    return (this.#d.prepare('SELECT * FROM remote_lowers ORDER BY snapshot_id').all() as Array<{ snapshot_id: number, mode: RemoteLower['mode'], image: string, path: string }>)
      .map((r) => ({ snapshotId: r.snapshot_id, mode: r.mode, image: r.image, path: r.path }))
  }

  setRemoteLower (l: RemoteLower, now = Date.now()): void {
    this.#d.prepare('INSERT INTO remote_lowers (snapshot_id, mode, image, path, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(snapshot_id) DO UPDATE SET mode = excluded.mode, image = excluded.image, path = excluded.path, updated_at = excluded.updated_at')
      .run(l.snapshotId, l.mode, l.image, l.path, now)
  }

  deleteRemoteLower (id: number): void {
    this.#d.prepare('DELETE FROM remote_lowers WHERE snapshot_id = ?').run(id)
  }

  /** All snapshots, ordered by id (parents before children). */
  all (): SnapshotRecord[] {
    return (this.#d.prepare(`${SELECT} ORDER BY s.id`).all() as Row[]).map(toRecord)
  }

  ids (): Set<number> {
    return new Set((this.#d.prepare('SELECT id FROM snapshots').all() as Array<{ id: number }>).map((r) => r.id))
  }

  /** Closes the database (checkpointing the WAL). Safe to call twice. */
  close (): void {
    this.#closed = true
    const db = this.#db
    this.#db = undefined
    db?.close()
  }
}
