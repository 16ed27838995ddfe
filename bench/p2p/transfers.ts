/**
 * Per-peer transfer statistics for bench/p2p `--transfers`, from the peers' debug logs (the
 * engine's "piece fetched" lines: when a piece was done, how long its transfer ran, how long it
 * waited for an assignment, its source). They show why a downlink is not full: too few transfers
 * in flight (the readers' windows, assignment waits) or transfers that each run slowly (their
 * source relays a piece it is still receiving, or shares its uplink).
 */

export interface PieceLine {
  /** When the piece was done (ms since the epoch). */
  at: number
  pieceNum: number
  /** 'O' for the origin, else the parent's host id. */
  source: string
  transferMs: number
  planMs: number
  /** Wait for a transfer slot after the assignment came. */
  slotMs: number
}

export interface TransferStats {
  pieces: number
  /** Seconds from the first transfer's start to the last one's end. */
  spanSeconds: number
  /** Mean number of transfers running over that span. */
  meanInFlight: number
  /** Share of the span with at least `fullAt` transfers running. */
  shareFull: number
  /** Mean rate of one transfer (Mbit/s). */
  meanTransferMbit: number
  /** Mean wait for an assignment per piece (s). */
  meanPlanSeconds: number
  /** Mean wait for a transfer slot after the assignment, per piece (s). */
  meanSlotSeconds: number
  /** Pieces from the origin. */
  fromOrigin: number
  /** Pieces from the host just before this one in the sorted ring of host ids. */
  fromPredecessor: number
}

/** The "piece fetched" lines of one pino log (other lines and bad JSON are skipped). */
export function parsePieceLines (log: string): PieceLine[] {
  const out: PieceLine[] = []
  for (const l of log.split('\n')) {
    if (!l.includes('"piece fetched"')) continue
    let r: Record<string, unknown>
    try { r = JSON.parse(l) as Record<string, unknown> } catch { continue }
    const at = Date.parse(String(r.time))
    if (!Number.isFinite(at) || typeof r.pieceNum !== 'number' || typeof r.transferMs !== 'number') continue
    out.push({ at, pieceNum: r.pieceNum, source: r.source === 'origin' ? 'O' : String(r.parent ?? '?'), transferMs: r.transferMs, planMs: typeof r.planMs === 'number' ? r.planMs : 0, slotMs: typeof r.slotMs === 'number' ? r.slotMs : 0 })
  }
  return out
}

/**
 * Statistics of one peer's pieces. `pieceBytes` converts durations to rates; `ring` is every
 * host id of the run (the scheduler's ring sorts them as strings).
 */
export function transferStats (lines: readonly PieceLine[], host: string, ring: readonly string[], pieceBytes: number, fullAt = 4): TransferStats | undefined {
  if (lines.length === 0) return undefined
  const iv = lines.map(l => ({ s: l.at - l.transferMs, e: l.at }))
  const start = Math.min(...iv.map(i => i.s))
  const end = Math.max(...iv.map(i => i.e))
  // Sweep over start/end events: time-weighted transfers in flight.
  const ev = iv.flatMap(i => [{ t: i.s, d: 1 }, { t: i.e, d: -1 }]).sort((a, b) => a.t - b.t || a.d - b.d)
  let cur = 0
  let last = start
  let area = 0
  let full = 0
  for (const e of ev) {
    const dt = e.t - last
    area += cur * dt
    if (cur >= fullAt) full += dt
    cur += e.d
    last = e.t
  }
  const span = Math.max(1, end - start)
  const sorted = [...ring].sort()
  const me = sorted.indexOf(host)
  const pred = me < 0 ? undefined : sorted[(me - 1 + sorted.length) % sorted.length]
  const rates = lines.filter(l => l.transferMs > 0).map(l => pieceBytes * 8 / 1e6 / (l.transferMs / 1000))
  return {
    pieces: lines.length,
    spanSeconds: span / 1000,
    meanInFlight: area / span,
    shareFull: full / span,
    meanTransferMbit: rates.length === 0 ? 0 : rates.reduce((a, b) => a + b, 0) / rates.length,
    meanPlanSeconds: lines.reduce((a, l) => a + l.planMs, 0) / lines.length / 1000,
    meanSlotSeconds: lines.reduce((a, l) => a + l.slotMs, 0) / lines.length / 1000,
    fromOrigin: lines.filter(l => l.source === 'O').length,
    fromPredecessor: pred === undefined ? 0 : lines.filter(l => l.source === pred).length
  }
}
