/**
 * What survives a daemon crash: a state file listing the mounts the daemon serves (written
 * atomically on every change), and the kernel's own mount table. On start the daemon finds its
 * FUSE mounts whose server is gone ("Transport endpoint is not connected"), detaches them, and
 * mounts them again from the recorded requests; the chunk cache on disk means nothing already
 * fetched is fetched again.
 */
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { readFile, rename, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { NaiadError } from '../lib/errors/index.ts'
import type { MountRequest } from '../lib/fsdapi/index.ts'
import type { FuseAdoption } from './fuse/session.ts'

export interface MountRecord {
  request: MountRequest
  since: string
  pid: number
  /** How a successor can adopt the FUSE connection (lib/fsdapi/failover.ts). */
  fuse?: FuseAdoption
}

export class StateStore {
  private readonly file: string
  private queue: Promise<void> = Promise.resolve()

  constructor (dir: string) {
    this.file = join(dir, 'mounts.json')
  }

  async load (): Promise<MountRecord[]> {
    let text: string
    try {
      text = await readFile(this.file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
      throw new NaiadError('NAIAD_FS_STATE', `cannot read ${this.file}`, { cause: err })
    }
    try {
      const v = JSON.parse(text) as { version: number, mounts: MountRecord[] }
      if (v.version !== 1 || !Array.isArray(v.mounts)) throw new Error('unknown version')
      return v.mounts.filter(m => typeof m?.request?.mountpoint === 'string')
    } catch (err) {
      throw new NaiadError('NAIAD_FS_STATE', `${this.file} is not a valid state file`, { cause: err })
    }
  }

  /** Writes atomically (temp file + rename); calls are serialised. */
  async save (mounts: MountRecord[]): Promise<void> {
    const run = async (): Promise<void> => {
      await mkdir(join(this.file, '..'), { recursive: true, mode: 0o700 })
      const tmp = `${this.file}.${process.pid}.tmp`
      await writeFile(tmp, JSON.stringify({ version: 1, mounts }, null, 2), { mode: 0o600 })
      await rename(tmp, this.file)
    }
    this.queue = this.queue.then(run, run)
    await this.queue
  }
}

/** Decodes the octal escapes (\040 for space…) of /proc/mounts fields. */
function unescapeMountField (s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

export interface KernelMount { source: string, mountpoint: string, fstype: string }

export async function kernelMounts (): Promise<KernelMount[]> {
  const text = await readFile('/proc/self/mounts', 'utf8')
  return text.split('\n').filter(Boolean).map(l => {
    const [source = '', mountpoint = '', fstype = ''] = l.split(' ')
    return { source: unescapeMountField(source), mountpoint: unescapeMountField(mountpoint), fstype }
  })
}

/** Our FUSE mounts (type fuse.naiad) currently in the kernel's table. */
export async function naiadMounts (): Promise<KernelMount[]> {
  return (await kernelMounts()).filter(m => m.fstype === 'fuse.naiad')
}

/**
 * True when the FUSE mount at `mountpoint` has lost its connection (its daemon died and nothing
 * holds the connection: ENOTCONN). Probed by a child process killed after `timeoutMs`, because a
 * mount whose daemon died while a holder keeps its connection (lib/fsdapi/failover.ts) makes
 * every access wait for the next daemon: such a mount is not stale, and must not hang us. (A
 * child process, so this is never a call of ours into a mount we serve.)
 */
export async function isStaleMount (mountpoint: string, timeoutMs = 2000): Promise<boolean> {
  return await new Promise((resolve) => {
    execFile('stat', ['-c', '%i', '--', mountpoint], { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, _out, stderr) => {
      if (err === null) { resolve(false); return }
      resolve(/Transport endpoint is not connected|Software caused connection abort/.test(String(stderr)))
    })
  })
}

/** True while `pid` runs; a zombie (dead, not yet reaped: a killed daemon whose parent is gone) is dead. */
export function pidAlive (pid: number): boolean {
  if (pid === process.pid) return true
  try {
    process.kill(pid, 0)
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}
