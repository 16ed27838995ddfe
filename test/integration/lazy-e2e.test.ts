/**
 * End to end with real parts: a private registry (reached through a counting proxy), a private
 * containerd 1.6 with runc and the CRI plugin (snapshotter = "nydus",
 * disable_snapshot_annotations = false), naiad's snapshotter as the `nydus` proxy plugin with its
 * fsdaemon (real FUSE). A multi-layer busybox image is built, converted with `naiad convert`, and
 * both images are pushed. Then:
 *
 * - `naiad pull` of the Nydus image and `ctr run --snapshotter nydus` print the expected output,
 *   the data layers are never downloaded, and the registry serves far fewer bytes than the image
 *   holds;
 * - a listing of the container's filesystem (paths, types, modes, owners, sizes, link counts,
 *   link targets, sha256), computed inside the container by busybox with a script bind-mounted
 *   in, equals the listing of the original OCI image run under containerd's overlayfs snapshotter;
 * - the same lazy pull through containerd's CRI `runtime.v1.ImageService/PullImage` (our own
 *   proto subset, a tiny gRPC client), then a run in namespace k8s.io.
 *
 * The counting proxy runs in this process, so while anything reads through it only async child
 * processes are used. Containers run with --rm and a command (ctr never gets stdin).
 */
import { execFile } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, symlinkSync, writeFileSync, chownSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import * as grpc from '@grpc/grpc-js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadProto } from '../../lib/proto/index.ts'
import { haveContainerd, startContainerd, type RunningContainerd } from '../helpers/containerd.ts'
import { NAIAD_BIN, startNaiad, type Daemon } from '../helpers/daemon.ts'
import { buildImage, pushImage } from '../helpers/images.ts'
import { openImageStore } from '../../lib/registry/index.ts'
import { parseManifest } from '../../lib/oci/index.ts'
import { createHash, randomBytes } from 'node:crypto'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { haveRegistry, startCountingProxy, startRegistry, type CountingProxy, type RunningRegistry } from '../helpers/registry.ts'

const run = promisify(execFile)
const NS = 'naiadlazy'
const BIG = 16 * 1024 * 1024
const ready = process.getuid?.() === 0 && haveContainerd() && existsSync(NAIAD_BIN) && haveRegistry() && existsSync('/dev/fuse')

interface Summary { image: string, chainId: string, layers: Array<{ outcome: string, size: number, mediaType: string }>, skipped: number, downloaded: number, bytesDownloaded: number }

/** The listing script, run by busybox inside the container; one line per entry, sorted. */
const LIST_SCRIPT = `
B=/bin/busybox
$B find / -xdev | $B sort | while IFS= read -r p; do
  case "$p" in /|/naiad-list.sh|/proc|/sys|/dev|/dev/*|/run|/run/*|/etc/resolv.conf|/etc/hostname|/etc/hosts) continue;; esac
  t=$($B stat -c %F "$p")
  line=$($B stat -c '%n|%F|%a|%u|%g' "$p")
  case "$t" in
    "regular file"|"regular empty file") line="$line|$($B stat -c '%s|%h' "$p")|$($B sha256sum "$p" | $B cut -d' ' -f1)";;
    "symbolic link") line="$line|$($B stat -c %s "$p")|$($B readlink "$p")";;
    "character special file"|"block special file") line="$line|$($B stat -c '%t,%T' "$p")";;
  esac
  echo "$line"
done
`

async function naiad (args: string[], timeoutMs = 120_000): Promise<{ code: number, stdout: string, stderr: string }> {
  try {
    const r = await run(process.execPath, [NAIAD_BIN, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 })
    return { code: 0, stdout: r.stdout, stderr: r.stderr }
  } catch (err) {
    const e = err as { code?: number, stdout?: string, stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) }
  }
}

/** A unary call of runtime.v1.ImageService (our proto subset) on containerd's socket. */
async function cri<Res> (address: string, method: 'PullImage' | 'ImageStatus', req: unknown): Promise<Res> {
  const pkg = loadProto('cri/runtime/v1/images.proto') as unknown as { runtime: { v1: { ImageService: grpc.ServiceClientConstructor } } }
  const client = new pkg.runtime.v1.ImageService(`unix:${address}`, grpc.credentials.createInsecure())
  try {
    return await new Promise<Res>((resolve, reject) => {
      const fn = (client as unknown as Record<string, (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: Res) => void) => void>)[method]!
      fn.call(client, req, new grpc.Metadata(), { deadline: new Date(Date.now() + 120_000) }, (err, res) => {
        if (err !== null) reject(err)
        else resolve(res)
      })
    })
  } finally {
    client.close()
  }
}

