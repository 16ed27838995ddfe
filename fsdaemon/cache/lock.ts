/**
 * An exclusive lock on a cache directory, so that two daemons never use one cache dir at once.
 *
 * The lock is a listening Unix socket in Linux's abstract namespace, named after the directory's
 * real path: binding it is atomic, the kernel releases it when the process dies (even by
 * `kill -9`), and there is no stale lock file to clean up or race on. A second daemon fails to
 * bind (EADDRINUSE), connects and learns the holder's pid for its error message. (Abstract
 * sockets are per network namespace: daemons in different network namespaces sharing one cache
 * dir are not detected.) The holder's pid is also written to `<dir>/.lock` for operators.
 */
import { createHash } from 'node:crypto'
import { realpath, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { join } from 'node:path'
import { NaiadError, ioError } from '../../lib/errors/index.ts'

export interface DirLock {
  readonly dir: string
  /** Releases the lock. Safe twice. */
  release: () => Promise<void>
}

function socketName (dir: string): string {
  return `\0naiad-cache-${createHash('sha256').update(dir).digest('hex').slice(0, 32)}`
}

async function holderOf (name: string): Promise<string | undefined> {
  return await new Promise(resolve => {
    const sock = net.connect(name)
    let text = ''
    const done = (v: string | undefined): void => { sock.destroy(); resolve(v) }
    sock.setTimeout(1000, () => done(undefined))
    sock.on('data', (b: Buffer) => { text += b.toString('utf8') })
    sock.on('end', () => done(text.trim() === '' ? undefined : text.trim()))
    sock.on('error', () => done(undefined))
  })
}

/** Takes the lock on `dir` (which must exist) or throws NAIAD_FS_CACHE_LOCKED. */
export async function lockDir (dir: string): Promise<DirLock> {
  let real: string
  try {
    real = await realpath(dir)
  } catch (err) {
    throw ioError('resolve cache dir', dir, err)
  }
  const name = socketName(real)
  const info = `pid ${process.pid}`
  const server = net.createServer(sock => { sock.end(info) })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(name, () => { server.off('error', reject); resolve() })
  }).catch(async (err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      const holder = await holderOf(name)
      throw new NaiadError('NAIAD_FS_CACHE_LOCKED', `cache dir ${real} is in use by another daemon${holder !== undefined ? ` (${holder})` : ''}`, { details: { dir: real, ...(holder !== undefined ? { holder } : {}) } })
    }
    throw new NaiadError('NAIAD_IO', `cannot lock cache dir ${real}: ${String((err as Error).message)}`, { cause: err })
  })
  server.unref()
  server.on('error', () => { /* a lock socket has nothing to report */ })
  const lockFile = join(real, '.lock')
  await writeFile(lockFile, `${process.pid}\n`).catch(() => undefined)
  let released: Promise<void> | undefined
  return {
    dir: real,
    release: async () => {
      released ??= (async () => {
        await rm(lockFile, { force: true }).catch(() => undefined)
        await new Promise<void>(resolve => server.close(() => resolve()))
      })()
      await released
    }
  }
}
