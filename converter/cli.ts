/**
 * The converter's commands: `naiad convert`, `naiad check`, `naiad inspect`. Each returns an exit
 * code; only bin/naiad.ts calls process.exit. Output goes through `io` so tests can run commands
 * in process.
 */
import { readFile, stat } from 'node:fs/promises'
import { InvalidArgumentError, Option, type Command } from 'commander'
import { NaiadError, isNaiadError } from '../lib/errors/index.ts'
import { createLogger, type Logger, type LogLevel } from '../lib/log/index.ts'
import { parseSize } from '../lib/config/index.ts'
import { openImageStore } from '../lib/registry/open.ts'
import type { ImageStore } from '../lib/registry/store.ts'
import { parsePlatform } from '../lib/oci/platform.ts'
import type { Platform } from '../lib/oci/types.ts'
import { Bootstrap } from '../lib/format/bootstrap.ts'
import { DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, type Compressor, type ChunkDigester } from '../lib/format/types.ts'
import { convertImage, type ConvertResult } from './convert.ts'
import { checkImage, type CheckResult } from './check.ts'
import { inspectJson, inspectText } from './inspect.ts'
import { loadChunkDict } from './chunkdict.ts'
import { loadNydusBootstrap } from '../lib/nydus/image.ts'
import { parsePatternFile } from './prefetch.ts'
import { SourceImage, TargetImage } from './image.ts'
import { formatDifferences } from './compare.ts'
import { progressReporter, reportError, type Io } from './output.ts'
import { readBootstrapLayer } from '../lib/nydus/bootstrap-layer.ts'

export type { Io } from './output.ts'

function chunkSizeArg (v: string): number {
  const n = v.startsWith('0x') ? parseInt(v, 16) : parseSize(v)
  if (n === undefined || !Number.isSafeInteger(n) || (n & (n - 1)) !== 0 || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE) {
    throw new InvalidArgumentError('must be a power of two from 4KiB to 16MiB (e.g. 1MiB, 0x100000)')
  }
  return n
}

function platformsArg (v: string): Platform[] | 'all' {
  if (v === 'all') return 'all'
  try {
    return v.split(',').map(p => parsePlatform(p.trim()))
  } catch (err) {
    throw new InvalidArgumentError(isNaiadError(err) ? err.message : String(err))
  }
}

function logger (io: Io, level: string | undefined, service: string): Logger {
  return createLogger({ service, level: (level ?? 'info') as LogLevel, destination: io.stderr as never })
}

interface Common { plainHttp?: boolean, output?: 'text' | 'json', logLevel?: string, debug?: boolean }

function storeFor (ref: string, o: Common, log: Logger): ImageStore {
  return openImageStore(ref, { plainHttp: o.plainHttp === true ? true : 'loopback', logger: log.child({ component: 'registry' }) })
}

function printConvert (io: Io, r: ConvertResult): void {
  const lines = [`converted ${r.source} -> ${r.target}`, `digest:     ${r.digest} (${r.mediaType.endsWith('index.v1+json') ? 'index' : 'manifest'})`, `time:       ${(r.durationMs / 1000).toFixed(1)} s`]
  for (const p of r.platforms) {
    const ratio = p.uniqueChunks > 0 ? (p.chunkRefs / p.uniqueChunks).toFixed(2) : '-'
    lines.push(`platform ${p.platform}: manifest ${p.manifest}`)
    lines.push(`  files ${p.files}, ${p.sourceBytes} bytes of file data; chunks referenced ${p.chunkRefs}, stored ${p.uniqueChunks} (dedup ratio ${ratio})${p.dictChunks > 0 ? `, ${p.dictChunks} from the chunk dict` : ''}`)
    lines.push(`  bootstrap layer ${p.bootstrap}`)
    for (const b of p.blobs) lines.push(`  blob ${b.digest}  ${b.size} bytes, ${b.chunks} chunks${b.sourceLayer !== null ? ` (from layer ${b.sourceLayer.slice(0, 19)}…)` : ' (chunk dict)'}`)
  }
  io.stdout.write(lines.join('\n') + '\n')
}

