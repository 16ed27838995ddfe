/**
 * `naiad pull` of a plain OCI image into a private containerd 1.6 with naiad's snapshotter as
 * the `nydus` proxy plugin: every layer is downloaded into containerd's content store, applied by
 * containerd's diff service onto our snapshots and committed; the image record appears in
 * `ctr images ls`, and `ctr run --snapshotter nydus` runs the container. A second pull finds
 * every layer unpacked. Errors: containerd unreachable, unknown snapshotter, missing image.
 */
import { execFile, spawn } from 'node:child_process'
import http from 'node:http'
import { chmodSync, copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { haveContainerd, startContainerd, type RunningContainerd } from '../helpers/containerd.ts'
import { NAIAD_BIN, startNaiad, type Daemon } from '../helpers/daemon.ts'
import { buildImage, buildMultiPlatformImage, pushImage } from '../helpers/images.ts'
import { haveRegistry, startRegistry, type RunningRegistry } from '../helpers/registry.ts'

const run = promisify(execFile)
const NS = 'naiadpull'
const ready = process.getuid?.() === 0 && haveContainerd() && existsSync(NAIAD_BIN) && haveRegistry()

interface Summary { image: string, digest: string, chainId: string, layers: Array<{ outcome: string }>, skipped: number, downloaded: number, bytesDownloaded: number }

async function naiad (args: string[], env: Record<string, string> = {}): Promise<{ code: number, stdout: string, stderr: string }> {
  try {
    const r = await run(process.execPath, [NAIAD_BIN, ...args], { timeout: 120_000, env: { ...process.env, ...env } })
    return { code: 0, stdout: r.stdout, stderr: r.stderr }
  } catch (err) {
    const e = err as { code?: number, stdout?: string, stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) }
  }
}

