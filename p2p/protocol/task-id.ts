/**
 * Task identity. A task is the p2p download of one blob, keyed by the blob's digest alone (never by
 * registry, repository, Range or credentials), so the same blob pulled from two registries or two
 * repositories is one task cluster-wide. The piece length is part of the id because pieces of
 * different lengths cannot be exchanged.
 *
 * Form: `<algorithm>-<hex>-p<log2(pieceLength)>`, e.g. `sha256-9f86…08-p22` for 4 MiB pieces; it is
 * safe as a file name and readable in logs.
 */
import { digestHex, parseDigest, type Digest } from '../../lib/digest/index.ts'
import { NaiadError } from '../../lib/errors/index.ts'
import { checkPieceLength } from './pieces.ts'

export type TaskId = string & { readonly __brand: 'TaskId' }

const TASK_ID_RE = /^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})-p(\d{1,2})$/

/** The task id of a blob digest for a piece length (a power of two). */
export function taskIdFor (digest: Digest | string, pieceLength: number): TaskId {
  const d = parseDigest(digest)
  checkPieceLength(pieceLength)
  const alg = d.slice(0, d.indexOf(':'))
  return `${alg}-${digestHex(d)}-p${Math.log2(pieceLength)}` as TaskId
}

export function isTaskId (s: string): s is TaskId {
  const m = TASK_ID_RE.exec(s)
  if (m === null) return false
  const hexLen = m[1] === 'sha256' ? 64 : 128
  return (m[2] ?? '').length === hexLen && Number(m[3]) >= 16 && Number(m[3]) <= 26
}

/** Validates a task id from the wire or a path (NAIAD_P2P_BAD_REQUEST). */
export function parseTaskId (s: string): TaskId {
  if (!isTaskId(s)) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `not a task id: ${JSON.stringify(s.slice(0, 200))}`)
  return s
}

/** The blob digest and piece length a task id names. */
export function describeTaskId (id: TaskId): { digest: Digest, pieceLength: number } {
  const m = TASK_ID_RE.exec(id)
  if (m === null) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `not a task id: ${JSON.stringify(id.slice(0, 200))}`)
  return { digest: `${m[1] ?? ''}:${m[2] ?? ''}` as Digest, pieceLength: 2 ** Number(m[3]) }
}