function printCheck (io: Io, r: CheckResult): void {
  const lines: string[] = []
  for (const p of r.platforms) {
    const ok = p.manifestProblems.length === 0 && p.differences.length === 0
    lines.push(`${p.platform}: ${ok ? 'OK' : 'MISMATCH'}: ${p.entries} entries, ${p.files} files, ${p.bytes} bytes compared`)
    for (const m of p.manifestProblems) lines.push(`  manifest: ${m}`)
    if (p.differences.length > 0) lines.push(formatDifferences(p.differences).split('\n').map(l => '  ' + l).join('\n'))
  }
  lines.push(r.ok ? `check passed: ${r.target} holds exactly the filesystem of ${r.source}` : 'check FAILED')
  io.stdout.write(lines.join('\n') + '\n')
}

/** Reads a bootstrap from a file (raw bootstrap or bootstrap layer tar/tar.gz) or an image ref. */
async function openBootstrap (target: string, o: Common, log: Logger): Promise<{ bootstrap: Bootstrap, source: string }> {
  const st = await stat(target).catch(() => undefined)
  if (st?.isFile() === true) {
    const buf = await readFile(target)
    const isTar = buf.length >= 512 && (buf.subarray(257, 262).toString('latin1') === 'ustar')
    if ((buf[0] === 0x1f && buf[1] === 0x8b) || isTar) return { bootstrap: Bootstrap.parse((await readBootstrapLayer(buf)).bootstrap), source: target }
    return { bootstrap: Bootstrap.parse(buf), source: target }
  }
  const store = storeFor(target, o, log)
  try {
    return { bootstrap: (await loadNydusBootstrap(store)).bootstrap, source: target }
  } finally {
    await store.close()
  }
}

function withSignals<T> (fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController()
  const onSig = (): void => { ac.abort(new NaiadError('NAIAD_ABORTED', 'interrupted by a signal')) }
  process.once('SIGINT', onSig)
  process.once('SIGTERM', onSig)
  return fn(ac.signal).finally(() => { process.off('SIGINT', onSig); process.off('SIGTERM', onSig) })
}

