/**
 * Parent selection: a pure function from the scheduler's view of the candidates to a ranked list,
 * with no I/O, no clock and no randomness, so it can be table-tested (test/unit/p2p/evaluator.test.ts).
 *
 * Filters (a candidate is dropped when any holds):
 * - it is the child's own host ("never the same host");
 * - it holds none of the wanted pieces;
 * - it is blocklisted cluster-wide (served a corrupt piece, or too many recent failures) or by
 *   this child (failed it during this download);
 * - it is a bad parent: `recentFailures >= badParentFailures`;
 * - taking it would close a cycle: the candidate is itself (transitively) waiting on the child for
 *   any of the wanted pieces (edges of in-flight transfers, labelled with their pieces);
 * - it is the only source of other pieces other downloads of the task will want (`uniqueDemand >
 *   0`) while another candidate is not: its uplink is kept for the pieces nobody else can serve. Without this, the
 *   peer that fetched the newest pieces from the origin spends its uplink on copies others could
 *   make, and the newest pieces spread late.
 *
 * Score (each term in 0..1, higher is better):
 *   0.25 availability  wanted pieces it holds / wanted pieces (halved while it still receives them)
 *   0.25 load          1 − activeUploads / uploadConcurrency (clamped)
 *   0.20 bandwidth     measured upload bandwidth / best measured among candidates (unmeasured: 0.5)
 *   0.20 fairness      1 − recentUploadBytes / most recent upload bytes among candidates: spreads
 *                      the uploading over the swarm instead of draining the first holder's uplink
 *   0.05 reliability   1 / (1 + recentFailures)
 *   0.05 seed          1 for a seed peer
 * Ties are broken by host id, so the result is deterministic.
 */

export interface CandidateHost {
  hostId: string
  seed: boolean
  /** How many of the wanted pieces it holds. */
  held: number
  /** Uploads in progress (reported by the host plus assigned by the scheduler). */
  activeUploads: number
  /** Its configured upload concurrency (≥ 1). */
  uploadConcurrency: number
  /** Measured upload bandwidth in bytes per second, if measured. */
  bandwidth?: number
  /** Bytes it uploaded recently (decayed); 0 if unknown. */
  recentUploadBytes?: number
  /** Other pieces of the task that only it holds (or receives) while other downloads are open. */
  uniqueDemand?: number
  /** It is still receiving the piece (it relays verified blocks as they arrive): half availability. */
  partial?: boolean
  /** Transport failures reported against it recently (decayed count). */
  recentFailures: number
  /** Blocklisted cluster-wide right now. */
  blocklisted: boolean
}

/** In-flight transfers: downloader host id → parent host id → piece numbers. */
export type TransferEdges = ReadonlyMap<string, ReadonlyMap<string, ReadonlySet<number>>>

export interface EvaluateInput {
  childHostId: string
  /** The pieces the child asks for. */
  wanted: ReadonlySet<number>
  candidates: readonly CandidateHost[]
  /** Hosts this child's download has blocklisted. */
  childBlocklist?: ReadonlySet<string>
  edges?: TransferEdges
  /** At most this many parents are returned. */
  limit: number
}

export interface RankedParent {
  hostId: string
  score: number
}

export interface EvaluatorOptions {
  /** A candidate with at least this many recent failures is a bad parent (default 3). */
  badParentFailures?: number
}

export interface Evaluator {
  evaluateParents (input: EvaluateInput): RankedParent[]
  isBadParent (c: CandidateHost): boolean
}

export const WEIGHTS = Object.freeze({ availability: 0.25, load: 0.25, bandwidth: 0.20, fairness: 0.20, reliability: 0.05, seed: 0.05 })

/** True if some in-flight path leads from `from` to `to` over edges carrying any of `pieces`. */
export function reaches (edges: TransferEdges, from: string, to: string, pieces: ReadonlySet<number>): boolean {
  const seen = new Set<string>([from])
  const stack = [from]
  while (stack.length > 0) {
    const cur = stack.pop() as string
    const out = edges.get(cur)
    if (out === undefined) continue
    for (const [parent, ps] of out) {
      let relevant = false
      for (const p of ps) if (pieces.has(p)) { relevant = true; break }
      if (!relevant) continue
      if (parent === to) return true
      if (!seen.has(parent)) { seen.add(parent); stack.push(parent) }
    }
  }
  return false
}

export function createEvaluator (options: EvaluatorOptions = {}): Evaluator {
  const badParentFailures = options.badParentFailures ?? 3
  const isBadParent = (c: CandidateHost): boolean => c.recentFailures >= badParentFailures
  return {
    isBadParent,
    evaluateParents (input) {
      const wantedCount = Math.max(1, input.wanted.size)
      const kept = input.candidates.filter(c =>
        c.hostId !== input.childHostId &&
        c.held > 0 &&
        !c.blocklisted &&
        input.childBlocklist?.has(c.hostId) !== true &&
        !isBadParent(c) &&
        (input.edges === undefined || !reaches(input.edges, c.hostId, input.childHostId, input.wanted))
      )
      if (kept.some(c => (c.uniqueDemand ?? 0) === 0)) {
        for (let i = kept.length - 1; i >= 0; i--) if (((kept[i] as CandidateHost).uniqueDemand ?? 0) > 0) kept.splice(i, 1)
      }
      let best = 0
      let busiest = 0
      for (const c of kept) {
        if (c.bandwidth !== undefined && c.bandwidth > best) best = c.bandwidth
        if ((c.recentUploadBytes ?? 0) > busiest) busiest = c.recentUploadBytes ?? 0
      }
      const ranked = kept.map(c => {
        const availability = Math.min(1, c.held / wantedCount) * (c.partial === true ? 0.5 : 1)
        const load = Math.max(0, 1 - c.activeUploads / Math.max(1, c.uploadConcurrency))
        const bandwidth = c.bandwidth === undefined || best === 0 ? 0.5 : c.bandwidth / best
        const fairness = busiest === 0 ? 1 : 1 - (c.recentUploadBytes ?? 0) / busiest
        const reliability = 1 / (1 + c.recentFailures)
        const seed = c.seed ? 1 : 0
        const score = WEIGHTS.availability * availability + WEIGHTS.load * load + WEIGHTS.bandwidth * bandwidth + WEIGHTS.fairness * fairness + WEIGHTS.reliability * reliability + WEIGHTS.seed * seed
        return { hostId: c.hostId, score: Math.round(score * 1e6) / 1e6 }
      })
      ranked.sort((a, b) => b.score - a.score || (a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0))
      return ranked.slice(0, Math.max(0, input.limit))
    }
  }
}
