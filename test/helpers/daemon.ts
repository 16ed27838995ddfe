/**
 * Runs the compiled `naiad` binary as a child process (daemons under test are always separate
 * processes: a process serving a FUSE mount must never be the one reading it synchronously, and
 * crash tests need a process to kill). Output is captured; `waitFor` watches the JSON log lines.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'

export const NAIAD_BIN = new URL(import.meta.url.includes('/dist/test/') ? '../../bin/naiad.js' : '../../dist/bin/naiad.js', import.meta.url).pathname

export interface Daemon {
  child: ChildProcess
  pid: number
  output: () => string
  /** Resolves with the first JSON log line whose msg matches (also one logged before the call). */
  waitFor: (msg: string | RegExp, timeoutMs?: number) => Promise<Record<string, unknown>>
  /** SIGTERM (clean shutdown), SIGKILL after `graceMs`. Resolves with the exit code or signal. */
  stop: (graceMs?: number) => Promise<number | string>
  /** SIGKILL, as a crash. */
  kill: () => Promise<void>
}

const running = new Set<ChildProcess>()
process.once('exit', () => { for (const c of running) c.kill('SIGKILL') })

export function startNaiad (args: string[], env: Record<string, string> = {}): Daemon {
  if (!existsSync(NAIAD_BIN)) throw new Error(`${NAIAD_BIN} missing: run npm run build first`)
  const child = spawn(process.execPath, [NAIAD_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
  running.add(child)
  let out = ''
  const waiters: Array<{ test: (l: Record<string, unknown>) => boolean, resolve: (l: Record<string, unknown>) => void }> = []
  const seen: Array<Record<string, unknown>> = []
  let buf = ''
  const onData = (c: Buffer): void => {
    out += c.toString()
    buf += c.toString()
    let nl: number
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      let obj: Record<string, unknown> | undefined
      try { obj = JSON.parse(line) as Record<string, unknown> } catch { continue }
      seen.push(obj)
      for (const w of [...waiters]) {
        if (w.test(obj)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(obj) }
      }
    }
  }
  child.stdout?.on('data', onData)
  child.stderr?.on('data', onData)
  const exited = new Promise<number | string>((resolve) => { child.once('exit', (code, sig) => { running.delete(child); resolve(code ?? sig ?? -1) }) })
  return {
    child,
    pid: child.pid ?? -1,
    output: () => out,
    waitFor: async (msg, timeoutMs = 60_000) => {
      const test = (l: Record<string, unknown>): boolean => typeof l['msg'] === 'string' && (typeof msg === 'string' ? l['msg'] === msg : msg.test(l['msg']))
      const already = seen.find(test)
      if (already !== undefined) return already
      return await new Promise((resolve, reject) => {
        const t = setTimeout(() => { reject(new Error(`timed out waiting for log "${String(msg)}"; output:\n${out.slice(-4000)}`)) }, timeoutMs)
        const w = { test, resolve: (l: Record<string, unknown>) => { clearTimeout(t); resolve(l) } }
        waiters.push(w)
        exited.then((code) => { clearTimeout(t); reject(new Error(`naiad exited (${String(code)}) before "${String(msg)}"; output:\n${out.slice(-4000)}`)) }, () => {})
      })
    },
    stop: async (graceMs = 15_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode ?? -1
      child.kill('SIGTERM')
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs)
      const r = await exited
      clearTimeout(t)
      return r
    },
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGKILL')
      await exited
    }
  }
}