/** runtime.v1.ImageService/PullImage; returns the image ref (config digest). */
async function criPull (address: string, image: string): Promise<string> {
  return (await cri<{ imageRef: string }>(address, 'PullImage', { image: { image } })).imageRef
}

describe.skipIf(!ready)('lazy end to end: naiad pull / CRI PullImage + ctr run on the nydus snapshotter', () => {
  let base = ''
  let snap: Daemon | undefined
  let ctd: RunningContainerd | undefined
  let registry: RunningRegistry | undefined
  let proxy: CountingProxy | undefined
  let ociRef = ''
  let nydusRef = ''
  let listScript = ''
  /** Bytes of the Nydus image's layers (what a full pull downloads). */
  let imageBytes = 0
  let bigSha = ''
  let snapArgs: string[] = []

  beforeAll(async () => {
    base = await mkdtemp('/tmp/naiad-lazy-')
    registry = await startRegistry()
    proxy = await startCountingProxy(registry.host)
    const img = buildImage({
      workDir: join(base, 'img'),
      cmd: ['/bin/busybox', 'cat', '/etc/motd'],
      layers: [
        (root) => {
          mkdirSync(join(root, 'bin'))
          copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'))
          chmodSync(join(root, 'bin', 'busybox'), 0o755)
          for (const l of ['sh', 'cat', 'ls']) symlinkSync('busybox', join(root, 'bin', l))
          mkdirSync(join(root, 'etc'))
          writeFileSync(join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n')
          writeFileSync(join(root, 'etc', 'gone'), 'deleted in layer 3\n')
        },
        (root) => {
          mkdirSync(join(root, 'data'))
          const big = randomBytes(BIG)
          bigSha = createHash('sha256').update(big).digest('hex')
          writeFileSync(join(root, 'data', 'big.bin'), big)
          writeFileSync(join(root, 'data', 'small.txt'), 'a small file\n')
          linkSync(join(root, 'data', 'small.txt'), join(root, 'data', 'small-link.txt'))
          chownSync(join(root, 'data', 'small.txt'), 1234, 5678)
          chmodSync(join(root, 'data', 'small.txt'), 0o640)
          writeFileSync(join(root, 'data', 'empty'), '')
        },
        (root) => {
          mkdirSync(join(root, 'etc'))
          writeFileSync(join(root, 'etc', '.wh.gone'), '')
          writeFileSync(join(root, 'etc', 'motd'), 'hello from a lazy naiad image\n')
          symlinkSync('../data/small.txt', join(root, 'etc', 'link'))
          mkdirSync(join(root, 'opt', 'app'), { recursive: true })
          chmodSync(join(root, 'opt', 'app'), 0o711)
        }
      ]
    })
    ociRef = pushImage(img, registry.host, 'naiad/lazy:oci')
    const c = await naiad(['convert', '--source', ociRef, '--target', `${registry.host}/naiad/lazy:nydus`])
    expect(c.code, c.stderr).toBe(0)
    nydusRef = `${proxy.host}/naiad/lazy:nydus`
    const store = openImageStore(`${registry.host}/naiad/lazy:nydus`, { plainHttp: true })
    try {
      const m = await store.getManifest()
      imageBytes = parseManifest(m.bytes, m.mediaType).layers.reduce((n, l) => n + l.size, 0)
    } finally {
      await store.close()
    }
    expect(imageBytes).toBeGreaterThan(BIG)
    listScript = join(base, 'naiad-list.sh')
    await writeFile(listScript, LIST_SCRIPT, { mode: 0o755 })

    const cfg = join(base, 'snapshotter.toml')
    await writeFile(cfg, [
      '[root]', `dir = "${join(base, 'snapshots')}"`,
      '[socket]', `path = "${join(base, 'snap.sock')}"`,
      '[fsdaemon]', `socket = "${join(base, 'fsd.sock')}"`, `binary = "${NAIAD_BIN}"`, `cache_dir = "${join(base, 'fsd-cache')}"`,
      `state_dir = "${join(base, 'fsd-state')}"`, `log_file = "${join(base, 'fsd.log')}"`
    ].join('\n') + '\n')
    snapArgs = ['snapshotter', '--config', cfg, '--stop-fsdaemon', '--log-level', 'debug']
    snap = startNaiad(snapArgs)
    await snap.waitFor('ready', 30_000)
    ctd = await startContainerd({ dir: join(base, 'ctd'), snapshotterSocket: join(base, 'snap.sock'), cri: true })
  }, 180_000)

  afterAll(async () => {
    await ctd?.stop()
    await snap?.stop()
    await proxy?.stop()
    await registry?.stop()
    if (base !== '') {
      const { unmountUnder } = await import('../helpers/containerd.ts')
      await unmountUnder(base)
      await rm(base, { recursive: true, force: true })
    }
  })

  const logs = (): string => `\ncontainerd log:\n${ctd?.log().slice(-3000) ?? ''}\nsnapshotter log:\n${snap?.output().slice(-3000) ?? ''}`

  it('CRI ImageService/PullImage pulls lazily with the cri.* labels; ctr -n k8s.io run works', async () => {
    proxy!.reset()
    const criRef = `${proxy!.host}/naiad/lazy:nydus`
    const imageRef = await criPull(ctd!.address, criRef).catch((err: Error) => { throw new Error(`PullImage: ${err.message}${logs()}`) })
    expect(imageRef).toMatch(/^sha256:[0-9a-f]{64}$/)
    // the data blobs were not downloaded by containerd
    const pulled = proxy!.bytesServed()
    expect(pulled, `PullImage fetched ${pulled} of ${imageBytes} bytes`).toBeLessThan(imageBytes * 0.05)
    const out = await ctd!.ctr('k8s.io', ['run', '--rm', '--snapshotter', 'nydus', criRef, `cri-1-${process.pid}`, '/bin/busybox', 'cat', '/etc/motd', '/etc/link'])
    expect(out).toBe('hello from a lazy naiad image\na small file\n')
    // the run read busybox and two small files through FUSE with Range requests: far less than the image
    const served = proxy!.bytesServed()
    expect(served, `registry served ${served} of ${imageBytes} bytes`).toBeLessThan(imageBytes * 0.2)
    expect(proxy!.requests().some((q) => q.range !== undefined)).toBe(true)
    // four committed image snapshots; the top one carries the labels the CRI plugin sent
    const rows = (await ctd!.ctr('k8s.io', ['snapshots', '--snapshotter', 'nydus', 'ls'])).split('\n').slice(1).map((l) => l.trim().split(/\s+/)).filter((r) => r[r.length - 1] === 'Committed')
    expect(rows).toHaveLength(4)
    const parents = new Set(rows.map((r) => r.length === 3 ? r[1] : ''))
    const top = rows.find((r) => !parents.has(r[0]))![0]!
    const info = JSON.parse(await ctd!.ctr('k8s.io', ['snapshots', '--snapshotter', 'nydus', 'info', top])) as { Labels: Record<string, string> }
    expect(info.Labels['containerd.io/snapshot/cri.image-ref']).toBe(criRef)
    expect(info.Labels['containerd.io/snapshot/nydus-bootstrap']).toBe('true')
  }, 120_000)

  it('naiad pull skips the data layers; ctr run prints the output; the registry served far fewer bytes than the image holds', async () => {
    proxy!.reset()
    const r = await naiad(['pull', '--address', ctd!.address, '--namespace', NS, '--output', 'json', nydusRef])
    expect(r.code, r.stderr + logs()).toBe(0)
    const s = JSON.parse(r.stdout) as Summary
    // three Nydus data blobs taken as remote, the small bootstrap layer downloaded and unpacked
    expect(s.layers.map((l) => l.outcome)).toEqual(['remote', 'remote', 'remote', 'downloaded'])
    expect(s.skipped).toBe(3)
    expect(s.layers.reduce((n, l) => n + l.size, 0)).toBe(imageBytes)
    const out = await ctd!.ctr(NS, ['run', '--rm', '--snapshotter', 'nydus', nydusRef, `lazy-1-${process.pid}`])
    expect(out).toBe('hello from a lazy naiad image\n')
    // another small file (its chunk may already be in the fsdaemon's cache)
    const out2 = await ctd!.ctr(NS, ['run', '--rm', '--snapshotter', 'nydus', nydusRef, `lazy-2-${process.pid}`, '/bin/busybox', 'cat', '/etc/passwd'])
    expect(out2).toBe('root:x:0:0:root:/root:/bin/sh\n')
    const served = proxy!.bytesServed()
    expect(served, `registry served ${served} of ${imageBytes} bytes`).toBeLessThan(imageBytes * 0.1)
  }, 120_000)

  it('the container filesystem listing equals the OCI image run under containerd\'s overlayfs snapshotter', async () => {
    const mount = ['--mount', `type=bind,src=${listScript},dst=/naiad-list.sh,options=rbind:ro`]
    const lazy = await ctd!.ctr(NS, ['run', '--rm', '--snapshotter', 'nydus', ...mount, nydusRef, `lazy-list-${process.pid}`, '/bin/busybox', 'sh', '/naiad-list.sh'])
    await ctd!.ctr(NS, ['images', 'pull', '--plain-http', '--snapshotter', 'overlayfs', ociRef])
    const plain = await ctd!.ctr(NS, ['run', '--rm', '--snapshotter', 'overlayfs', ...mount, ociRef, `oci-list-${process.pid}`, '/bin/busybox', 'sh', '/naiad-list.sh'])
    expect(plain).toContain(`/data/big.bin|regular file|644|0|0|${BIG}|1|`)
    expect(plain).toContain('/data/small.txt|regular file|640|1234|5678|13|2|')
    expect(plain).toContain('/etc/link|symbolic link|777|0|0|17|../data/small.txt')
    expect(plain).not.toContain('/etc/gone')
    expect(plain.split('\n').length).toBeGreaterThan(10)
    expect(lazy).toBe(plain)
  }, 120_000)

  it('a Nydus image pulled into a snapshotter that cannot serve it fails clearly (NAIAD_PULL_APPLY) and leaves no image', async () => {
    const r = await naiad(['pull', '--address', ctd!.address, '--namespace', 'naiadfail', '--snapshotter', 'overlayfs', `${registry!.host}/naiad/lazy:nydus`])
    expect(r.stderr).toContain('NAIAD_PULL_APPLY')
    expect(r.stderr).toMatch(/nydus\.blob/)
    expect(r.code).not.toBe(0)
    expect(await ctd!.ctr('naiadfail', ['images', 'ls', '-q'])).toBe('')
    // the half-made extract snapshot was removed
    expect((await ctd!.ctr('naiadfail', ['snapshots', '--snapshotter', 'overlayfs', 'ls'])).split('\n').filter((l) => l.includes('extract-'))).toEqual([])
  }, 60_000)

  it('naiad pull --namespace k8s.io pre-pulls for the kubelet: CRI ImageStatus sees the image', async () => {
    // a second tag of the Nydus image, so CRI has not pulled it itself
    await run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${registry!.host}/naiad/lazy:nydus`, `docker://${registry!.host}/naiad/lazy:prepulled`])
    const ref = `${proxy!.host}/naiad/lazy:prepulled`
    const r = await naiad(['pull', '--address', ctd!.address, '--namespace', 'k8s.io', '--output', 'json', ref])
    expect(r.code, r.stderr + logs()).toBe(0)
    const s = JSON.parse(r.stdout) as Summary & { config: string }
    // CRI's image store follows containerd's image events
    let status: { image: { id: string, repoTags: string[] } | null } = { image: null }
    const deadline = Date.now() + 10_000
    while (status.image === null && Date.now() < deadline) {
      status = await cri(ctd!.address, 'ImageStatus', { image: { image: ref } })
      if (status.image === null) await new Promise((resolve) => setTimeout(resolve, 200))
    }
    expect(status.image?.id).toBe(s.config)
    expect(status.image?.repoTags).toContain(ref)
  }, 60_000)

  it('kill -9 of the snapshotter while a container reads: it goes on; kill -9 of the fsdaemon: the running container goes on too (failover), and new containers work; so does a handover (upgrade)', async () => {
    const id = `lazy-long-${process.pid}`
    const pid = process.pid
    await ctd!.ctr(NS, ['run', '-d', '--snapshotter', 'nydus', nydusRef, id, '/bin/busybox', 'sleep', '600'])
    try {
      // the container reads the 16 MiB file (fetched lazily) while the snapshotter is dead
      const reading = ctd!.ctr(NS, ['tasks', 'exec', '--exec-id', `read-${pid}`, id, '/bin/busybox', 'sha256sum', '/data/big.bin'])
      await snap!.kill()
      expect((await reading).split(' ')[0]).toBe(bigSha)
      // the restarted snapshotter re-adopts the fsdaemon and serves new containers
      snap = startNaiad(snapArgs)
      await snap.waitFor('ready', 30_000)
      // containerd redials the proxy snapshotter with gRPC backoff (at most 3 s apart in 1.6): calls
      // in that window fail Unavailable, and the kubelet retries them; so does this test
      const runRetrying = async (name: string, cmd: string[]): Promise<string> => {
        for (let i = 0; ; i++) {
          try {
            return await ctd!.ctr(NS, ['run', '--rm', '--snapshotter', 'nydus', nydusRef, name, ...cmd])
          } catch (e) {
            if (i >= 20 || !/connection refused|Unavailable/i.test(String(e))) throw e
            await ctd!.ctr(NS, ['containers', 'delete', name]).catch(() => '')
            await new Promise((resolve) => setTimeout(resolve, 500))
          }
        }
      }
      expect(await runRetrying(`after-snap-kill-${pid}`, ['/bin/busybox', 'cat', '/data/small.txt'])).toBe('a small file\n')
      // the running container is still served
      expect(await ctd!.ctr(NS, ['tasks', 'exec', '--exec-id', `read2-${pid}`, id, '/bin/busybox', 'cat', '/etc/motd'])).toBe('hello from a lazy naiad image\n')

      // kill -9 of the fsdaemon: the snapshotter starts a new one within a second or two, which
      // adopts the image's FUSE connection (kept by its holder): the running container reads on
      const fsdPid = (await new FsdClient({ socketPath: join(base, 'fsd.sock') }).daemon()).pid
      process.kill(fsdPid, 'SIGKILL')
      for (let i = 0; i < 100; i++) {
        try { process.kill(fsdPid, 0) } catch { break }
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      // a name never looked up: answered by the new fsdaemon (a dead connection would say ENOTCONN)
      const err = await ctd!.ctr(NS, ['tasks', 'exec', '--exec-id', `read3-${pid}`, id, '/bin/busybox', 'ls', `/data/not-looked-up-${pid}`]).then(() => undefined, (e: Error) => e)
      expect(String(err?.message)).toMatch(/No such file or directory/)
      expect(await ctd!.ctr(NS, ['tasks', 'exec', '--exec-id', `read4-${pid}`, id, '/bin/busybox', 'cat', '/data/small.txt'])).toBe('a small file\n')
      // new containers work too
      expect(await ctd!.ctr(NS, ['run', '--rm', '--snapshotter', 'nydus', nydusRef, `after-fsd-kill-${pid}`, '/bin/busybox', 'sha256sum', '/data/big.bin'])).toMatch(new RegExp(`^${bigSha} `))
      const again = (await new FsdClient({ socketPath: join(base, 'fsd.sock') }).daemon()).pid
      expect(again).not.toBe(fsdPid)

      // an upgrade without unmounting: `naiad fsctl handover`; the snapshotter's watchdog starts
      // the next fsdaemon, which adopts the mount; the running container reads on
      const h = await naiad(['fsctl', 'handover', '--socket', join(base, 'fsd.sock'), '--timeout', '30'])
      expect(h.stderr).toBe('')
      expect(h.code).toBe(0)
      expect(h.stdout).toMatch(new RegExp(`^handed over: pid ${again} \\(\\S+\\) -> pid \\d+ \\(\\S+\\), \\d+ mount\\(s\\)$`, 'm'))
      const err2 = await ctd!.ctr(NS, ['tasks', 'exec', '--exec-id', `read5-${pid}`, id, '/bin/busybox', 'ls', `/data/not-looked-up-2-${pid}`]).then(() => undefined, (e: Error) => e)
      expect(String(err2?.message)).toMatch(/No such file or directory/)
      expect(await ctd!.ctr(NS, ['tasks', 'exec', '--exec-id', `read6-${pid}`, id, '/bin/busybox', 'sha256sum', '/data/big.bin'])).toMatch(new RegExp(`^${bigSha} `))
    } finally {
      await ctd!.ctr(NS, ['tasks', 'kill', '-s', 'SIGKILL', id]).catch(() => '')
      for (let i = 0; i < 100; i++) {
        const st = await ctd!.ctr(NS, ['tasks', 'ls']).catch(() => '')
        if (!st.split('\n').some((l) => l.startsWith(id + ' ') && /RUNNING/.test(l))) break
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      await ctd!.ctr(NS, ['tasks', 'delete', id]).catch(() => '')
      await ctd!.ctr(NS, ['containers', 'delete', id]).catch(() => '')
    }
  }, 180_000)
})
