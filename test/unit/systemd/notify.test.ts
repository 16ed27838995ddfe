/**
 * lib/systemd against a real AF_UNIX datagram receiver (python3) and the real systemd-notify: the
 * message, the sender credentials (our pid, not systemd-notify's), abstract sockets, failures, the
 * no-op without NOTIFY_SOCKET, and that children never see NOTIFY_SOCKET.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { notifyReady, notifySocket, notifyStopping, sdNotify } from '../../../lib/systemd/index.ts'
import { startNotifyListener } from '../../helpers/notify-listener.ts'

const LIB = fileURLToPath(new URL('../../../dist/lib/systemd/index.js', import.meta.url))

describe('lib/systemd sd_notify', () => {
  let dir: string
  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'naiad-notify-')) })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  it('is a no-op without NOTIFY_SOCKET', async () => {
    expect(notifySocket()).toBeUndefined()
    expect(await notifyReady('ready')).toBe(false)
  })

  it('delivers READY=1 with our pid in the credentials and as MAINPID', async () => {
    const l = await startNotifyListener(join(dir, 'n.sock'))
    try {
      expect(await notifyReady('listening on  /x\n', { socket: l.socket })).toBe(true)
      // delivered when the promise resolves: no wait needed beyond the listener's read
      const n = await l.waitFor(n => n.fields['READY'] === '1', 5000)
      expect(n.pid).toBe(process.pid)
      expect(n.fields).toEqual({ READY: '1', MAINPID: String(process.pid), STATUS: 'listening on /x' })
      expect(await notifyStopping('bye', { socket: l.socket })).toBe(true)
      expect((await l.waitFor(n => n.fields['STOPPING'] === '1', 5000)).pid).toBe(process.pid)
    } finally {
      await l.close()
    }
  })

  it('works with an abstract socket (@name)', async () => {
    const l = await startNotifyListener(`@naiad-test-${process.pid}-${Date.now()}`)
    try {
      expect(await sdNotify(['STATUS=abstract'], { socket: l.socket })).toBe(true)
      expect((await l.waitFor(n => n.fields['STATUS'] === 'abstract', 5000)).pid).toBe(process.pid)
    } finally {
      await l.close()
    }
  })

  it('reports a failed delivery to the logger and resolves false', async () => {
    const warnings: unknown[] = []
    const log = { warn: (o: unknown) => { warnings.push(o) }, debug: () => {} }
    expect(await notifyReady('x', { socket: join(dir, 'nobody-listens.sock'), log: log as never })).toBe(false)
    expect(warnings).toHaveLength(1)
    expect(JSON.stringify(warnings[0])).toContain('nobody-listens.sock')
  })

  it('rejects assignments that are not one KEY=VALUE line', async () => {
    await expect(sdNotify(['READY=1\nMAINPID=1'], { socket: join(dir, 'x.sock') })).rejects.toThrow(TypeError)
    await expect(sdNotify(['ready'], { socket: join(dir, 'x.sock') })).rejects.toThrow(TypeError)
  })

  it('captures NOTIFY_SOCKET at import and hides it from child processes', async () => {
    const script = `const m = await import(${JSON.stringify(LIB)});
      const { execFileSync } = await import('node:child_process');
      const child = execFileSync('sh', ['-c', 'echo "[$NOTIFY_SOCKET]"']).toString().trim();
      console.log(JSON.stringify({ captured: m.notifySocket(), env: process.env.NOTIFY_SOCKET ?? null, child }))`
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, NOTIFY_SOCKET: '/run/test/notify' } }, (err, stdout, stderr) => {
        if (err !== null) reject(new Error(`${err.message}\n${stderr}`))
        else resolve(stdout)
      })
    })
    expect(JSON.parse(out)).toEqual({ captured: '/run/test/notify', env: null, child: '[]' })
  })
})
