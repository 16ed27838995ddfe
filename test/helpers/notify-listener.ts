/**
 * A real sd_notify receiver for tests: a python3 process bound to an AF_UNIX datagram socket (what
 * systemd's NOTIFY_SOCKET is; Node cannot open one). For every datagram it reports the message,
 * the sender pid from SCM_CREDENTIALS, and whether each "probe" (unix:/path or tcp:host:port)
 * accepted a connection at the moment the datagram arrived: that is how tests show READY=1 is
 * sent only once the daemon's sockets listen.
 */
import { spawn, type ChildProcess } from 'node:child_process'

const SCRIPT = String.raw`
import json, socket, struct, sys
path = sys.argv[1]
probes = sys.argv[2:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\0' + path[1:] if path.startswith('@') else path)
print(json.dumps({'listening': True}), flush=True)
def probe(p):
    kind, _, rest = p.partition(':')
    try:
        if kind == 'unix':
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(2)
            c.connect(rest)
        else:
            host, _, port = rest.rpartition(':')
            c = socket.create_connection((host, int(port)), 2)
        c.close()
        return True
    except OSError:
        return False
while True:
    msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(12))
    pid = None
    for lvl, typ, data in anc:
        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', data[:12])[0]
    answered = {p: probe(p) for p in probes}
    print(json.dumps({'message': msg.decode(), 'pid': pid, 'answered': answered}), flush=True)
`

export interface Notification {
  /** The raw datagram, e.g. "READY=1\nMAINPID=123\nSTATUS=…". */
  message: string
  /** KEY=VALUE assignments of the message. */
  fields: Record<string, string>
  /** Sender pid from SCM_CREDENTIALS. */
  pid: number | null
  /** Per probe: did it accept a connection when the datagram arrived. */
  answered: Record<string, boolean>
}

export interface NotifyListener {
  /** The NOTIFY_SOCKET value (a path or @abstract). */
  socket: string
  received: Notification[]
  /** Resolves with the first notification (received before or after the call) matching `test`. */
  waitFor: (test: (n: Notification) => boolean, timeoutMs?: number) => Promise<Notification>
  close: () => Promise<void>
}

export async function startNotifyListener (socket: string, probes: string[] = []): Promise<NotifyListener> {
  const child: ChildProcess = spawn('python3', ['-c', SCRIPT, socket, ...probes], { stdio: ['ignore', 'pipe', 'pipe'] })
  const received: Notification[] = []
  const waiters: Array<{ test: (n: Notification) => boolean, resolve: (n: Notification) => void }> = []
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  let buf = ''
  let onListening!: () => void
  const listening = new Promise<void>((resolve) => { onListening = resolve })
  child.stdout?.on('data', (d: Buffer) => {
    buf += d.toString()
    let nl: number
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = JSON.parse(buf.slice(0, nl)) as { listening?: boolean, message?: string, pid?: number | null, answered?: Record<string, boolean> }
      buf = buf.slice(nl + 1)
      if (line.listening === true) { onListening(); continue }
      const message = line.message ?? ''
      const fields: Record<string, string> = {}
      for (const l of message.split('\n')) {
        const i = l.indexOf('=')
        if (i > 0) fields[l.slice(0, i)] = l.slice(i + 1)
      }
      const n: Notification = { message, fields, pid: line.pid ?? null, answered: line.answered ?? {} }
      received.push(n)
      for (const w of [...waiters]) if (w.test(n)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(n) }
    }
  })
  const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
  await Promise.race([listening, exited.then(() => { throw new Error(`notify listener exited: ${stderr}`) })])
  return {
    socket,
    received,
    waitFor: async (test, timeoutMs = 20_000) => {
      const already = received.find(test)
      if (already !== undefined) return already
      return await new Promise((resolve, reject) => {
        const t = setTimeout(() => { reject(new Error(`no matching notification within ${timeoutMs} ms; got ${JSON.stringify(received)}`)) }, timeoutMs)
        waiters.push({ test, resolve: (n) => { clearTimeout(t); resolve(n) } })
      })
    },
    close: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exited
    }
  }
}
