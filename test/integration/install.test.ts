/**
 * `naiad install` / `naiad uninstall` as processes (dist/bin/naiad.js) on a temporary root: the
 * expected tree, a working installed copy (its scheduler reaches READY=1 through a real notify
 * socket), `systemd-analyze verify` of every unit as installed, idempotence (a second run changes
 * nothing, not even a timestamp), an operator's edited configuration kept with the new example
 * beside it, upgrades removing stale files, conflicts refused, and uninstall leaving the root as
 * it was.
 */
import { execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { copyFile, cp, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startNotifyListener } from '../helpers/notify-listener.ts'

const REPO = fileURLToPath(new URL('../../', import.meta.url))
const NAIAD = join(REPO, 'dist/bin/naiad.js')
const UNITS = ['naiad-snapshotter.service', 'naiad-fsd.service', 'naiad-peer.service', 'naiad-scheduler.service']
const CONFIGS = ['fsd.toml', 'peer.toml', 'scheduler.toml', 'snapshotter.toml']
const HOST_UNITS = '/usr/lib/systemd/system'
const ANALYZE = '/usr/bin/systemd-analyze'

interface Run { code: number | null, stdout: string, stderr: string }

async function run (cmd: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

// The checkout's dist/ changes whenever anyone rebuilds it; the tests install from a staged copy
// (itself installed from the checkout: an installed naiad can install itself), so every run of
// the test sees the same source.
let STAGED = ''
const naiad = async (...args: string[]): Promise<Run> => await run(process.execPath, [STAGED, ...args])

/** path → "type mode size [mtime]" of every entry under root. */
async function tree (root: string, withTimes = false): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name)
      const st = await lstat(p)
      const rel = p.slice(root.length)
      const t = withTimes ? ` ${st.mtimeMs}` : ''
      if (e.isDirectory()) {
        out.set(rel, `dir ${(st.mode & 0o7777).toString(8)}${t}`)
        await walk(p)
      } else if (e.isFile()) {
        // contents are compared where it matters (units, configs); here size, mode and time
        out.set(rel, `file ${(st.mode & 0o7777).toString(8)} ${st.size}${t}`)
      } else {
        out.set(rel, `other ${st.mode.toString(8)}`)
      }
    }
  }
  await walk(root)
  return out
}

