/**
 * @packageDocumentation
 * The p2p protocol's shared vocabulary: task ids (one task per blob digest and piece length),
 * piece and block arithmetic, Range parsing, and piece digests. Pure functions, no I/O.
 *
 * @example
 *   const id = taskIdFor('sha256:…', DEFAULT_PIECE_LENGTH)
 *   const span = piecesForRange(1_000_000, 9_000_000, size, DEFAULT_PIECE_LENGTH) // { first: 0, last: 2 }
 */
export * from './task-id.ts'
export * from './pieces.ts'
export * from './digests.ts'
export * from './types.ts'
