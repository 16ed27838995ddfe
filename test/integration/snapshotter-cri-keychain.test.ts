/**
 * The CRI keychain through a real containerd 1.6 CRI plugin: the kubelet's ImageService calls go
 * to naiad's proxy (snapshotter/cri/proxy.ts), which forwards them to containerd unchanged and
 * records each PullImage's credentials. A registry with htpasswd (Basic) auth: PullImage with
 * the right AuthConfig succeeds through the proxy and the keychain answers for the image (and
 * for another repository of that registry, not for another registry); without credentials
 * containerd's own error comes back through the proxy with its status code; ImageStatus and
 * RemoveImage pass through; the password never appears in the proxy's log.
 *
 * End to end with `[cri_keychain]` on in the snapshotter (its own proxy, the kubelet's image
 * service endpoint): a private Nydus image pulled through it with the pull secret's credentials
 * runs under `ctr -n k8s.io run --snapshotter nydus`, its data blobs read lazily by the
 * fsdaemon with those credentials (the node has no docker config.json), and the password is in
 * no log and not in the fsdaemon's state file.
 */
import * as grpc from '@grpc/grpc-js'
import { mkdirSync, copyFileSync, chmodSync, writeFileSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { createLogger } from '../../lib/log/index.ts'
import { loadProto } from '../../lib/proto/index.ts'
import { CriKeychain } from '../../snapshotter/cri/keychain.ts'
import { CriImageProxy } from '../../snapshotter/cri/proxy.ts'
import { canMount } from '../conformance/snapshotter.ts'
import { haveContainerd, startContainerd, unmountUnder, type RunningContainerd } from '../helpers/containerd.ts'
import { NAIAD_BIN, startNaiad, type Daemon } from '../helpers/daemon.ts'
import { buildImage, pushImage } from '../helpers/images.ts'
import { haveRegistry, startRegistry, type RunningRegistry } from '../helpers/registry.ts'
import { existsSync } from 'node:fs'

const ready = canMount() && haveContainerd() && haveRegistry() && existsSync(NAIAD_BIN)
const USER = 'kube'
const PASSWORD = 'pull-secret-Zq81x'

type Call = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: Record<string, unknown>) => void) => void

async function call (socket: string, method: string, req: unknown): Promise<Record<string, unknown>> {
  const pkg = loadProto('cri/runtime/v1/images.proto') as unknown as { runtime: { v1: { ImageService: grpc.ServiceClientConstructor } } }
  const client = new pkg.runtime.v1.ImageService(`unix:${socket}`, grpc.credentials.createInsecure())
  try {
    return await new Promise((resolve, reject) => {
      const fn = (client as unknown as Record<string, Call>)[method]!
      fn.call(client, req, new grpc.Metadata(), { deadline: new Date(Date.now() + 60_000) }, (err, res) => { if (err !== null) reject(err); else resolve(res) })
    })
  } finally {
    client.close()
  }
}

