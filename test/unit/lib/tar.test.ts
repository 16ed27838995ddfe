import { execFileSync } from 'node:child_process'
import { mkdtempSync, writeFileSync, mkdirSync, symlinkSync, linkSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { readTar, type TarHeader } from '../../../lib/tar/reader.ts'

async function * once (b: Buffer): AsyncGenerator<Buffer> {
  // deliver in awkward piece sizes to exercise buffering
  for (let i = 0; i < b.length; i += 777) yield b.subarray(i, i + 777)
}

async function entries (b: Buffer): Promise<Array<{ h: TarHeader, data: Buffer }>> {
  const out: Array<{ h: TarHeader, data: Buffer }> = []
  for await (const e of readTar(once(b))) {
    const parts: Buffer[] = []
    for await (const c of e.body()) parts.push(c)
    out.push({ h: e.header, data: Buffer.concat(parts) })
  }
  return out
}

describe('tar reader', () => {
  it('reads GNU tar --format=pax output with xattrs, long and non-UTF-8 names, links, nanosecond mtimes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'naiad-tar-'))
    const root = join(dir, 'root')
    mkdirSync(join(root, 'd'), { recursive: true })
    writeFileSync(join(root, 'd', 'f.txt'), 'hello')
    const longName = 'n'.repeat(200)
    writeFileSync(join(root, longName), 'x'.repeat(3000))
    const bad = Buffer.concat([Buffer.from(root + '/bad-'), Buffer.from([0xff, 0xfe]), Buffer.from('.bin')])
    writeFileSync(bad, 'latin')
    symlinkSync('d/f.txt', join(root, 'sym'))
    linkSync(join(root, 'd', 'f.txt'), join(root, 'hard'))
    execFileSync('setfattr', ['-n', 'user.bin', '-v', '0x00ff10', join(root, 'd', 'f.txt')])
    execFileSync('touch', ['-d', '2021-03-04 05:06:07.123456789', join(root, 'd', 'f.txt')])
    const tarPath = join(dir, 'a.tar')
    execFileSync('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '-C', root, '-cf', tarPath, '.'])
    const es = await entries(readFileSync(tarPath))
    const byName = new Map(es.map(e => [e.h.name.toString('latin1'), e]))
    const f = [byName.get('./d/f.txt')!, byName.get('./hard')!].find(e => e.h.type === 'file')!
    expect(f).toBeDefined()
    expect(f.data.toString()).toBe('hello')
    expect(f.h.mtimeNsec).toBe(123456789)
    expect(f.h.xattrs.find(x => x.name.toString() === 'user.bin')?.value).toEqual(Buffer.from([0x00, 0xff, 0x10]))
    expect(byName.get('./' + longName)!.data.length).toBe(3000)
    const badName = Buffer.concat([Buffer.from('./bad-'), Buffer.from([0xff, 0xfe]), Buffer.from('.bin')])
    expect(es.some(e => e.h.name.equals(badName))).toBe(true)
    expect(byName.get('./sym')!.h.type).toBe('symlink')
    expect(byName.get('./sym')!.h.linkname.toString()).toBe('d/f.txt')
    const hard = [byName.get('./hard'), byName.get('./d/f.txt')].find(e => e!.h.type === 'link')
    expect(hard).toBeDefined()
  })

  it('rejects corrupt headers and truncated bodies with NAIAD_TAR_CORRUPT', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'naiad-tar-'))
    writeFileSync(join(dir, 'f'), Buffer.alloc(5000, 7))
    const tarPath = join(dir, 'a.tar')
    execFileSync('tar', ['-C', dir, '-cf', tarPath, 'f'])
    const good = readFileSync(tarPath)
    const flipped = Buffer.from(good); flipped[10] = flipped[10]! ^ 0x41
    await expect(entries(flipped)).rejects.toMatchObject({ code: 'NAIAD_TAR_CORRUPT' })
    await expect(entries(good.subarray(0, 2000))).rejects.toMatchObject({ code: 'NAIAD_TAR_CORRUPT' })
    await expect(entries(good.subarray(0, 100))).rejects.toMatchObject({ code: 'NAIAD_TAR_CORRUPT' })
    await expect(entries(Buffer.alloc(0))).rejects.toMatchObject({ code: 'NAIAD_TAR_CORRUPT' })
    expect((await entries(good)).length).toBe(1)
  })
})
