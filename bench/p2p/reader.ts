/**
 * A Range-read workload for one node (run inside its network namespace by the p2p tests and
 * benchmark): reads a whole blob through a mirror (with X-Naiad-Origin) or straight from the
 * registry, in chunks of `--chunk` bytes, `--concurrency` requests at once, in order or shuffled,
 * checks the sha256 of what it read and prints one JSON line:
 * `{ ok, sha256, bytes, ms, firstByteMs, requests, errors }`.
 *
 * Usage: node reader.js --url http://127.0.0.1:65001 --repo r --digest sha256:… --size N
 *          [--origin http://10.231.x.1:5000] [--chunk 1048576] [--concurrency 4] [--order seq|random]
 *          [--seed 1] [--retries 0]
 */
import { createHash } from 'node:crypto'
import { parseArgs } from 'node:util'
import { Agent, request } from 'undici'

const { values: a } = parseArgs({
  options: {
    url: { type: 'string' },
    repo: { type: 'string' },
    digest: { type: 'string' },
    size: { type: 'string' },
    origin: { type: 'string' },
    chunk: { type: 'string', default: String(1024 * 1024) },
    concurrency: { type: 'string', default: '4' },
    order: { type: 'string', default: 'seq' },
    seed: { type: 'string', default: '1' },
    retries: { type: 'string', default: '0' }
  }
})

if (a.url === undefined || a.repo === undefined || a.digest === undefined || a.size === undefined) {
  process.stderr.write('reader: --url, --repo, --digest and --size are required\n')
  process.exit(2)
}
const size = Number(a.size)
const chunk = Number(a.chunk)
const concurrency = Number(a.concurrency)
const retries = Number(a.retries)
const url = `${a.url}/v2/${a.repo}/blobs/${a.digest}`
const dispatcher = new Agent({ connections: concurrency, keepAliveTimeout: 10_000, headersTimeout: 300_000, bodyTimeout: 300_000 })

const ranges: Array<[number, number]> = []
for (let off = 0; off < size; off += chunk) ranges.push([off, Math.min(size, off + chunk) - 1])
const random = a.order === 'random'
if (random) {
  let s = Number(a.seed) >>> 0 || 1
  const rnd = (): number => { s ^= s << 13; s >>>= 0; s ^= s >> 17; s ^= s << 5; s >>>= 0; return s / 0x100000000 }
  for (let i = ranges.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1))
    const t = ranges[i] as [number, number]
    ranges[i] = ranges[j] as [number, number]
    ranges[j] = t
  }
}

const started = performance.now()
let firstByteMs: number | undefined
let errors = 0
let requests = 0
const whole = random ? Buffer.allocUnsafe(size) : undefined
const hash = createHash('sha256')
const done = new Map<number, Buffer[]>()
let nextToHash = 0

/** A range's body as the chunks it arrived in (no copy into one buffer: they are hashed in order). */
async function fetchRange ([first, last]: [number, number]): Promise<Buffer[]> {
  for (let attempt = 0; ; attempt++) {
    requests++
    try {
      const res = await request(url, { dispatcher, headers: { range: `bytes=${first}-${last}`, ...(a.origin !== undefined ? { 'x-naiad-origin': a.origin } : {}) } })
      if (res.statusCode !== 206) {
        const body = await res.body.text()
        throw new Error(`HTTP ${res.statusCode} for bytes ${first}-${last}: ${body.slice(0, 200)}`)
      }
      const parts: Buffer[] = []
      let got = 0
      // 'data' events, not an async iterator: one promise per range instead of one per chunk
      await new Promise<void>((resolve, reject) => {
        res.body.on('data', (c: Buffer) => { firstByteMs ??= performance.now() - started; parts.push(c); got += c.length })
        res.body.once('end', resolve)
        res.body.once('error', reject)
      })
      if (got !== last - first + 1) throw new Error(`short body for bytes ${first}-${last}: ${got}`)
      return parts
    } catch (err) {
      errors++
      if (attempt >= retries) throw err
    }
  }
}

let next = 0
let failure: unknown
async function worker (): Promise<void> {
  while (next < ranges.length && failure === undefined) {
    const r = ranges[next++] as [number, number]
    try {
      const parts = await fetchRange(r)
      if (whole !== undefined) {
        let at = r[0]
        for (const p of parts) { p.copy(whole, at); at += p.length }
      } else {
        done.set(r[0], parts)
        while (done.has(nextToHash)) {
          const ps = done.get(nextToHash) as Buffer[]
          done.delete(nextToHash)
          for (const p of ps) { hash.update(p); nextToHash += p.length }
        }
      }
    } catch (err) {
      failure = err
    }
  }
}

await Promise.all(Array.from({ length: concurrency }, async () => { await worker() }))
if (whole !== undefined && failure === undefined) hash.update(whole)
const ms = performance.now() - started
const sha = failure === undefined ? `sha256:${hash.digest('hex')}` : ''
process.stdout.write(JSON.stringify({
  ok: failure === undefined && sha === a.digest,
  sha256: sha,
  bytes: size,
  ms: Math.round(ms),
  firstByteMs: firstByteMs !== undefined ? Math.round(firstByteMs) : null,
  requests,
  errors,
  cpuMs: Math.round((process.cpuUsage().user + process.cpuUsage().system) / 1000),
  ...(failure !== undefined ? { error: failure instanceof Error ? failure.message : String(failure) } : {})
}) + '\n')
await dispatcher.close()
