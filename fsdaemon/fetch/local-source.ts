/**
 * LocalDirRangeSource: a directory of data blob files named by blob id (`<dir>/<blobId>`, as
 * `naiad fsd --blob-dir` and nydusd's localfs backend expect). Reads are preads of exactly the
 * asked bytes; files are opened on first use and kept open until close().
 */
import { open, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { preadFully } from '../../lib/io/index.ts'
import { NaiadError, ioError, throwIfAborted } from '../../lib/errors/index.ts'
import { nullLogger, type Logger } from '../../lib/log/index.ts'
import type { FetchOptions, RangeSource } from '../types.ts'
import { checkBlobId, checkRange } from './util.ts'

export interface LocalDirRangeSourceDeps {
  logger?: Logger
}

export interface LocalDirRangeSourceOptions {
  dir: string
  /** Name in logs and metrics (default `local:<dir>`). */
  name?: string
}

interface OpenBlob { fh: FileHandle, size: number }

export class LocalDirRangeSource implements RangeSource {
  readonly name: string
  readonly kind = 'local' as const
  readonly dir: string
  private readonly files = new Map<string, Promise<OpenBlob>>()
  private closed = false

  private readonly log: Logger

  constructor (deps: LocalDirRangeSourceDeps, options: LocalDirRangeSourceOptions) {
    this.dir = options.dir
    this.name = options.name ?? `local:${options.dir}`
    this.log = (deps.logger ?? nullLogger()).child({ component: 'fsdaemon.fetch', source: this.name })
  }

  healthy (): boolean { return !this.closed }

  private async file (blobId: string): Promise<OpenBlob> {
    let p = this.files.get(blobId)
    if (p === undefined) {
      const path = join(this.dir, blobId)
      p = (async () => {
        let fh: FileHandle
        try {
          fh = await open(path, 'r')
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
            throw new NaiadError('NAIAD_FS_BLOB_NOT_FOUND', `blob ${blobId}: no file ${path}`, { cause: err, details: { blobId, path } })
          }
          throw ioError('open blob', path, err)
        }
        try {
          return { fh, size: (await fh.stat()).size }
        } catch (err) {
          await fh.close().catch(() => undefined)
          throw ioError('stat blob', path, err)
        }
      })()
      this.files.set(blobId, p)
      p.then(b => { this.log.debug({ blobId, size: b.size }, 'opened local blob') }, () => undefined)
      // a failed open is not remembered: the file may appear later
      p.catch(() => { if (this.files.get(blobId) === p) this.files.delete(blobId) })
    }
    return await p
  }

  async fetch (blobId: string, start: number, end: number, opts: FetchOptions = {}): Promise<Buffer> {
    checkBlobId(blobId)
    checkRange(blobId, start, end)
    throwIfAborted(opts.signal)
    if (this.closed) throw new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`)
    const { fh, size } = await this.file(blobId)
    const path = join(this.dir, blobId)
    if (end >= size) {
      throw new NaiadError('NAIAD_FMT_TRUNCATED', `blob ${blobId} bytes ${start}-${end}: ${path} has only ${size} bytes`, { details: { blobId, path, size } })
    }
    const length = end - start + 1
    const buf = Buffer.allocUnsafe(length)
    let got: number
    try {
      got = await preadFully(fh, buf, start)
    } catch (err) {
      if (this.closed) throw new NaiadError('NAIAD_CLOSED', `blob source ${this.name} is closed`)
      throw ioError('read blob', path, err)
    }
    if (got !== length) throw new NaiadError('NAIAD_FMT_TRUNCATED', `blob ${blobId}: ${path} ended at ${start + got}, expected bytes up to ${end}`)
    return buf
  }

  /** Closes the open files. Safe twice. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    const all = [...this.files.values()]
    this.files.clear()
    await Promise.all(all.map(async p => {
      try {
        await (await p).fh.close()
      } catch {
        // never opened or already closed
      }
    }))
  }
}
