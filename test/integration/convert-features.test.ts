/**
 * naiad convert features between OCI layouts: multi-platform indexes, determinism, prefetch
 * table, chunk dict, inspect, and adversarial layers that must fail with their documented codes
 * and leave nothing behind the target tag.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { buildImage, buildMultiPlatformImage, fidelityLayers, imageFromTar, patternBytes } from '../helpers/images.ts'

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

function tags (layout: string): string[] {
  if (!existsSync(join(layout, 'index.json'))) return []
  const idx = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ annotations?: Record<string, string> }> }
  return idx.manifests.map(m => m.annotations?.['org.opencontainers.image.ref.name'] ?? '')
}

/** A tar with one entry, written by hand so any name or type can be used. */
function rawTar (entries: Array<{ name: string, type?: string, data?: Buffer, linkname?: string }>): Buffer {
  const blocks: Buffer[] = []
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0)
    const h = Buffer.alloc(512)
    h.write(e.name, 0, 100, 'latin1')
    h.write('0000644\0', 100); h.write('0000000\0', 108); h.write('0000000\0', 116)
    h.write(data.length.toString(8).padStart(11, '0') + '\0', 124)
    h.write('00000000000\0', 136)
    h.write(e.type ?? '0', 156)
    if (e.linkname !== undefined) h.write(e.linkname, 157, 100, 'latin1')
    h.write('ustar\0', 257); h.write('00', 263)
    h.fill(0x20, 148, 156)
    let sum = 0; for (const b of h) sum += b
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1')
    blocks.push(h, data, Buffer.alloc((512 - data.length % 512) % 512))
  }
  blocks.push(Buffer.alloc(1024))
  return Buffer.concat(blocks)
}

