/**
 * `npm run demo`: the main job end to end on an embedded local stack, all on loopback in a temp
 * dir: a registry (Debian's docker-registry), a sample multi-layer image built with umoci and
 * busybox-static and pushed with skopeo, then `naiad convert` into Nydus RAFS v6, `naiad check`,
 * `naiad inspect`, and a summary table. Everything is torn down at the end.
 *
 * `npm run demo -- --image REF` converts a user's image instead (from any registry naiad can
 * reach; use --plain-http for HTTP registries).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { run } from '../bin/program.ts'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { startCountingProxy, startRegistry } from '../test/helpers/registry.ts'
import { buildImage, fidelityLayers, pushImage } from '../test/helpers/images.ts'
import { startNaiad } from '../test/helpers/daemon.ts'
import { FsdClient } from '../lib/fsdapi/index.ts'

const exec = promisify(execFile)

interface Captured { code: number, out: string, err: string }

async function naiad (...argv: string[]): Promise<Captured> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

function say (s: string): void { process.stdout.write(s + '\n') }

async function main (): Promise<number> {
  const args = process.argv.slice(2)
  const userImage = args.includes('--image') ? args[args.indexOf('--image') + 1] : undefined
  const plain = args.includes('--plain-http') ? ['--plain-http'] : []
  const work = mkdtempSync(join(tmpdir(), 'naiad-demo-'))
  say(`naiad demo — work dir ${work}`)
  const reg = await startRegistry()
  say(`registry:   docker-registry on ${reg.host} (pid ${reg.pid})`)
  try {
    let source: string
    if (userImage === undefined) {
      say('image:      building a 3-layer sample image with umoci + busybox-static (devices, hard links, xattrs, whiteouts…)')
      const img = buildImage({ workDir: join(work, 'img'), layers: fidelityLayers(), cmd: ['/bin/busybox', 'echo', 'hello from a lazy image'] })
      source = pushImage(img, reg.host, 'demo/sample:latest')
    } else {
      source = userImage
    }
    const target = `${reg.host}/demo/converted:nydus`
    say(`convert:    ${source} -> ${target}`)
    const c = await naiad('convert', '--source', source, '--target', target, '--output', 'json', ...plain)
    if (c.code !== 0) { process.stderr.write(c.err); return c.code }
    const r = JSON.parse(c.out) as { digest: string, durationMs: number, platforms: Array<{ platform: string, files: number, sourceBytes: number, chunkRefs: number, uniqueChunks: number, blobBytes: number, blobs: unknown[] }> }
    say('check:      rebuilding the source filesystem and reading every file back through lib/format …')
    const k = await naiad('check', '--source', source, '--target', target, ...plain)
    process.stdout.write(k.out.split('\n').map(l => l === '' ? l : '            ' + l).join('\n'))
    const i = await naiad('inspect', target)
    writeFileSync(join(work, 'inspect.txt'), i.out)
    say(i.out.split('\n').slice(0, 8).map(l => '            ' + l).join('\n'))
    let lazy: { ms: number, fetched: number, output: string } | undefined
    if (userImage === undefined) {
      // run the image lazily: mount it with the fsdaemon (through a proxy that counts what the
      // registry serves) and run busybox from it
      const proxy = await startCountingProxy(reg.host)
      const sock = join(work, 'fsd.sock')
      const mnt = join(work, 'rootfs')
      const t0 = Date.now()
      const fsd = startNaiad(['fsd', '--socket', sock, '--cache-dir', join(work, 'cache'), '--state-dir', join(work, 'state'), '--log-level', 'info'])
      try {
        await fsd.waitFor('ready')
        await new FsdClient({ socketPath: sock }).mount({ mountpoint: mnt, image: `${proxy.host}/demo/converted:nydus`, prefetch: false })
        const { stdout } = await exec('chroot', [mnt, '/bin/busybox', 'sh', '-c', 'echo "hello from a lazy image: $(busybox uname -s), $(busybox ls /data | busybox wc -l) entries in /data"'])
        lazy = { ms: Date.now() - t0, fetched: proxy.bytesServed(), output: stdout.trim() }
        say(`run:        chroot into the lazily mounted image: ${lazy.output}`)
        await new FsdClient({ socketPath: sock }).unmount(mnt)
      } finally {
        await fsd.stop()
        await proxy.stop()
      }
    }
    say('')
    say('| platform | files | file bytes | chunks referenced | chunks stored | data blobs | blob bytes | convert time |')
    say('|---|---|---|---|---|---|---|---|')
    for (const p of r.platforms) {
      say(`| ${p.platform} | ${p.files} | ${p.sourceBytes} | ${p.chunkRefs} | ${p.uniqueChunks} | ${p.blobs.length} | ${p.blobBytes} | ${(r.durationMs / 1000).toFixed(2)} s |`)
    }
    if (lazy !== undefined) {
      const total = r.platforms.reduce((n, p) => n + p.blobBytes, 0)
      say('')
      say('| lazy run | time to first output | bytes from the registry | image data blobs | fetched |')
      say('|---|---|---|---|---|')
      say(`| naiad fsd + busybox sh | ${lazy.ms} ms (incl. daemon start and mount) | ${lazy.fetched} | ${total} | ${(100 * lazy.fetched / total).toFixed(1)}% |`)
    }
    say('')
    say(k.code === 0 ? 'demo OK: the converted image holds exactly the source filesystem' : 'demo FAILED: check found differences')
    return k.code
  } finally {
    await reg.stop()
    rmSync(work, { recursive: true, force: true })
  }
}

process.exitCode = await main()