export function registerConverterCommands (program: Command, io: Io, setExit: (code: number) => void): void {
  const common = (c: Command): Command => c
    .option('--plain-http', 'use plain HTTP for registries (default: HTTPS, plain HTTP only for loopback addresses)')
    .addOption(new Option('--output <format>', 'output format').choices(['text', 'json']).default('text'))
    .addOption(new Option('--log-level <level>', 'log level').choices(['error', 'warn', 'info', 'debug', 'trace', 'silent']).default('warn'))
    .option('--debug', 'print error causes and stacks')

  common(program.command('convert')
    .description('convert an OCIv1 image (registry or oci:<dir>:<tag>) into a Nydus RAFS v6 lazy image and push it')
    .requiredOption('--source <ref>', 'source image: host/repo:tag, host/repo@digest or oci:<dir>:<tag>')
    .requiredOption('--target <ref>', 'target image reference (the tag is written last)')
    .option('--platform <os/arch|all>', 'platform(s) to convert from an index: os/arch[/variant][,…] or all (default: this host\'s)', platformsArg)
    .option('--chunk-size <size>', 'chunk size, a power of two 4KiB..16MiB', chunkSizeArg, DEFAULT_CHUNK_SIZE)
    .addOption(new Option('--compressor <name>', 'chunk compressor').choices(['zstd', 'lz4_block', 'none']).default('zstd'))
    .addOption(new Option('--digest <name>', 'chunk digest').choices(['blake3', 'sha256']).default('blake3'))
    .option('--prefetch-patterns <file>', 'file of paths/globs to list in the prefetch table, one per line (- for stdin)')
    .option('--chunk-dict <ref>', 'a Nydus image whose chunks are reused instead of stored again')
    .option('--work-dir <dir>', 'scratch directory for blob files (default: a temp dir)'))
    .action(async (o: Common & { source: string, target: string, platform?: Platform[] | 'all', chunkSize: number, compressor: Compressor, digest: ChunkDigester, prefetchPatterns?: string, chunkDict?: string, workDir?: string }) => {
      const json = o.output === 'json'
      const log = logger(io, o.logLevel, 'converter')
      const progress = progressReporter(io, log, json)
      const src = storeFor(o.source, o, log)
      const dst = storeFor(o.target, o, log)
      const dictStore = o.chunkDict !== undefined ? storeFor(o.chunkDict, o, log) : undefined
      try {
        const patterns = o.prefetchPatterns === undefined ? undefined : parsePatternFile(o.prefetchPatterns === '-' ? await readStdin() : await readFile(o.prefetchPatterns, 'utf8'))
        const result = await withSignals(async (signal) => {
          const chunkDict = dictStore !== undefined ? await loadChunkDict(dictStore, signal) : undefined
          return await convertImage(new SourceImage(src), new TargetImage(dst), o.platform ?? 'default', {
            chunkSize: o.chunkSize,
            compressor: o.compressor,
            digester: o.digest,
            ...(patterns !== undefined ? { prefetchPatterns: patterns } : {}),
            ...(chunkDict !== undefined ? { chunkDict } : {}),
            ...(o.workDir !== undefined ? { workDir: o.workDir } : {}),
            signal,
            onProgress: progress.onProgress
          }, log)
        })
        progress.stop()
        if (json) io.stdout.write(JSON.stringify(result, null, 2) + '\n')
        else printConvert(io, result)
        setExit(0)
      } catch (err) {
        progress.stop()
        setExit(reportError(io, err, json, o.debug === true))
      } finally {
        await Promise.all([src.close(), dst.close(), dictStore?.close()])
      }
    })

  common(program.command('check')
    .description('prove a converted image holds exactly the source image\'s filesystem (exit 0 only on an exact match)')
    .requiredOption('--source <ref>', 'the original OCI image')
    .requiredOption('--target <ref>', 'the converted Nydus image')
    .option('--platform <os/arch|all>', 'platform to check (default: every platform of the target)'))
    .action(async (o: Common & { source: string, target: string, platform?: string }) => {
      const json = o.output === 'json'
      const log = logger(io, o.logLevel, 'converter')
      const src = storeFor(o.source, o, log)
      const tgt = storeFor(o.target, o, log)
      try {
        const r = await withSignals(async (signal) => await checkImage(new SourceImage(src), new SourceImage(tgt, 'nydus'), { ...(o.platform !== undefined ? { platform: o.platform } : {}), signal }))
        if (json) io.stdout.write(JSON.stringify(r, null, 2) + '\n')
        else printCheck(io, r)
        setExit(r.ok ? 0 : 1)
      } catch (err) {
        setExit(reportError(io, err, json, o.debug === true))
      } finally {
        await Promise.all([src.close(), tgt.close()])
      }
    })

  program.command('inspect')
    .description('show a RAFS v6 bootstrap: superblock, blob table and tree (from an image, a bootstrap layer or a bootstrap file)')
    .argument('<ref-or-file>', 'image reference, bootstrap layer (.tar.gz) or bootstrap file')
    .option('--json', 'JSON output')
    .option('--plain-http', 'use plain HTTP for the registry')
    .option('--debug', 'print error causes and stacks')
    .action(async (target: string, o: { json?: boolean, plainHttp?: boolean, debug?: boolean }) => {
      const log = logger(io, 'warn', 'converter')
      try {
        const { bootstrap, source } = await openBootstrap(target, { ...(o.plainHttp !== undefined ? { plainHttp: o.plainHttp } : {}) }, log)
        io.stdout.write(o.json === true ? JSON.stringify(inspectJson(bootstrap, source), null, 2) + '\n' : inspectText(bootstrap, source))
        setExit(0)
      } catch (err) {
        setExit(reportError(io, err, o.json === true, o.debug === true))
      }
    })
}

async function readStdin (): Promise<string> {
  const parts: Buffer[] = []
  for await (const c of process.stdin) parts.push(c as Buffer)
  return Buffer.concat(parts).toString('utf8')
}
