/**
 * bench/convert: naiad convert throughput and peak RSS on a generated image with one big layer,
 * beside the baseline `gzip -dc layer.tar.gz | zstd -3 -T2 >/dev/null` on the same layer, in the
 * same run. Usage: node dist/bench/convert/run.js [--size 1GiB] [--keep]
 */
import { spawn } from 'node:child_process'
import { createWriteStream, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir, cpus } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { createHash } from 'node:crypto'
import { pack as tarPack } from 'tar-stream'
import { parseSize } from '../../lib/config/index.ts'

const args = process.argv.slice(2)
const sizeArg = args[args.indexOf('--size') + 1]
const total = args.includes('--size') && sizeArg !== undefined ? parseSize(sizeArg) ?? 1 << 30 : 1 << 30
const keep = args.includes('--keep')

/** Deterministic semi-compressible content: text-like runs, random bytes, zero runs. */
function content (size: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(size)
  let x = (seed * 2654435761) >>> 0 || 1
  const words = Buffer.from('the quick brown fox jumps over the lazy dog lorem ipsum dolor sit amet ')
  for (let i = 0; i < size;) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    const kind = x % 20
    const run = Math.min(size - i, 512 + (x % 4096))
    if (kind < 12) { for (let j = 0; j < run; j++) b[i + j] = words[(j + x) % words.length]! } else if (kind < 17) { for (let j = 0; j < run; j++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; b[i + j] = x & 0xff } } else b.fill(0, i, i + run)
    i += run
  }
  return b
}

async function generateLayer (path: string): Promise<{ digest: string, diffId: string, size: number, files: number }> {
  const pack = tarPack()
  const gz = createGzip({ level: 6 })
  const h = createHash('sha256')
  const hu = createHash('sha256')
  let size = 0
  gz.on('data', (c: Buffer) => { h.update(c); size += c.length })
  pack.on('data', (c: unknown) => { hu.update(c as Buffer) })
  const done = pipeline(pack, gz, createWriteStream(path))
  let written = 0
  let files = 0
  const sizes = [4096, 30_000, 200_000, 1 << 20, 5 << 20, 24 << 20]
  while (written < total) {
    const s = Math.min(sizes[files % sizes.length]!, total - written)
    const data = content(s, files + 1)
    await new Promise<void>((resolve, reject) => pack.entry({ name: `data/d${files % 64}/f${files}.bin`, size: s, mode: 0o644, mtime: new Date(1_700_000_000_000) }, data, (e) => { if (e !== null && e !== undefined) reject(e); else resolve() }))
    written += s
    files++
  }
  pack.finalize()
  await done
  return { digest: 'sha256:' + h.digest('hex'), diffId: 'sha256:' + hu.digest('hex'), size, files }
}

async function writeLayout (dir: string, layerPath: string, layer: { digest: string, diffId: string, size: number }): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true })
  const blob = async (data: Buffer): Promise<string> => {
    const d = createHash('sha256').update(data).digest('hex')
    await writeFile(join(dir, 'blobs', 'sha256', d), data)
    return 'sha256:' + d
  }
  await rm(join(dir, 'blobs', 'sha256', layer.digest.slice(7)), { force: true })
  await pipeline((await import('node:fs')).createReadStream(layerPath), createWriteStream(join(dir, 'blobs', 'sha256', layer.digest.slice(7))))
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [layer.diffId] } }))
  const cd = await blob(config)
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cd, size: config.length }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.size }] }))
  const md = await blob(manifest)
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}')
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: md, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'bench' } }] }))
}

/** Runs a command, sampling the process tree's peak RSS from /proc. */
async function measure (cmd: string, argv: string[]): Promise<{ seconds: number, peakRssMiB: number }> {
  const t0 = process.hrtime.bigint()
  const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'inherit'] })
  let peak = 0
  const sample = (): void => {
    // VmHWM of the direct child (node) or, for the shell pipeline, the sum over its children
    try {
      const pids = [String(child.pid), ...readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)]
      let sum = 0
      for (const p of pids) {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))
        if (m !== null) sum += Number(m[1])
      }
      peak = Math.max(peak, sum)
    } catch { /* exited */ }
  }
  const timer = setInterval(sample, 25)
  const code = await new Promise<number>((resolve) => child.on('exit', (c) => { resolve(c ?? 1) }))
  clearInterval(timer)
  if (code !== 0) throw new Error(`${cmd} exited ${code}`)
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, peakRssMiB: peak / 1024 }
}

async function main (): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'naiad-bench-convert-'))
  try {
    process.stderr.write(`generating a ${(total / 2 ** 20).toFixed(0)} MiB layer in ${work} …\n`)
    const layerPath = join(work, 'layer.tar.gz')
    const layer = await generateLayer(layerPath)
    await writeLayout(join(work, 'src'), layerPath, layer)
    const mib = total / 2 ** 20
    process.stderr.write('baseline: gzip -dc | zstd -3 -T2 …\n')
    const base = await measure('bash', ['-c', `gzip -dc ${layerPath} | zstd -3 -T2 -q -c >/dev/null`])
    process.stderr.write('naiad convert …\n')
    const bin = new URL('../../bin/naiad.js', import.meta.url).pathname
    const naiad = await measure(process.execPath, [bin, 'convert', '--source', `oci:${join(work, 'src')}:bench`, '--target', `oci:${join(work, 'dst')}:bench`, '--output', 'json', '--work-dir', join(work, 'scratch')])
    const rows = [
      ['baseline: gzip -dc \\| zstd -3 -T2', base],
      ['naiad convert (zstd, blake3, 1 MiB)', naiad]
    ] as const
    const out = [
      `machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, node ${process.version}`,
      `layer: ${mib.toFixed(0)} MiB uncompressed in ${layer.files} files, ${(layer.size / 2 ** 20).toFixed(0)} MiB gzip`,
      '',
      '| run | seconds | MiB/s (uncompressed) | peak RSS MiB | vs baseline |',
      '|---|---|---|---|---|',
      ...rows.map(([name, r]) => `| ${name} | ${r.seconds.toFixed(2)} | ${(mib / r.seconds).toFixed(1)} | ${r.peakRssMiB.toFixed(0)} | ${(base.seconds / r.seconds).toFixed(2)}× |`)
    ]
    process.stdout.write(out.join('\n') + '\n')
    const size = (await stat(join(work, 'dst'))).isDirectory()
    if (!size) throw new Error('no output')
  } finally {
    if (!keep) await rm(work, { recursive: true, force: true })
  }
}

await main()
