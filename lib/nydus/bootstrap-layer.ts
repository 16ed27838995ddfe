/**
 * The bootstrap layer: a gzip tar holding `image/image.boot` (the merged RAFS v6 bootstrap, mode
 * 0444) and, as current nydusify does, `image/<layer digest>.blob.meta` per data blob. Written
 * deterministically (fixed mtimes, owners and gzip settings) so the same input gives the same
 * digest. `readBootstrapLayer` extracts the bootstrap back out of such a layer.
 */
import { createGzip, gunzipSync } from 'node:zlib'
import { pack as tarPack } from 'tar-stream'
import { Digester, type Digest } from '../digest/index.ts'
import { NaiadError } from '../errors/index.ts'
import { readTar } from '../tar/reader.ts'

export interface BootstrapLayer {
  /** gzip tar bytes */
  data: Buffer
  digest: Digest
  /** sha256 of the uncompressed tar (the diff_id) */
  diffId: Digest
}

export async function buildBootstrapLayer (bootstrap: Buffer, blobMetas: Array<{ blobId: string, meta: Buffer }>): Promise<BootstrapLayer> {
  const pack = tarPack()
  const entries: Array<{ name: string, mode: number, data?: Buffer }> = [
    { name: 'image', mode: 0o755 },
    { name: 'image/image.boot', mode: 0o444, data: bootstrap },
    ...blobMetas.map(b => ({ name: `image/${b.blobId}.blob.meta`, mode: 0o444, data: b.meta }))
  ]
  const raw: Buffer[] = []
  const gz = createGzip({ level: 6 })
  const compressed: Buffer[] = []
  pack.on('data', (c: unknown) => { raw.push(c as Buffer) })
  pack.pipe(gz)
  gz.on('data', (c: Buffer) => { compressed.push(c) })
  const gzDone = new Promise<void>((resolve, reject) => { gz.on('end', resolve); gz.on('error', reject) })
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const common = { name: e.name, mode: e.mode, uid: 0, gid: 0, uname: '', gname: '', mtime: new Date(0) }
      if (e.data === undefined) pack.entry({ ...common, type: 'directory' }, (err) => { if (err !== null && err !== undefined) reject(err); else resolve() })
      else pack.entry({ ...common, type: 'file', size: e.data.length }, e.data, (err) => { if (err !== null && err !== undefined) reject(err); else resolve() })
    })
  }
  pack.finalize()
  await gzDone
  const data = Buffer.concat(compressed)
  const dg = new Digester(); dg.update(data)
  const du = new Digester(); du.update(Buffer.concat(raw))
  return { data, digest: dg.digest(), diffId: du.digest() }
}

/** Extracts `image/image.boot` (and the .blob.meta files) from a bootstrap layer (gzip or plain tar). */
export async function readBootstrapLayer (layer: Buffer): Promise<{ bootstrap: Buffer, blobMetas: Map<string, Buffer> }> {
  let tar: Buffer
  try {
    tar = layer[0] === 0x1f && layer[1] === 0x8b ? gunzipSync(layer) : layer
  } catch (err) {
    throw new NaiadError('NAIAD_TAR_CORRUPT', `bootstrap layer is not a valid gzip stream: ${(err as Error).message}`, { cause: err })
  }
  let bootstrap: Buffer | undefined
  const blobMetas = new Map<string, Buffer>()
  async function * src (): AsyncGenerator<Buffer> { yield tar }
  for await (const e of readTar(src())) {
    const name = e.header.name.toString('utf8').replace(/^\.?\//, '')
    if (e.header.type !== 'file') { await e.skip(); continue }
    const m = /^image\/([0-9a-f]{64})\.blob\.meta$/.exec(name)
    if (name === 'image/image.boot' || m !== null) {
      const parts: Buffer[] = []
      for await (const c of e.body()) parts.push(c)
      if (m !== null) blobMetas.set(m[1]!, Buffer.concat(parts))
      else bootstrap = Buffer.concat(parts)
    } else {
      await e.skip()
    }
  }
  if (bootstrap === undefined) throw new NaiadError('NAIAD_OCI_BAD_MANIFEST', 'the bootstrap layer has no image/image.boot')
  return { bootstrap, blobMetas }
}
