/**
 * FUSE failover (lib/fsdapi/failover.ts) with the real kernel: the node fsdaemon, started through
 * the failover launcher, mounts the Nydus fixture; `kill -9` of the daemon; a reader started
 * while no daemon runs waits (no ENOTCONN); the next daemon, started through the launcher, adopts
 * the same FUSE connection (same device, no new mount) and the reader gets the right bytes. A
 * clean stop unmounts and ends the holder. Without the launcher (no descriptors handed over) the
 * next daemon ends the old holder, detaches the dead mount and mounts again. A read the dead
 * daemon had taken from the kernel but not answered (its registry fetch held by a proxy when the
 * daemon was killed) is answered by the next daemon (FUSE_NOTIFY_RESEND).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import http from 'node:http'
import { Writable } from 'node:stream'
import { run } from '../../bin/program.ts'
import { buildImage, patternBytes, pushImage } from '../helpers/images.ts'
import { haveRegistry, startRegistry, type RunningRegistry } from '../helpers/registry.ts'
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, copyFileSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { holdersFile, launchCommand, parseHolders } from '../../lib/fsdapi/failover.ts'
import { NAIAD_BIN } from '../helpers/daemon.ts'

const exec = promisify(execFile)
const FIXTURES = new URL('../fixtures/nydus/', import.meta.url).pathname
const BLOB = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef'
const SHA = {
  'lib.rs': '1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69',
  'sync_io.rs': 'e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96'
}

function alive (pid: number): boolean {
  try { process.kill(pid, 0) } catch { return false }
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) !== 'Z'
  } catch { return false }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

describe.skipIf(!existsSync('/dev/fuse') || !existsSync(NAIAD_BIN) || !existsSync('/usr/bin/perl'))('fsdaemon failover: FUSE connections survive kill -9', () => {
  let work = ''
  const pids: number[] = []
  let reg: RunningRegistry | undefined

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'naiad-failover-'))
    mkdirSync(join(work, 'blobs'))
    copyFileSync(join(FIXTURES, BLOB), join(work, 'blobs', BLOB))
  })

  afterAll(async () => {
    for (const pid of pids) { try { process.kill(pid, 'SIGKILL') } catch {} }
    for (const l of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const mp = l.split(' ')[1]
      if (mp?.startsWith(work) === true) await exec('umount', ['-l', mp]).catch(() => {})
    }
    await reg?.stop()
    if (work !== '') rmSync(work, { recursive: true, force: true })
  })

  /** Starts the node daemon (detached, like the snapshotter does), through the launcher unless told not to. */
  async function startDaemon (name: string, launcher = true): Promise<{ pid: number, sock: string }> {
    const sock = join(work, name, 'fsd.sock')
    mkdirSync(join(work, name), { recursive: true })
    const argv = [NAIAD_BIN, 'fsd', '--socket', sock, '--cache-dir', join(work, name, 'cache'), '--state-dir', join(work, name, 'state'), '--log-level', 'info']
    const l = launcher ? launchCommand(sock, process.execPath, argv) : { cmd: process.execPath, args: argv }
    return await spawnDaemon(join(work, name), sock, l.cmd, l.args)
  }

  /** Spawns `cmd args` detached (log in dir/fsd.log) and waits until it answers on `sock` as that pid. */
  async function spawnDaemon (dir: string, sock: string, cmd: string, args: string[]): Promise<{ pid: number, sock: string }> {
    const log = openSync(join(dir, 'fsd.log'), 'a')
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', log, log] })
    closeSync(log)
    child.unref()
    pids.push(child.pid!)
    const client = new FsdClient({ socketPath: sock, timeoutMs: 2000 })
    for (let i = 0; i < 200; i++) {
      try {
        const info = await client.daemon()
        expect(info.pid).toBe(child.pid)
        return { pid: info.pid, sock }
      } catch {}
      await sleep(50)
    }
    throw new Error(`the fsdaemon did not start: ${readFileSync(join(dir, 'fsd.log'), 'utf8').slice(-2000)}`)
  }

  /**
   * Starts the node daemon with naiad-fsd.service's ExecStart, as systemd runs it: the repository's
   * unit with the installed paths mapped to this checkout and the test's directories (the failover
   * launcher execs naiad, so the pid systemd started is the daemon's).
   */
  async function startFromUnit (name: string): Promise<{ pid: number, sock: string }> {
    const dir = join(work, name)
    const sock = join(dir, 'fsd.sock')
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'fsd.toml'), `[log]\nlevel = "info"\n[socket]\npath = "${sock}"\n[state]\ndir = "${join(dir, 'state')}"\n[cache]\ndir = "${join(dir, 'cache')}"\n`)
    const unit = readFileSync(new URL('../../systemd/naiad-fsd.service', import.meta.url), 'utf8')
    const line = /^ExecStart=(.*)$/m.exec(unit)![1]!
    const argv = line.split(' ').flatMap((w) => {
      if (w === '/usr/local/bin/naiad') return [process.execPath, NAIAD_BIN]
      if (w === '/etc/naiad/fsd.toml') return [join(dir, 'fsd.toml')]
      if (w === holdersFile('/run/naiad/fsd.sock')) return [holdersFile(sock)]
      if (w.startsWith('/usr/local/lib/naiad/')) return [fileURLToPath(new URL(`../../${w.slice('/usr/local/lib/naiad/'.length)}`, import.meta.url))]
      return [w]
    })
    expect(argv.some((w) => w.startsWith('/usr/local') || w.startsWith('/etc/naiad') || w.startsWith('/run/naiad'))).toBe(false)
    return await spawnDaemon(dir, sock, argv[0]!, argv.slice(1))
  }

  /** Mounts the Nydus fixture at work/<name>/mnt through daemon `d`; the holder is killed at the end. */
  async function mountFixture (name: string, d: { sock: string }): Promise<{ mnt: string, client: FsdClient, holder: number }> {
    const mnt = join(work, name, 'mnt')
    const client = new FsdClient({ socketPath: d.sock })
    await client.mount({ mountpoint: mnt, bootstrap: join(FIXTURES, 'rafs-v6-2.2.boot'), blobDir: join(work, 'blobs') })
    const holder = parseHolders(readFileSync(holdersFile(d.sock), 'utf8'))[0]!.pid
    pids.push(holder)
    return { mnt, client, holder }
  }

  /** SIGTERM: a clean stop, which unmounts. */
  async function stopCleanly (pid: number, mnt: string): Promise<void> {
    process.kill(pid, 'SIGTERM')
    for (let i = 0; i < 200 && alive(pid); i++) await sleep(25)
    expect(readFileSync('/proc/self/mounts', 'utf8')).not.toContain(` ${mnt} `)
  }

  async function killAndWait (pid: number): Promise<void> {
    process.kill(pid, 'SIGKILL')
    for (let i = 0; i < 200 && alive(pid); i++) await sleep(20)
  }

  const sha = async (file: string): Promise<string> => (await exec('sha256sum', [file])).stdout.split(' ')[0]!

  it('the next daemon adopts the connection: a reader waiting meanwhile gets the right bytes, the mount stays the same', async () => {
    const d1 = await startDaemon('adopt')
    const mnt = join(work, 'adopt', 'mnt')
    const client = new FsdClient({ socketPath: d1.sock })
    await client.mount({ mountpoint: mnt, bootstrap: join(FIXTURES, 'rafs-v6-2.2.boot'), blobDir: join(work, 'blobs') })
    expect(await sha(join(mnt, 'lib.rs'))).toBe(SHA['lib.rs'])
    const dev = statSync(mnt).dev
    const holders = parseHolders(readFileSync(holdersFile(d1.sock), 'utf8'))
    expect(holders.map((h) => h.mountpoint)).toEqual([mnt])
    const holder = holders[0]!.pid
    pids.push(holder)
    expect(alive(holder)).toBe(true)

    await killAndWait(d1.pid)
    // no daemon: a new reader waits instead of failing
    let done = false
    const reading = sha(join(mnt, 'sync_io.rs')).finally(() => { done = true })
    await sleep(700)
    expect(done).toBe(false)
    const d2 = await startDaemon('adopt')
    expect(await reading).toBe(SHA['sync_io.rs'])
    expect(statSync(mnt).dev).toBe(dev)
    expect((await client.list()).map((m) => m.mountpoint)).toEqual([mnt])
    expect(readFileSync(join(work, 'adopt', 'fsd.log'), 'utf8')).toContain('adopted the FUSE connection of the dead daemon')
    expect(await sha(join(mnt, 'lib.rs'))).toBe(SHA['lib.rs'])

    // a clean stop unmounts and ends the holder
    process.kill(d2.pid, 'SIGTERM')
    for (let i = 0; i < 200 && alive(d2.pid); i++) await sleep(25)
    expect(readFileSync('/proc/self/mounts', 'utf8')).not.toContain(` ${mnt} `)
    for (let i = 0; i < 50 && alive(holder); i++) await sleep(20)
    expect(alive(holder)).toBe(false)
    expect(existsSync(holdersFile(d1.sock))).toBe(false)
  }, 60_000)

  it("naiad-fsd.service's ExecStart: after kill -9 the restarted unit adopts the connection (a reader waiting meanwhile gets the right bytes)", async () => {
    const d1 = await startFromUnit('unit')
    const { mnt, holder } = await mountFixture('unit', d1)
    const dev = statSync(mnt).dev
    await killAndWait(d1.pid)
    expect(alive(holder)).toBe(true) // KillMode=process: systemd signals only the daemon
    const reading = sha(join(mnt, 'sync_io.rs'))
    await sleep(300)
    const d2 = await startFromUnit('unit') // Restart=always
    expect(await reading).toBe(SHA['sync_io.rs'])
    expect(statSync(mnt).dev).toBe(dev)
    expect(readFileSync(join(work, 'unit', 'fsd.log'), 'utf8')).toContain('adopted the FUSE connection of the dead daemon')
    await stopCleanly(d2.pid, mnt)
  }, 60_000)

  it('handover (`naiad fsctl handover`, SIGUSR2): the daemon exits without unmounting and the next one adopts the mount', async () => {
    const d1 = await startDaemon('handover')
    const { mnt, client, holder } = await mountFixture('handover', d1)
    expect(await sha(join(mnt, 'lib.rs'))).toBe(SHA['lib.rs'])
    expect((await client.daemon()).failover).toBe(true)
    const dev = statSync(mnt).dev
    const out: string[] = []
    const sink = new Writable({ write (c, _e, cb) { out.push(String(c)); cb() } })
    const handing = run(['fsctl', 'handover', '--socket', d1.sock, '--timeout', '30'], { stdout: sink, stderr: sink })
    for (let i = 0; i < 200 && alive(d1.pid); i++) await sleep(25)
    expect(alive(d1.pid)).toBe(false)
    // still mounted, kept by its holder; a reader waits for the next daemon
    expect(readFileSync('/proc/self/mounts', 'utf8')).toContain(` ${mnt} `)
    expect(alive(holder)).toBe(true)
    const reading = sha(join(mnt, 'sync_io.rs'))
    const d2 = await startDaemon('handover') // what the snapshotter's watchdog or systemd does
    expect(await handing).toBe(0)
    expect(out.join('')).toContain(`handed over: pid ${d1.pid}`)
    expect(out.join('')).toContain(`-> pid ${d2.pid}`)
    expect(await reading).toBe(SHA['sync_io.rs'])
    expect(statSync(mnt).dev).toBe(dev)
    const log = readFileSync(join(work, 'handover', 'fsd.log'), 'utf8')
    expect(log).toContain('handing over: leaving every mount to its FUSE holder')
    expect(log).toContain('adopted the FUSE connection of the dead daemon')
    await stopCleanly(d2.pid, mnt)
  }, 60_000)

  it('kernel passthrough across a crash: files open in either mode open again in that mode with the next daemon', async () => {
    const d1 = await startDaemon('modes')
    const { mnt, client } = await mountFixture('modes', d1)
    const holdOpen = (f: string): ChildProcess => {
      const c = spawn('sh', ['-c', `exec 3<"$1"; echo open; sleep 60`, 'sh', join(mnt, f)], { stdio: ['ignore', 'pipe', 'ignore'] })
      pids.push(c.pid!)
      return c
    }
    const opened = async (c: ChildProcess): Promise<void> => { await new Promise((resolve) => c.stdout!.once('data', resolve)) }
    // lib.rs is opened before its chunk is cached (through the daemon) and stays open
    const a = holdOpen('lib.rs')
    await opened(a)
    expect(await sha(join(mnt, 'lib.rs'))).toBe(SHA['lib.rs'])
    // sync_io.rs: cached, forgotten by the kernel, then opened by the kernel itself and kept open
    expect(await sha(join(mnt, 'sync_io.rs'))).toBe(SHA['sync_io.rs'])
    writeFileSync('/proc/sys/vm/drop_caches', '2')
    const b = holdOpen('sync_io.rs')
    await opened(b)
    expect((await client.list())[0]!.passthroughOpens).toBe(1)
    await killAndWait(d1.pid)
    const d2 = await startDaemon('modes')
    // the next daemon answers each inode's opens in its mode: lib.rs, now wholly cached, would
    // fail to open (EIO) if handed to the kernel while the first open of it lives
    expect(await sha(join(mnt, 'lib.rs'))).toBe(SHA['lib.rs'])
    expect(await sha(join(mnt, 'sync_io.rs'))).toBe(SHA['sync_io.rs'])
    expect((await client.list())[0]!.passthroughOpens).toBe(1)
    a.kill('SIGKILL')
    b.kill('SIGKILL')
    await stopCleanly(d2.pid, mnt)
  }, 60_000)

  it('without the launcher the next daemon ends the old holder and mounts again', async () => {
    const d1 = await startDaemon('plain')
    const { mnt, holder } = await mountFixture('plain', d1)
    await killAndWait(d1.pid)
    const d2 = await startDaemon('plain', false)
    expect(alive(holder)).toBe(false)
    expect(await sha(join(mnt, 'sync_io.rs'))).toBe(SHA['sync_io.rs'])
    expect(readFileSync(join(work, 'plain', 'fsd.log'), 'utf8')).toContain('remounted after restart')
    process.kill(d2.pid, 'SIGTERM')
    for (let i = 0; i < 200 && alive(d2.pid); i++) await sleep(25)
  }, 60_000)

  it.skipIf(!haveRegistry())('a read the dead daemon had taken but not answered is answered by the next one (resend)', async () => {
    reg = await startRegistry()
    const img = buildImage({ workDir: join(work, 'img'), layers: [(r) => { writeFileSync(join(r, 'big.bin'), patternBytes(3 << 20, 7)) }] })
    pushImage(img, reg.host, 'fo/app:oci')
    const sink = new Writable({ write (_c, _e, cb) { cb() } })
    expect(await run(['convert', '--source', `${reg.host}/fo/app:oci`, '--target', `${reg.host}/fo/app:nydus`], { stdout: sink, stderr: sink })).toBe(0)
    const want = (await exec('sha256sum', [join(work, 'img', 'layer0', 'big.bin')])).stdout.split(' ')[0]
    // a proxy in front of the registry that holds ranged blob GETs while told to
    let hold = false
    let heldOne: (() => void) | undefined
    const held = new Promise<void>((resolve) => { heldOne = resolve })
    const [rHost, rPort] = reg.host.split(':') as [string, string]
    const proxy = http.createServer((req, res) => {
      if (hold && req.url?.includes('/blobs/') === true && req.headers.range !== undefined) { heldOne?.(); return } // never answered
      const up = http.request({ host: rHost, port: Number(rPort), method: req.method, path: req.url, headers: req.headers }, (ur) => { res.writeHead(ur.statusCode ?? 502, ur.rawHeaders); ur.pipe(res) })
      up.on('error', () => { res.destroy() })
      req.pipe(up)
    })
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve))
    try {
      const ref = `127.0.0.1:${(proxy.address() as { port: number }).port}/fo/app:nydus`
      const d1 = await startDaemon('resend')
      const mnt = join(work, 'resend', 'mnt')
      await new FsdClient({ socketPath: d1.sock }).mount({ mountpoint: mnt, image: ref, prefetch: false })
      pids.push(...parseHolders(readFileSync(holdersFile(d1.sock), 'utf8')).map((h) => h.pid))
      hold = true
      const reading = sha(join(mnt, 'big.bin'))
      await held // the daemon has the READ and waits for the registry
      await killAndWait(d1.pid)
      hold = false
      await startDaemon('resend')
      expect(await reading).toBe(want)
    } finally {
      proxy.closeAllConnections()
      await new Promise((resolve) => proxy.close(resolve))
    }
  }, 90_000)
})
