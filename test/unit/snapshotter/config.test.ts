import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { parseConfig } from '../../../lib/config/index.ts'
import { snapshotterConfigSchema } from '../../../snapshotter/config.ts'
import { runSnapshotter, withOverrides } from '../../../snapshotter/main.ts'
import { SnapshotsClient } from '../../../snapshotter/grpc/client.ts'

describe('snapshotter config', () => {
  it('an empty file is valid and has the documented defaults', () => {
    const c = parseConfig(snapshotterConfigSchema, '')
    expect(c.socket).toEqual({ path: '/run/naiad/snapshotter.sock', mode: 0o600 })
    expect(c.root.dir).toBe('/var/lib/naiad/snapshotter')
  })
  it('rejects unknown keys', () => {
    expect(() => parseConfig(snapshotterConfigSchema, '[root]\ndirr = "/x"\n')).toThrow(/dirr/)
  })
  it('flags override the file', () => {
    const c = withOverrides(parseConfig(snapshotterConfigSchema, '[root]\ndir = "/a"\n'), { root: '/b', socket: '/s.sock', logLevel: 'debug' })
    expect(c.root.dir).toBe('/b')
    expect(c.socket.path).toBe('/s.sock')
    expect(c.log.level).toBe('debug')
  })
})

describe('runSnapshotter', () => {
  it('serves on the socket until stopped; a too-long socket path fails with a clear error', async () => {
    const d = await mkdtemp(join(tmpdir(), 'naiad-snaprun-'))
    try {
      const io = { stdout: new PassThrough(), stderr: new PassThrough() }
      let err = ''
      io.stderr.on('data', (c: Buffer) => { err += c.toString() })
      io.stdout.resume()
      expect(await runSnapshotter({ root: join(d, 'r'), socket: join(d, 'x'.repeat(120)), logLevel: 'silent' }, io)).not.toBe(0)
      expect(err).toMatch(/NAIAD_SNAP_SOCKET/)
      const ac = new AbortController()
      const running = runSnapshotter({ root: join(d, 'r'), socket: join(d, 's.sock'), logLevel: 'silent' }, io, ac.signal)
      const c = new SnapshotsClient({}, { socket: join(d, 's.sock') })
      let ok = false
      for (let i = 0; i < 100 && !ok; i++) {
        try { await c.prepare('k', ''); ok = true } catch { await new Promise((resolve) => setTimeout(resolve, 50)) }
      }
      expect(ok).toBe(true)
      expect((await c.stat('k')).kind).toBe('active')
      await c.close()
      ac.abort()
      expect(await running).toBe(0)
    } finally {
      await rm(d, { recursive: true, force: true })
    }
  })
})
