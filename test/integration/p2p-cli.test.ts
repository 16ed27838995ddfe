/**
 * The p2p commands as processes (dist/bin/naiad.js): the scheduler on a Unix socket, a peer using
 * it, graceful shutdown on SIGTERM (exit code 0), and the exit codes of configuration mistakes.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort } from '../helpers/registry.ts'

const NAIAD = fileURLToPath(new URL('../../dist/bin/naiad.js', import.meta.url))

async function runCli (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const c = spawn(process.execPath, [NAIAD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  c.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  c.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>(resolve => c.on('exit', resolve))
  return { code, stdout, stderr }
}

async function waitHttp (url: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    try {
      const r = await request(url)
      await r.body.dump()
      if (r.statusCode === 200) return
    } catch {}
    if (Date.now() > deadline) throw new Error(`${url} did not answer`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

async function exitOf (c: ChildProcess, ms = 10_000): Promise<number | null> {
  if (c.exitCode !== null) return c.exitCode
  return await new Promise((resolve, reject) => {
    const t = setTimeout(() => { c.kill('SIGKILL'); reject(new Error('did not exit')) }, ms)
    c.once('exit', (code) => { clearTimeout(t); resolve(code) })
  })
}

describe.skipIf(!existsSync(NAIAD))('naiad peer / scheduler / preheat processes', () => {
  let dir: string
  const children: ChildProcess[] = []

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'naiad-p2p-cli-'))
  })

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
  })

  it('run on a Unix socket and stop gracefully on SIGTERM', async () => {
    const sock = join(dir, 'sched.sock')
    const smetrics = await freePort()
    await writeFile(join(dir, 'scheduler.toml'), `[server]\nlisten = "unix:${sock}"\n[metrics]\nlisten = "127.0.0.1:${smetrics}"\n[shutdown]\ngrace = "1s"\n`)
    const sched = spawn(process.execPath, [NAIAD, 'scheduler', '--config', join(dir, 'scheduler.toml')], { stdio: ['ignore', 'pipe', 'pipe'] })
    children.push(sched)
    let slog = ''
    sched.stdout?.on('data', (d: Buffer) => { slog += d.toString() })
    await waitHttp(`http://127.0.0.1:${smetrics}/healthz`)
    const mirror = await freePort()
    const upload = await freePort()
    await writeFile(join(dir, 'peer.toml'), [
      '[host]', 'id = "cli"', 'ip = "127.0.0.1"',
      '[mirror]', `listen = "127.0.0.1:${mirror}"`,
      '[upload]', `listen = "127.0.0.1:${upload}"`,
      '[scheduler]', `address = "unix:${sock}"`, 'heartbeat_interval = "200ms"',
      '[storage]', `dir = "${join(dir, 'store')}"`,
      '[shutdown]', 'grace = "1s"'
    ].join('\n') + '\n')
    const peer = spawn(process.execPath, [NAIAD, 'peer', '--config', join(dir, 'peer.toml'), '--seed'], { stdio: ['ignore', 'pipe', 'pipe'] })
    children.push(peer)
    let plog = ''
    peer.stdout?.on('data', (d: Buffer) => { plog += d.toString() })
    await waitHttp(`http://127.0.0.1:${mirror}/healthz`)
    // the peer heart-beats over the Unix socket: the scheduler knows it as a seed
    let hosts = ''
    for (let i = 0; i < 50 && !hosts.includes('naiad_p2p_scheduler_hosts 1'); i++) {
      hosts = await (await request(`http://127.0.0.1:${smetrics}/metrics`)).body.text()
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    expect(hosts).toContain('naiad_p2p_scheduler_hosts 1')
    expect((await (await request(`http://127.0.0.1:${mirror}/metrics`)).body.text())).toContain('naiad_p2p_peer_scheduler_up 1')
    peer.kill('SIGTERM')
    expect(await exitOf(peer)).toBe(0)
    expect(plog).toContain('"msg":"peer stopped"')
    sched.kill('SIGTERM')
    expect(await exitOf(sched)).toBe(0)
    expect(slog).toContain('"msg":"scheduler stopped"')
    expect(existsSync(join(dir, 'store', 'tasks'))).toBe(true)
  })

  it('exit codes: missing config 3, invalid config 2, preheat without targets 2', async () => {
    const missing = await runCli(['peer', '--config', join(dir, 'nope.toml')])
    expect(missing.code).toBe(3)
    expect(missing.stderr).toContain('NAIAD_CFG_NOT_FOUND')
    await writeFile(join(dir, 'bad.toml'), '[download]\npiece_lenght = "4MiB"\n')
    const bad = await runCli(['peer', '--config', join(dir, 'bad.toml')])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('download.piece_lenght: unknown key')
    const badS = await runCli(['scheduler', '--config', join(dir, 'bad.toml')])
    expect(badS.code).toBe(2)
    const pre = await runCli(['preheat', '127.0.0.1:1/x/y:latest'])
    expect(pre.code).toBe(2)
    expect(pre.stderr).toContain('NAIAD_CLI_USAGE')
    const help = await runCli(['preheat', '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('--scheduler')
  })
})
