/**
 * The CRI keychain through a real containerd 1.6 CRI plugin: the kubelet's ImageService calls go
 * to naiad's proxy (snapshotter/cri/proxy.ts), which forwards them to containerd unchanged and
 * records each PullImage's credentials. A registry with htpasswd (Basic) auth: PullImage with
 * the right AuthConfig succeeds through the proxy and the keychain answers for the image (and
 * for another repository of that registry, not for another registry); without credentials
 * containerd's own error comes back through the proxy with its status code; ImageStatus and
 * RemoveImage pass through; the password never appears in the proxy's log.
 */
import * as grpc from '@grpc/grpc-js'
import { mkdirSync, copyFileSync, chmodSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../../lib/log/index.ts'
import { loadProto } from '../../lib/proto/index.ts'
import { CriKeychain } from '../../snapshotter/cri/keychain.ts'
import { CriImageProxy } from '../../snapshotter/cri/proxy.ts'
import { canMount } from '../conformance/snapshotter.ts'
import { haveContainerd, startContainerd, type RunningContainerd } from '../helpers/containerd.ts'
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
    snap = startNaiad(['snapshotter', '--root', join(base, 'snapshots'), '--socket', join(base, 'snap.sock'), '--log-level', 'debug'])
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
    if (base !== '') await rm(base, { recursive: true, force: true })
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
})
