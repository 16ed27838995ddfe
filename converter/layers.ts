/**
 * Opens a source layer as a verified stream of uncompressed tar bytes: blob digest and size checked
 * as the bytes arrive, decompressed by media type (gzip, zstd, none), and the uncompressed bytes
 * checked against the config's diff_id. Memory stays bounded: everything streams.
 */
import { createGunzip } from 'node:zlib'
import { pipeline, type Readable } from 'node:stream'
import { DecompressStream } from 'zstd-napi'
import { NaiadError, isNaiadError } from '../lib/errors/index.ts'
import { VerifyingStream, type Digest } from '../lib/digest/index.ts'

export type LayerCompression = 'gzip' | 'zstd' | 'none'

const TAR_TYPES: Record<string, LayerCompression> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar': 'none',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.diff.tar.zstd': 'zstd'
}

export function layerCompression (mediaType: string): LayerCompression {
  const c = TAR_TYPES[mediaType]
  if (c === undefined) {
    throw new NaiadError('NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE', `layer media type ${JSON.stringify(mediaType)} is not a tar layer naiad can convert`, {
      hint: mediaType.includes('nydus') ? 'the source is already a Nydus image' : 'supported: OCI/Docker tar, tar+gzip, tar+zstd layers'
    })
  }
  return c
}

function wrapDecompressError (err: unknown, what: string): unknown {
  if (isNaiadError(err) || (err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError'))) return err
  const msg = err instanceof Error ? err.message : String(err)
  return new NaiadError('NAIAD_TAR_CORRUPT', `${what}: ${msg}`, { cause: err })
}

export interface OpenLayerOptions {
  mediaType: string
  digest: Digest
  size?: number
  /** The config's diff_id for this layer: sha256 of the uncompressed tar. */
  diffId?: Digest
  signal?: AbortSignal
}

/**
 * Yields the uncompressed tar bytes of a layer. Errors (digest or diff_id mismatch, corrupt gzip
 * or zstd, the source failing) are thrown with NaiadError codes; the first error in the chain wins.
 */
export async function * layerTarBytes (compressed: Readable, opts: OpenLayerOptions): AsyncGenerator<Buffer> {
  const comp = layerCompression(opts.mediaType)
  const what = `layer ${opts.digest}`
  const stages: NodeJS.ReadWriteStream[] = [new VerifyingStream(opts.digest, opts.size)]
  if (comp === 'gzip') stages.push(createGunzip({ chunkSize: 1 << 18 }))
  else if (comp === 'zstd') stages.push(new DecompressStream())
  if (opts.diffId !== undefined) stages.push(new VerifyingStream(opts.diffId))
  let done!: (err: unknown) => void
  const finished = new Promise<unknown>(resolve => { done = resolve })
  const last = pipeline([compressed, ...stages] as unknown as [Readable, NodeJS.ReadWriteStream], (err) => { done(err ?? undefined) }) as unknown as Readable
  const onAbort = (): void => { last.destroy(opts.signal?.reason as Error) }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  try {
    for await (const chunk of last) yield chunk as Buffer
    const err = await finished
    if (err !== undefined) throw err
  } catch (iterErr) {
    const err = (await Promise.race([finished, new Promise(resolve => setTimeout(resolve, 100, undefined))])) ?? iterErr
    const e = wrapDecompressError(err, `${what} (${comp})`)
    if (isNaiadError(e) && e.code === 'NAIAD_DIGEST_MISMATCH' && opts.diffId !== undefined && e.message.includes(opts.diffId)) {
      throw new NaiadError('NAIAD_DIGEST_MISMATCH', `uncompressed ${what} does not match its diff_id ${opts.diffId}`, { cause: e })
    }
    throw e
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
    if (!last.destroyed) last.destroy()
  }
}
