import { describe, expect, it } from 'vitest'
import { createEvaluator, reaches, WEIGHTS, type CandidateHost, type TransferEdges } from '../../../p2p/scheduler/evaluator.ts'

const ev = createEvaluator({ badParentFailures: 3 })

function c (hostId: string, over: Partial<CandidateHost> = {}): CandidateHost {
  return { hostId, seed: false, held: 1, activeUploads: 0, uploadConcurrency: 4, recentFailures: 0, blocklisted: false, ...over }
}

function edges (list: Array<[string, string, number[]]>): TransferEdges {
  const m = new Map<string, Map<string, Set<number>>>()
  for (const [from, to, ps] of list) {
    let out = m.get(from)
    if (out === undefined) m.set(from, out = new Map())
    out.set(to, new Set(ps))
  }
  return m
}

const wanted = new Set([0, 1, 2, 3])

describe('evaluator: filters', () => {
  it.each<[string, CandidateHost[], string[], { childBlocklist?: string[], edges?: TransferEdges }?]>([
    ['never the same host', [c('child'), c('a')], ['a']],
    ['a candidate holding none of the wanted pieces is dropped', [c('a', { held: 0 }), c('b')], ['b']],
    ['cluster-wide blocklist', [c('a', { blocklisted: true }), c('b')], ['b']],
    ['the child\'s own blocklist', [c('a'), c('b')], ['b'], { childBlocklist: ['a'] }],
    ['bad parent: 3 recent failures', [c('a', { recentFailures: 3 }), c('b', { recentFailures: 2 })], ['b']],
    ['no cycle: a candidate waiting on the child for a wanted piece', [c('a'), c('b')], ['b'], { edges: edges([['a', 'child', [2]]]) }],
    ['no cycle, transitively: a ← x ← child', [c('a'), c('b')], ['b'], { edges: edges([['a', 'x', [1]], ['x', 'child', [1]]]) }],
    ['edges for other pieces are not cycles', [c('a'), c('b')], ['a', 'b'], { edges: edges([['a', 'child', [9]]]) }],
    ['a chain broken by an unrelated piece is not a cycle', [c('a')], ['a'], { edges: edges([['a', 'x', [1]], ['x', 'child', [9]]]) }],
    ['a holder that alone serves pieces others wait for is kept for those', [c('a', { uniqueDemand: 2 }), c('b')], ['b']],
    ['when every holder alone serves other pieces, none is dropped', [c('a', { uniqueDemand: 1 }), c('b', { uniqueDemand: 3 })], ['a', 'b']],
    ['nobody left', [c('child'), c('a', { blocklisted: true })], []]
  ])('%s', (_name, candidates, want, extra = {}) => {
    const got = ev.evaluateParents({
      childHostId: 'child',
      wanted,
      candidates,
      limit: 10,
      ...(extra.childBlocklist !== undefined ? { childBlocklist: new Set(extra.childBlocklist) } : {}),
      ...(extra.edges !== undefined ? { edges: extra.edges } : {})
    }).map(r => r.hostId)
    expect(got.sort()).toEqual([...want].sort())
  })
})

describe('evaluator: ranking', () => {
  it.each<[string, CandidateHost[], string[]]>([
    ['more of the wanted pieces ranks higher', [c('a', { held: 1 }), c('b', { held: 4 })], ['b', 'a']],
    ['less loaded ranks higher', [c('a', { activeUploads: 4 }), c('b', { activeUploads: 1 })], ['b', 'a']],
    ['faster measured bandwidth ranks higher', [c('a', { bandwidth: 1e6 }), c('b', { bandwidth: 10e6 })], ['b', 'a']],
    ['unmeasured sits between fast and slow', [c('slow', { bandwidth: 1e6 }), c('new'), c('fast', { bandwidth: 10e6 })], ['fast', 'new', 'slow']],
    ['recent failures rank lower', [c('a', { recentFailures: 2 }), c('b')], ['b', 'a']],
    ['seeds win ties', [c('a'), c('s', { seed: true })], ['s', 'a']],
    ['a holder still receiving the piece (relaying) ranks below a complete one', [c('p', { partial: true }), c('a')], ['a', 'p']],
    ['the less used uplink ranks higher (fairness)', [c('a', { recentUploadBytes: 100e6 }), c('b', { recentUploadBytes: 10e6 })], ['b', 'a']],
    ['ties broken by host id', [c('b'), c('a'), c('c')], ['a', 'b', 'c']],
    ['load outweighs a seed bonus', [c('s', { seed: true, activeUploads: 4 }), c('a')], ['a', 's']]
  ])('%s', (_name, candidates, want) => {
    expect(ev.evaluateParents({ childHostId: 'child', wanted, candidates, limit: 10 }).map(r => r.hostId)).toEqual(want)
  })

  it('returns at most `limit` parents', () => {
    const many = Array.from({ length: 10 }, (_, i) => c(`h${i}`))
    expect(ev.evaluateParents({ childHostId: 'child', wanted, candidates: many, limit: 3 })).toHaveLength(3)
  })

  it('scores are the documented weighted sum', () => {
    const [r] = ev.evaluateParents({ childHostId: 'child', wanted, candidates: [c('a', { held: 2, activeUploads: 1, uploadConcurrency: 4, recentFailures: 1, seed: true })], limit: 1 })
    const expected = WEIGHTS.availability * 0.5 + WEIGHTS.load * 0.75 + WEIGHTS.bandwidth * 0.5 + WEIGHTS.fairness * 1 + WEIGHTS.reliability * 0.5 + WEIGHTS.seed * 1
    expect(r?.score).toBeCloseTo(expected, 5)
  })

  it('is pure: same input, same output, input untouched', () => {
    const cands = [c('a', { bandwidth: 5 }), c('b'), c('c', { activeUploads: 2 })]
    const copy = JSON.parse(JSON.stringify(cands)) as unknown
    const one = ev.evaluateParents({ childHostId: 'child', wanted, candidates: cands, limit: 5 })
    const two = ev.evaluateParents({ childHostId: 'child', wanted, candidates: cands, limit: 5 })
    expect(one).toEqual(two)
    expect(cands).toEqual(copy)
  })

  it('isBadParent follows the failure threshold', () => {
    expect(ev.isBadParent(c('a', { recentFailures: 2 }))).toBe(false)
    expect(ev.isBadParent(c('a', { recentFailures: 3 }))).toBe(true)
    expect(createEvaluator({ badParentFailures: 1 }).isBadParent(c('a', { recentFailures: 1 }))).toBe(true)
  })
})

describe('reaches (cycle check)', () => {
  it('follows only edges labelled with relevant pieces', () => {
    const e = edges([['a', 'b', [1]], ['b', 'c', [2]], ['c', 'a', [1]]])
    expect(reaches(e, 'a', 'b', new Set([1]))).toBe(true)
    expect(reaches(e, 'a', 'c', new Set([1]))).toBe(false)
    expect(reaches(e, 'a', 'c', new Set([1, 2]))).toBe(true)
    expect(reaches(e, 'c', 'b', new Set([1]))).toBe(true)
    expect(reaches(e, 'x', 'a', new Set([1]))).toBe(false)
  })
})
