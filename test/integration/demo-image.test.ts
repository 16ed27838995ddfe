/**
 * `npm run demo -- --image REF --plain-http` (README): the demo with a user's image. The image is a
 * busybox "server" in a registry of its own (the user's registry): its command prints a line and
 * keeps running, so the demo must copy it into the local registry (the normal pull is then counted
 * like the lazy ones), run it normally and lazily on both nodes, stop each container 5 s after its
 * first output, report, and leave no mount, process or network namespace behind. Bad arguments get a usage line.
 */
import { execFile } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { buildImage, pushImage } from '../helpers/images.ts'
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts'
import { expectDemoLeftNothing } from '../helpers/demo.ts'

const exec = promisify(execFile)
const DEMO = new URL('../../dist/scripts/demo.js', import.meta.url).pathname

describe('npm run demo -- --image REF', () => {
  let reg: RunningRegistry | undefined
  const work = mkdtempSync(join(tmpdir(), 'naiad-demo-image-test-'))
  afterAll(async () => {
    await reg?.stop()
    rmSync(work, { recursive: true, force: true })
  })

  it('refuses --image without a reference and unknown arguments (exit 2, usage)', async () => {
    for (const argv of [['--image'], ['--image', '--keep'], ['--bogus']]) {
      const r = await exec(process.execPath, [DEMO, ...argv]).then(() => ({ code: 0, stderr: '' }), (e: { code: number, stderr: string }) => e)
      expect(r.code, argv.join(' ')).toBe(2)
      expect(r.stderr).toContain('usage: npm run demo')
    }
  })

  it("runs a user's image (a command that keeps running) normally and lazily, then cleans up", { timeout: 600_000 }, async () => {
    reg = await startRegistry()
    const img = buildImage({
      workDir: join(work, 'img'),
      layers: [(root) => {
        mkdirSync(join(root, 'bin'))
        copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'))
        chmodSync(join(root, 'bin', 'busybox'), 0o755)
        for (const l of ['sh', 'echo', 'sleep']) symlinkSync('busybox', join(root, 'bin', l))
      }],
      cmd: ['/bin/sh', '-c', 'echo user image serving; exec sleep 1000']
    })
    pushImage(img, reg.host, 'user/server:1.0')
    const netnsBefore = (await exec('ip', ['netns', 'list'])).stdout
    const { stdout } = await exec(process.execPath, [DEMO, '--image', `${reg.host}/user/server:1.0`, '--plain-http'], { timeout: 600_000, maxBuffer: 64 << 20 })
    expect(stdout).toContain(`copying ${reg.host}/user/server:1.0`)
    expect(stdout).toContain('check passed')
    expect(stdout).toContain('| user image serving')
    expect(stdout).toContain('demo OK: the lazy containers printed what the normal one printed')
    // the normal pull is counted: it downloads the whole image (busybox, ~1 MiB) from the local registry
    expect(stdout).toMatch(/\| node a, ctr images pull \+ run \(overlayfs\) \| full download \| [^|]+\| [1-9]\d*\.\d MiB \|/)
    // the plain demo test runs beside this one with its own work dir
    await expectDemoLeftNothing(stdout)
    // no namespace left by the demo (the p2p tests' labs, nd<pid>…, come and go in parallel)
    const names = (t: string): string[] => t.split('\n').map((l) => l.split(' ')[0]!).filter((n) => n !== '' && !/^nd\d/.test(n))
    const before = new Set(names(netnsBefore))
    expect(names((await exec('ip', ['netns', 'list'])).stdout).filter((n) => !before.has(n))).toEqual([])
  })
})
