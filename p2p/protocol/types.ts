/**
 * Domain types shared by the peer and the scheduler (the gRPC messages are mapped to and from
 * these in p2p/grpc/convert.ts; nothing else touches the generated shapes).
 */
import type { PieceDigest } from './digests.ts'

/** A host running a peer daemon, as announced to the scheduler. No credentials, ever. */
export interface HostInfo {
  id: string
  hostname: string
  /** Address of its upload server. */
  ip: string
  uploadPort: number
  seed: boolean
  /** Bytes per second, 0 for unlimited. */
  uploadRateLimit: number
  uploadConcurrency: number
}

/** The scheduler's answer for one piece. */
export type Assignment =
  | { number: number, action: 'parents', parents: string[], digest: PieceDigest }
  | { number: number, action: 'back-to-source' }
  | { number: number, action: 'wait' }
  /** Only for origin-only requests: someone else holds, receives or fetches it; nothing follows. */
  | { number: number, action: 'skipped' }

export interface Assignments {
  pieces: Assignment[]
  /** Address book for the parents named. */
  hosts: HostInfo[]
}

export type FailureReason = 'transport' | 'digest-mismatch' | 'busy' | 'not-found' | 'origin'

/** A task as held on a host's disk. */
export interface HeldTask {
  taskId: string
  digest: string
  contentLength: number
  pieceLength: number
  pieces: PieceDigest[]
  complete: boolean
}

export interface HostStatus {
  host: HostInfo
  activeUploads: number
  /** Unix ms; 0 when not blocklisted. */
  blocklistedUntil: number
  /** Bytes per second; 0 when not measured. */
  measuredBandwidth: number
  recentFailures: number
}

export interface TaskStat {
  digest: string
  contentLength: number | undefined
  pieceCount: number
  recordedPieces: number
  holders: Array<{ hostId: string, pieces: number, complete: boolean }>
  originPermitsGranted: number
}
