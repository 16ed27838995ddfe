import { describe, expect, it } from 'vitest'
import { MergedTree, splitPath, walk } from '../../../converter/tree.ts'
import { newInode } from '../../../lib/format/types.ts'
import type { TarHeader } from '../../../lib/tar/reader.ts'

function h (name: string, type: TarHeader['type'] = 'file', extra: Partial<TarHeader> = {}): TarHeader {
  return { name: Buffer.from(name), type, mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0n, mtimeNsec: 0, linkname: Buffer.alloc(0), devmajor: 0, devminor: 0, xattrs: [], ...extra }
}

function paths (t: MergedTree): string[] {
  return [...walk(t.root)].map(([p]) => '/' + p.map(c => c.toString()).join('/'))
}

function apply (t: MergedTree, hh: TarHeader): void {
  t.apply(hh, hh.type === 'file' ? newInode('file') : undefined)
}

describe('merged tree', () => {
  it('applies whiteouts and opaque directories like overlayfs', () => {
    const t = new MergedTree()
    t.beginLayer()
    for (const x of [h('a/', 'dir'), h('a/1'), h('a/2'), h('b/', 'dir'), h('b/x'), h('c')]) apply(t, x)
    t.beginLayer()
    apply(t, h('a/.wh..wh..opq'))
    apply(t, h('a/3'))
    apply(t, h('.wh.c'))
    apply(t, h('b/.wh.x'))
    apply(t, h('b/y'))
    expect(paths(t)).toEqual(['/', '/a', '/a/3', '/b', '/b/y'])
  })

  it('opaque marker does not hide entries the same layer added before it', () => {
    const t = new MergedTree()
    t.beginLayer(); apply(t, h('d/old'))
    t.beginLayer(); apply(t, h('d/new')); apply(t, h('d/.wh..wh..opq'))
    expect(paths(t)).toEqual(['/', '/d', '/d/new'])
  })

  it('hard links share the inode, also across layers', () => {
    const t = new MergedTree()
    t.beginLayer(); apply(t, h('f'))
    t.beginLayer(); apply(t, h('g', 'link', { linkname: Buffer.from('f') }))
    expect(t.lookup(splitPath(Buffer.from('f')))).toBe(t.lookup(splitPath(Buffer.from('g'))))
  })

  it('resolves symlinked parents inside the root, never outside', () => {
    const t = new MergedTree()
    t.beginLayer()
    apply(t, h('etc/', 'dir'))
    apply(t, h('evil', 'symlink', { linkname: Buffer.from('/../../etc') }))
    apply(t, h('evil/passwd'))
    expect(paths(t)).toContain('/etc/passwd')
  })

  it('rejects traversal, absolute paths and dangling hard links', () => {
    const t = new MergedTree()
    t.beginLayer()
    expect(() => apply(t, h('../x'))).toThrow(expect.objectContaining({ code: 'NAIAD_TAR_UNSAFE_PATH' }))
    expect(() => apply(t, h('a/../../x'))).toThrow(expect.objectContaining({ code: 'NAIAD_TAR_UNSAFE_PATH' }))
    expect(() => apply(t, h('/etc/x'))).toThrow(expect.objectContaining({ code: 'NAIAD_TAR_UNSAFE_PATH' }))
    expect(() => apply(t, h('l', 'link', { linkname: Buffer.from('../../etc/shadow') }))).toThrow(expect.objectContaining({ code: 'NAIAD_TAR_UNSAFE_PATH' }))
    expect(() => apply(t, h('l', 'link', { linkname: Buffer.from('nothing') }))).toThrow(expect.objectContaining({ code: 'NAIAD_TAR_UNSAFE_LINK' }))
  })

  it('a directory entry over an existing directory keeps its children and takes new attributes', () => {
    const t = new MergedTree()
    t.beginLayer(); apply(t, h('d/f'))
    t.beginLayer(); apply(t, h('d/', 'dir', { mode: 0o700, uid: 5 }))
    const d = t.lookup([Buffer.from('d')])!
    expect(d.perm).toBe(0o700)
    expect(d.uid).toBe(5)
    expect(paths(t)).toEqual(['/', '/d', '/d/f'])
  })
})
