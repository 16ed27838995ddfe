/**
 * The Linux kernel's EROFS driver mounts what writeBootstrap produces: the bootstrap and each blob's
 * uncompressed device on loop devices, `mount -t erofs -o ro,device=…`. Needs root, loop devices
 * and an EROFS-capable kernel; skipped otherwise. Loops and mounts are always released.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Bootstrap, writeBootstrap } from '../../../lib/format/bootstrap.ts'
import { TYPE_BITS, type Inode } from '../../../lib/format/types.ts'
import { everythingTree, fileContent, walk, type EverythingTree } from '../../helpers/format-trees.ts'

const canMount = process.getuid?.() === 0 && existsSync('/dev/loop-control') &&
  readFileSync('/proc/filesystems', 'utf8').includes('erofs') && spawnSync('losetup', ['--version']).status === 0

describe.skipIf(!canMount)('the kernel mounts our bootstraps', () => {
  let tmp: string
  let mnt: string
  let tree: EverythingTree
  let bootstrap: Bootstrap
  const loops: string[] = []
  let mounted = false

  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), 'naiad-kmount-'))
    mnt = join(tmp, 'mnt')
    mkdirSync(mnt)
    tree = everythingTree()
    const buf = writeBootstrap(tree.root, tree.blobs.map(b => b.info), { chunkSize: tree.chunkSize, compressor: 'zstd', digester: 'blake3' })
    bootstrap = Bootstrap.parse(buf)
    const boot = join(tmp, 'image.boot')
    writeFileSync(boot, buf)
    const attach = (file: string): string => {
      const dev = execFileSync('losetup', ['-f', '--show', '-r', file], { encoding: 'utf8' }).trim()
      loops.push(dev)
      return dev
    }
    const bootLoop = attach(boot)
    const devLoops = tree.blobs.map((b, i) => {
      const p = join(tmp, `blob${i}.dev`)
      b.writeDevice(p)
      return attach(p)
    })
    execFileSync('mount', ['-t', 'erofs', '-o', `ro,${devLoops.map(d => `device=${d}`).join(',')}`, bootLoop, mnt])
    mounted = true
  })

  afterAll(() => {
    if (mounted) spawnSync('umount', [mnt])
    for (const l of loops.reverse()) spawnSync('losetup', ['-d', l])
    if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true })
  })

  const at = (path: Buffer): Buffer => Buffer.concat([Buffer.from(mnt), path.length > 1 ? path : Buffer.alloc(0)])

  function nidOf (path: Buffer): number {
    let nid = bootstrap.rootNid
    for (const part of path.toString('latin1').split('/').filter(p => p !== '')) nid = bootstrap.lookup(nid, Buffer.from(part, 'latin1'))!.nid
    return nid
  }

  it('shows every entry with its mode, owner, mtime (compact and extended inodes), size, links and nid', () => {
    let compact = 0
    let extended = 0
    for (const { path, inode } of walk(tree.root)) {
      const st = lstatSync(at(path), { bigint: true })
      const where = path.toString()
      const nid = nidOf(path)
      const a = bootstrap.inode(nid)
      if (a.compact) compact++
      else extended++
      expect(Number(st.mode), where).toBe(TYPE_BITS[inode.type] | inode.perm)
      expect(Number(st.uid), where).toBe(inode.uid)
      expect(Number(st.gid), where).toBe(inode.gid)
      expect(st.mtimeNs, where).toBe(inode.mtime * 1_000_000_000n + BigInt(inode.mtimeNsec))
      expect(Number(st.ino), where).toBe(nid)
      expect(Number(st.nlink), where).toBe(a.nlink)
      if (inode.type === 'file') expect(Number(st.size), where).toBe(inode.size)
      if (inode.type === 'symlink') expect(Number(st.size), where).toBe(inode.symlink!.length)
      if (inode.type === 'char' || inode.type === 'block') expect(Number(st.rdev), where).toBe(inode.rdev)
    }
    expect(compact).toBeGreaterThan(100)
    expect(extended).toBeGreaterThan(3)
  })

  it('reads file contents (sha256-equal), symlink targets and directory listings', () => {
    for (const { path, inode } of walk(tree.root)) {
      const p = at(path)
      if (inode.type === 'file') expect(readFileSync(p).equals(fileContent(inode, tree.blobs)), path.toString()).toBe(true)
      if (inode.type === 'symlink') expect(readlinkSync(p, { encoding: 'buffer' }).equals(inode.symlink!), path.toString()).toBe(true)
      if (inode.type === 'dir') {
        const names = readdirSync(p, { encoding: 'buffer' }).map(n => n.toString('hex')).sort()
        expect(names, path.toString()).toEqual((inode.entries ?? []).map(e => e.name.toString('hex')).sort())
      }
    }
  })

  it('shares one inode number between hard links', () => {
    const ino = (p: string): bigint => lstatSync(join(mnt, p), { bigint: true }).ino
    expect(ino(tree.paths.hardlinkB)).toBe(ino(tree.paths.hardlinkA))
    expect(ino(tree.paths.hardlinkC)).toBe(ino(tree.paths.hardlinkA))
    expect(ino('link-b')).toBe(ino('link-a'))
    expect(ino('fifo-b')).toBe(ino('fifo-a'))
    expect(lstatSync(join(mnt, tree.paths.hardlinkA)).nlink).toBe(3)
  })

  it('lists xattrs (getfattr), including security.capability and POSIX ACLs', () => {
    const withXattrs = walk(tree.root).filter(e => e.inode.xattrs.length > 0)
    expect(withXattrs.length).toBeGreaterThanOrEqual(4)
    for (const { path, inode } of withXattrs) {
      const r = spawnSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', at(path).toString()], { encoding: 'utf8' })
      expect(r.status, r.stderr).toBe(0)
      const got = r.stdout.split('\n').filter(l => l.includes('=')).map(l => {
        const [k, v] = l.split('=') as [string, string]
        return `${k}=${v === '0x' ? '' : v.slice(2)}`
      }).sort()
      const want = [...inode.xattrs].map(x => `${x.name.toString()}=${x.value.toString('hex')}`).sort()
      expect(got, path.toString()).toEqual(want)
    }
  })

  it('finds names that sort before "." and ".." and in every block of a large directory', () => {
    // lstat looks each name up (the kernel binary-searches the sorted blocks); it does not follow symlinks
    const exists = (p: string | Buffer): boolean => lstatSync(p, { throwIfNoEntry: false }) !== undefined
    for (const name of [' space', '!bang', '-dash', '#hash/inner', 'é-utf8']) expect(exists(join(mnt, 'names', name)), name).toBe(true)
    const big = tree.root.entries!.find(e => e.name.toString() === 'big')!.inode as Inode
    for (const e of big.entries!) expect(exists(Buffer.concat([Buffer.from(join(mnt, 'big') + '/'), e.name])), e.name.toString()).toBe(true)
    expect(exists(join(mnt, 'big', 'entry-0000'))).toBe(false)
    expect(readFileSync(join(mnt, tree.paths.deepLeaf)).length).toBe(13)
  })
})