describe('naiad convert features', () => {
  it('converts a multi-platform index into an index of Nydus manifests; --platform picks one', async () => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-multi-'))
    const img = buildMultiPlatformImage({ workDir: work, platforms: [{ architecture: 'amd64' }, { architecture: 'arm64', variant: 'v8' }] })
    const all = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'out')}:all`, '--platform', 'all', '--output', 'json')
    expect(all.err).toBe('')
    const r = JSON.parse(all.out)
    expect(r.mediaType).toBe('application/vnd.oci.image.index.v1+json')
    expect(r.platforms.map((p: { platform: string }) => p.platform).sort()).toEqual(['linux/amd64', 'linux/arm64/v8'])
    const chk = await naiad('check', '--source', img.ref, '--target', `oci:${join(work, 'out')}:all`)
    expect(chk.out).toMatch(/linux\/amd64: OK/)
    expect(chk.out).toMatch(/linux\/arm64\/v8: OK/)
    expect(chk.code).toBe(0)
    const one = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'out')}:arm`, '--platform', 'linux/arm64', '--output', 'json')
    expect(JSON.parse(one.out).mediaType).toBe('application/vnd.oci.image.manifest.v1+json')
    const none = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'out')}:s390x`, '--platform', 'linux/s390x')
    expect(none.code).toBe(3)
    expect(none.err).toContain('NAIAD_OCI_NO_PLATFORM')
    expect(none.err).toContain('linux/amd64')
    expect(tags(join(work, 'out'))).not.toContain('s390x')
  })

  it('the same input always gives the same digests', async () => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-det-'))
    const img = buildImage({ workDir: work, layers: fidelityLayers() })
    const a = JSON.parse((await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'a')}:x`, '--output', 'json')).out)
    const b = JSON.parse((await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'b')}:x`, '--output', 'json')).out)
    expect(a.digest).toBe(b.digest)
    expect(a.platforms[0].bootstrap).toBe(b.platforms[0].bootstrap)
    expect(a.platforms[0].blobs).toEqual(b.platforms[0].blobs)
  })

  it('writes the prefetch table from --prefetch-patterns and inspect shows it', async () => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-pf-'))
    const img = buildImage({ workDir: work, layers: fidelityLayers() })
    writeFileSync(join(work, 'patterns'), '# hot\n/bin/busybox\n/etc\n')
    const c = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'out')}:pf`, '--prefetch-patterns', join(work, 'patterns'))
    expect(c.code).toBe(0)
    const j = await naiad('inspect', `oci:${join(work, 'out')}:pf`, '--json')
    expect(j.code).toBe(0)
    const info = JSON.parse(j.out)
    expect(info.superblock.prefetchFiles).toBe(2) // /bin/busybox and /etc/passwd (to-delete is whited out)
    expect(info.blobs.length).toBe(3)
    expect(info.entries.find((e: { path: string }) => e.path === '/bin/ping').xattrs['security.capability']).toBeDefined()
    const t = await naiad('inspect', `oci:${join(work, 'out')}:pf`)
    expect(t.out).toContain('RAFS v6')
    expect(t.out).toMatch(/-rwsr-xr-x .* \/data\/setuid/)
  })

  it('reuses chunks from a --chunk-dict image and lists the dict blob in the manifest', async () => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-dict-'))
    const big = patternBytes(4 * 1024 * 1024, 42)
    const dictImg = buildImage({ workDir: join(work, 'd'), layers: [(r) => { writeFileSync(join(r, 'shared.bin'), big) }] })
    const dict = `oci:${join(work, 'out')}:dict`
    expect((await naiad('convert', '--source', dictImg.ref, '--target', dict)).code).toBe(0)
    const app = buildImage({ workDir: join(work, 'a'), layers: [(r) => { writeFileSync(join(r, 'copy.bin'), big); writeFileSync(join(r, 'own.txt'), 'app only') }] })
    const c = await naiad('convert', '--source', app.ref, '--target', `oci:${join(work, 'out')}:app`, '--chunk-dict', dict, '--output', 'json')
    expect(c.err).toBe('')
    const r = JSON.parse(c.out).platforms[0]
    expect(r.dictChunks).toBe(4)
    expect(r.uniqueChunks).toBe(1)
    expect(r.blobs.length).toBe(2)
    const chk = await naiad('check', '--source', app.ref, '--target', `oci:${join(work, 'out')}:app`)
    expect(chk.out).toContain('check passed')
  })

  it.each([
    { name: 'path traversal', entries: [{ name: '../escape', data: Buffer.from('x') }], code: 'NAIAD_TAR_UNSAFE_PATH' },
    { name: 'absolute path', entries: [{ name: '/etc/shadow', data: Buffer.from('x') }], code: 'NAIAD_TAR_UNSAFE_PATH' },
    { name: 'hard link escaping the root', entries: [{ name: 'l', type: '1', linkname: '../../etc/shadow' }], code: 'NAIAD_TAR_UNSAFE_PATH' },
    { name: 'hard link to nothing', entries: [{ name: 'l', type: '1', linkname: 'missing' }], code: 'NAIAD_TAR_UNSAFE_LINK' }
  ])('rejects a layer with $name ($code) and tags nothing', async ({ entries, code }) => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-bad-'))
    const img = imageFromTar({ workDir: work, tar: rawTar(entries) })
    const c = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'out')}:bad`)
    expect(c.code).not.toBe(0)
    expect(c.err).toContain(code)
    expect(c.err).toContain('hint:')
    expect(tags(join(work, 'out'))).not.toContain('bad')
  })

  it('rejects a layer with an unknown media type (NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE) and tags nothing', async () => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-mt-'))
    const img = imageFromTar({ workDir: work, tar: rawTar([{ name: 'f', data: Buffer.from('x') }]) })
    // rewrite the manifest: its layer claims to be a Windows foreign layer of an unknown kind
    const idx = JSON.parse(readFileSync(join(img.layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string, size: number }> }
    const blob = (d: string): string => join(img.layout, 'blobs', 'sha256', d.slice(7))
    const manifest = JSON.parse(readFileSync(blob(idx.manifests[0]!.digest), 'utf8')) as { layers: Array<{ mediaType: string }> }
    manifest.layers[0]!.mediaType = 'application/vnd.example.layer.squashfs'
    const bytes = Buffer.from(JSON.stringify(manifest))
    const digest = 'sha256:' + createHash('sha256').update(bytes).digest('hex')
    writeFileSync(blob(digest), bytes)
    idx.manifests[0]!.digest = digest
    idx.manifests[0]!.size = bytes.length
    writeFileSync(join(img.layout, 'index.json'), JSON.stringify(idx))
    const c = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'out')}:bad`)
    expect(c.err).toContain('NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE')
    expect(c.err).toContain('squashfs')
    expect(tags(join(work, 'out'))).not.toContain('bad')
  })

  it('rejects truncated and corrupt gzip layers with NAIAD_TAR_CORRUPT / NAIAD_DIGEST_MISMATCH', async () => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-gz-'))
    const img = imageFromTar({ workDir: work, tar: rawTar([{ name: 'f', data: patternBytes(300_000, 3) }]) })
    const idx = JSON.parse(readFileSync(join(img.layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
    const blob = (d: string): string => join(img.layout, 'blobs', 'sha256', d.slice(7))
    const manifest = JSON.parse(readFileSync(blob(idx.manifests[0]!.digest), 'utf8')) as { layers: Array<{ digest: string }> }
    const layerPath = blob(manifest.layers[0]!.digest)
    const good = readFileSync(layerPath)
    // a flipped byte: the layer no longer matches its digest
    const bad = Buffer.from(good); bad[100] = bad[100]! ^ 0xff
    writeFileSync(layerPath, bad)
    const c1 = await naiad('convert', '--source', img.ref, '--target', `oci:${join(work, 'out')}:bad`)
    // the gzip decoder or the digest check, whichever trips first
    expect(c1.err).toMatch(/NAIAD_DIGEST_MISMATCH|NAIAD_TAR_CORRUPT/)
    expect(c1.code).toBe(8)
    // a layer whose digest is right but whose tar is cut mid-entry, or is not a tar at all
    const tar = rawTar([{ name: 'f', data: patternBytes(300_000, 3) }])
    for (const [i, broken] of [tar.subarray(0, 100_000), patternBytes(4096, 9)].entries()) {
      const img2 = imageFromTar({ workDir: join(work, `t${i}`), tar: broken })
      const c2 = await naiad('convert', '--source', img2.ref, '--target', `oci:${join(work, 'out')}:bad`)
      expect(c2.err).toContain('NAIAD_TAR_CORRUPT')
    }
    expect(tags(join(work, 'out'))).not.toContain('bad')
  })
})
