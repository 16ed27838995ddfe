import { mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { sha256 } from '../../../lib/digest/index.ts'
import { PeerMetrics } from '../../../p2p/metrics.ts'
import { PieceStore } from '../../../p2p/peer/piece-store.ts'
import { computePieceDigest, taskIdFor, type TaskId } from '../../../p2p/protocol/index.ts'

const PL = 64 * 1024
let dir: string
let clock: number

function task (name: string): TaskId {
  return taskIdFor(sha256(name), PL)
}

function piece (n: number, fill: number, len = PL): { data: Buffer, digest: ReturnType<typeof computePieceDigest> } {
  const data = Buffer.alloc(len, fill)
  return { data, digest: computePieceDigest(n, data, PL) }
}

function makeStore (quota: number, evicted: TaskId[] = [], metrics?: PeerMetrics): PieceStore {
  return new PieceStore({ now: () => clock, onEvict: (id) => { evicted.push(id) }, ...(metrics !== undefined ? { metrics } : {}) }, { dir, quota })
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naiad-store-'))
  clock = 1000
})

afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('piece store', () => {
  it('writes and reads pieces of a sparse task file', async () => {
    const s = makeStore(10 * PL)
    await s.open()
    const id = task('a')
    await s.ensureTask(id, 3 * PL - 100)
    const p1 = piece(1, 7)
    await s.writePiece(id, p1.digest, p1.data)
    expect(s.has(id, 1)).toBe(true)
    expect(s.has(id, 0)).toBe(false)
    expect((await s.read(id, PL + 10, 20)).equals(Buffer.alloc(20, 7))).toBe(true)
    expect(s.usedBytes).toBe(PL)
    const last = piece(2, 9, PL - 100)
    await s.writePiece(id, last.digest, last.data)
    expect(s.usedBytes).toBe(2 * PL - 100)
    await expect(s.writePiece(id, piece(0, 1).digest, Buffer.alloc(10))).rejects.toMatchObject({ code: 'NAIAD_INTERNAL' })
    await s.close()
    await s.close()
    await expect(s.ensureTask(task('b'), 10)).rejects.toMatchObject({ code: 'NAIAD_CLOSED' })
  })

  it('evicts least recently used tasks beyond the quota, never pinned ones', async () => {
    const evicted: TaskId[] = []
    const metrics = new PeerMetrics()
    const s = makeStore(3 * PL, evicted, metrics)
    await s.open()
    const [a, b, c, d] = [task('a'), task('b'), task('c'), task('d')]
    for (const id of [a, b, c]) {
      clock += 10
      await s.ensureTask(id, PL)
      const p = piece(0, 1)
      await s.writePiece(id, p.digest, p.data)
    }
    clock += 10
    s.touch(a)
    s.pin(b)
    await s.ensureTask(d, PL)
    await s.writePiece(d, piece(0, 2).digest, piece(0, 2).data)
    // b is the oldest but pinned; c is the least recently used unpinned task
    expect(evicted).toEqual([c])
    expect(s.get(c)).toBeUndefined()
    expect(s.has(b, 0) && s.has(a, 0) && s.has(d, 0)).toBe(true)
    expect((await metrics.evictions.get()).values[0]?.value).toBe(1)
    // everything left is pinned: nothing can be evicted
    s.pin(a)
    s.pin(d)
    const e = task('e')
    await s.ensureTask(e, PL)
    await expect(s.writePiece(e, piece(0, 3).digest, piece(0, 3).data)).rejects.toMatchObject({ code: 'NAIAD_P2P_STORE_FULL' })
    s.unpin(a)
    await s.writePiece(e, piece(0, 3).digest, piece(0, 3).data)
    expect(evicted).toEqual([c, a])
    await s.close()
  })

  it('a task being written is not evicted to make room for itself', async () => {
    const evicted: TaskId[] = []
    const s = makeStore(2 * PL, evicted)
    await s.open()
    const a = task('a')
    await s.ensureTask(a, 3 * PL)
    await s.writePiece(a, piece(0, 1).digest, piece(0, 1).data)
    await s.writePiece(a, piece(1, 1).digest, piece(1, 1).data)
    await expect(s.writePiece(a, piece(2, 1).digest, piece(2, 1).data)).rejects.toMatchObject({ code: 'NAIAD_P2P_STORE_FULL' })
    expect(evicted).toEqual([])
    await s.close()
  })

  it('after a restart, pieces on disk are back, re-verified; corrupt ones and bad metadata are dropped', async () => {
    const s = makeStore(10 * PL)
    await s.open()
    const a = task('a')
    const b = task('b')
    await s.ensureTask(a, 2 * PL)
    await s.writePiece(a, piece(0, 1).digest, piece(0, 1).data)
    await s.writePiece(a, piece(1, 2).digest, piece(1, 2).data)
    await s.markVerified(a)
    await s.ensureTask(b, PL)
    await s.writePiece(b, piece(0, 3).digest, piece(0, 3).data)
    await s.close()
    // flip a byte of a's piece 1 and break b's metadata
    const fh = await open(join(dir, 'tasks', a, 'data'), 'r+')
    await fh.write(Buffer.from([0xff]), 0, 1, PL + 5)
    await fh.close()
    await writeFile(join(dir, 'tasks', b, 'meta.json'), '{not json')
    await writeFile(join(dir, 'tasks', 'junk'), 'x')
    const s2 = makeStore(10 * PL)
    await s2.open()
    expect(s2.has(a, 0)).toBe(true)
    expect(s2.has(a, 1)).toBe(false)
    expect(s2.get(a)?.verified).toBe(false)
    expect(s2.get(b)).toBeUndefined()
    expect(s2.usedBytes).toBe(PL)
    expect(s2.list().map(t => t.taskId)).toEqual([a])
    await s2.close()
  })

  it('keeps the verified flag across restarts', async () => {
    const s = makeStore(10 * PL)
    await s.open()
    const a = task('a')
    await s.ensureTask(a, PL)
    await s.writePiece(a, piece(0, 1).digest, piece(0, 1).data)
    await s.markVerified(a)
    await s.close()
    const s2 = makeStore(10 * PL)
    await s2.open()
    expect(s2.get(a)?.verified).toBe(true)
    await s2.close()
  })
})
