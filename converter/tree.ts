/**
 * Applies OCI layer changesets onto one merged filesystem tree, as containerd's applier does on
 * disk: whiteouts (`.wh.NAME`) delete from lower layers, opaque markers (`.wh..wh..opq`) hide a
 * lower directory's contents, directories merge, anything else replaces. Paths are checked: no
 * absolute paths, no `..`; hard links must name an existing non-directory inside the image. Parent
 * components that are symlinks are resolved inside the image root (never outside it), as
 * containerd's root-scoped path resolution does.
 */
import { NaiadError } from '../lib/errors/index.ts'
import { newInode, makedev, type DirEntry, type Inode, type InodeType } from '../lib/format/types.ts'
import type { TarHeader } from '../lib/tar/reader.ts'

const WH_PREFIX = Buffer.from('.wh.')
const WH_OPAQUE = Buffer.from('.wh..wh..opq')
const MAX_SYMLINK_HOPS = 40

export function nameKey (name: Buffer): string {
  return name.toString('latin1')
}

export function showPath (components: Buffer[]): string {
  return '/' + components.map(c => c.toString('utf8')).join('/')
}

/** Splits and validates a tar path into components (raw bytes). The root is []. */
export function splitPath (raw: Buffer, what = 'path'): Buffer[] {
  if (raw.length > 0 && raw[0] === 0x2f) {
    throw new NaiadError('NAIAD_TAR_UNSAFE_PATH', `${what} ${JSON.stringify(raw.toString('utf8'))} is absolute`)
  }
  const out: Buffer[] = []
  let start = 0
  for (let i = 0; i <= raw.length; i++) {
    if (i === raw.length || raw[i] === 0x2f) {
      const c = raw.subarray(start, i)
      start = i + 1
      if (c.length === 0 || (c.length === 1 && c[0] === 0x2e)) continue
      if (c.length === 2 && c[0] === 0x2e && c[1] === 0x2e) {
        throw new NaiadError('NAIAD_TAR_UNSAFE_PATH', `${what} ${JSON.stringify(raw.toString('utf8'))} contains ".."`)
      }
      if (c.length > 255) throw new NaiadError('NAIAD_TAR_UNSAFE_PATH', `${what} has a component longer than 255 bytes`)
      out.push(Buffer.from(c))
    }
  }
  return out
}

/** The merged filesystem of an image, built layer by layer. */
export class MergedTree {
  readonly root: Inode
  /** Directory inode → (name key → entry), kept beside `entries` for O(1) lookups. */
  private readonly index = new Map<Inode, Map<string, DirEntry>>()
  /** Entries added by the layer being applied (opaque markers must not hide them). */
  private layerAdded = new Set<DirEntry>()
  /** Parent of each directory, for resolving symlinks with "..". */
  private readonly parents = new Map<Inode, Inode>()

  constructor () {
    this.root = newInode('dir', { perm: 0o755 })
    this.index.set(this.root, new Map())
  }

  /** Call at the start of each layer. */
  beginLayer (): void {
    this.layerAdded = new Set()
  }

  private dirIndex (dir: Inode): Map<string, DirEntry> {
    let m = this.index.get(dir)
    if (m === undefined) {
      m = new Map()
      for (const e of dir.entries ?? []) m.set(nameKey(e.name), e)
      this.index.set(dir, m)
    }
    return m
  }

  private lookupIn (dir: Inode, name: Buffer): DirEntry | undefined {
    return this.dirIndex(dir).get(nameKey(name))
  }

  private removeFrom (dir: Inode, name: Buffer): void {
    const idx = this.dirIndex(dir)
    const key = nameKey(name)
    const e = idx.get(key)
    if (e === undefined) return
    idx.delete(key)
    dir.entries = (dir.entries ?? []).filter(x => x !== e)
  }

  private addTo (dir: Inode, name: Buffer, inode: Inode): DirEntry {
    const e: DirEntry = { name, inode }
    this.removeFrom(dir, name)
    ;(dir.entries ??= []).push(e)
    this.dirIndex(dir).set(nameKey(name), e)
    if (inode.type === 'dir') this.parents.set(inode, dir)
    this.layerAdded.add(e)
    return e
  }

