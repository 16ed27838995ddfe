/**
 * Kernel passthrough, the parts that run without FUSE: the wire encodings it adds and the
 * per-inode mode table with its log (what a successor adopting a connection replays).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { decodeBatchForget, encodeInitOut, encodeOpenOut, InitFlag, InitFlag2, IN_HEADER, OpenFlag, ProtocolError } from '../../../fsdaemon/fuse/protocol.ts'
import { ModeTable } from '../../../fsdaemon/fuse/modes.ts'

describe('FUSE passthrough wire formats', () => {
  it('INIT out carries flags2 and max_stack_depth at their offsets (fuse_init_out, 7.40)', () => {
    const b = encodeInitOut({ minor: 40, maxReadahead: 1 << 20, flags: InitFlag.INIT_EXT | InitFlag.MAX_PAGES, maxBackground: 64, congestionThreshold: 48, maxWrite: 1 << 20, timeGran: 1, maxPages: 256, flags2: InitFlag2.PASSTHROUGH, maxStackDepth: 1 })
    expect(b.length).toBe(64)
    expect(b.readUInt32LE(4)).toBe(40)
    expect(b.readUInt32LE(12) & InitFlag.INIT_EXT).toBe(InitFlag.INIT_EXT)
    expect(b.readUInt16LE(28)).toBe(256)
    expect(b.readUInt32LE(32)).toBe(1 << 5) // FUSE_PASSTHROUGH = 1 << 37
    expect(b.readUInt32LE(36)).toBe(1)
    // without them: zeros, as before
    const old = encodeInitOut({ minor: 31, maxReadahead: 0, flags: 0, maxBackground: 1, congestionThreshold: 1, maxWrite: 4096, timeGran: 1, maxPages: 1 })
    expect(old.subarray(32).equals(Buffer.alloc(32))).toBe(true)
  })

  it('OPEN out: fh, open flags and the backing id', () => {
    const b = encodeOpenOut(OpenFlag.PASSTHROUGH, 2n, 7)
    expect(b.length).toBe(16)
    expect(b.readBigUInt64LE(0)).toBe(2n)
    expect(b.readUInt32LE(8)).toBe(1 << 7)
    expect(b.readInt32LE(12)).toBe(7)
    expect(encodeOpenOut(OpenFlag.KEEP_CACHE).equals(Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]))).toBe(true)
  })

  it('BATCH_FORGET lists its node ids; a count beyond the request is refused', () => {
    const req = Buffer.alloc(IN_HEADER + 8 + 2 * 16)
    req.writeUInt32LE(2, IN_HEADER)
    req.writeBigUInt64LE(130n, IN_HEADER + 8)
    req.writeBigUInt64LE(1n, IN_HEADER + 16)
    req.writeBigUInt64LE(2n ** 40n, IN_HEADER + 24)
    req.writeBigUInt64LE(3n, IN_HEADER + 32)
    expect(decodeBatchForget(req)).toEqual([130, 2 ** 40])
    req.writeUInt32LE(3, IN_HEADER)
    expect(() => decodeBatchForget(req)).toThrow(ProtocolError)
    expect(() => decodeBatchForget(Buffer.alloc(IN_HEADER + 4))).toThrow(ProtocolError)
  })
})

describe('passthrough mode table', () => {
  let dir: string | undefined
  afterEach(() => { if (dir !== undefined) rmSync(dir, { recursive: true, force: true }); dir = undefined })

  it('one mode per inode until FORGET; the backing id comes back once, at FORGET', () => {
    const t = ModeTable.create(undefined)
    expect(t.mode(5)).toBeUndefined()
    t.record(5, 'p', 3)
    t.record(6, 'c')
    expect([t.mode(5), t.backingId(5), t.mode(6), t.backingId(6)]).toEqual(['p', 3, 'c', undefined])
    expect(t.allBackingIds()).toEqual([3])
    expect(t.forget(5)).toBe(3)
    expect(t.forget(5)).toBeUndefined()
    expect(t.forget(6)).toBeUndefined()
    expect(t.size).toBe(0)
  })

  it('a successor replays the log: the modes and backing ids of inodes the kernel still holds', () => {
    dir = mkdtempSync(join(tmpdir(), 'naiad-modes-'))
    const log = join(dir, 'm.modes')
    const t = ModeTable.create(log)
    t.record(10, 'c')
    t.record(11, 'p', 1)
    t.record(12, 'p', 2)
    t.forget(11)
    t.record(11, 'c') // a new lifetime of the inode
    // a crash: the log is all that is left (a torn last line is ignored)
    writeFileSync(log, readFileSync(log, 'utf8') + 'p 9')
    const next = ModeTable.load(log)
    expect([next.mode(10), next.mode(11), next.mode(12), next.mode(9)]).toEqual(['c', 'c', 'p', undefined])
    // (backing ids belong to the connection: the successor answers with the same one)
    expect([next.backingId(10), next.backingId(12)]).toEqual([undefined, 2])
    // the successor's own decisions go to the same log, which it started from its table
    next.record(13, 'p', 4)
    expect(readFileSync(log, 'utf8').split('\n').filter(Boolean).sort()).toEqual(['c 10', 'c 11', 'p 12 2', 'p 13 4'])
    expect(next.forget(12)).toBe(2)
    next.close()
    t.close()
    expect(ModeTable.load(join(dir, 'missing')).size).toBe(0)
  })

  it('the log is rewritten from the table when it grows four times its size', () => {
    dir = mkdtempSync(join(tmpdir(), 'naiad-modes-'))
    const log = join(dir, 'm.modes')
    const t = ModeTable.create(log)
    for (let i = 0; i < 3000; i++) { t.record(i + 2, 'p', i); t.forget(i + 2) }
    t.record(7, 'c')
    const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean)
    expect(lines.length).toBeLessThan(2000)
    expect(ModeTable.load(log).mode(7)).toBe('c')
    expect(ModeTable.load(log).size).toBe(1)
    t.close()
  })
})
