/**
 * The remote path against a registry that requires credentials (HTTP Basic, docker-registry's
 * htpasswd): the fsdaemon the snapshotter starts reads the data blobs with the node's docker
 * config.json credentials (DOCKER_CONFIG, inherited), and so does the full-download fallback.
 */
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { existsSync } from 'node:fs'
import { run } from '../../bin/program.ts'
import { createLogger } from '../../lib/log/index.ts'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { LocalSnapshotter } from '../../snapshotter/local/overlay.ts'
import { FsdRemoteFilesystem, type FsdRemoteOptions } from '../../snapshotter/remote/fsd.ts'
import { RegistryMaterializer } from '../../snapshotter/remote/materialize.ts'
import { buildImage, patternBytes, pushImage } from '../helpers/images.ts'
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts'
import { NAIAD_BIN } from '../helpers/daemon.ts'
import { fetchNydusImage, mountAll, unpackLikeContainerd, type NydusImage } from '../helpers/unpacker.ts'

const exec = promisify(execFile)

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

describe.skipIf(!existsSync(NAIAD_BIN) || !existsSync('/dev/fuse'))('snapshotter remote path with registry credentials', () => {
  let reg: RunningRegistry
  let work: string
  let image: NydusImage
  let ref: string
  let savedDockerConfig: string | undefined
  const fsdPids: number[] = []
  const log = createLogger({ service: 'test', level: 'silent' })

  beforeAll(async () => {
    reg = await startRegistry({ htpasswd: { user: 'naiad', password: 's3cret' } })
    work = mkdtempSync(join(tmpdir(), 'naiad-snapauth-'))
    const cfgDir = join(work, 'docker')
    mkdirSync(cfgDir)
    writeFileSync(join(cfgDir, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from('naiad:s3cret').toString('base64') } } }))
    savedDockerConfig = process.env['DOCKER_CONFIG']
    process.env['DOCKER_CONFIG'] = cfgDir // this process and the fsdaemon it starts
    const img = buildImage({ workDir: join(work, 'img'), layers: [(r) => { writeFileSync(join(r, 'hello.txt'), 'hello with credentials\n'); writeFileSync(join(r, 'big.bin'), patternBytes(4 << 20, 9)) }] })
    pushImage(img, reg.host, 'private/app:v1', 'naiad:s3cret')
    ref = `${reg.host}/private/app:nydus`
    const c = await naiad('convert', '--source', `${reg.host}/private/app:v1`, '--target', ref)
    expect(c.code, c.err).toBe(0)
    image = await fetchNydusImage(ref)
  }, 120_000)

  afterAll(async () => {
    for (const pid of fsdPids) { try { process.kill(pid, 'SIGKILL') } catch {} }
    if (work !== undefined) {
      for (const l of readFileSync('/proc/self/mounts', 'utf8').split('\n').reverse()) {
        const mp = l.split(' ')[1]
        if (mp?.startsWith(work) === true) await exec('umount', ['-l', mp]).catch(() => {})
      }
    }
    if (savedDockerConfig === undefined) delete process.env['DOCKER_CONFIG']
    else process.env['DOCKER_CONFIG'] = savedDockerConfig
    await reg?.stop()
    if (work !== undefined) rmSync(work, { recursive: true, force: true })
  })

  const fsdOptions = (name: string, binary = NAIAD_BIN): FsdRemoteOptions => ({
    socket: join(work, name, 'fsd.sock'),
    start: true,
    binary,
    config: '',
    cacheDir: join(work, name, 'cache'),
    stateDir: join(work, name, 'state'),
    logFile: join(work, name, 'fsd.log'),
    startTimeoutMs: 20_000,
    plainHttp: false,
    stopOnClose: true
  })

  it('lazily through the fsdaemon, and in full through the fallback', async () => {
    for (const mode of ['lazy', 'fallback'] as const) {
      const o = fsdOptions(mode, mode === 'lazy' ? NAIAD_BIN : join(work, 'no-naiad.js'))
      const sn = new LocalSnapshotter({ log, remote: new FsdRemoteFilesystem({ log }, o), materializer: new RegistryMaterializer({ log }, { plainHttp: false }) }, { root: join(work, mode, 'root') })
      try {
        const top = await unpackLikeContainerd(sn, image, ref, join(work, mode, 'apply'))
        expect(top.skipped).toBe(1)
        const mounts = await sn.prepare('c', top.chainId)
        if (mode === 'lazy') fsdPids.push((await new FsdClient({ socketPath: o.socket }).daemon()).pid)
        expect(mounts[0]!.options.find((x) => x.startsWith('lowerdir='))).toMatch(mode === 'lazy' ? /\/mnt$/ : /\/rootfs$/)
        const mnt = join(work, mode, 'c')
        const umount = await mountAll(mounts, mnt)
        try {
          expect((await exec('cat', [join(mnt, 'hello.txt')])).stdout).toBe('hello with credentials\n')
          expect((await exec('sha256sum', [join(mnt, 'big.bin')])).stdout.split(' ')[0]).toBe((await exec('sha256sum', [join(work, 'img', 'layer0', 'big.bin')])).stdout.split(' ')[0])
        } finally {
          await umount()
        }
        await sn.remove('c')
      } finally {
        await sn.close()
      }
    }
  }, 90_000)
})