  /**
   * Resolves the directory that holds the last component, following symlinked parents inside the
   * root. Missing parents are created (tars may omit them), with 0755 root-owned defaults.
   */
  private resolveParent (components: Buffer[], create: boolean): Inode | undefined {
    let dir = this.root
    let hops = 0
    const stack = components.slice(0, -1)
    for (let i = 0; i < stack.length; i++) {
      const c = stack[i]!
      const e = this.lookupIn(dir, c)
      if (e === undefined) {
        if (!create) return undefined
        const d = newInode('dir', { perm: 0o755 })
        this.addTo(dir, c, d)
        dir = d
        continue
      }
      if (e.inode.type === 'dir') { dir = e.inode; continue }
      if (e.inode.type === 'symlink' && e.inode.symlink !== undefined) {
        if (++hops > MAX_SYMLINK_HOPS) throw new NaiadError('NAIAD_TAR_UNSAFE_PATH', `too many symlinks resolving ${showPath(components)}`)
        const target = e.inode.symlink
        const absolute = target.length > 0 && target[0] === 0x2f
        // Resolve the symlink's target relative to `dir` (or the root), clamping ".." at the root.
        let base: Inode = absolute ? this.root : dir
        const rest: Buffer[] = []
        for (const part of target.toString('latin1').split('/')) {
          if (part === '' || part === '.') continue
          if (part === '..') {
            if (rest.length > 0) rest.pop()
            else base = this.parents.get(base) ?? this.root
            continue
          }
          rest.push(Buffer.from(part, 'latin1'))
        }
        stack.splice(i + 1, 0, ...rest)
        dir = base
        continue
      }
      if (!create) return undefined
      throw new NaiadError('NAIAD_TAR_UNSAFE_PATH', `${showPath(components)}: parent ${c.toString('utf8')} is not a directory`)
    }
    return dir
  }

  /** Looks up a path in the merged tree (symlinked parents followed; the last component not). */
  lookup (components: Buffer[]): Inode | undefined {
    if (components.length === 0) return this.root
    const dir = this.resolveParent(components, false)
    if (dir === undefined) return undefined
    return this.lookupIn(dir, components[components.length - 1]!)?.inode
  }

  /**
   * Applies one tar entry. `fileInode` is the inode to use for regular files (the caller filled
   * its content); for other types it is created here.
   */
  apply (h: TarHeader, fileInode?: Inode): void {
    const comps = splitPath(h.name)
    const last = comps[comps.length - 1]
    // whiteouts
    if (last !== undefined && last.subarray(0, WH_PREFIX.length).equals(WH_PREFIX)) {
      const dir = this.resolveParent(comps, true)!
      if (last.equals(WH_OPAQUE)) {
        for (const e of [...(dir.entries ?? [])]) {
          if (!this.layerAdded.has(e)) this.removeFrom(dir, e.name)
        }
      } else {
        const victim = last.subarray(WH_PREFIX.length)
        if (victim.length === 0) throw new NaiadError('NAIAD_TAR_UNSAFE_PATH', `whiteout ${showPath(comps)} names nothing`)
        const e = this.lookupIn(dir, victim)
        if (e !== undefined && !this.layerAdded.has(e)) this.removeFrom(dir, victim)
      }
      return
    }
    if (comps.length === 0) {
      // the root directory itself: take its attributes
      if (h.type !== 'dir') throw new NaiadError('NAIAD_TAR_UNSAFE_PATH', 'the root entry is not a directory')
      setAttrs(this.root, h)
      return
    }
    const dir = this.resolveParent(comps, true)!
    const name = last!
    if (h.type === 'link') {
      const target = splitPath(h.linkname, 'hard link target')
      const t = this.lookup(target)
      if (t === undefined) throw new NaiadError('NAIAD_TAR_UNSAFE_LINK', `hard link ${showPath(comps)} → ${showPath(target)}: target does not exist`)
      if (t.type === 'dir') throw new NaiadError('NAIAD_TAR_UNSAFE_LINK', `hard link ${showPath(comps)} → ${showPath(target)}: target is a directory`)
      if (this.lookupIn(dir, name)?.inode === t) return
      this.addTo(dir, name, t)
      return
    }
    const existing = this.lookupIn(dir, name)
    if (h.type === 'dir' && existing !== undefined && existing.inode.type === 'dir') {
      setAttrs(existing.inode, h)
      this.layerAdded.add(existing)
      return
    }
    let inode: Inode
    if (h.type === 'file') {
      if (fileInode === undefined) throw new Error('regular file without inode')
      inode = fileInode
      setAttrs(inode, h)
      inode.size = h.size
    } else {
      const type: InodeType = h.type
      inode = newInode(type)
      setAttrs(inode, h)
      if (type === 'symlink') { inode.symlink = h.linkname; inode.size = h.linkname.length }
      if (type === 'char' || type === 'block') inode.rdev = makedev(h.devmajor, h.devminor)
    }
    this.addTo(dir, name, inode)
  }
}

function setAttrs (inode: Inode, h: TarHeader): void {
  inode.perm = h.mode & 0o7777
  inode.uid = h.uid
  inode.gid = h.gid
  inode.mtime = h.mtime
  inode.mtimeNsec = h.mtimeNsec
  inode.xattrs = h.xattrs.map(x => ({ name: x.name, value: x.value }))
}

/** Depth-first walk: (path components, inode, parent). Directories before their children. */
export function * walk (root: Inode, prefix: Buffer[] = []): Generator<[Buffer[], Inode]> {
  yield [prefix, root]
  if (root.type !== 'dir') return
  const entries = [...(root.entries ?? [])].sort((a, b) => Buffer.compare(a.name, b.name))
  for (const e of entries) {
    const p = [...prefix, e.name]
    if (e.inode.type === 'dir') yield * walk(e.inode, p)
    else yield [p, e.inode]
  }
}
