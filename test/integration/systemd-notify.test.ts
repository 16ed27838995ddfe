/**
 * Type=notify for real: each daemon (dist/bin/naiad.js) runs with NOTIFY_SOCKET pointing at a
 * datagram socket (python3, see test/helpers/notify-listener.ts). READY=1 must arrive exactly once,
 * from the daemon's pid (SCM_CREDENTIALS, also MAINPID=), and at the moment it arrives the
 * daemon's sockets must already accept connections. On SIGTERM, STOPPING=1 arrives and the daemon
 * exits 0.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NAIAD_BIN, startNaiad, type Daemon } from '../helpers/daemon.ts'
import { startNotifyListener, type NotifyListener } from '../helpers/notify-listener.ts'
import { freePort } from '../helpers/registry.ts'

interface Case {
  name: string
  /** command line, config text and the sockets that must listen at READY=1, given a temp dir */
  setup: (d: string) => Promise<{ args: string[], config: string, probes: string[] }>
  stopping: boolean
}

const CASES: Case[] = [
  {
    name: 'scheduler',
    stopping: true,
    setup: async (d) => ({
      args: ['scheduler'],
      config: `[server]\nlisten = "unix:${d}/sched.sock"\n[metrics]\nlisten = ""\n[log]\nlevel = "warn"\n`,
      probes: [`unix:${d}/sched.sock`]
    })
  },
  {
    name: 'peer',
    stopping: true,
    setup: async (d) => {
      const port = await freePort()
      return {
        args: ['peer'],
        config: `[mirror]\nlisten = "unix:${d}/mirror.sock"\n[upload]\nlisten = "127.0.0.1:${port}"\n[storage]\ndir = "${d}/p2p"\n[log]\nlevel = "warn"\n`,
        probes: [`unix:${d}/mirror.sock`, `tcp:127.0.0.1:${port}`]
      }
    }
  },
  {
    name: 'fsd',
    stopping: true,
    setup: async (d) => ({
      args: ['fsd'],
      config: `[socket]\npath = "${d}/fsd.sock"\n[state]\ndir = "${d}/fsd-state"\n[cache]\ndir = "${d}/cache"\n[log]\nlevel = "warn"\n`,
      probes: [`unix:${d}/fsd.sock`]
    })
  },
  {
    name: 'snapshotter',
    stopping: false,
    setup: async (d) => ({
      args: ['snapshotter'],
      config: `[root]\ndir = "${d}/snap"\n[socket]\npath = "${d}/snap.sock"\n[fsdaemon]\nenable = false\n[log]\nlevel = "warn"\n`,
      probes: [`unix:${d}/snap.sock`]
    })
  }
]

describe.skipIf(!existsSync(NAIAD_BIN))('Type=notify: READY=1 only once the sockets listen', () => {
  let base: string
  const daemons: Daemon[] = []
  const listeners: NotifyListener[] = []

  beforeAll(async () => { base = await mkdtemp(join(tmpdir(), 'naiad-sdnotify-')) })
  afterAll(async () => {
    for (const d of daemons) await d.kill()
    for (const l of listeners) await l.close()
    await rm(base, { recursive: true, force: true })
  })

  it.each(CASES)('naiad $name', async ({ name, setup, stopping }) => {
    const d = await mkdtemp(join(base, `${name}-`))
    const { args, config, probes } = await setup(d)
    await writeFile(join(d, 'config.toml'), config)
    const l = await startNotifyListener(join(d, 'notify.sock'), probes)
    listeners.push(l)
    const daemon = startNaiad([...args, '--config', join(d, 'config.toml')], { NOTIFY_SOCKET: l.socket })
    daemons.push(daemon)
    const ready = await l.waitFor(n => n.fields['READY'] === '1').catch((err: Error) => { throw new Error(`${err.message}\n${daemon.output()}`) })
    expect(ready.pid).toBe(daemon.pid)
    expect(ready.fields['MAINPID']).toBe(String(daemon.pid))
    expect(ready.fields['STATUS']).toMatch(new RegExp(`^${name === 'fsd' ? 'fsdaemon' : name} ready`))
    for (const p of probes) expect(ready.answered[p], `${p} accepted a connection when READY=1 arrived`).toBe(true)
    if (stopping) {
      expect(await daemon.stop()).toBe(0)
      // (the sender pid is not checked: the daemon may be gone by the time the datagram is read)
      expect((await l.waitFor(n => n.fields['STOPPING'] === '1', 5000)).fields['MAINPID']).toBe(String(daemon.pid))
    } else {
      expect(await daemon.stop()).toBe(0)
    }
    expect(l.received.filter(n => n.fields['READY'] === '1')).toHaveLength(1)
  })

  it('a daemon that cannot listen exits non-zero and never sends READY=1', async () => {
    const d = await mkdtemp(join(base, 'busy-'))
    const busy = createServer()
    await new Promise<void>((resolve) => { busy.listen(0, '127.0.0.1', resolve) })
    try {
      const port = (busy.address() as AddressInfo).port
      await writeFile(join(d, 'config.toml'), `[server]\nlisten = "127.0.0.1:${port}"\n[metrics]\nlisten = ""\n[log]\nlevel = "warn"\n`)
      const l = await startNotifyListener(join(d, 'notify.sock'))
      listeners.push(l)
      const daemon = startNaiad(['scheduler', '--config', join(d, 'config.toml')], { NOTIFY_SOCKET: l.socket })
      daemons.push(daemon)
      const code = await new Promise<number | null>((resolve) => {
        if (daemon.child.exitCode !== null) resolve(daemon.child.exitCode)
        else daemon.child.once('exit', (c) => { resolve(c) })
      })
      expect(code).not.toBe(0)
      expect(daemon.output()).toMatch(/cannot listen/)
      expect(l.received.filter(n => n.fields['READY'] === '1')).toEqual([])
    } finally {
      busy.close()
    }
  })
})
