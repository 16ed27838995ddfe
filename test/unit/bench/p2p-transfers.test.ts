import { describe, expect, it } from 'vitest'
import { parsePieceLines, transferStats } from '../../../bench/p2p/transfers.ts'

const MiB = 1024 * 1024
const line = (t: number, n: number, extra: Record<string, unknown>): string =>
  JSON.stringify({ level: 'debug', time: new Date(t).toISOString(), component: 'p2p.engine', pieceNum: n, msg: 'piece fetched', ...extra })

describe('bench/p2p transfer statistics', () => {
  const log = [
    line(10_000, 0, { source: 'origin', transferMs: 8000, planMs: 100 }), // 2–10 s
    line(12_000, 1, { source: 'peer', parent: 'p9', transferMs: 8000, planMs: 3000 }), // 4–12 s
    line(12_000, 2, { source: 'peer', parent: 'p3', transferMs: 4000, planMs: 0, slotMs: 600 }), // 8–12 s
    '{"level":"info","msg":"blob complete and verified"}',
    'not json "piece fetched"'
  ].join('\n')

  it('reads only the "piece fetched" lines', () => {
    const ls = parsePieceLines(log)
    expect(ls.map(l => [l.pieceNum, l.source])).toEqual([[0, 'O'], [1, 'p9'], [2, 'p3']])
  })

  it('measures transfers in flight, their rates, waits and sources', () => {
    const s = transferStats(parsePieceLines(log), 'p10', ['p1', 'p2', 'p9', 'p10', 'p3'], 4 * MiB, 2)
    expect(s).toBeDefined()
    if (s === undefined) return
    expect(s.pieces).toBe(3)
    expect(s.spanSeconds).toBe(10)
    // 8 + 8 + 4 transfer-seconds over 10 s
    expect(s.meanInFlight).toBeCloseTo(2.0, 5)
    // ≥ 2 in flight from 4 s to 12 s
    expect(s.shareFull).toBeCloseTo(0.8, 5)
    const mbit = (ms: number): number => 4 * MiB * 8 / 1e6 / (ms / 1000)
    expect(s.meanTransferMbit).toBeCloseTo((mbit(8000) * 2 + mbit(4000)) / 3, 5)
    expect(s.meanPlanSeconds).toBeCloseTo(3.1 / 3, 5)
    expect(s.meanSlotSeconds).toBeCloseTo(0.2, 5)
    expect(s.fromOrigin).toBe(1)
    // sorted as strings: p1, p10, p2, p3, p9 → p10's predecessor is p1, p1's is p9
    expect(s.fromPredecessor).toBe(0)
    expect(transferStats(parsePieceLines(log), 'p1', ['p1', 'p2', 'p9', 'p10', 'p3'], 4 * MiB)?.fromPredecessor).toBe(1)
  })

  it('has nothing to say of a peer without pieces', () => {
    expect(transferStats([], 'p1', ['p1'], 4 * MiB)).toBeUndefined()
  })
})
