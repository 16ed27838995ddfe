/**
 * Entry-by-entry comparison of two filesystem trees (the source image's merged layers and what a
 * converted image's bootstrap and blobs hold): type, mode, uid, gid, size, rdev, link target,
 * xattrs, mtime, hard-link groups and content sha256. Used by `naiad check`.
 */
import type { Inode } from '../lib/format/types.ts'
import { walk } from './tree.ts'

export interface TreeView {
  root: Inode
  /** sha256 hex of a regular file's content. */
  contentHash: (inode: Inode) => string | undefined
}

export interface Difference {
  path: string
  kind: 'missing' | 'extra' | 'changed'
  field?: string
  source?: string
  target?: string
}

function show (p: Buffer[]): string {
  return '/' + p.map(c => {
    const s = c.toString('utf8')
    return Buffer.from(s, 'utf8').equals(c) ? s : `\\x{${c.toString('hex')}}`
  }).join('/')
}

interface Flat {
  byPath: Map<string, { path: Buffer[], inode: Inode }>
  /** path key → key of the first path (in sorted order) of the same inode */
  linkGroup: Map<string, string>
}

function flatten (root: Inode): Flat {
  const byPath = new Map<string, { path: Buffer[], inode: Inode }>()
  const first = new Map<Inode, string>()
  const linkGroup = new Map<string, string>()
  for (const [path, inode] of walk(root)) {
    const key = show(path)
    byPath.set(key, { path, inode })
    if (inode.type !== 'dir') {
      if (!first.has(inode)) first.set(inode, key)
      linkGroup.set(key, first.get(inode)!)
    }
  }
  return { byPath, linkGroup }
}

function xattrString (i: Inode): string {
  return [...i.xattrs].sort((a, b) => Buffer.compare(a.name, b.name)).map(x => `${x.name.toString('utf8')}=0x${x.value.toString('hex')}`).join(',')
}

function oct (n: number): string { return '0' + n.toString(8) }

export function compareTrees (source: TreeView, target: TreeView): Difference[] {
  const a = flatten(source.root)
  const b = flatten(target.root)
  const out: Difference[] = []
  const keys = [...new Set([...a.byPath.keys(), ...b.byPath.keys()])].sort()
  for (const key of keys) {
    const x = a.byPath.get(key)
    const y = b.byPath.get(key)
    if (y === undefined) { out.push({ path: key, kind: 'missing' }); continue }
    if (x === undefined) { out.push({ path: key, kind: 'extra' }); continue }
    const s = x.inode
    const t = y.inode
    const diff = (field: string, sv: string, tv: string): void => {
      if (sv !== tv) out.push({ path: key, kind: 'changed', field, source: sv, target: tv })
    }
    diff('type', s.type, t.type)
    if (s.type !== t.type) continue
    diff('mode', oct(s.perm), oct(t.perm))
    diff('uid', String(s.uid), String(t.uid))
    diff('gid', String(s.gid), String(t.gid))
    diff('mtime', `${s.mtime}.${String(s.mtimeNsec).padStart(9, '0')}`, `${t.mtime}.${String(t.mtimeNsec).padStart(9, '0')}`)
    diff('xattrs', xattrString(s), xattrString(t))
    if (s.type === 'file') {
      diff('size', String(s.size), String(t.size))
      diff('sha256', source.contentHash(s) ?? '?', target.contentHash(t) ?? '?')
    }
    if (s.type === 'symlink') diff('link target', (s.symlink ?? Buffer.alloc(0)).toString('latin1'), (t.symlink ?? Buffer.alloc(0)).toString('latin1'))
    if (s.type === 'char' || s.type === 'block') diff('rdev', String(s.rdev), String(t.rdev))
    if (s.type !== 'dir') diff('hard-link group', a.linkGroup.get(key) ?? key, b.linkGroup.get(key) ?? key)
  }
  return out
}

export function formatDifferences (diffs: Difference[], limit = 200): string {
  const lines = diffs.slice(0, limit).map(d => {
    if (d.kind === 'missing') return `- ${d.path}  (in the source, missing from the converted image)`
    if (d.kind === 'extra') return `+ ${d.path}  (only in the converted image)`
    return `~ ${d.path}  ${d.field}: source ${d.source} != converted ${d.target}`
  })
  if (diffs.length > limit) lines.push(`… and ${diffs.length - limit} more`)
  return lines.join('\n')
}