describe.skipIf(!existsSync(NAIAD))('naiad install / uninstall into a temporary root', () => {
  let base: string
  let root: string
  let before: Map<string, string>
  let source: string

  beforeAll(async () => {
    base = await mkdtemp(join(tmpdir(), 'naiad-install-'))
    root = join(base, 'root')
    // the root holds the distribution's units, so systemd-analyze --root can resolve
    // sysinit.target and the other dependencies of ours
    await mkdir(join(root, 'usr/lib/systemd'), { recursive: true })
    if (existsSync(HOST_UNITS)) await cp(HOST_UNITS, join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true })
    await mkdir(join(root, 'etc'), { recursive: true })
    before = await tree(root)
    const stage = await run(process.execPath, [NAIAD, 'install', '--root', join(base, 'stage')])
    if (stage.code !== 0) throw new Error(`staging failed: ${stage.stderr}`)
    source = join(base, 'stage/usr/local/lib/naiad')
    STAGED = join(source, 'dist/bin/naiad.js')
  })

  afterAll(async () => {
    await rm(base, { recursive: true, force: true })
  })

  it('--dry-run reports the installation and writes nothing', async () => {
    const r = await naiad('install', '--root', root, '--dry-run')
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('+ /usr/local/bin/naiad')
    expect(r.stdout).toMatch(/dry run: \d+ changes/)
    expect(await tree(root)).toEqual(before)
  })

  it('installs the suite, the wrapper, the units, the configurations and the containerd snippet', async () => {
    const r = await naiad('install', '--root', root)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    for (const u of UNITS) expect(r.stdout).toContain(`+ /etc/systemd/system/${u}`)
    expect(r.stdout).toContain('systemctl daemon-reload') // not run here (not PID 1 / --root), but said

    const home = join(root, 'usr/local/lib/naiad')
    const wrapper = await readFile(join(root, 'usr/local/bin/naiad'), 'utf8')
    expect(wrapper).toContain(`exec '${process.execPath}' '/usr/local/lib/naiad/dist/bin/naiad.js' "$@"`)
    expect((await lstat(join(root, 'usr/local/bin/naiad'))).mode & 0o777).toBe(0o755)
    for (const f of ['package.json', 'dist/bin/naiad.js', 'dist/systemd/install.js', 'dist/lib/systemd/index.js', 'lib/proto/containerd/services/snapshots/v1/snapshots.proto',
      'node_modules/better-sqlite3/package.json', 'node_modules/@grpc/grpc-js/package.json', 'node_modules/smol-toml/package.json', 'systemd/naiad-peer.service',
      // the fsdaemon's native addon (kernel passthrough), where fsdaemon/fuse/native.ts looks for it
      'fsdaemon/fuse/native/build/Release/naiad_fuse.node']) {
      expect(existsSync(join(home, f)), f).toBe(true)
    }
    // production dependencies only, no sources, tests or benchmarks
    for (const f of ['node_modules/vitest', 'node_modules/typescript', 'node_modules/eslint', 'dist/test', 'dist/bench', 'snapshotter/main.ts']) {
      expect(existsSync(join(home, f)), f).toBe(false)
    }
    for (const u of UNITS) {
      const text = await readFile(join(root, 'etc/systemd/system', u), 'utf8')
      expect(text).toBe(await readFile(join(source, 'systemd', u), 'utf8'))
      // naiad-fsd.service through the failover launcher the install wrote (it execs naiad)
      expect(text).toMatch(/^ExecStart=(\/usr\/bin\/perl \/usr\/local\/lib\/naiad\/lib\/fsdapi\/fsd-launcher\.pl \S+ )?\/usr\/local\/bin\/naiad /m)
      // Documentation= names a file the install wrote
      const doc = /^Documentation=file:\/\/(\S+)$/m.exec(text)
      expect(doc, u).not.toBeNull()
      expect(existsSync(join(root, doc![1]!)), doc![1]).toBe(true)
    }
    for (const c of CONFIGS) expect(await readFile(join(root, 'etc/naiad', c), 'utf8')).toBe(await readFile(join(source, 'systemd/etc/naiad', c), 'utf8'))
    expect(await readFile(join(root, 'etc/naiad/containerd-snippet.toml'), 'utf8')).toBe(await readFile(join(REPO, 'systemd/containerd-snippet.toml'), 'utf8'))
    // the installed copies are the repository's
    for (const u of UNITS) expect(await readFile(join(source, 'systemd', u), 'utf8')).toBe(await readFile(join(REPO, 'systemd', u), 'utf8'))
    const manifest = JSON.parse(await readFile(join(home, 'install-manifest.json'), 'utf8')) as { files: Array<{ path: string }>, dirs: string[] }
    expect(manifest.dirs).toEqual(expect.arrayContaining(['/usr/local', '/usr/local/bin', '/usr/local/lib/naiad', '/etc/naiad', '/etc/systemd', '/etc/systemd/system']))
    expect(manifest.dirs).not.toContain('/etc')
  })

  it('the installed copy runs on its own: its scheduler reaches READY=1 with its socket listening', async () => {
    const d = await mkdtemp(join(base, 'sched-'))
    const sock = join(d, 's.sock')
    await writeFile(join(d, 'scheduler.toml'), `[server]\nlisten = "unix:${sock}"\n[metrics]\nlisten = ""\n[log]\nlevel = "warn"\n`)
    const l = await startNotifyListener(join(d, 'notify.sock'), [`unix:${sock}`])
    // the wrapper execs the node binary with the installed entry point; run that entry point
    const child = spawn(process.execPath, [join(root, 'usr/local/lib/naiad/dist/bin/naiad.js'), 'scheduler', '--config', join(d, 'scheduler.toml')], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NOTIFY_SOCKET: l.socket }, cwd: d
    })
    let out = ''
    child.stdout.on('data', (b: Buffer) => { out += b.toString() })
    child.stderr.on('data', (b: Buffer) => { out += b.toString() })
    try {
      const ready = await l.waitFor(n => n.fields['READY'] === '1')
      expect(ready.answered[`unix:${sock}`], out).toBe(true)
      expect(ready.pid).toBe(child.pid)
    } finally {
      child.kill('SIGKILL')
      await l.close()
    }
  })

  it.skipIf(!existsSync(ANALYZE) || !existsSync(HOST_UNITS))('systemd-analyze verify passes on every unit as installed, and catches a broken one', async () => {
    expect(existsSync(join(root, 'usr/local/lib/naiad/lib/fsdapi/fsd-launcher.pl'))).toBe(true)
    // the OS's perl-base, which naiad-fsd.service's ExecStart runs (the install does not write it)
    await mkdir(join(root, 'usr/bin'), { recursive: true })
    await copyFile('/usr/bin/perl', join(root, 'usr/bin/perl'))
    const r = await run(ANALYZE, ['verify', `--root=${root}`, '--man=no', ...UNITS]).finally(async () => { await rm(join(root, 'usr/bin'), { recursive: true }) })
    expect(r.stdout + r.stderr).toBe('')
    expect(r.code).toBe(0)
    // the same check fails on a unit with a typo and a missing binary
    const broken = (await readFile(join(root, 'etc/systemd/system/naiad-peer.service'), 'utf8'))
      .replace('ExecStart=/usr/local/bin/naiad', 'ExecStart=/usr/local/bin/naiadd').replace('NoNewPrivileges=yes', 'NoNewPrivilege=yes')
    await writeFile(join(root, 'etc/systemd/system/naiad-broken.service'), broken)
    try {
      const b = await run(ANALYZE, ['verify', `--root=${root}`, '--man=no', 'naiad-broken.service'])
      expect(b.code).not.toBe(0)
      expect(b.stderr).toContain("Unknown key 'NoNewPrivilege'")
      expect(b.stderr).toContain('/usr/local/bin/naiadd')
    } finally {
      await rm(join(root, 'etc/systemd/system/naiad-broken.service'))
    }
  })

  it.skipIf(!existsSync(ANALYZE) || !existsSync(HOST_UNITS))('systemd-analyze security: exposure stays at the levels docs/operations.md quotes', async () => {
    // lower is better; containerd's own unit scores 9.6. The mounting units cannot use the
    // namespace-based protections (their FUSE mounts must reach containerd)
    const limits: Record<string, number> = { 'naiad-snapshotter.service': 6.3, 'naiad-fsd.service': 6.2, 'naiad-peer.service': 2.5, 'naiad-scheduler.service': 1.9 }
    for (const [u, max] of Object.entries(limits)) {
      const r = await run(ANALYZE, ['security', '--offline=yes', `--root=${root}`, u])
      const level = /Overall exposure level for \S+: ([\d.]+)/.exec(r.stdout + r.stderr)
      expect(level, r.stdout + r.stderr).not.toBeNull()
      expect(Number(level![1]), u).toBeLessThanOrEqual(max)
    }
  })

  it('a second install changes nothing (not even a timestamp) and says so', async () => {
    const t0 = await tree(root, true)
    const r = await naiad('install', '--root', root)
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^nothing to do: the installation is up to date \(\d+ files unchanged\)$/m)
    expect(r.stdout).not.toMatch(/^[+~-] /m)
    expect(await tree(root, true)).toEqual(t0)
  })

  it('keeps an operator\'s edited configuration and writes the new example beside it', async () => {
    const peer = join(root, 'etc/naiad/peer.toml')
    const edited = (await readFile(peer, 'utf8')).replace('address = ""', 'address = "scheduler.example:65010"')
    await writeFile(peer, edited)
    const r = await naiad('install', '--root', root)
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('! /etc/naiad/peer.toml  (yours differs from the example; kept)')
    expect(r.stdout).toContain('+ /etc/naiad/peer.toml.new')
    expect(await readFile(peer, 'utf8')).toBe(edited)
    expect(await readFile(`${peer}.new`, 'utf8')).toBe(await readFile(join(source, 'systemd/etc/naiad/peer.toml'), 'utf8'))
    const again = await naiad('install', '--root', root)
    expect(again.stdout).toMatch(/^nothing to do/m)
    expect(again.stdout).toContain('/etc/naiad/peer.toml  (yours differs from the example; the example is /etc/naiad/peer.toml.new)')
  })

  it('an upgrade removes files the new version no longer has and updates configurations nobody edited', async () => {
    const home = join(root, 'usr/local/lib/naiad')
    const m = JSON.parse(await readFile(join(home, 'install-manifest.json'), 'utf8')) as { files: Array<{ path: string, sha256: string, kind: string, mode: number }>, dirs: string[] }
    await mkdir(join(home, 'dist/gone'))
    await writeFile(join(home, 'dist/gone/old.js'), 'old')
    m.files.push({ path: '/usr/local/lib/naiad/dist/gone/old.js', sha256: '', kind: 'program', mode: 0o644 })
    m.dirs.push('/usr/local/lib/naiad/dist/gone')
    // scheduler.toml as an older version's install wrote it, never edited: the new example replaces it
    const older = '# an older example\nversion = 1\n'
    await writeFile(join(root, 'etc/naiad/scheduler.toml'), older)
    const rec = m.files.find(f => f.path === '/etc/naiad/scheduler.toml')!
    rec.sha256 = createHash('sha256').update(older).digest('hex')
    await writeFile(join(home, 'install-manifest.json'), JSON.stringify(m))
    const r = await naiad('install', '--root', root)
    expect(r.stdout).toContain('- /usr/local/lib/naiad/dist/gone/old.js')
    expect(existsSync(join(home, 'dist/gone'))).toBe(false)
    expect(r.stdout).toContain('~ /etc/naiad/scheduler.toml  (unchanged since installed: the new example replaces it)')
    expect(await readFile(join(root, 'etc/naiad/scheduler.toml'), 'utf8')).toBe(await readFile(join(source, 'systemd/etc/naiad/scheduler.toml'), 'utf8'))
    expect(existsSync(join(root, 'etc/naiad/scheduler.toml.new'))).toBe(false)
  })

  it('refuses to replace files it did not write (NAIAD_INSTALL_CONFLICT)', async () => {
    const other = join(base, 'other')
    await mkdir(join(other, 'usr/local/bin'), { recursive: true })
    await writeFile(join(other, 'usr/local/bin/naiad'), '#!/bin/sh\necho someone else\n')
    const r = await naiad('install', '--root', other)
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain('NAIAD_INSTALL_CONFLICT')
    expect(r.stderr).toContain(join(other, 'usr/local/bin/naiad'))
    expect([...(await tree(other)).keys()]).toEqual(['/usr', '/usr/local', '/usr/local/bin', '/usr/local/bin/naiad'])
    const u = await naiad('uninstall', '--root', other)
    expect(u.code).not.toBe(0)
    expect(u.stderr).toContain('NAIAD_INSTALL_NOT_INSTALLED')
  })

  it('uninstall removes what install wrote and keeps the configurations; --purge leaves the root as before', async () => {
    const r = await naiad('uninstall', '--root', root)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('- /usr/local/bin/naiad')
    const left = [...(await tree(root)).keys()].filter(p => !before.has(p)).sort()
    expect(left).toEqual(['/etc/naiad', ...CONFIGS.map(c => `/etc/naiad/${c}`)].sort())
    // reinstall over the kept configurations, then purge
    expect((await naiad('install', '--root', root)).code).toBe(0)
    const p = await naiad('uninstall', '--root', root, '--purge')
    expect(p.code).toBe(0)
    expect(await tree(root)).toEqual(before)
  })
})
