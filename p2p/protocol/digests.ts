/**
 * Piece digests: the sha256 of the whole piece, plus the sha256 of each verification block
 * (concatenated, 32 bytes each). The first origin fetch of a piece records them with the
 * scheduler; a piece fetched from a parent must match them block by block, or it is discarded.
 */
import { createHash } from 'node:crypto'
import { blockLength } from './pieces.ts'

export interface PieceDigest {
  number: number
  /** sha256 of the piece's bytes (32 bytes). */
  sha256: Buffer
  /** sha256 of each verification block, concatenated (32 bytes per block). */
  blocks: Buffer
}

export const SHA256_LENGTH = 32

export function sha256Of (data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest()
}

/** Computes the digests of a complete piece. */
export function computePieceDigest (number: number, data: Uint8Array, pieceLength: number): PieceDigest {
  const bl = blockLength(pieceLength)
  const n = Math.ceil(data.length / bl)
  const blocks = Buffer.allocUnsafe(n * SHA256_LENGTH)
  for (let i = 0; i < n; i++) {
    createHash('sha256').update(data.subarray(i * bl, Math.min(data.length, (i + 1) * bl))).digest().copy(blocks, i * SHA256_LENGTH)
  }
  return { number, sha256: sha256Of(data), blocks }
}

/** The expected digest of block `i`, or undefined if the record has fewer blocks. */
export function blockDigest (d: PieceDigest, i: number): Buffer | undefined {
  if ((i + 1) * SHA256_LENGTH > d.blocks.length) return undefined
  return d.blocks.subarray(i * SHA256_LENGTH, (i + 1) * SHA256_LENGTH)
}

/** True if two records describe the same bytes. */
export function sameDigest (a: PieceDigest, b: PieceDigest): boolean {
  return a.number === b.number && a.sha256.equals(b.sha256) && a.blocks.equals(b.blocks)
}

/** A well-formed record for a piece of `length` bytes. */
export function validPieceDigest (d: PieceDigest, length: number, pieceLength: number): boolean {
  return d.sha256.length === SHA256_LENGTH && d.blocks.length === Math.ceil(length / blockLength(pieceLength)) * SHA256_LENGTH
}
