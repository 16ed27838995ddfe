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
const done = new Map<number, Buffer>()
let nextToHash = 0

async function fetchRange ([first, last]: [number, number]): Promise<Buffer> {
  for (let attempt = 0; ; attempt++) {
    requests++
    try {
      const res = await request(url, { dispatcher, headers: { range: `bytes=${first}-${last}`, ...(a.origin !== undefined ? { 'x-naiad-origin': a.origin } : {}) } })
      if (res.statusCode !== 206) {
        const body = await res.body.text()
        throw new Error(`HTTP ${res.statusCode} for bytes ${first}-${last}: ${body.slice(0, 200)}`)
      }
      const parts: Buffer[] = []
      for await (const c of res.body as AsyncIterable<Buffer>) {
        firstByteMs ??= performance.now() - started
        parts.push(c)
      }
      const buf = Buffer.concat(parts)
      if (buf.length !== last - first + 1) throw new Error(`short body for bytes ${first}-${last}: ${buf.length}`)
      return buf
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
      const buf = await fetchRange(r)
      if (whole !== undefined) buf.copy(whole, r[0])
      else {
        done.set(r[0], buf)
        while (done.has(nextToHash)) {
          const b = done.get(nextToHash) as Buffer
          done.delete(nextToHash)
          hash.update(b)
          nextToHash += b.length
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
