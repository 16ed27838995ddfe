/**
 * bench/fsd: the fsdaemon beside its baselines, in one run on this machine.
 *   1. warm sequential read of a 256 MiB file whose chunks are in the disk cache, through FUSE,
 *      vs `dd` of the same bytes from the cache file;
 *   2. metadata walk (find printing size/mode/owner = an lstat per entry) over 10,000 files through
 *      FUSE (cold and warm kernel caches) vs the same tree on the local filesystem;
 *   3. cold read of the 256 MiB file through the registry source vs `curl` of the blob from the
 *      same registry; and, beside it, what merely receiving the blob costs a Node process (the
 *      blob's bytes in ranges read into reused buffers, nothing else) vs the same curl;
 *   4. bytes fetched to run `python3 -c 'print("hello")'` from an image holding a Python runtime,
 *      against the image's size.
 * Each of 1–3 runs --rounds times (default 3): the table shows the best time of each side and
 * the range, and the median (and range) of the per-round ratios, each round's pair measured back to
 * back (the machine may be shared).
 * Usage (root): npm run bench:fsd [-- --size 256MiB --files 10000 --rounds 3 --only cold,warm,walk,python
 *   --profile DIR (the daemons run with --cpu-prof, profiles in DIR)
 *   --perf DIR (perf record -a -g of the machine during the cold and warm reads)
 *   --node-flags '--trace-gc …' (node flags for the daemons; their output passed through)
 *   --config FILE (an fsd.toml for the daemons)]
 */
import { execFile, execFileSync, spawn } from 'node:child_process'
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { Writable } from 'node:stream'
import { run } from '../../bin/program.ts'
import { buildImage, patternBytes, pushImage } from '../../test/helpers/images.ts'
import { startRegistry } from '../../test/helpers/registry.ts'
import { NAIAD_BIN, startNaiad, type Daemon } from '../../test/helpers/daemon.ts'
import { FsdClient } from '../../lib/fsdapi/index.ts'
import { parseSize } from '../../lib/config/index.ts'
import { DirectRangeReader } from '../../lib/registry/index.ts'

const exec = promisify(execFile)
const args = process.argv.slice(2)
const arg = (name: string, def: string): string => { const i = args.indexOf(name); return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : def }
const SIZE = parseSize(arg('--size', '256MiB')) ?? 256 << 20
const FILES = Number(arg('--files', '10000'))
const ONLY = new Set(arg('--only', 'cold,warm,walk,python').split(','))
const PROFILE = arg('--profile', '')
const PERF = arg('--perf', '')
const NODE_FLAGS = arg('--node-flags', '').split(' ').filter(f => f !== '')
const CONFIG = arg('--config', '')
const ROUNDS = Math.max(1, Number(arg('--rounds', '3')))

/** With --perf DIR: `perf record -a -g` of the whole machine around one measured step. */
async function perfAround<T> (name: string, fn: () => Promise<T>): Promise<T> {
  if (PERF === '') return await fn()
  const p = spawn('perf', ['record', '-a', '-g', '-o', join(PERF, `${name}.perf.data`)], { stdio: 'ignore' })
  await new Promise(resolve => setTimeout(resolve, 500))
  try {
    return await fn()
  } finally {
    p.kill('SIGINT')
    await new Promise(resolve => p.once('exit', resolve))
  }
}

async function naiad (...argv: string[]): Promise<string> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  if (code !== 0) throw new Error(`naiad ${argv.join(' ')} failed: ${err.join('')}`)
  return out.join('')
}

async function timed (cmd: string, argv: string[]): Promise<number> {
  const t0 = process.hrtime.bigint()
  await exec(cmd, argv, { maxBuffer: 1 << 30 })
  return Number(process.hrtime.bigint() - t0) / 1e9
}

/**
 * The daemon under `node --cpu-prof` (not allowed in NODE_OPTIONS; the profile is written when it
 * exits) and/or other node flags, its output passed through.
 */
