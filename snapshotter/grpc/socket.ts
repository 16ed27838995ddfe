/**
 * Unix socket housekeeping for the snapshotter's gRPC server: the 108-byte sun_path limit, a
 * parent directory with mode 0700, a stale socket removed (but never a live one: if something
 * answers on it, another snapshotter runs there), the final mode applied after listen.
 */
import { createConnection } from 'node:net'
import { chmod, lstat, mkdir, unlink } from 'node:fs/promises'
import { dirname } from 'node:path'
import { NaiadError } from '../../lib/errors/index.ts'

/** sun_path is 108 bytes including the terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107

export function checkSocketPath (path: string): void {
  const n = Buffer.byteLength(path)
  if (n === 0) throw new NaiadError('NAIAD_SNAP_SOCKET', 'socket path is empty')
  if (n > MAX_SOCKET_PATH_BYTES) throw new NaiadError('NAIAD_SNAP_SOCKET', `socket path ${path} is ${n} bytes; Unix sockets allow at most ${MAX_SOCKET_PATH_BYTES}`)
}

async function answers (path: string): Promise<boolean> {
  return await new Promise((resolve) => {
    const c = createConnection(path)
    c.once('connect', () => { c.destroy(); resolve(true) })
    c.once('error', () => { resolve(false) })
  })
}

/** Prepares `path` for listen: checks, makes the directory, removes a stale socket. */
export async function prepareSocketPath (path: string): Promise<void> {
  checkSocketPath(path)
  await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  let st
  try {
    st = await lstat(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw new NaiadError('NAIAD_SNAP_SOCKET', `stat ${path}: ${(err as Error).message}`, { cause: err })
  }
  if (!st.isSocket()) throw new NaiadError('NAIAD_SNAP_SOCKET', `${path} exists and is not a socket; refusing to remove it`)
  if (await answers(path)) throw new NaiadError('NAIAD_SNAP_SOCKET', `${path} is in use by a running server`)
  await unlink(path)
}

export async function applySocketMode (path: string, mode: number): Promise<void> {
  await chmod(path, mode)
}
