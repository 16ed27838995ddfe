/**
 * sd_notify(3) for Node, without native code: tells systemd a `Type=notify` service is ready
 * (READY=1, sent by a daemon only once its socket listens) or stopping (STOPPING=1).
 *
 * How. systemd passes the notification socket in NOTIFY_SOCKET: an AF_UNIX *datagram* socket (a
 * path, or an abstract name starting with "@"). Node's `net` and `dgram` modules open only stream
 * Unix sockets and UDP, so Node cannot send to it. We run systemd's own sender instead:
 *
 *     systemd-notify --pid=<our pid> READY=1
 *
 * It ships with systemd (so it exists wherever NOTIFY_SOCKET is set), handles abstract sockets,
 * and, run as root, sends SCM_CREDENTIALS naming *our* pid rather than its own. That matters: a
 * notification from a short-lived helper is attributed by systemd through the sender's pid, which
 * may already be gone when systemd reads the datagram (the well-known systemd-notify race); with
 * our pid in the credentials the message is attributed to the main process, so `NotifyAccess=main`
 * would do. Our units still say `NotifyAccess=all`, because without privileges systemd-notify
 * retries with its own credentials, and those are accepted only with `all`. `--pid` also sends
 * MAINPID=<our pid>, which is what systemd already believes (the installed wrapper `exec`s node).
 * We wait for systemd-notify to exit, so READY=1 has been delivered when `notify()` resolves.
 *
 * Children. NOTIFY_SOCKET is read once, when this module is first imported (at process start: the
 * `naiad` entry point imports every daemon), and removed from process.env, as sd_notify's
 * `unset_environment` does. Processes a daemon starts (the snapshotter's FUSE daemons, which run
 * detached in the same cgroup) therefore cannot send READY=1 or MAINPID= on the service's behalf.
 *
 * Without NOTIFY_SOCKET (not under systemd, or `Type=simple`) every call is a no-op. A failed
 * notification is reported to the caller's logger and never fails the daemon: systemd then times
 * the start out (TimeoutStartSec) and says so in the journal.
 */
import { execFile } from 'node:child_process'
import type { Logger } from '../log/index.ts'

const captured: string | undefined = (() => {
  const v = process.env['NOTIFY_SOCKET']
  delete process.env['NOTIFY_SOCKET']
  return v !== undefined && v !== '' ? v : undefined
})()

/** The notification socket systemd gave this process, if any. */
export function notifySocket (): string | undefined {
  return captured
}

export interface NotifyOptions {
  /** Where to report a failed notification (warn). */
  log?: Pick<Logger, 'warn' | 'debug'>
  signal?: AbortSignal
  /** Overrides NOTIFY_SOCKET as captured at start (tests). */
  socket?: string
  /** The systemd-notify binary (default: found on PATH). */
  command?: string
}

/**
 * Sends `KEY=VALUE` assignments (READY=1, STOPPING=1, STATUS=…) to systemd. Resolves true when
 * delivered, false when there is no NOTIFY_SOCKET or delivery failed (logged).
 */
export async function sdNotify (assignments: readonly string[], o: NotifyOptions = {}): Promise<boolean> {
  const socket = o.socket ?? captured
  if (socket === undefined) return false
  for (const a of assignments) {
    if (!/^[A-Z_]+=[^\n]*$/.test(a)) throw new TypeError(`sd_notify assignment must be KEY=VALUE on one line: ${JSON.stringify(a)}`)
  }
  const args = [`--pid=${process.pid}`, ...assignments]
  return await new Promise<boolean>((resolve) => {
    execFile(o.command ?? 'systemd-notify', args, {
      env: { ...process.env, NOTIFY_SOCKET: socket },
      timeout: 5000,
      ...(o.signal !== undefined ? { signal: o.signal } : {})
    }, (err, _stdout, stderr) => {
      if (err !== null) {
        o.log?.warn({ err, stderr: String(stderr).trim(), notifySocket: socket, assignments }, 'systemd notification failed')
        resolve(false)
        return
      }
      o.log?.debug({ notifySocket: socket, assignments }, 'systemd notified')
      resolve(true)
    })
  })
}

/** READY=1 (and a STATUS line): call once the daemon's sockets listen. */
export async function notifyReady (status: string, o: NotifyOptions = {}): Promise<boolean> {
  return await sdNotify(['READY=1', `STATUS=${oneLine(status)}`], o)
}

/** STOPPING=1: call when shutdown begins. */
export async function notifyStopping (status: string, o: NotifyOptions = {}): Promise<boolean> {
  return await sdNotify(['STOPPING=1', `STATUS=${oneLine(status)}`], o)
}

function oneLine (s: string): string {
  return s.replace(/\s+/g, ' ').trim()
}
