/**
 * The FUSE layer against the real kernel: the Nydus fixture (written by nydus-image 2.2) mounted
 * through our pure-TypeScript FUSE session, read by child processes (never synchronously from this
 * process, which serves the mount).
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Bootstrap } from '../../lib/format/bootstrap.ts'
import { BlobReader, fileBlobSource } from '../../lib/format/blob.ts'
import type { BlobInfo, ChunkRef } from '../../lib/format/types.ts'
import { nullLogger } from '../../lib/log/index.ts'
import { FuseSession } from '../../fsdaemon/fuse/session.ts'
import { RafsFilesystem } from '../../fsdaemon/fs/rafs.ts'
import type { ChunkReader, ChunkFetcher } from '../../fsdaemon/types.ts'

const run = promisify(execFile)
const FIXTURES = new URL('../fixtures/nydus/', import.meta.url).pathname
const BLOB = 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef'

/** A cache-less reader straight from a local blob file (enough to test the FUSE layer alone). */
function directReader (blob: BlobInfo, path: string): ChunkReader {
  return {
    blob,
    isReady: () => false,
    stats: () => ({ blobId: blob.blobId, chunks: blob.chunkCount, readyChunks: 0, bytesFetched: {}, cacheHits: 0, chunksVerified: 0, digestFailures: 0 }),
    async ensure () {},
    async read (ref: ChunkRef, offset: number, length: number) {
      const src = await fileBlobSource(path)
      try {
        const data = BlobReader.decodeChunk(ref, await src.read(ref.compressedOffset, ref.compressedSize))
        return data.subarray(offset, offset + length)
      } finally {
        await src.close()
      }
    }
  }
}

describe('FUSE session over the Nydus fixture', () => {
  let mnt: string
  let session: FuseSession
  beforeAll(async () => {
    mnt = mkdtempSync(join(tmpdir(), 'naiad-fuse-'))
    const bootstrap = Bootstrap.parse(await readFile(join(FIXTURES, 'rafs-v6-2.2.boot')))
    const fetcher: ChunkFetcher = { fetchRange: async () => { throw new Error('unused') } }
    const readers = new Map(bootstrap.blobs.map(b => [b, directReader(b, join(FIXTURES, BLOB))]))
    const fs = new RafsFilesystem({ bootstrap, cacheFor: (b) => readers.get(b)!, fetcher, log: nullLogger() })
    session = new FuseSession({ fs, log: nullLogger() }, { mountpoint: mnt, fsname: 'fixture' })
    await session.mount()
  })
  afterAll(async () => {
    await session?.close()
    rmSync(mnt, { recursive: true, force: true })
  })

  it('reads both files with the known sha256', async () => {
    const { stdout } = await run('sha256sum', [join(mnt, 'lib.rs'), join(mnt, 'sync_io.rs')])
    expect(stdout).toContain('1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69')
    expect(stdout).toContain('e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96')
  })

  it('lists, stats and reports errors with the right errno', async () => {
    const { stdout } = await run('ls', ['-la', '--time-style=+%s', mnt])
    expect(stdout).toMatch(/-rw-r--r-- +1 .* 16931 .* lib\.rs/)
    const st = await run('stat', ['-c', '%s %i %h %F', join(mnt, 'sync_io.rs')])
    expect(st.stdout.trim()).toMatch(/^13400 \d+ 1 regular file$/)
    await expect(run('cat', [join(mnt, 'nope')])).rejects.toMatchObject({ stderr: expect.stringContaining('No such file') })
    await expect(run('touch', [join(mnt, 'new')])).rejects.toMatchObject({ stderr: expect.stringContaining('Read-only') })
    const df = await run('stat', ['-f', '-c', '%b %S', mnt])
    expect(df.stdout.trim()).toBe('9 4096')
  })

  it('opens files and directories without a round trip each: OPEN and OPENDIR are asked at most once', async () => {
    for (let i = 0; i < 3; i++) {
      await run('cat', [join(mnt, 'lib.rs'), join(mnt, 'sync_io.rs')])
      await run('ls', ['-la', mnt])
      await run('find', [mnt, '-type', 'f'])
    }
    // answered ENOSYS once each, then the kernel opens by itself (6 file opens, 9+ directory opens)
    expect(session.statistics().opens).toBeLessThanOrEqual(2)
    await expect(run('dd', ['if=/dev/zero', `of=${join(mnt, 'lib.rs')}`, 'count=1', 'conv=notrunc'])).rejects.toMatchObject({ stderr: expect.stringContaining('Read-only') })
  })
})
