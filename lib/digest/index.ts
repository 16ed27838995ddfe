/**
 * Content digests. `Digest` is a branded `sha256:<hex>` string, validated once at the boundary by
 * `parseDigest`. Chunk digests (BLAKE3 or SHA-256, raw 32 bytes) come from `chunkHasher`.
 */
import { createHash, type Hash } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import { blake3 } from '@napi-rs/blake-hash'
import { NaiadError } from '../errors/index.ts'

export type Digest = string & { readonly __brand: 'Digest' }

const SHA256_RE = /^sha256:[0-9a-f]{64}$/
const SHA512_RE = /^sha512:[0-9a-f]{128}$/

export function isDigest (s: string): s is Digest {
  return SHA256_RE.test(s) || SHA512_RE.test(s)
}

export function parseDigest (s: string): Digest {
  if (SHA256_RE.test(s)) return s as Digest
  if (SHA512_RE.test(s)) return s as Digest
  if (/^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(s)) {
    throw new NaiadError('NAIAD_DIGEST_UNSUPPORTED', `digest algorithm of ${JSON.stringify(s.slice(0, 80))} is not supported`)
  }
  throw new NaiadError('NAIAD_DIGEST_INVALID', `not a digest: ${JSON.stringify(s.slice(0, 80))}`)
}

/** The hex part of a digest. */
export function digestHex (d: Digest): string {
  return d.slice(d.indexOf(':') + 1)
}

export function digestAlgorithm (d: Digest): 'sha256' | 'sha512' {
  return d.startsWith('sha512:') ? 'sha512' : 'sha256'
}

export function sha256 (data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest
}

export function sha256Hex (data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex')
}

/** An incremental digester for OCI content. */
export class Digester {
  private readonly hash: Hash
  private n = 0
  readonly algorithm: 'sha256' | 'sha512'
  constructor (algorithm: 'sha256' | 'sha512' = 'sha256') {
    this.algorithm = algorithm
    this.hash = createHash(algorithm)
  }

  update (chunk: Uint8Array): void {
    this.hash.update(chunk)
    this.n += chunk.length
  }

  get size (): number { return this.n }

  digest (): Digest {
    return `${this.algorithm}:${this.hash.digest('hex')}` as Digest
  }
}

/**
 * A pass-through stream that hashes what flows through it and, at the end, fails with
 * NAIAD_DIGEST_MISMATCH (and emits no further data) if the digest or the size is not the expected one.
 */
export class VerifyingStream extends Transform {
  private readonly digester: Digester
  constructor (private readonly expected: Digest, private readonly expectedSize?: number) {
    super()
    this.digester = new Digester(digestAlgorithm(expected))
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.digester.update(chunk)
    if (this.expectedSize !== undefined && this.digester.size > this.expectedSize) {
      cb(new NaiadError('NAIAD_DIGEST_MISMATCH', `content of ${this.expected} is longer than the expected ${this.expectedSize} bytes`))
      return
    }
    cb(null, chunk)
  }

  override _flush (cb: TransformCallback): void {
    const got = this.digester.digest()
    if (this.expectedSize !== undefined && this.digester.size !== this.expectedSize) {
      cb(new NaiadError('NAIAD_DIGEST_MISMATCH', `content of ${this.expected} has ${this.digester.size} bytes, expected ${this.expectedSize}`))
      return
    }
    if (got !== this.expected) {
      cb(new NaiadError('NAIAD_DIGEST_MISMATCH', `expected ${this.expected}, got ${got}`, { details: { expected: this.expected, got } }))
      return
    }
    cb()
  }
}

export type ChunkDigestAlgorithm = 'blake3' | 'sha256'

/** 32-byte digest of a chunk, as Nydus computes it for chunk ids. */
export function chunkDigest (algo: ChunkDigestAlgorithm, data: Uint8Array): Buffer {
  if (algo === 'blake3') return blake3(Buffer.from(data.buffer, data.byteOffset, data.byteLength))
  return createHash('sha256').update(data).digest()
}
