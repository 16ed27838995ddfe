/**
 * containerd's filter syntax (filters/filter.go) for snapshots: a filter is a comma-separated AND
 * of selectors `fieldpath[op value]` with op `==`, `!=` or `~=` (regular expression); a field path
 * without operator tests presence. Field paths: `name`, `parent`, `kind`, `labels.<key>` where a
 * key with dots or slashes is double-quoted (`labels."containerd.io/snapshot.ref"`). Values may be
 * quoted. Several filters are ORed.
 */
import { NaiadError } from '../lib/errors/index.ts'
import type { SnapshotInfo } from './snapshotter.ts'

interface Selector {
  readonly path: readonly string[]
  readonly op: '==' | '!=' | '~=' | 'present'
  readonly value: string
  readonly re?: RegExp
}

export type Predicate = (info: SnapshotInfo) => boolean

function bad (filter: string, why: string): NaiadError {
  return new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', `filter ${JSON.stringify(filter)}: ${why}`)
}

class Scanner {
  pos = 0
  constructor (readonly s: string) {}
  eof (): boolean { return this.pos >= this.s.length }
  peek (): string { return this.s[this.pos] ?? '' }
  skipSpace (): void { while (this.peek() === ' ' || this.peek() === '\t') this.pos++ }
  quoted (): string {
    const q = this.peek()
    this.pos++
    let out = ''
    while (!this.eof() && this.peek() !== q) {
      if (this.peek() === '\\' && this.pos + 1 < this.s.length) {
        this.pos++
        const c = this.peek()
        out += c === 'n' ? '\n' : c === 't' ? '\t' : c
      } else {
        out += this.peek()
      }
      this.pos++
    }
    if (this.eof()) throw bad(this.s, 'unterminated quote')
    this.pos++
    return out
  }
  /** A field name: letters, digits, `_`, `-`, `/`, or a quoted string. */
  field (): string {
    this.skipSpace()
    const c = this.peek()
    if (c === '"' || c === '`') return this.quoted()
    const start = this.pos
    while (!this.eof() && /[A-Za-z0-9_\-/]/.test(this.peek())) this.pos++
    if (start === this.pos) throw bad(this.s, `expected a field name at ${this.pos}`)
    return this.s.slice(start, this.pos)
  }
  value (): string {
    this.skipSpace()
    const c = this.peek()
    if (c === '"' || c === '`' || c === '/') return this.quoted()
    const start = this.pos
    while (!this.eof() && this.peek() !== ',') this.pos++
    return this.s.slice(start, this.pos).trim()
  }
}

function parseOne (filter: string): Selector[] {
  const sc = new Scanner(filter)
  const out: Selector[] = []
  for (;;) {
    const path = [sc.field()]
    while (sc.peek() === '.') {
      sc.pos++
      path.push(sc.field())
    }
    sc.skipSpace()
    const two = sc.s.slice(sc.pos, sc.pos + 2)
    if (two === '==' || two === '!=' || two === '~=') {
      sc.pos += 2
      const value = sc.value()
      let re: RegExp | undefined
      if (two === '~=') {
        try { re = new RegExp(value) } catch (err) { throw new NaiadError('NAIAD_SNAP_INVALID_ARGUMENT', `filter ${JSON.stringify(filter)}: bad regular expression`, { cause: err }) }
      }
      out.push({ path, op: two, value, ...(re !== undefined ? { re } : {}) })
    } else {
      out.push({ path, op: 'present', value: '' })
    }
    sc.skipSpace()
    if (sc.eof()) return out
    if (sc.peek() !== ',') throw bad(filter, `unexpected ${JSON.stringify(sc.peek())} at ${sc.pos}`)
    sc.pos++
  }
}

function field (info: SnapshotInfo, path: readonly string[]): string | undefined {
  const [head, ...rest] = path
  switch (head) {
    case 'name': return rest.length === 0 ? info.name : undefined
    case 'parent': return rest.length === 0 ? info.parent : undefined
    case 'kind': return rest.length === 0 ? info.kind : undefined
    case 'labels': {
      const key = rest.join('.')
      return Object.hasOwn(info.labels, key) ? info.labels[key] : undefined
    }
    default: return undefined
  }
}

function matches (sel: Selector, info: SnapshotInfo): boolean {
  const v = field(info, sel.path)
  switch (sel.op) {
    case 'present': return v !== undefined
    case '==': return v === sel.value
    case '!=': return v !== sel.value
    case '~=': return v !== undefined && sel.re !== undefined && sel.re.test(v)
  }
}

/** Parses the filters into one predicate (OR of ANDs); no filters match everything. */
export function parseFilters (filters: readonly string[] | undefined): Predicate {
  const parsed = (filters ?? []).filter((f) => f.trim() !== '').map(parseOne)
  if (parsed.length === 0) return () => true
  return (info) => parsed.some((sels) => sels.every((s) => matches(s, info)))
}
