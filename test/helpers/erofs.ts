/**
 * Independent checkers for what naiad writes: erofs-utils' fsck.erofs/dump.erofs and the kernel's
 * EROFS driver. They need each data blob as an EROFS device, i.e. the blob's chunks decompressed
 * at their uncompressed offsets (what a fully populated Nydus cache file is).
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { closeSync, openSync, readFileSync, writeFileSync, writeSync, ftruncateSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { BlobReader, fileBlobSource } from '../../lib/format/blob.ts'
import { Bootstrap } from '../../lib/format/bootstrap.ts'
import { readBootstrapLayer } from '../../lib/nydus/bootstrap-layer.ts'

export interface ErofsImage {
  bootstrapPath: string
  devicePaths: string[]
  bootstrap: Bootstrap
}

/** Reads a converted image from an OCI layout and writes bootstrap + decompressed devices to `out`. */
export async function erofsFromLayout (layoutDir: string, tag: string, out: string): Promise<ErofsImage> {
  mkdirSync(out, { recursive: true })
  const index = JSON.parse(readFileSync(join(layoutDir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string, annotations?: Record<string, string> }> }
  const entry = index.manifests.find(m => m.annotations?.['org.opencontainers.image.ref.name'] === tag)
  if (entry === undefined) throw new Error(`no tag ${tag} in ${layoutDir}`)
  const blob = (d: string): string => join(layoutDir, 'blobs', 'sha256', d.replace('sha256:', ''))
  const manifest = JSON.parse(readFileSync(blob(entry.digest), 'utf8')) as { layers: Array<{ digest: string }> }
  const bootLayer = manifest.layers[manifest.layers.length - 1]!
  const { bootstrap: raw } = await readBootstrapLayer(readFileSync(blob(bootLayer.digest)))
  const bootstrapPath = join(out, 'image.boot')
  writeFileSync(bootstrapPath, raw)
  const bootstrap = Bootstrap.parse(raw)
  const devicePaths: string[] = []
  for (const b of bootstrap.blobs) {
    const src = await fileBlobSource(blob(b.blobId))
    try {
      const reader = await BlobReader.open(src, { blob: b })
      const dev = join(out, `${b.blobId}.blob.data`)
      const fd = openSync(dev, 'w')
      try {
        ftruncateSync(fd, b.uncompressedSize)
        for (let i = 0; i < reader.chunkCount; i++) {
          const data = await reader.readChunk(i)
          writeSync(fd, data, 0, data.length, reader.chunk(i).uncompressedOffset)
        }
      } finally {
        closeSync(fd)
      }
      devicePaths.push(dev)
    } finally {
      await src.close()
    }
  }
  return { bootstrapPath, devicePaths, bootstrap }
}

export function fsckErofs (img: ErofsImage, extractTo?: string): string {
  const args = ['-d3', ...img.devicePaths.map(d => `--device=${d}`), ...(extractTo !== undefined ? [`--extract=${extractTo}`, '--preserve'] : []), img.bootstrapPath]
  const r = spawnSync('fsck.erofs', args, { encoding: 'utf8' })
  const out = `${r.stdout}${r.stderr}`
  if (r.status !== 0) throw new Error(`fsck.erofs failed (${String(r.status)}): ${out}`)
  return out
}

/** Mounts with the kernel's EROFS driver on loop devices; returns an unmount function. */
export function kernelMount (img: ErofsImage, mountpoint: string): () => void {
  mkdirSync(mountpoint, { recursive: true })
  const loops: string[] = []
  const losetup = (f: string): string => {
    const l = execFileSync('losetup', ['-f', '--show', '-r', f], { encoding: 'utf8' }).trim()
    loops.push(l)
    return l
  }
  const cleanup = (): void => {
    try { execFileSync('umount', [mountpoint], { stdio: 'ignore' }) } catch { /* not mounted */ }
    for (const l of loops.reverse()) { try { execFileSync('losetup', ['-d', l], { stdio: 'ignore' }) } catch { /* gone */ } }
  }
  try {
    const devs = img.devicePaths.map(losetup)
    const boot = losetup(img.bootstrapPath)
    execFileSync('mount', ['-t', 'erofs', '-o', ['ro', ...devs.map(d => `device=${d}`)].join(','), boot, mountpoint], { stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    cleanup()
    throw err
  }
  return cleanup
}

export function listTree (dir: string, ...opts: string[]): string {
  return execFileSync('python3', [new URL('./fslist.py', import.meta.url).pathname, dir, ...opts], { encoding: 'utf8', maxBuffer: 256 << 20 })
}

export function writeSyncAll (fd: number, b: Buffer, pos: number): void {
  let off = 0
  while (off < b.length) off += writeSync(fd, b, off, b.length - off, pos + off)
}

/**
 * listTree without blocking this process: required whenever this process also serves something
 * the listed mount depends on (a counting proxy in front of the registry, for example).
 */
export async function listTreeAsync (dir: string, ...opts: string[]): Promise<string> {
  const { execFile } = await import('node:child_process')
  return await new Promise((resolve, reject) => {
    execFile('python3', [new URL('./fslist.py', import.meta.url).pathname, dir, ...opts], { encoding: 'utf8', maxBuffer: 256 << 20 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`))
      else resolve(stdout)
    })
  })
}
