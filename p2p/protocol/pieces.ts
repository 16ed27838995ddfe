/**
 * Piece arithmetic. A blob of `size` bytes is cut into fixed-size pieces of `pieceLength` bytes (a
 * power of two; the last piece is shorter); each piece is cut into verification blocks of
 * `blockLength(pieceLength)` bytes, so bytes fetched from a parent can be checked and handed to
 * readers a block at a time instead of a whole piece at a time.
 *
 * Ranges are inclusive `[first, last]` byte offsets, as in HTTP.
 */
import { NaiadError } from '../../lib/errors/index.ts'

export const KiB = 1024
export const MiB = 1024 * 1024

/** Default piece length: 4 MiB, the value Dragonfly and Kraken converged on. */
export const DEFAULT_PIECE_LENGTH = 4 * MiB
export const MIN_PIECE_LENGTH = 64 * KiB
export const MAX_PIECE_LENGTH = 64 * MiB

/** Verification block length inside a piece (fixed cluster-wide; part of the protocol). */
export const BLOCK_LENGTH = 256 * KiB

export function checkPieceLength (n: number): void {
  if (!Number.isSafeInteger(n) || n < MIN_PIECE_LENGTH || n > MAX_PIECE_LENGTH || (n & (n - 1)) !== 0) {
    throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `piece length ${n} is not a power of two from ${MIN_PIECE_LENGTH} to ${MAX_PIECE_LENGTH}`)
  }
}

/** The block length for pieces of `pieceLength` bytes. */
export function blockLength (pieceLength: number): number {
  return Math.min(BLOCK_LENGTH, pieceLength)
}

/** Number of pieces of a blob (0 for an empty blob). */
export function pieceCount (size: number, pieceLength: number): number {
  if (size < 0 || !Number.isSafeInteger(size)) throw new NaiadError('NAIAD_INTERNAL', `bad blob size ${size}`)
  return Math.ceil(size / pieceLength)
}

export interface PieceSpan {
  number: number
  /** Offset of the piece's first byte in the blob. */
  offset: number
  length: number
}

/** Where piece `n` lies in the blob. */
export function pieceSpan (n: number, size: number, pieceLength: number): PieceSpan {
  const count = pieceCount(size, pieceLength)
  if (!Number.isSafeInteger(n) || n < 0 || n >= count) throw new NaiadError('NAIAD_INTERNAL', `piece ${n} out of range 0..${count - 1}`)
  const offset = n * pieceLength
  return { number: n, offset, length: Math.min(pieceLength, size - offset) }
}

/** Number of verification blocks in a piece of `length` bytes. */
export function blockCount (length: number, pieceLength: number): number {
  return Math.ceil(length / blockLength(pieceLength))
}

/**
 * The pieces overlapping bytes `[first, last]` (inclusive, clamped to the blob), as a first..last
 * piece number pair; undefined for an empty blob or a range starting past its end.
 */
export function piecesForRange (first: number, last: number, size: number, pieceLength: number): { first: number, last: number } | undefined {
  if (size === 0 || first >= size || last < first) return undefined
  const end = Math.min(last, size - 1)
  return { first: Math.floor(first / pieceLength), last: Math.floor(end / pieceLength) }
}

/** The part of piece `span` inside bytes `[first, last]`, relative to the piece's start. */
export function sliceOfPiece (span: PieceSpan, first: number, last: number): { start: number, end: number } | undefined {
  const s = Math.max(first, span.offset)
  const e = Math.min(last, span.offset + span.length - 1)
  if (e < s) return undefined
  return { start: s - span.offset, end: e - span.offset + 1 }
}

export type ByteRange = { first: number, last: number }

/**
 * Parses an HTTP Range header (RFC 9110, one `bytes` range) against a blob of `size` bytes:
 * `bytes=a-b`, `bytes=a-` and `bytes=-n` (the last n bytes). Returns:
 * - `undefined` when there is no header (the whole blob);
 * - `'unsatisfiable'` when the range starts at or past the end (answer 416);
 * - the clamped inclusive range otherwise.
 * A malformed header, another unit or several ranges are NAIAD_P2P_BAD_REQUEST.
 */
export function parseRangeHeader (header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(header)
  if (m === null) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `unsupported Range header ${JSON.stringify(header.slice(0, 100))}: one bytes range expected`)
  const a = m[1] ?? ''
  const b = m[2] ?? ''
  if (a === '' && b === '') throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `bad Range header ${JSON.stringify(header.slice(0, 100))}`)
  if (a === '') {
    const n = Number(b)
    if (n === 0 || size === 0) return 'unsatisfiable'
    return { first: Math.max(0, size - n), last: size - 1 }
  }
  const first = Number(a)
  const last = b === '' ? Number.MAX_SAFE_INTEGER : Number(b)
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last)) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', 'Range offsets too large')
  if (last < first) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `bad Range header ${JSON.stringify(header.slice(0, 100))}: last < first`)
  if (first >= size) return 'unsatisfiable'
  return { first, last: Math.min(last, size - 1) }
}
