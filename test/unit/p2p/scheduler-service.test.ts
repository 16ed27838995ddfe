import { describe, expect, it } from 'vitest'
import { SchedulerMetrics } from '../../../p2p/metrics.ts'
import { computePieceDigest, MiB, taskIdFor, type Assignments, type HostInfo } from '../../../p2p/protocol/index.ts'
import { ringOrder, SchedulerService, type PeerSession } from '../../../p2p/scheduler/service.ts'
import { sha256 } from '../../../lib/digest/index.ts'
import type { NaiadError } from '../../../lib/errors/index.ts'

const PL = 1 * MiB
const SIZE = 4 * PL
const DIGEST = sha256('blob')
const TASK = taskIdFor(DIGEST, PL)
const piece = (n: number, fill = n): ReturnType<typeof computePieceDigest> => computePieceDigest(n, Buffer.alloc(PL, fill), PL)

function host (id: string, over: Partial<HostInfo> = {}): HostInfo {
  return { id, hostname: id, ip: `10.0.0.${id.length}`, uploadPort: 65002, seed: false, uploadRateLimit: 0, uploadConcurrency: 2, ...over }
}

interface Sink { got: Assignments[], closed: NaiadError | undefined }

function setup (opts: ConstructorParameters<typeof SchedulerService>[1] = {}): { svc: SchedulerService, clock: { t: number }, metrics: SchedulerMetrics, open: (hostId: string) => { s: PeerSession, sink: Sink, last: () => Assignments['pieces'] } } {
  const clock = { t: 1_000_000 }
  const metrics = new SchedulerMetrics()
  const svc = new SchedulerService({ now: () => clock.t, metrics }, { candidateParents: 3, originBudgetPerPiece: 1, ...opts })
  const open = (hostId: string): { s: PeerSession, sink: Sink, last: () => Assignments['pieces'] } => {
    svc.announceHost(host(hostId))
    const sink: Sink = { got: [], closed: undefined }
    const s = svc.openPeer({ peerId: `${hostId}/1`, hostId, taskId: TASK, digest: DIGEST, pieceLength: PL, contentLength: SIZE }, {
      assignments: (a) => { sink.got.push(a) },
      close: (err) => { sink.closed = err }
    })
    return { s, sink, last: () => sink.got.at(-1)?.pieces ?? [] }
  }
  return { svc, clock, metrics, open }
}

