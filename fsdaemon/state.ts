/**
 * What survives a daemon crash: a state file listing the mounts the daemon serves (written
 * atomically on every change), and the kernel's own mount table. On start the daemon finds its
 * FUSE mounts whose server is gone ("Transport endpoint is not connected"), detaches them, and
 * mounts them again from the recorded requests; the chunk cache on disk means nothing already
 * fetched is fetched again.
 */
import { readFile, rename, writeFile, mkdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { NaiadError } from '../lib/errors/index.ts'
import type { MountRequest } from '../lib/fsdapi/index.ts'

export interface MountRecord {
  request: MountRequest
  since: string
  pid: number
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
 * True if a FUSE mount has lost its server: stat answers ENOTCONN (or ECONNABORTED). Only call
 * this for mounts this process does not serve (it would be a synchronous call into our own mount
 * otherwise — this one is async, but a live mount of ours would simply answer).
 */
export async function isStaleMount (mountpoint: string): Promise<boolean> {
  try {
    await stat(mountpoint)
    return false
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code === 'ENOTCONN' || code === 'ECONNABORTED'
  }
}

export function pidAlive (pid: number): boolean {
  if (pid === process.pid) return true
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
