import { describe, expect, it } from 'vitest'
import { sha256 } from '../../../lib/digest/index.ts'
import {
  blockCount, blockDigest, blockLength, checkPieceLength, computePieceDigest, DEFAULT_PIECE_LENGTH, describeTaskId, isTaskId, MiB, parseRangeHeader, parseTaskId,
  pieceCount, piecesForRange, pieceSpan, sameDigest, sliceOfPiece, taskIdFor, validPieceDigest
} from '../../../p2p/protocol/index.ts'

const D = sha256('hello')
const HEX = D.slice(7)

describe('task ids', () => {
  it('one task per blob digest and piece length, independent of registry and repository', () => {
    expect(taskIdFor(D, 4 * MiB)).toBe(`sha256-${HEX}-p22`)
    expect(taskIdFor(D, DEFAULT_PIECE_LENGTH)).toBe(taskIdFor(D, 4 * MiB))
    expect(taskIdFor(D, 1 * MiB)).toBe(`sha256-${HEX}-p20`)
    expect(taskIdFor(D, 1 * MiB)).not.toBe(taskIdFor(D, 4 * MiB))
  })

  it('round-trips and validates', () => {
    const id = taskIdFor(D, 4 * MiB)
    expect(isTaskId(id)).toBe(true)
    expect(describeTaskId(id)).toEqual({ digest: D, pieceLength: 4 * MiB })
    expect(parseTaskId(id)).toBe(id)
    for (const bad of ['', 'sha256-abc-p22', `sha256-${HEX}-p15`, `sha256-${HEX}-p27`, `md5-${HEX}-p22`, `sha256-${HEX.toUpperCase()}-p22`, `sha256-${HEX}-p22/..`, `sha512-${HEX}-p22`]) {
      expect(isTaskId(bad), bad).toBe(false)
      expect(() => parseTaskId(bad)).toThrow(expect.objectContaining({ code: 'NAIAD_P2P_BAD_REQUEST' }))
    }
  })

  it('rejects bad digests and piece lengths', () => {
    expect(() => taskIdFor('not a digest', 4 * MiB)).toThrow(expect.objectContaining({ code: 'NAIAD_DIGEST_INVALID' }))
    expect(() => taskIdFor(D, 3 * MiB)).toThrow(expect.objectContaining({ code: 'NAIAD_P2P_BAD_REQUEST' }))
    expect(() => taskIdFor(D, 32 * 1024)).toThrow(expect.objectContaining({ code: 'NAIAD_P2P_BAD_REQUEST' }))
    expect(() => checkPieceLength(128 * MiB)).toThrow()
    expect(() => checkPieceLength(64 * 1024)).not.toThrow()
  })
})

describe('piece arithmetic', () => {
  const P = 4 * MiB
  it.each([
    [0, 0], [1, 1], [P - 1, 1], [P, 1], [P + 1, 2], [64 * MiB, 16], [256 * MiB + 5, 65]
  ])('a blob of %i bytes has %i pieces', (size, count) => {
    expect(pieceCount(size, P)).toBe(count)
  })

  it('spans: offsets and a short last piece', () => {
    expect(pieceSpan(0, 10 * MiB, P)).toEqual({ number: 0, offset: 0, length: P })
    expect(pieceSpan(2, 10 * MiB, P)).toEqual({ number: 2, offset: 2 * P, length: 2 * MiB })
    expect(() => pieceSpan(3, 10 * MiB, P)).toThrow()
    expect(() => pieceSpan(-1, 10 * MiB, P)).toThrow()
  })

  it('blocks: 256 KiB inside pieces, the piece itself when smaller', () => {
    expect(blockLength(4 * MiB)).toBe(256 * 1024)
    expect(blockLength(64 * 1024)).toBe(64 * 1024)
    expect(blockCount(4 * MiB, 4 * MiB)).toBe(16)
    expect(blockCount(2 * MiB + 1, 4 * MiB)).toBe(9)
  })

  it.each([
    // first, last, size → pieces
    [0, 0, 10 * MiB, { first: 0, last: 0 }],
    [P - 1, P, 10 * MiB, { first: 0, last: 1 }],
    [P, 2 * P - 1, 10 * MiB, { first: 1, last: 1 }],
    [100, 20 * MiB, 10 * MiB, { first: 0, last: 2 }],
    [10 * MiB - 1, 10 * MiB - 1, 10 * MiB, { first: 2, last: 2 }],
    [10 * MiB, 10 * MiB + 5, 10 * MiB, undefined],
    [5, 4, 10 * MiB, undefined],
    [0, 0, 0, undefined]
  ])('range %i-%i of %i bytes overlaps pieces %j', (first, last, size, want) => {
    expect(piecesForRange(first, last, size, P)).toEqual(want)
  })

  it('slices of pieces inside a range', () => {
    const span = pieceSpan(1, 10 * MiB, P)
    expect(sliceOfPiece(span, 0, 10 * MiB)).toEqual({ start: 0, end: P })
    expect(sliceOfPiece(span, P + 10, P + 19)).toEqual({ start: 10, end: 20 })
    expect(sliceOfPiece(span, 0, P - 1)).toBeUndefined()
    expect(sliceOfPiece(span, 2 * P - 1, 3 * P)).toEqual({ start: P - 1, end: P })
  })
})

describe('Range header', () => {
  it.each([
    [undefined, 1000, undefined],
    ['bytes=0-99', 1000, { first: 0, last: 99 }],
    ['bytes=900-', 1000, { first: 900, last: 999 }],
    ['bytes=900-5000', 1000, { first: 900, last: 999 }],
    ['bytes=-100', 1000, { first: 900, last: 999 }],
    ['bytes=-5000', 1000, { first: 0, last: 999 }],
    ['bytes = 5 - 6', 1000, { first: 5, last: 6 }],
    ['bytes=1000-', 1000, 'unsatisfiable'],
    ['bytes=1000-2000', 1000, 'unsatisfiable'],
    ['bytes=-0', 1000, 'unsatisfiable'],
    ['bytes=0-0', 0, 'unsatisfiable']
  ])('%s on %i bytes → %j', (h, size, want) => {
    expect(parseRangeHeader(h, size)).toEqual(want)
  })

  it.each(['bytes=0-1,5-6', 'items=0-1', 'bytes=-', 'bytes=5-4', 'bytes=a-b', 'bytes 0-1'])('%s is refused', (h) => {
    expect(() => parseRangeHeader(h, 1000)).toThrow(expect.objectContaining({ code: 'NAIAD_P2P_BAD_REQUEST' }))
  })
})

describe('piece digests', () => {
  it('hold the piece sha256 and one sha256 per block', () => {
    const data = Buffer.alloc(600 * 1024, 7)
    const d = computePieceDigest(3, data, 4 * MiB)
    expect(d.number).toBe(3)
    expect(d.sha256.toString('hex')).toBe(sha256(data).slice(7))
    expect(d.blocks.length).toBe(3 * 32)
    expect(blockDigest(d, 2)?.toString('hex')).toBe(sha256(data.subarray(512 * 1024)).slice(7))
    expect(blockDigest(d, 3)).toBeUndefined()
    expect(validPieceDigest(d, data.length, 4 * MiB)).toBe(true)
    expect(validPieceDigest(d, data.length + 300 * 1024, 4 * MiB)).toBe(false)
    const other = Buffer.from(data)
    other[0] = 1
    expect(sameDigest(d, computePieceDigest(3, other, 4 * MiB))).toBe(false)
    expect(sameDigest(d, computePieceDigest(3, Buffer.from(data), 4 * MiB))).toBe(true)
  })
})