describe('scheduler service: origin budget', () => {
  it('N cold peers asking for the same piece: one goes to the origin, the others wait, then the piece spreads one copy per holder', () => {
    const { open } = setup()
    const peers = ['a', 'b', 'c', 'd'].map(open)
    for (const p of peers) p.s.requestPieces([0])
    const actions = peers.map(p => p.last()[0]?.action)
    expect(actions).toEqual(['back-to-source', 'wait', 'wait', 'wait'])
    const [a, b, c, d] = peers as [typeof peers[0], typeof peers[0], typeof peers[0], typeof peers[0]]
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    // one copy per holder at a time: a serves one child
    const first = [b, c, d].filter(p => p.last()[0]?.action === 'parents')
    expect(first).toHaveLength(1)
    expect(first[0]?.last()[0]).toMatchObject({ action: 'parents', parents: ['a'] })
    // the child starts receiving it: it relays verified blocks as they arrive, so it counts as a
    // holder and the next waiter is served (cut-through), from it or from a
    first[0]?.s.pieceStarted(0, 'a')
    const second = [b, c, d].filter(p => p !== first[0] && p.last()[0]?.action === 'parents')
    expect(second).toHaveLength(1)
    expect(second[0]?.last()[0]?.action).toBe('parents')
    const secondParents = (second[0]?.last()[0] as { parents: string[] }).parents
    expect(secondParents.length).toBeGreaterThanOrEqual(1)
    first[0]?.s.pieceFinished({ digest: piece(0), source: 'peer', parentHostId: 'a', length: PL, costMs: 50 })
    second[0]?.s.pieceStarted(0, secondParents[0] as string)
    const third = [b, c, d].find(p => p !== first[0] && p !== second[0])
    expect(third?.last()[0]?.action).toBe('parents')
  })

  it('spreads the first origin fetches of different pieces over different peers', () => {
    const { open } = setup({ originConcurrencyPerTask: 4, originPermitsPerPeer: 2 })
    const a = open('a')
    const b = open('b')
    a.s.requestPieces([0, 1, 2])
    b.s.requestPieces([0, 1, 2, 3])
    expect(a.last().map(x => x.action)).toEqual(['back-to-source', 'back-to-source', 'wait'])
    expect(b.last().map(x => x.action)).toEqual(['wait', 'wait', 'back-to-source', 'back-to-source'])
  })

  it('caps concurrent origin fetches of one blob cluster-wide', () => {
    const { open } = setup({ originConcurrencyPerTask: 2, originPermitsPerPeer: 2 })
    const a = open('a')
    const b = open('b')
    a.s.requestPieces([0])
    b.s.requestPieces([1, 2])
    expect(a.last().map(x => x.action)).toEqual(['back-to-source'])
    expect(b.last().map(x => x.action)).toEqual(['back-to-source', 'wait'])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    expect(b.last().map(x => x.action)).toEqual(['back-to-source'])
  })

  it('a budget of 2 allows two concurrent origin fetches of a piece', () => {
    const { open } = setup({ originBudgetPerPiece: 2 })
    const [a, b, c] = ['a', 'b', 'c'].map(open)
    for (const p of [a, b, c]) p?.s.requestPieces([0])
    expect([a, b, c].map(p => p?.last()[0]?.action)).toEqual(['back-to-source', 'back-to-source', 'wait'])
  })

  it('a failed origin fetch releases the permit to a waiter', () => {
    const { open } = setup()
    const a = open('a')
    const b = open('b')
    a.s.requestPieces([0])
    b.s.requestPieces([0])
    a.s.pieceFailed({ number: 0, parentHostId: '', reason: 'origin', description: 'HTTP 503' })
    expect(b.last()[0]?.action).toBe('back-to-source')
  })

  it('by default spreads origin fetches: one per download, four per blob', () => {
    const { open } = setup()
    const a = open('a')
    a.s.requestPieces([0, 1])
    expect(a.last().map(x => x.action)).toEqual(['back-to-source', 'wait'])
    // pieces 1, 2, 3 (of 4) to three more downloads: the blob's fourth permit goes to the first
    const others = ['b', 'c', 'd'].map((id) => open(id))
    others.forEach((o, i) => { o.s.requestPieces([1 + i]) })
    expect(others.map((o) => o.last()[0]?.action)).toEqual(['back-to-source', 'back-to-source', 'back-to-source'])
    const e = open('e')
    e.s.requestPieces([3])
    expect(e.last()[0]?.action).toBe('wait')
  })

  it('a closed stream releases its permits; an unreported permit expires', () => {
    const { svc, open, clock } = setup({ permitTimeoutMs: 10_000, originConcurrencyPerTask: 2, originPermitsPerPeer: 2 })
    const a = open('a')
    const b = open('b')
    a.s.requestPieces([0, 1])
    b.s.requestPieces([0, 1])
    a.s.close()
    expect(b.last().map(x => x.action)).toEqual(['back-to-source', 'back-to-source'])
    const c = open('c')
    c.s.requestPieces([0])
    expect(c.last()[0]?.action).toBe('wait')
    clock.t += 10_001
    svc.announceHost(host('b'))
    svc.announceHost(host('c'))
    svc.sweep()
    expect(c.last()[0]?.action).toBe('back-to-source')
  })
})

