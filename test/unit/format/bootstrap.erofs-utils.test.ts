/**
 * An independent checker for what writeBootstrap produces: erofs-utils (fsck.erofs, dump.erofs)
 * reads our bootstrap as an EROFS image with one extra device per blob, each device being the
 * blob's uncompressed address space.
 */
import { spawnSync } from 'node:child_process'
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Bootstrap, writeBootstrap } from '../../../lib/format/bootstrap.ts'
import { TYPE_BITS } from '../../../lib/format/types.ts'
import { everythingTree, fileContent, walk, type EverythingTree } from '../../helpers/format-trees.ts'

const hasErofsUtils = spawnSync('fsck.erofs', ['-V']).status === 0 && spawnSync('dump.erofs', ['-V']).status === 0

function run (cmd: string, args: string[]): { status: number | null, out: string } {
  const r = spawnSync(cmd, args, { encoding: 'latin1', maxBuffer: 64 << 20 })
  return { status: r.status, out: `${r.stdout}${r.stderr}` }
}

interface Image { dir: string, boot: string, devices: string[], tree: EverythingTree, bootstrap: Bootstrap }

function writeImage (dir: string, tree: EverythingTree): Image {
  const buf = writeBootstrap(tree.root, tree.blobs.map(b => b.info), { chunkSize: tree.chunkSize, compressor: 'zstd', digester: 'blake3' })
  const boot = join(dir, 'image.boot')
  writeFileSync(boot, buf)
  const devices = tree.blobs.map((b, i) => {
    const p = join(dir, `blob${i}.dev`)
    b.writeDevice(p)
    return p
  })
  return { dir, boot, devices, tree, bootstrap: Bootstrap.parse(buf) }
}

describe.skipIf(!hasErofsUtils)('erofs-utils reads our bootstraps', () => {
  let tmp: string
  let full: Image
  let extractable: Image

  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), 'naiad-erofs-'))
    full = writeImage(mkdtempSync(join(tmp, 'full-')), everythingTree())
    extractable = writeImage(mkdtempSync(join(tmp, 'ex-')), everythingTree({ highChunkIndex: false }))
  })
  afterAll(() => rmSync(tmp, { recursive: true, force: true }))

  const devArgs = (img: Image): string[] => img.devices.map(d => `--device=${d}`)

  it('fsck.erofs finds no errors in the metadata (one --device per blob)', () => {
    for (const img of [full, extractable]) {
      const r = run('fsck.erofs', [...devArgs(img), img.boot])
      expect(r.out).not.toMatch(/<E>|error/i)
      expect(r.status).toBe(0)
    }
    // and it insists on the device table: without devices it refuses the image
    expect(run('fsck.erofs', [full.boot]).status).not.toBe(0)
  })

  it('dump.erofs shows the superblock and lists our tree with our nids', () => {
    const s = run('dump.erofs', [...devArgs(full), '-s', full.boot])
    expect(s.status).toBe(0)
    expect(s.out).toMatch(/root nid:\s+128/)
    expect(s.out).toMatch(new RegExp(`inode count:\\s+${full.bootstrap.inodeCount}\\b`))
    expect(s.out).toMatch(/chunked_file device_table/)
    for (const path of ['/', '/big', '/names', '/modes', '/dev']) {
      const r = run('dump.erofs', [...devArgs(full), `--path=${path}`, '--ls', full.boot])
      expect(r.status, r.out).toBe(0)
      const listed = new Map<string, number>()
      for (const line of r.out.split('\n')) {
        const m = /^\s*(\d+)\s+(\d) {2}(.*)$/.exec(line)
        if (m !== null) listed.set(m[3]!, Number(m[1]))
      }
      let nid = full.bootstrap.rootNid
      for (const part of path.split('/').filter(p => p !== '')) nid = full.bootstrap.lookup(nid, Buffer.from(part))!.nid
      const ours = full.bootstrap.readdir(nid)
      expect(listed.size).toBe(ours.length)
      for (const e of ours) expect(listed.get(e.name.toString('latin1')), e.name.toString()).toBe(e.nid)
    }
    const h = run('dump.erofs', [...devArgs(full), '--path=/hard-a', full.boot])
    expect(h.out).toMatch(/Links: 3/)
    expect(h.out).toMatch(new RegExp(`NID: ${full.bootstrap.lookup(full.bootstrap.rootNid, Buffer.from('hard-b'))!.nid}\\b`))
  })

  it('fsck.erofs --extract reproduces every file byte for byte, with modes, owners, times and devices', () => {
    const out = join(extractable.dir, 'extracted')
    const r = run('fsck.erofs', [...devArgs(extractable), `--extract=${out}`, extractable.boot])
    expect(r.out).not.toMatch(/<E>/)
    expect(r.status).toBe(0)
    let files = 0
    for (const { path, inode } of walk(extractable.tree.root)) {
      const p = Buffer.concat([Buffer.from(out), path])
      const st = lstatSync(p, { bigint: true })
      const where = path.toString()
      // fsck.erofs 1.5 chowns after chmod, which drops setuid/setgid of regular files (the kernel test checks them)
      const mask = inode.type === 'file' ? ~0o6000 : ~0
      expect(Number(st.mode) & mask, where).toBe((TYPE_BITS[inode.type] | inode.perm) & mask)
      expect(Number(st.uid), where).toBe(inode.uid)
      expect(Number(st.gid), where).toBe(inode.gid)
      if (inode.type !== 'symlink') expect(st.mtimeNs, where).toBe(inode.mtime * 1_000_000_000n + BigInt(inode.mtimeNsec))
      if (inode.type === 'file') {
        expect(readFileSync(p).equals(fileContent(inode, extractable.tree.blobs)), where).toBe(true)
        files++
      }
      if (inode.type === 'symlink') expect(readlinkSync(p, { encoding: 'buffer' }).equals(inode.symlink!), where).toBe(true)
      if (inode.type === 'char' || inode.type === 'block') expect(Number(st.rdev), where).toBe(inode.rdev)
    }
    expect(files).toBeGreaterThan(300)
  })
})
