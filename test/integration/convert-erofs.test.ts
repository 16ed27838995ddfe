/**
 * The converter's output checked by tools that share no code with naiad: umoci extracts the
 * source image (applying whiteouts itself), fsck.erofs (erofs-utils) validates and extracts our
 * bootstrap + blobs, and the Linux kernel mounts them. All three trees must agree.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { buildImage, fidelityLayers, type BuiltImage } from '../helpers/images.ts'
import { erofsFromLayout, fsckErofs, kernelMount, listTree, type ErofsImage } from '../helpers/erofs.ts'

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

describe.each([
  { name: 'zstd, blake3, 1 MiB chunks', args: [] as string[] },
  { name: 'lz4_block, sha256, 64 KiB chunks', args: ['--compressor', 'lz4_block', '--digest', 'sha256', '--chunk-size', '64KiB'] },
  { name: 'no compression, 4 KiB chunks', args: ['--compressor', 'none', '--chunk-size', '4096'] }
])('converted image vs independent tools ($name)', ({ args }) => {
  let work: string
  let img: BuiltImage
  let erofs: ErofsImage
  let expected: string

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'naiad-erofs-'))
    img = buildImage({ workDir: work, layers: fidelityLayers() })
    execFileSync('umoci', ['unpack', '--image', `${img.layout}:${img.tag}`, join(work, 'bundle')], { stdio: 'ignore' })
    expected = listTree(join(work, 'bundle', 'rootfs'))
    const c = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'nydus')}:v6`, ...args)
    expect(c.err).toBe('')
    expect(c.code).toBe(0)
    erofs = await erofsFromLayout(join(work, 'nydus'), 'v6', join(work, 'erofs'))
  })

  afterAll(() => { rmSync(work, { recursive: true, force: true }) })

  it('fsck.erofs finds no errors', () => {
    expect(fsckErofs(erofs)).toMatch(/No errors found/)
  })

  it('fsck.erofs --extract reproduces the source tree byte for byte', () => {
    const dir = join(work, 'extracted')
    fsckErofs(erofs, dir)
    // fsck.erofs 1.5 restores contents, types, permissions and owners; it does not restore xattrs,
    // mtimes or hard links, and its chown after chmod clears setuid/setgid: compare the rest (the
    // kernel mount below checks all of it)
    const strip = (s: string): string => s.split('\n').map(l => l.split(' ').map((f, i) => i === 2 && f !== '-' ? (parseInt(f, 8) & 0o1777).toString(8) : f).filter((_, i) => i !== 6 && i !== 10 && i !== 11).join(' ')).join('\n')
    expect(strip(listTree(dir, '--no-xattrs', '--skip-root-attrs'))).toBe(strip(listTree(join(work, 'bundle', 'rootfs'), '--no-xattrs', '--skip-root-attrs')))
  })

  it('the kernel mounts our bootstrap and shows the same tree: contents, modes, owners, mtimes, xattrs, hard links', () => {
    const mnt = join(work, 'mnt')
    const umount = kernelMount(erofs, mnt)
    try {
      expect(listTree(mnt)).toBe(expected)
    } finally {
      umount()
    }
  })
})