function startProfiled (argv: string[], file: string): Daemon {
  const prof = PROFILE !== '' ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE}`, `--cpu-prof-name=${file}`] : []
  const child = spawn(process.execPath, [...prof, ...NODE_FLAGS, NAIAD_BIN, ...argv], { stdio: ['ignore', 'inherit', 'inherit'] })
  const exited = new Promise<number | string>((resolve) => { child.once('exit', (code, sig) => { resolve(code ?? sig ?? -1) }) })
  const stop = async (graceMs = 15_000): Promise<number | string> => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode ?? -1
    child.kill('SIGTERM')
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs)
    const r = await exited
    clearTimeout(t)
    return r
  }
  return { child, pid: child.pid ?? -1, output: () => '', waitFor: async () => { throw new Error('not with --profile') }, stop, kill: async () => { child.kill('SIGKILL'); await exited } }
}

/** [user, system] CPU seconds of a process (all threads). */
function cpuUS (pid: number): [number, number] {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    return [Number(f[11]) / 100, Number(f[12]) / 100]
  } catch { return [NaN, NaN] }
}

/** `fsd 1.2 s (user 0.8 + system 0.4)` between two cpuUS readings. */
function cpuDelta (name: string, a: [number, number], b: [number, number]): string {
  return `${name} ${(b[0] + b[1] - a[0] - a[1]).toFixed(2)} s (user ${(b[0] - a[0]).toFixed(2)} + system ${(b[1] - a[1]).toFixed(2)})`
}

function dropCaches (what = '3'): void {
  try { writeFileSync('/proc/sys/vm/drop_caches', what) } catch { /* not permitted: results include page cache */ }
}

/** Seconds to receive bytes [0, size) of `url` in `range`-byte pieces over `conns` connections. */
async function receiveOnly (url: URL, size: number, range: number, conns: number): Promise<number> {
  const reader = new DirectRangeReader()
  const bufs = Array.from({ length: conns }, () => Buffer.allocUnsafeSlow(range))
  for (const b of bufs) b.fill(0) // (touched once: no page faults in the measurement)
  let next = 0
  const t0 = process.hrtime.bigint()
  try {
    await Promise.all(bufs.map(async (b) => {
      while (next < size) {
        const start = next
        next = Math.min(size, next + range)
        const out = await reader.read({ url, start, end: next - 1, into: b.subarray(0, next - start) })
        if (!out.served) throw new Error(`receive only: ${out.reason}`)
      }
    }))
  } finally {
    reader.close()
  }
  return Number(process.hrtime.bigint() - t0) / 1e9
}

async function main (): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'naiad-bench-fsd-'))
  const reg = await startRegistry()
  const daemons: Daemon[] = []
  const rows: string[] = []
  const row = (what: string, naiadS: string, base: string, baseS: string, ratio: string): void => { rows.push(`| ${what} | ${naiadS} | ${base} | ${baseS} | ${ratio} |`) }
  try {
    process.stderr.write(`building images in ${work} …\n`)
    const big = buildImage({ workDir: join(work, 'big'), layers: [(r) => { writeFileSync(join(r, 'big.bin'), patternBytes(SIZE, 11)) }] })
    const meta = !ONLY.has('walk') ? undefined : buildImage({ workDir: join(work, 'meta'), layers: [(r) => {
      for (let i = 0; i < FILES; i++) {
        const d = join(r, `d${i % 100}`)
        if (i < 100) mkdirSync(d)
        writeFileSync(join(d, `f${i}.txt`), `file ${i}\n`)
      }
    }] })
    const py = !ONLY.has('python') ? undefined : buildImage({ workDir: join(work, 'py'), layers: [(r) => {
      for (const f of ['/usr/bin/python3.11', '/lib/x86_64-linux-gnu/libm.so.6', '/lib/x86_64-linux-gnu/libz.so.1', '/lib/x86_64-linux-gnu/libexpat.so.1', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']) {
        mkdirSync(dirname(join(r, f)), { recursive: true })
        copyFileSync(f, join(r, f))
      }
      execFileSync('chmod', ['755', join(r, 'usr/bin/python3.11')])
      cpSync('/usr/lib/python3.11', join(r, 'usr/lib/python3.11'), { recursive: true, filter: (s) => !s.includes('/test/') && !s.includes('__pycache__') })
    }] })
    for (const [img, name] of [[big, 'big'], [meta, 'meta'], [py, 'py']] as const) {
      if (img === undefined) continue
      pushImage(img, reg.host, `bench/${name}:v1`)
      await naiad('convert', '--source', `${reg.host}/bench/${name}:v1`, '--target', `${reg.host}/bench/${name}:nydus`)
    }
    const bigBlob = JSON.parse(await naiad('inspect', `${reg.host}/bench/big:nydus`, '--json')) as { blobs: Array<{ blobId: string, compressedSize: number, uncompressedSize: number }> }
    const blob = bigBlob.blobs[0]!
    const mib = SIZE / 2 ** 20

    const fsd = async (name: string, image: string, extra: string[] = [], cache = join(work, `${name}-cache`)): Promise<{ d: Daemon, mnt: string, sock: string }> => {
      const mnt = join(work, `${name}-mnt`)
      const sock = join(work, `${name}.sock`)
      const argv = ['fsd', '--image', image, '--mountpoint', mnt, '--cache-dir', cache, '--state-dir', join(work, `${name}-state`), '--socket', sock, '--log-level', 'warn', '--no-prefetch', ...(CONFIG !== '' ? ['--config', CONFIG] : []), ...extra]
      const d = PROFILE !== '' || NODE_FLAGS.length > 0 ? startProfiled(argv, `${name}.cpuprofile`) : startNaiad(argv)
      daemons.push(d)
      return { d, mnt, sock }
    }
    // the daemon logs at warn level: poll its control socket until the mount is listed
    const ready = async (sock: string): Promise<void> => {
      for (let i = 0; i < 200; i++) {
        try { if ((await new FsdClient({ socketPath: sock }).list()).length > 0) return } catch { /* not yet */ }
        await new Promise(resolve => setTimeout(resolve, 50))
      }
      throw new Error('fsd not ready')
    }

    const best = (xs: number[]): number => Math.min(...xs)
    const span = (xs: number[], f: (x: number) => string): string => xs.length > 1 ? ` (${f(Math.min(...xs))}–${f(Math.max(...xs))} over ${xs.length} rounds)` : ''
    /** baseline ÷ naiad per round (each pair measured back to back): the median, and the range. */
    const ratio = (base: number[], ours: number[]): string => {
      const r = ours.map((o, i) => base[i]! / o).sort((a, b) => a - b)
      const med = r.length % 2 === 1 ? r[(r.length - 1) / 2]! : (r[r.length / 2 - 1]! + r[r.length / 2]!) / 2
      return r.length > 1 ? `${med.toFixed(2)}× (${r[0]!.toFixed(2)}–${r[r.length - 1]!.toFixed(2)})` : `${med.toFixed(2)}×`
    }
    // 3. cold read through the registry vs curl of the blob; each round a new daemon and cache
    // (the warm read uses the last round's cache)
    let coldCache = ''
    if (ONLY.has('cold') || ONLY.has('warm')) {
      const curls: number[] = []
      const reads: number[] = []
      // (with --only warm: one round, to fill the cache)
      const rounds = ONLY.has('cold') ? ROUNDS : 1
      for (let round = 0; round < rounds; round++) {
        dropCaches()
        curls.push(await timed('curl', ['-s', '-o', '/dev/null', `${reg.url}/v2/bench/big/blobs/sha256:${blob.blobId}`]))
        coldCache = join(work, `cold-cache-${round}`)
        const { d, mnt, sock } = await fsd(`cold-${round}`, `${reg.host}/bench/big:nydus`, [], coldCache)
        await ready(sock)
        dropCaches()
        const [c0, r0] = [cpuUS(d.pid), cpuUS(reg.pid)]
        const s = await perfAround(`cold-${round}`, async () => await timed('dd', [`if=${join(mnt, 'big.bin')}`, 'of=/dev/null', 'bs=1M']))
        reads.push(s)
        process.stderr.write(`cold read: ${s.toFixed(2)} s (curl ${curls[round]!.toFixed(2)} s, ${(curls[round]! / s).toFixed(2)}×); CPU used meanwhile: ${cpuDelta('fsd', c0, cpuUS(d.pid))}, ${cpuDelta('registry', r0, cpuUS(reg.pid))}; load ${loadavg()[0]!.toFixed(1)}\n`)
        await d.stop()
        if (round < rounds - 1) rmSync(coldCache, { recursive: true, force: true })
      }
      // what receiving the blob costs this process alone: the same bytes in ranges of
      // fetch.max_request_size over two kept-alive connections, read by the kernel into reused
      // buffers (the fsdaemon's direct reads), nothing decoded, cached or served
      const receives: number[] = []
      if (ONLY.has('cold')) {
        for (let round = 0; round < rounds; round++) {
          dropCaches()
          receives.push(await receiveOnly(new URL(`${reg.url}/v2/bench/big/blobs/sha256:${blob.blobId}`), blob.compressedSize, 8 << 20, 2))
          process.stderr.write(`receive only: ${receives[round]!.toFixed(2)} s\n`)
        }
      }
      const s = best(reads)
      const c = best(curls)
      if (ONLY.has('cold')) row(`receive only: the blob's bytes in 8 MiB ranges into reused buffers, in this Node process (no decoding, cache or FUSE)`, `${best(receives).toFixed(2)} s${span(receives, x => x.toFixed(2))}`, `curl of the ${(blob.compressedSize / 2 ** 20).toFixed(0)} MiB blob`, `${c.toFixed(2)} s${span(curls, x => x.toFixed(2))}`, ratio(curls, receives))
      if (ONLY.has('cold')) row(`cold read ${mib} MiB through the registry source`, `${s.toFixed(2)} s (${(mib / s).toFixed(0)} MiB/s)${span(reads, x => x.toFixed(2))}`, `curl of the ${(blob.compressedSize / 2 ** 20).toFixed(0)} MiB blob`, `${c.toFixed(2)} s${span(curls, x => x.toFixed(2))}`, ratio(curls, reads))
    }
    // 1. warm read: chunks in the disk cache (from the cold run), FUSE page cache empty (dropped
    // between rounds, then the cache file read into the page cache again)
    if (ONLY.has('warm')) {
      const { d, mnt, sock } = await fsd('warm', `${reg.host}/bench/big:nydus`, [], coldCache)
      await ready(sock)
      const data = join(coldCache, `${blob.blobId}.blob.data`)
      const bases: number[] = []
      const reads: number[] = []
      for (let round = 0; round < ROUNDS; round++) {
        dropCaches()
        await timed('dd', [`if=${data}`, 'of=/dev/null', 'bs=1M']) // cache file into the page cache
        bases.push(await timed('dd', [`if=${data}`, 'of=/dev/null', 'bs=1M']))
        const c0 = cpuUS(d.pid)
        const s = await perfAround(`warm-${round}`, async () => await timed('dd', [`if=${join(mnt, 'big.bin')}`, 'of=/dev/null', 'bs=1M']))
        reads.push(s)
        process.stderr.write(`warm read: ${s.toFixed(3)} s (cache file ${bases[round]!.toFixed(3)} s, ${(bases[round]! / s).toFixed(2)}×); CPU used meanwhile: ${cpuDelta('fsd', c0, cpuUS(d.pid))}; load ${loadavg()[0]!.toFixed(1)}\n`)
      }
      const s = best(reads)
      const base = best(bases)
      const mbs = (t: number): string => `${(mib / t).toFixed(0)}`
      row(`warm sequential read ${mib} MiB (chunks cached on disk)`, `${s.toFixed(3)} s (${mbs(s)} MiB/s)${span(reads, x => x.toFixed(3))}`, 'dd of the cache file', `${base.toFixed(3)} s (${(statSync(data).size / 2 ** 20 / base).toFixed(0)} MiB/s)${span(bases, x => x.toFixed(3))}`, ratio(bases, reads))
      await d.stop()
    }
    // 2. metadata walk; each round a newly started daemon: its first walk is cold (kernel and
    // daemon), the second warm
    if (ONLY.has('walk')) {
      const local = join(work, 'meta', 'layer0')
      const walk = async (dir: string): Promise<number> => await timed('find', [dir, '-printf', '%s %m %u\n'])
      await walk(local)
      const bases: number[] = []
      const colds: number[] = []
      const warms: number[] = []
      for (let round = 0; round < ROUNDS; round++) {
        const { d, mnt, sock } = await fsd(`meta-${round}`, `${reg.host}/bench/meta:nydus`)
        await ready(sock)
        await walk(local)
        bases.push(await walk(local))
        const c0 = cpuUS(d.pid)
        colds.push(await walk(mnt))
        process.stderr.write(`cold walk: ${(colds[round]! * 1000).toFixed(0)} ms (local ${(bases[round]! * 1000).toFixed(0)} ms); CPU used meanwhile: ${cpuDelta('fsd', c0, cpuUS(d.pid))}; load ${loadavg()[0]!.toFixed(1)}\n`)
        warms.push(await walk(mnt))
        await d.stop()
      }
      const base = best(bases)
      const ms = (x: number): string => (x * 1000).toFixed(0)
      row(`find + lstat over ${FILES} files, cold kernel caches`, `${ms(best(colds))} ms${span(colds, ms)}`, 'local filesystem (warm)', `${ms(base)} ms${span(bases, ms)}`, ratio(bases, colds))
      row(`find + lstat over ${FILES} files, warm kernel caches`, `${ms(best(warms))} ms${span(warms, ms)}`, 'local filesystem (warm)', `${ms(base)} ms`, ratio(bases, warms))
    }
    // 4. python hello: bytes fetched vs image size
    if (ONLY.has('python')) {
      const { d, mnt, sock } = await fsd('py', `${reg.host}/bench/py:nydus`)
      await ready(sock)
      const out = (await exec('chroot', [mnt, '/usr/bin/python3.11', '-c', 'import os, json; print("hello")'])).stdout.trim()
      const info = (await new FsdClient({ socketPath: sock }).list())[0]!
      const fetched = info.blobs.flatMap(b => Object.values(b.bytesFetched)).reduce((a, b) => a + b, 0)
      const image = JSON.parse(await naiad('inspect', `${reg.host}/bench/py:nydus`, '--json')) as { blobs: Array<{ compressedSize: number, uncompressedSize: number }> }
      const total = image.blobs.reduce((a, b) => a + b.compressedSize, 0)
      const unc = image.blobs.reduce((a, b) => a + b.uncompressedSize, 0)
      row(`python3 -c 'print("hello")' (printed "${out}")`, `${(fetched / 2 ** 20).toFixed(1)} MiB fetched`, 'image data blobs (compressed / uncompressed)', `${(total / 2 ** 20).toFixed(1)} / ${(unc / 2 ** 20).toFixed(1)} MiB`, `${(100 * fetched / total).toFixed(1)}% of the image`)
      await d.stop()
    }
    const out = [
      `machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, node ${process.version}, kernel ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}`,
      '',
      '| workload | naiad | baseline | baseline result | naiad vs baseline |',
      '|---|---|---|---|---|',
      ...rows
    ]
    process.stdout.write(out.join('\n') + '\n')
  } finally {
    for (const d of daemons) await d.stop(5000).catch(() => {})
    await reg.stop()
    rmSync(work, { recursive: true, force: true })
  }
}

await main()