describe('scheduler service: why a request waits (naiad_p2p_scheduler_waits_total)', () => {
  it('counts no_source, copying and slots', async () => {
    const { svc, open, metrics } = setup({ parentSelection: 'score' })
    const count = async (reason: string): Promise<number> => Number(new RegExp(`naiad_p2p_scheduler_waits_total\\{reason="${reason}"\\} (\\d+)`).exec(await metrics.registry.metrics())?.[1] ?? 0)
    const [a, b, c, d] = ['a', 'b', 'c', 'd'].map(open) as [ReturnType<typeof open>, ReturnType<typeof open>, ReturnType<typeof open>, ReturnType<typeof open>]
    a.s.requestPieces([0])
    b.s.requestPieces([0])
    // a holds the only origin permit; nobody holds the piece
    expect(b.last()[0]?.action).toBe('wait')
    expect(await count('no_source')).toBe(1)
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    expect(b.last()[0]?.action).toBe('parents')
    // a (the only holder) is copying it to b, which has not started yet: c waits
    c.s.requestPieces([0])
    expect(c.last()[0]?.action).toBe('wait')
    expect(await count('copying')).toBeGreaterThanOrEqual(1)
    // b finishes: c is served and finishes too. a, b and c now have one upload slot each; a's and
    // b's are taken by copies of piece 1 (which both hold) to e and g
    b.s.pieceFinished({ digest: piece(0), source: 'peer', parentHostId: 'a', length: PL, costMs: 50 })
    expect(c.last()[0]?.action).toBe('parents')
    c.s.pieceStarted(0, (c.last()[0] as { parents: string[] }).parents[0] as string)
    c.s.pieceFinished({ digest: piece(0), source: 'peer', parentHostId: 'a', length: PL, costMs: 50 })
    for (const id of ['a', 'b', 'c']) svc.announceHost(host(id, { uploadConcurrency: 1 }))
    a.s.requestPieces([1])
    a.s.pieceFinished({ digest: piece(1), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    b.s.requestPieces([1])
    b.s.pieceStarted(1, 'a')
    b.s.pieceFinished({ digest: piece(1), source: 'peer', parentHostId: 'a', length: PL, costMs: 50 })
    for (const id of ['e', 'g']) {
      const x = open(id)
      x.s.requestPieces([1])
      expect(x.last()[0]?.action).toBe('parents')
    }
    expect(await count('slots')).toBe(0)
    // d asking for 0 gets c, the only holder with a free slot
    d.s.requestPieces([0])
    expect(d.last()[0]).toMatchObject({ action: 'parents', parents: ['c'] })
    // the next one finds three holders and one copy in flight, but no free slot
    const f = open('f')
    f.s.requestPieces([0])
    expect(f.last()[0]?.action).toBe('wait')
    expect(await count('slots')).toBe(1)
  })
})

describe('scheduler service: origin read-ahead (origin-only requests)', () => {
  it('grants only pieces nobody holds, receives or fetches, under the origin budget; skips the others, never parents', async () => {
    const { open, metrics } = setup({ originConcurrencyPerTask: 2, originPermitsPerPeer: 2 })
    const a = open('a')
    const b = open('b')
    const c = open('c')
    b.s.requestPieces([0])
    expect(b.last().map(x => x.action)).toEqual(['back-to-source'])
    b.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    c.s.requestPieces([1])
    expect(c.last().map(x => x.action)).toEqual(['back-to-source'])
    // 0 is held by b, 1 is being fetched from the origin by c: skipped; 2 is granted; 3 waits
    // (the blob's 2 concurrent origin fetches are in use)
    a.s.requestPieces([0, 1, 2, 3], true)
    expect(a.last().map(x => [x.number, x.action])).toEqual([[0, 'skipped'], [1, 'skipped'], [2, 'back-to-source'], [3, 'wait']])
    // c's fetch ends: a's waiting read-ahead of 3 gets the free permit
    c.s.pieceFinished({ digest: piece(1), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    expect(a.last().map(x => [x.number, x.action])).toEqual([[3, 'back-to-source']])
    expect(await metrics.registry.metrics()).toMatch(/naiad_p2p_scheduler_assignments_total\{action="skipped"\} 2\n/)
  })

  it('a waiting read-ahead piece that became available elsewhere is skipped, not sent to a parent', () => {
    const { open } = setup({ originConcurrencyPerTask: 1, originPermitsPerPeer: 1 })
    const a = open('a')
    const b = open('b')
    b.s.requestPieces([2])
    a.s.requestPieces([2, 3], true)
    expect(a.last().map(x => [x.number, x.action])).toEqual([[2, 'skipped'], [3, 'wait']])
    b.s.requestPieces([3])
    expect(b.last().map(x => x.action)).toEqual(['wait'])
    // b's fetch of 2 ends: the permit goes to the lowest waiting piece (3): a or b fetches it;
    // the other is skipped (a) or waits for it from a parent (b)
    b.s.pieceFinished({ digest: piece(2), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    const granted = [a, b].filter(p => p.last().some(x => x.number === 3 && x.action === 'back-to-source'))
    expect(granted).toHaveLength(1)
    if (granted[0] === b) expect(a.last().map(x => [x.number, x.action])).toEqual([[3, 'skipped']])
    // asked again as a normal request, the same piece is no longer origin-only
    a.s.requestPieces([2])
    expect(a.last()[0]).toMatchObject({ number: 2, action: 'parents', parents: ['b'] })
  })
})

describe('scheduler service: integrity and blocklists', () => {
  it('records the first origin digest; a disagreeing report is not counted as held', () => {
    const { svc, open } = setup({ originBudgetPerPiece: 2 })
    const a = open('a')
    const b = open('b')
    a.s.requestPieces([0])
    b.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    b.s.pieceFinished({ digest: piece(0, 99), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    expect(svc.statTask(TASK)?.holders).toEqual([{ hostId: 'a', pieces: 1, complete: false }])
  })

  it('a digest mismatch blocklists the parent cluster-wide; others are sent elsewhere', () => {
    const { svc, open, metrics } = setup()
    const a = open('a')
    a.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    const b = open('b')
    b.s.requestPieces([0])
    expect((b.last()[0] as { parents: string[] })?.parents[0]).toBe('a')
    b.s.pieceFailed({ number: 0, parentHostId: 'a', reason: 'digest-mismatch', description: 'block 3' })
    expect(svc.listHosts(false).find(h => h.host.id === 'a')?.blocklistedUntil).toBeGreaterThan(0)
    // b asks again: the only holder is blocklisted, so the piece goes to the origin (budget free)
    b.s.requestPieces([0])
    expect(b.last()[0]?.action).toBe('back-to-source')
    const c = open('c')
    c.s.requestPieces([0])
    expect(c.last()[0]?.action).toBe('wait')
    b.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    expect(c.last()[0]).toMatchObject({ action: 'parents', parents: ['b'] })
    expect(metrics.blocklisted.hashMap).toBeDefined()
  })

  it('repeated transport failures blocklist a host; one failure only skips it for that download', () => {
    const { svc, open } = setup({ failureThreshold: 2 })
    const a = open('a')
    const x = open('x')
    for (const p of [0, 1]) { a.s.requestPieces([p]); a.s.pieceFinished({ digest: piece(p), source: 'origin', parentHostId: '', length: PL, costMs: 1 }) }
    x.s.requestPieces([0])
    expect(x.last()[0]).toMatchObject({ action: 'parents', parents: ['a'] })
    x.s.pieceFailed({ number: 0, parentHostId: 'a', reason: 'transport', description: 'reset' })
    x.s.requestPieces([0])
    expect(x.last()[0]?.action).toBe('back-to-source')
    const y = open('y')
    y.s.requestPieces([1])
    expect(y.last()[0]).toMatchObject({ action: 'parents', parents: ['a'] })
    y.s.pieceFailed({ number: 1, parentHostId: 'a', reason: 'transport', description: 'reset' })
    expect(svc.listHosts(false).find(h => h.host.id === 'a')?.blocklistedUntil).toBeGreaterThan(0)
  })

  it('never offers the asking host, and busy or not-found reports correct the view', () => {
    const { svc, open } = setup()
    const a = open('a')
    a.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    const a2 = svc.openPeer({ peerId: 'a/2', hostId: 'a', taskId: TASK, digest: DIGEST, pieceLength: PL, contentLength: SIZE }, { assignments: () => {}, close: () => {} })
    const got: Assignments[] = []
    const a3 = svc.openPeer({ peerId: 'a/3', hostId: 'a', taskId: TASK, digest: DIGEST, pieceLength: PL, contentLength: SIZE }, { assignments: (x) => { got.push(x) }, close: () => {} })
    a3.requestPieces([0])
    expect(got[0]?.pieces[0]?.action).not.toBe('parents')
    a2.close()
    const b = open('b')
    b.s.requestPieces([0])
    b.s.pieceFailed({ number: 0, parentHostId: 'a', reason: 'not-found', description: '404' })
    expect(svc.statTask(TASK)?.holders).toEqual([])
  })
})

describe('scheduler service: hosts', () => {
  it('asks new hosts to announce their pieces, accepts matching ones, refuses others', () => {
    const { svc, open } = setup()
    expect(svc.announceHost(host('r')).reannounce).toBe(true)
    const a = open('a')
    a.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    const rejected = svc.announceTasks('r', [{ taskId: TASK, digest: DIGEST, contentLength: SIZE, pieceLength: PL, pieces: [{ ...piece(0), sha256: Buffer.alloc(32) }, piece(1), piece(2)], complete: false }], true)
    expect(rejected).toEqual([{ taskId: TASK, number: 0 }])
    expect(svc.announceHost(host('r')).reannounce).toBe(false)
    expect(svc.statTask(TASK)?.holders.find(h => h.hostId === 'r')?.pieces).toBe(2)
    const b = open('b')
    b.s.requestPieces([1])
    expect(b.last()[0]).toMatchObject({ action: 'parents', parents: ['r'] })
  })

  it('refuses downloads from unknown hosts and task ids that do not match', () => {
    const { svc } = setup()
    expect(() => svc.openPeer({ peerId: 'z/1', hostId: 'z', taskId: TASK, digest: DIGEST, pieceLength: PL, contentLength: SIZE }, { assignments: () => {}, close: () => {} })).toThrow(expect.objectContaining({ code: 'NAIAD_P2P_UNKNOWN_HOST' }))
    svc.announceHost(host('z'))
    expect(() => svc.openPeer({ peerId: 'z/1', hostId: 'z', taskId: taskIdFor(DIGEST, 2 * MiB), digest: DIGEST, pieceLength: PL, contentLength: SIZE }, { assignments: () => {}, close: () => {} })).toThrow(expect.objectContaining({ code: 'NAIAD_P2P_BAD_REQUEST' }))
    svc.openPeer({ peerId: 'z/1', hostId: 'z', taskId: TASK, digest: DIGEST, pieceLength: PL, contentLength: SIZE }, { assignments: () => {}, close: () => {} })
    expect(() => svc.openPeer({ peerId: 'z/2', hostId: 'z', taskId: TASK, digest: DIGEST, pieceLength: PL, contentLength: SIZE + 1 }, { assignments: () => {}, close: () => {} })).toThrow(expect.objectContaining({ code: 'NAIAD_P2P_BAD_REQUEST' }))
  })

  it('forgets hosts that stop heart-beating, with their pieces and downloads', () => {
    const { svc, open, clock } = setup({ hostTtlMs: 30_000 })
    const a = open('a')
    a.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    const b = open('b')
    clock.t += 20_000
    svc.announceHost(host('b'))
    clock.t += 15_000
    svc.sweep()
    expect(svc.listHosts(false).map(h => h.host.id)).toEqual(['b'])
    expect(a.sink.closed?.code).toBe('NAIAD_P2P_UNKNOWN_HOST')
    expect(svc.statTask(TASK)?.holders).toEqual([])
    b.s.requestPieces([0])
    expect(b.last()[0]?.action).toBe('back-to-source')
  })

  it('lists seeds only when asked, and counts measured bandwidth', () => {
    const { svc, open } = setup()
    svc.announceHost(host('seed1', { seed: true }))
    const a = open('a')
    a.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 1 })
    const b = open('b')
    b.s.requestPieces([0])
    b.s.pieceStarted(0, 'a')
    b.s.pieceFinished({ digest: piece(0), source: 'peer', parentHostId: 'a', length: PL, costMs: 100 })
    expect(svc.listHosts(true).map(h => h.host.id)).toEqual(['seed1'])
    expect(svc.listHosts(false).find(h => h.host.id === 'a')?.measuredBandwidth).toBe(Math.round(PL / 0.1))
    expect(svc.listHosts(false).find(h => h.host.id === 'a')?.activeUploads).toBe(0)
  })
})

describe('scheduler service: ring parent selection', () => {
  it('ringOrder: nearest holder before the child first (wrapping), hosts outside the ring last in the given order', () => {
    const r = (ids: string[]): Array<{ hostId: string }> => ids.map(hostId => ({ hostId }))
    const ring = ['a', 'b', 'c', 'd', 'e']
    expect(ringOrder(r(['a', 'b', 'd']), 'c', ring).map(x => x.hostId)).toEqual(['b', 'a', 'd'])
    expect(ringOrder(r(['c', 'e', 'd']), 'a', ring).map(x => x.hostId)).toEqual(['e', 'd', 'c'])
    expect(ringOrder(r(['x', 'b', 'y']), 'c', ring).map(x => x.hostId)).toEqual(['b', 'x', 'y'])
    // the child itself joins the ring if it is not in it yet
    expect(ringOrder(r(['a', 'd']), 'c', ['a', 'b', 'd']).map(x => x.hostId)).toEqual(['a', 'd'])
  })

  it('each child is offered first the holder nearest before it: a piece travels around the ring, every uplink feeding its successor', () => {
    const { open } = setup({ parentSelection: 'ring', candidateParents: 3 })
    const peers = ['a', 'b', 'c', 'd', 'e'].map(open)
    const [a, b, c, d, e] = peers as [typeof peers[0], typeof peers[0], typeof peers[0], typeof peers[0], typeof peers[0]]
    c.s.requestPieces([0])
    expect(c.last()[0]?.action).toBe('back-to-source')
    c.s.pieceStarted(0, '')
    c.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    // d is c's successor: offered c alone (not a holder chosen by score)
    d.s.requestPieces([0])
    expect(d.last()[0]).toMatchObject({ action: 'parents', parents: ['c'] }) // (the only holder)
    d.s.pieceStarted(0, 'c')
    // e: d relays it as it arrives (a partial holder) and is nearer than c
    // (its predecessor, copying the piece to nobody else: offered alone)
    e.s.requestPieces([0])
    expect((e.last()[0] as { parents: string[] }).parents).toEqual(['d'])
    e.s.pieceStarted(0, 'd')
    // a wraps around to e, b to a
    a.s.requestPieces([0])
    expect((a.last()[0] as { parents: string[] }).parents).toEqual(['e'])
    a.s.pieceStarted(0, 'e')
    b.s.requestPieces([0])
    expect((b.last()[0] as { parents: string[] }).parents).toEqual(['a'])
  })

  it('a child waits for its predecessor when that is about to receive the piece, then gets it from it; otherwise the nearest holder', async () => {
    const { open, metrics } = setup({ parentSelection: 'ring', candidateParents: 3 })
    const peers = ['a', 'b', 'c', 'd'].map(open)
    const [a, b, c, d] = peers as [typeof peers[0], typeof peers[0], typeof peers[0], typeof peers[0]]
    a.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    // b is assigned a; c (b's successor) asks before b started: it waits for b, not for a's uplink
    b.s.requestPieces([0])
    expect(b.last()[0]).toMatchObject({ action: 'parents', parents: ['a'] })
    c.s.requestPieces([0])
    expect(c.last()[0]?.action).toBe('wait')
    expect(await metrics.registry.metrics()).toMatch(/naiad_p2p_scheduler_waits_total\{reason="predecessor"\} 1\n/)
    // b starts receiving: c is served, from b alone
    b.s.pieceStarted(0, 'a')
    expect(c.last()[0]).toMatchObject({ action: 'parents', parents: ['b'] })
    // piece 1: held by a; d asks while its predecessor c does not want it: the nearest holder
    a.s.requestPieces([1])
    a.s.pieceFinished({ digest: piece(1), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    d.s.requestPieces([1])
    expect(d.last()[0]).toMatchObject({ action: 'parents', parents: ['a'] })
  })

  it('no waiting in a circle: when every download waits for a piece only a host outside the ring holds, one of them is served', () => {
    const { svc, open } = setup({ parentSelection: 'ring', candidateParents: 3 })
    svc.announceHost(host('r', { uploadConcurrency: 1 }))
    svc.announceTasks('r', [{ taskId: TASK, digest: DIGEST, contentLength: SIZE, pieceLength: PL, pieces: [piece(0), piece(1)], complete: false }], true)
    const peers = ['a', 'b', 'c'].map(open)
    const [a, b, c] = peers as [typeof peers[0], typeof peers[0], typeof peers[0]]
    // r's only upload slot copies piece 1 to a; then everyone asks for piece 0 and waits
    a.s.requestPieces([1])
    expect(a.last()[0]).toMatchObject({ action: 'parents', parents: ['r'] })
    for (const x of [b, c, a]) {
      x.s.requestPieces([0])
      expect(x.last()[0]?.action).toBe('wait')
    }
    a.s.pieceStarted(1, 'r')
    a.s.pieceFinished({ digest: piece(1), source: 'peer', parentHostId: 'r', length: PL, costMs: 50 })
    const served = peers.filter(x => x.sink.got.some(g => g.pieces.some(p => p.number === 0 && p.action === 'parents')))
    expect(served).toHaveLength(1)
  })

  it("'score' keeps the evaluator's ranking (several parents offered)", () => {
    const { open } = setup({ parentSelection: 'score', candidateParents: 3 })
    const peers = ['a', 'b', 'c'].map(open)
    const [a, b, c] = peers as [typeof peers[0], typeof peers[0], typeof peers[0]]
    a.s.requestPieces([0])
    a.s.pieceFinished({ digest: piece(0), source: 'origin', parentHostId: '', length: PL, costMs: 100 })
    b.s.requestPieces([0])
    b.s.pieceStarted(0, 'a')
    b.s.pieceFinished({ digest: piece(0), source: 'peer', parentHostId: 'a', length: PL, costMs: 100 })
    c.s.requestPieces([0])
    expect((c.last()[0] as { parents: string[] }).parents.sort()).toEqual(['a', 'b'])
  })
})
