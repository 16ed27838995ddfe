/**
 * The full-download fallback's tree writer (lib/nydus/materialize.ts) on the fidelity image (every
 * file type, hard links, xattrs incl. security.capability, big uids, special bits, sparse files,
 * 255-byte and non-UTF-8 names, deep paths, nanosecond and pre-1970 mtimes, whiteouts and opaque
 * directories already merged): the written tree equals the source image; a corrupted blob byte
 * fails it with a digest error and leaves nothing half-written behind the caller's directory.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, openSync, readSync, rmSync, writeSync, closeSync, statSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { loadNydusBootstrap } from '../../lib/nydus/image.ts'
import { materializeImage } from '../../lib/nydus/materialize.ts'
import { openImageStore } from '../../lib/registry/open.ts'
import { buildImage, fidelityLayers, pushImage } from '../helpers/images.ts'
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts'
import { listTree } from '../helpers/erofs.ts'

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

describe.skipIf(process.getuid?.() !== 0)('materializing a Nydus image (the snapshotter fallback)', () => {
  let reg: RunningRegistry
  let work: string
  let rootfs: string
  let ref: string

  beforeAll(async () => {
    reg = await startRegistry()
    work = mkdtempSync(join(tmpdir(), 'naiad-materialize-'))
    const img = buildImage({ workDir: join(work, 'img'), layers: fidelityLayers() })
    execFileSync('umoci', ['unpack', '--image', `${img.layout}:${img.tag}`, join(work, 'bundle')], { stdio: 'ignore' })
    rootfs = join(work, 'bundle', 'rootfs')
    pushImage(img, reg.host, 'app/fid:v1')
    ref = `${reg.host}/app/fid:nydus`
    const c = await naiad('convert', '--source', `${reg.host}/app/fid:v1`, '--target', ref)
    expect(c.code, c.err).toBe(0)
  }, 180_000)

  afterAll(async () => {
    await reg?.stop()
    if (work !== undefined) rmSync(work, { recursive: true, force: true })
  })

  it('writes a tree equal to the source image', async () => {
    const store = openImageStore(ref, { plainHttp: 'loopback' })
    try {
      const { bootstrap } = await loadNydusBootstrap(store)
      const dir = join(work, 'out')
      const stats = await materializeImage(dir, bootstrap, store)
      expect(stats.files).toBeGreaterThan(50)
      expect(listTree(dir, '--skip-root-attrs')).toBe(listTree(rootfs, '--skip-root-attrs'))
      expect(existsSync(`${dir}.blobs`)).toBe(false)
    } finally {
      await store.close()
    }
  }, 60_000)

  it('a corrupted blob byte fails with a digest error', async () => {
    const store = openImageStore(ref, { plainHttp: 'loopback' })
    const { bootstrap } = await loadNydusBootstrap(store)
    const blob = bootstrap.blobs[0]!.blobId
    const path = join(reg.dir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', blob.slice(0, 2), blob, 'data')
    const at = Math.floor(statSync(path).size / 2)
    const fd = openSync(path, 'r+')
    const b = Buffer.alloc(1)
    readSync(fd, b, 0, 1, at)
    writeSync(fd, Buffer.from([b[0]! ^ 0x5a]), 0, 1, at)
    try {
      const dir = join(work, 'bad')
      await expect(materializeImage(dir, bootstrap, store)).rejects.toMatchObject({ code: 'NAIAD_DIGEST_MISMATCH' })
      expect(existsSync(`${dir}.blobs`)).toBe(false)
      expect(readdirSync(work)).not.toContain('bad')
    } finally {
      writeSync(fd, b, 0, 1, at)
      closeSync(fd)
      await store.close()
    }
  }, 60_000)
})