describe.skipIf(!ready)('CRI keychain: naiad ImageService proxy in front of containerd 1.6 CRI', () => {
  let base = ''
  let reg: RunningRegistry | undefined
  let snap: Daemon | undefined
  let ctd: RunningContainerd | undefined
  let proxy: CriImageProxy | undefined
  const keychain = new CriKeychain()
  let logText = ''
  let image = ''

  beforeAll(async () => {
    base = await mkdtemp('/tmp/naiad-crikc-')
    reg = await startRegistry({ htpasswd: { user: USER, password: PASSWORD } })
    const img = buildImage({
      workDir: join(base, 'img'),
      layers: [(root) => {
        mkdirSync(join(root, 'bin'))
        copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'))
        chmodSync(join(root, 'bin', 'busybox'), 0o755)
        writeFileSync(join(root, 'hello.txt'), 'private image\n')
      }]
    })
    image = pushImage(img, reg.host, 'private/app:1', `${USER}:${PASSWORD}`)
    // the Nydus image, converted with credentials only this test process has
    const withCreds = join(base, 'docker-creds')
    mkdirSync(withCreds)
    writeFileSync(join(withCreds, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString('base64') } } }))
    const saved = process.env['DOCKER_CONFIG']
    process.env['DOCKER_CONFIG'] = withCreds
    try {
      const out: string[] = []
      const sink = new Writable({ write (c, _e, cb) { out.push(String(c)); cb() } })
      const code = await run(['convert', '--source', image, '--target', `${reg.host}/private/app:nydus`, '--output', 'json'], { stdout: sink, stderr: sink })
      expect(code, out.join('')).toBe(0)
    } finally {
      if (saved === undefined) delete process.env['DOCKER_CONFIG']
      else process.env['DOCKER_CONFIG'] = saved
    }
    // the node (snapshotter, fsdaemon) has no registry credentials of its own
    const noCreds = join(base, 'docker-none')
    mkdirSync(noCreds)
    const cfg = join(base, 'snapshotter.toml')
    await writeFile(cfg, [
      '[root]', `dir = "${join(base, 'snapshots')}"`,
      '[socket]', `path = "${join(base, 'snap.sock')}"`,
      '[fsdaemon]', `socket = "${join(base, 'fsd.sock')}"`, `binary = "${NAIAD_BIN}"`, `cache_dir = "${join(base, 'fsd-cache')}"`,
      `state_dir = "${join(base, 'fsd-state')}"`, `log_file = "${join(base, 'fsd.log')}"`,
      '[fallback]', 'materialize = false',
      '[cri_keychain]', 'enable = true', `socket = "${join(base, 'snap-cri.sock')}"`, `image_service_address = "${join(base, 'ctd', 'c.sock')}"`
    ].join('\n') + '\n')
    snap = startNaiad(['snapshotter', '--config', cfg, '--stop-fsdaemon', '--log-level', 'debug'], { DOCKER_CONFIG: noCreds })
    await snap.waitFor('ready', 30_000)
    ctd = await startContainerd({ dir: join(base, 'ctd'), snapshotterSocket: join(base, 'snap.sock'), cri: true })
    const log = createLogger({ service: 'test', level: 'debug', destination: new Writable({ write (c, _e, cb) { logText += String(c); cb() } }) as never })
    proxy = new CriImageProxy({ keychain, log }, { socket: join(base, 'cri-image.sock'), upstream: ctd.address })
    await proxy.start()
  })

  afterAll(async () => {
    await proxy?.close()
    await proxy?.close()
    await ctd?.stop()
    await snap?.stop()
    await reg?.stop()
    if (base !== '') {
      await unmountUnder(base)
      await rm(base, { recursive: true, force: true })
    }
  })

  it('forwards a PullImage without credentials and returns containerd\'s error status', async () => {
    const err = await call(join(base, 'cri-image.sock'), 'PullImage', { image: { image } }).then(() => undefined, (e: grpc.ServiceError) => e)
    expect(err).toBeDefined()
    expect(err!.code).not.toBe(grpc.status.UNIMPLEMENTED)
    expect(err!.details).toMatch(/401|unauthorized|authorization/i)
    expect(keychain.get(image)).toBeUndefined()
  })

  it('records the credentials of an authenticated PullImage, which containerd completes', async () => {
    const res = await call(join(base, 'cri-image.sock'), 'PullImage', { image: { image }, auth: { username: USER, password: PASSWORD, serverAddress: `http://${reg!.host}` } })
    expect(String(res['imageRef'])).toMatch(/^sha256:[0-9a-f]{64}$/)
    expect(keychain.get(image)).toEqual({ username: USER, password: PASSWORD })
    // another repository of the same registry: the registry's credentials
    expect(keychain.get(`${reg!.host}/private/other:2`)).toEqual({ username: USER, password: PASSWORD })
    // another registry: nothing
    expect(keychain.get('127.0.0.2:5000/private/app:1')).toBeUndefined()
    const status = await call(join(base, 'cri-image.sock'), 'ImageStatus', { image: { image } })
    expect((status['image'] as { repoTags: string[] }).repoTags).toContain(image)
    await call(join(base, 'cri-image.sock'), 'RemoveImage', { image: { image } })
    const gone = await call(join(base, 'cri-image.sock'), 'ImageStatus', { image: { image } })
    expect(gone['image']).toBeNull()
    expect(logText).toContain('recorded pull credentials')
    expect(logText).not.toContain(PASSWORD)
    expect(snap!.output()).not.toContain(PASSWORD)
  })

  it('decodes `auth` (base64 user:password) as the kubelet sends for dockerconfigjson secrets', async () => {
    const kc = new CriKeychain()
    expect(kc.remember(image, { auth: Buffer.from(`${USER}:${PASSWORD}`).toString('base64') })).toBe(true)
    expect(kc.get(image)).toEqual({ username: USER, password: PASSWORD })
    expect(kc.remember(image, {})).toBe(false)
    expect(kc.remember('oci:/tmp/x:latest', { username: 'a', password: 'b' })).toBe(false)
  })

  it('a private Nydus image pulled through the snapshotter\'s CRI proxy runs lazily with the pull\'s credentials', async () => {
    const nydus = `${reg!.host}/private/app:nydus`
    const logs = (): string => `\ncontainerd log:\n${ctd!.log().slice(-3000)}\nsnapshotter log:\n${snap!.output().slice(-4000)}`
    const res = await call(join(base, 'snap-cri.sock'), 'PullImage', { image: { image: nydus }, auth: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString('base64') } })
      .catch((err: Error) => { throw new Error(`PullImage: ${err.message}${logs()}`) })
    expect(String(res['imageRef'])).toMatch(/^sha256:[0-9a-f]{64}$/)
    // (no --rm: the container's snapshot keeps the image's mount in use until it is listed below;
    // once the container is gone, containerd's GC may have the snapshotter release the mount)
    const name = `cri-private-${process.pid}`
    const out = await ctd!.ctr('k8s.io', ['run', '--snapshotter', 'nydus', nydus, name, '/bin/busybox', 'cat', '/hello.txt'])
      .catch((err: Error) => { throw new Error(`${err.message}${logs()}`) })
    expect(out).toBe('private image\n')
    // served lazily: the fsdaemon mounted the image and read its blob from the registry
    const mounts = await new FsdClient({ socketPath: join(base, 'fsd.sock') }).list()
    await ctd!.ctr('k8s.io', ['containers', 'rm', name])
    const m = mounts.find((x) => x.image === nydus)
    expect(m, JSON.stringify(mounts)).toBeDefined()
    const fetched = m!.blobs.reduce((n, b) => n + Object.values(b.bytesFetched).reduce((a, x) => a + x, 0), 0)
    expect(fetched).toBeGreaterThan(0)
    expect(m!.eio).toBe(0)
    expect(snap!.output()).toContain('recorded pull credentials')
    // the password is in no log and not in the fsdaemon's state
    expect(snap!.output()).not.toContain(PASSWORD)
    expect(readFileSync(join(base, 'fsd.log'), 'utf8')).not.toContain(PASSWORD)
    // (every file of the state dir, the kernel views' bootstraps and mode logs included; not the
    // views' mounts, which hold the image)
    const state = join(base, 'fsd-state')
    const files = (dir: string): string[] => readdirSync(dir, { withFileTypes: true }).flatMap(e => {
      const p = join(dir, e.name)
      if (e.isDirectory()) return statSync(p).dev === statSync(state).dev ? files(p) : []
      return e.isFile() ? [p] : []
    })
    expect(files(state).length).toBeGreaterThan(0)
    for (const f of files(state)) expect(readFileSync(f, 'utf8'), f).not.toContain(PASSWORD)
    expect(JSON.stringify(mounts)).not.toContain(PASSWORD)
  }, 120_000)
})