describe.skipIf(!ready)('naiad pull: plain OCI image into containerd through the nydus snapshotter', () => {
  let base = ''
  let snap: Daemon | undefined
  let ctd: RunningContainerd | undefined
  let registry: RunningRegistry | undefined
  let ref = ''
  let image: ReturnType<typeof buildImage> | undefined

  beforeAll(async () => {
    base = await mkdtemp('/tmp/naiad-pull-')
    snap = startNaiad(['snapshotter', '--root', join(base, 'snapshots'), '--socket', join(base, 'snap.sock'), '--log-level', 'debug'])
    await snap.waitFor('ready', 30_000)
    ctd = await startContainerd({ dir: join(base, 'ctd'), snapshotterSocket: join(base, 'snap.sock') })
    registry = await startRegistry()
    const img = buildImage({
      workDir: join(base, 'img'),
      layers: [
        (root) => {
          mkdirSync(join(root, 'bin'))
          copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'))
          chmodSync(join(root, 'bin', 'busybox'), 0o755)
          for (const l of ['sh', 'cat', 'ls']) symlinkSync('busybox', join(root, 'bin', l))
          writeFileSync(join(root, 'a.txt'), 'layer one\n')
          writeFileSync(join(root, 'gone.txt'), 'to be deleted\n')
        },
        (root) => { writeFileSync(join(root, 'b.txt'), 'layer two\n'); writeFileSync(join(root, '.wh.gone.txt'), '') },
        (root) => { writeFileSync(join(root, 'a.txt'), 'layer three wins\n') }
      ]
    })
    ref = pushImage(img, registry.host, 'naiad/pull-plain:1')
    image = img
  }, 120_000)

  afterAll(async () => {
    await ctd?.stop()
    await snap?.stop()
    await registry?.stop()
    if (base !== '') await rm(base, { recursive: true, force: true })
  })

  it('downloads and applies every layer, creates the image, and ctr run works', async () => {
    const r = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, '--output', 'json', ref])
    expect(r.stderr + `\ncontainerd:\n${ctd!.log().slice(-2000)}`).not.toMatch(/naiad: NAIAD_/)
    expect(r.code).toBe(0)
    const s = JSON.parse(r.stdout) as Summary
    expect(s.image).toBe(ref)
    expect(s.layers.map((l) => l.outcome)).toEqual(['downloaded', 'downloaded', 'downloaded'])
    expect(s.downloaded).toBe(3)
    expect(s.skipped).toBe(0)
    expect(s.bytesDownloaded).toBeGreaterThan(500_000) // busybox-static
    const ls = await ctd!.ctr(NS, ['images', 'ls'])
    expect(ls).toContain(ref)
    expect(ls).toContain(s.digest)
    // containerd sees the top snapshot as committed in our snapshotter
    const info = JSON.parse(await ctd!.ctr(NS, ['snapshots', '--snapshotter', 'nydus', 'info', s.chainId])) as { Kind: string, Labels: Record<string, string> }
    expect(info.Kind).toBe('Committed')
    // the labels containerd's unpacker and CRI's AppendInfoHandlerWrapper send
    expect(info.Labels['containerd.io/snapshot.ref']).toBe(s.chainId)
    expect(info.Labels['containerd.io/snapshot/cri.image-ref']).toBe(ref)
    expect(info.Labels['containerd.io/snapshot/cri.manifest-digest']).toMatch(/^sha256:/)
    const out = await ctd!.ctr(NS, ['run', '--rm', '--snapshotter', 'nydus', ref, `naiad-pull-1-${process.pid}`, '/bin/sh', '-c', 'cat /a.txt /b.txt; ls /'])
    expect(out).toContain('layer three wins\nlayer two\n')
    expect(out).not.toContain('gone.txt')
  })

  it('a second pull finds every layer unpacked and downloads no layer', async () => {
    const r = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, ref])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toMatch(/layer 3\/3 sha256:[0-9a-f]{12}: already unpacked/)
    expect(r.stdout).toMatch(/layers: +3 \(3 skipped, 0 downloaded\)/)
  })

  it('a multi-platform index: the platform\'s manifest is unpacked and the image record names the index', async () => {
    const img = buildMultiPlatformImage({ workDir: join(base, 'multi'), platforms: [{ architecture: 'amd64' }, { architecture: 'arm64' }] })
    const multi = pushImage(img, registry!.host, 'naiad/pull-multi:1', undefined, true)
    const pulled: Summary[] = []
    for (const platform of ['linux/amd64', 'linux/arm64']) {
      const r = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, '--platform', platform, '--output', 'json', multi])
      expect(r.code, r.stderr).toBe(0)
      pulled.push(JSON.parse(r.stdout) as Summary & { manifest: string })
    }
    const [amd, arm] = pulled as Array<Summary & { manifest: string }>
    // same index, different manifests and snapshots
    expect(amd!.digest).toBe(arm!.digest)
    expect(amd!.manifest).not.toBe(arm!.manifest)
    expect(amd!.chainId).not.toBe(arm!.chainId)
    const ls = await ctd!.ctr(NS, ['images', 'ls'])
    const row = ls.split('\n').find((l) => l.startsWith(multi + ' '))
    expect(row).toContain('application/vnd.oci.image.index.v1+json')
    expect(row).toContain(amd!.digest)
    for (const s of [amd!, arm!]) {
      expect(JSON.parse(await ctd!.ctr(NS, ['snapshots', '--snapshotter', 'nydus', 'info', s.chainId])).Kind).toBe('Committed')
    }
  })

  it('registry credentials come from docker\'s config.json', async () => {
    const authReg = await startRegistry({ htpasswd: { user: 'puller', password: 'pw-1234' } })
    try {
      const priv = pushImage(image!, authReg.host, 'naiad/private:1', 'puller:pw-1234')
      const empty = join(base, 'docker-empty')
      const withAuth = join(base, 'docker-auth')
      mkdirSync(empty)
      mkdirSync(withAuth)
      writeFileSync(join(withAuth, 'config.json'), JSON.stringify({ auths: { [authReg.host]: { auth: Buffer.from('puller:pw-1234').toString('base64') } } }))
      const denied = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, priv], { DOCKER_CONFIG: empty })
      expect(denied.stderr).toContain('NAIAD_REG_UNAUTHORIZED')
      expect(denied.code).not.toBe(0)
      const ok = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, '--output', 'json', priv], { DOCKER_CONFIG: withAuth })
      expect(ok.code, ok.stderr).toBe(0)
      expect((JSON.parse(ok.stdout) as Summary).image).toBe(priv)
      expect(await ctd!.ctr(NS, ['images', 'ls', '-q'])).toContain(priv)
    } finally {
      await authReg.stop()
    }
  })

  it('SIGINT during a layer download: exit with NAIAD_ABORTED, the lease is gone, no image record, no active snapshot', async () => {
    const img = buildImage({ workDir: join(base, 'intr'), layers: [(root) => { writeFileSync(join(root, 'x.txt'), `interrupted ${Date.now()}\n`) }] })
    pushImage(img, registry!.host, 'naiad/pull-intr:1')
    // a proxy in front of the registry that lets the config blob through and holds every later blob GET
    let blobGets = 0
    let held: (() => void) | undefined
    const heldReq = new Promise<void>((resolve) => { held = resolve })
    const [rHost, rPort] = registry!.host.split(':') as [string, string]
    const proxy = http.createServer((req, res) => {
      if (req.method === 'GET' && req.url?.includes('/blobs/') === true && ++blobGets > 1) { held?.(); return } // never answered
      const up = http.request({ host: rHost, port: Number(rPort), method: req.method, path: req.url, headers: req.headers }, (ur) => { res.writeHead(ur.statusCode ?? 502, ur.rawHeaders); ur.pipe(res) })
      up.on('error', () => { res.destroy() })
      req.pipe(up)
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
    const port = (proxy.address() as { port: number }).port
    const ref2 = `127.0.0.1:${port}/naiad/pull-intr:1`
    try {
      const child = spawn(process.execPath, [NAIAD_BIN, 'pull', '--address', ctd!.address, '--namespace', NS, ref2], { stdio: ['ignore', 'pipe', 'pipe'] })
      let stderr = ''
      child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
      await heldReq
      child.kill('SIGINT')
      const code = await exited
      expect(stderr).toContain('NAIAD_ABORTED')
      expect(code).not.toBe(0)
      expect(await ctd!.ctr(NS, ['images', 'ls', '-q'])).not.toContain(ref2)
      expect((await ctd!.ctr(NS, ['leases', 'ls'])).split('\n').filter((l) => l.startsWith('naiad-pull-'))).toEqual([])
      expect((await ctd!.ctr(NS, ['snapshots', '--snapshotter', 'nydus', 'ls'])).split('\n').filter((l) => l.includes('extract-'))).toEqual([])
    } finally {
      proxy.closeAllConnections()
      await new Promise((resolve) => proxy.close(resolve))
    }
  })

  it('clear errors: containerd unreachable, unknown snapshotter, missing image', async () => {
    const down = await naiad(['pull', '--address', join(base, 'nothing.sock'), ref])
    expect(down.stderr).toContain('NAIAD_PULL_CONTAINERD_UNAVAILABLE')
    expect(down.code).not.toBe(0)
    const snapName = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, '--snapshotter', 'nope', ref])
    expect(snapName.stderr).toContain('NAIAD_PULL_SNAPSHOTTER_UNKNOWN')
    expect(snapName.code).not.toBe(0)
    const missing = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, '--output', 'json', `${registry!.host}/naiad/absent:1`])
    expect((JSON.parse(missing.stderr.trim().split('\n').pop()!) as { error: { code: string } }).error.code).toBe('NAIAD_REG_NOT_FOUND')
    expect(missing.code).not.toBe(0)
  })
})
