/**
 * Kernel passthrough bookkeeping: per inode, while the kernel holds it (from the first OPEN after
 * its LOOKUP until its FORGET), the mode every open of it gets: passthrough ('p', with the
 * backing id registered for it) or through this daemon ('c'). The kernel fails (EIO) an open whose
 * mode differs from that of the inode's other open files, and no open file outlives its inode's
 * FORGET, so one mode per inode lifetime is always safe.
 *
 * With a log file, every decision and forget is appended (one short synchronous write per inode
 * lifetime), so that a daemon adopting the connection after a crash answers the same modes, and
 * with the same backing ids: backing ids belong to the connection (they outlive the daemon that
 * registered them), and the kernel refuses (EBUSY, the open fails) a second backing file for an
 * inode that has files open in passthrough.
 * The log is rewritten from the table when it grows to four times the table's size.
 */
import { appendFileSync, closeSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs'

export type OpenMode = 'p' | 'c'

export class ModeTable {
  private readonly modes = new Map<number, OpenMode>()
  private readonly ids = new Map<number, number>()
  private lines = 0
  private fd = -1

  private constructor (readonly path: string | undefined) {}

  /** A new, empty table (its log, if any, is started afresh). */
  static create (path: string | undefined): ModeTable {
    const t = new ModeTable(path)
    if (path !== undefined) t.fd = openSync(path, 'w', 0o600)
    return t
  }

  /**
   * The table a dead daemon left in its log (a successor adopting the connection), appended to
   * from now on. An unreadable log gives an empty table.
   */
  static load (path: string | undefined): ModeTable {
    const t = new ModeTable(path)
    if (path === undefined) return t
    let text = ''
    try {
      text = readFileSync(path, 'utf8')
    } catch {}
    // (anything after the last newline is a torn append: ignored)
    for (const line of text.split('\n').slice(0, -1)) {
      const m = /^([pcf]) (\d+)(?: (\d+))?$/.exec(line)
      if (m === null) continue
      const nodeid = Number(m[2])
      t.ids.delete(nodeid)
      if (m[1] === 'f') {
        t.modes.delete(nodeid)
        continue
      }
      t.modes.set(nodeid, m[1] as OpenMode)
      if (m[1] === 'p' && m[3] !== undefined) t.ids.set(nodeid, Number(m[3]))
    }
    t.rewrite()
    return t
  }

  mode (nodeid: number): OpenMode | undefined {
    return this.modes.get(nodeid)
  }

  /** The backing id registered for the inode (by this process or a predecessor), if any. */
  backingId (nodeid: number): number | undefined {
    return this.ids.get(nodeid)
  }

  record (nodeid: number, mode: OpenMode, backingId?: number): void {
    const had = this.modes.get(nodeid)
    const hadId = this.ids.get(nodeid)
    this.modes.set(nodeid, mode)
    if (backingId !== undefined) this.ids.set(nodeid, backingId)
    if (had !== mode || hadId !== backingId) this.append(this.line(nodeid))
  }

  /** The kernel dropped the inode: its backing id (to close), if it had one. */
  forget (nodeid: number): number | undefined {
    if (!this.modes.delete(nodeid)) return undefined
    const id = this.ids.get(nodeid)
    this.ids.delete(nodeid)
    this.append(`f ${nodeid}\n`)
    return id
  }

  private line (nodeid: number): string {
    const id = this.ids.get(nodeid)
    return `${this.modes.get(nodeid) ?? 'f'} ${nodeid}${id !== undefined ? ` ${id}` : ''}\n`
  }

  /** Every backing id known (to close at the end). */
  allBackingIds (): number[] {
    return [...this.ids.values()]
  }

  get size (): number {
    return this.modes.size
  }

  close (): void {
    if (this.fd >= 0) {
      try { closeSync(this.fd) } catch {}
      this.fd = -1
    }
  }

  private append (line: string): void {
    if (this.fd < 0) return
    try {
      appendFileSync(this.fd, line)
      this.lines++
      if (this.lines > 4 * this.modes.size + 1024) this.rewrite()
    } catch {
      // a full disk: the table goes on in memory; a successor may then answer a different
      // mode for an inode this one decided and its open would fail: stop logging loudly
      this.close()
    }
  }

  private rewrite (): void {
    if (this.path === undefined) return
    this.close()
    try {
      const tmp = `${this.path}.tmp`
      writeFileSync(tmp, [...this.modes.keys()].map(n => this.line(n)).join(''), { mode: 0o600 })
      renameSync(tmp, this.path)
      this.fd = openSync(this.path, 'a')
      this.lines = this.modes.size
    } catch {
      this.fd = -1
    }
  }
}
