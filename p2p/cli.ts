/**
 * The p2p commands of `naiad`: `peer`, `scheduler` and `preheat`. The daemons run until SIGTERM or
 * SIGINT, then stop gracefully (in-flight requests get the configured grace period). Logs are JSON
 * lines on stdout (credentials redacted); user-facing output of `preheat` goes to `io`.
 */
import { createHash } from 'node:crypto'
import { InvalidArgumentError, Option, type Command } from 'commander'
import { loadConfigFile } from '../lib/config/index.ts'
import { causeChain, isNaiadError, NaiadError, toExitCode } from '../lib/errors/index.ts'
import { createLogger, redactText, type Logger, type LogLevel } from '../lib/log/index.ts'
import { parsePlatform } from '../lib/oci/platform.ts'
import type { Platform } from '../lib/oci/types.ts'
import { parseDuration } from '../lib/config/index.ts'
import { peerConfigSchema, schedulerConfigSchema, type PeerConfig, type SchedulerConfig } from './config.ts'
import { Peer } from './peer/peer.ts'
import { preheat, type PreheatResult } from './preheat.ts'
import { SchedulerServer } from './scheduler/server.ts'
import { notifyReady, notifyStopping } from '../lib/systemd/index.ts'

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean }
  stderr: NodeJS.WritableStream & { isTTY?: boolean }
}

export const DEFAULT_PEER_CONFIG = '/etc/naiad/peer.toml'
export const DEFAULT_SCHEDULER_CONFIG = '/etc/naiad/scheduler.toml'

function reportError (io: Io, err: unknown, debug: boolean): number {
  const code = isNaiadError(err) ? err.code : 'NAIAD_INTERNAL'
  io.stderr.write(`naiad: ${code}: ${redactText(err instanceof Error ? err.message : String(err))}\n`)
  if (isNaiadError(err) && err.hint !== '') io.stderr.write(`hint: ${err.hint}\n`)
  if (debug) for (const line of causeChain(err)) io.stderr.write(`  ${redactText(line)}\n`)
  return toExitCode(err)
}

/** Resolves on SIGTERM or SIGINT (then removes the handlers). */
function untilSignal (log: Logger): Promise<string> {
  return new Promise(resolve => {
    const on = (sig: string): void => {
      process.off('SIGTERM', onTerm)
      process.off('SIGINT', onInt)
      log.info({ signal: sig }, 'shutting down')
      resolve(sig)
    }
    const onTerm = (): void => { on('SIGTERM') }
    const onInt = (): void => { on('SIGINT') }
    process.once('SIGTERM', onTerm)
    process.once('SIGINT', onInt)
  })
}

function configDigest (c: unknown): string {
  return createHash('sha256').update(JSON.stringify(c)).digest('hex').slice(0, 16)
}

function platformsArg (v: string): Platform[] | 'all' {
  if (v === 'all') return 'all'
  try {
    return v.split(',').map(p => parsePlatform(p.trim()))
  } catch (err) {
    throw new InvalidArgumentError(isNaiadError(err) ? err.message : String(err))
  }
}

function durationArg (v: string): number {
  const n = parseDuration(v)
  if (n === undefined) throw new InvalidArgumentError('expected a duration like 30s, 10m')
  return n
}

function printPreheat (io: Io, r: PreheatResult): void {
  const lines = [`${r.ok ? 'preheated' : 'preheat INCOMPLETE'}: ${r.reference} (${r.blobs.length} blobs, origin ${r.origin})`]
  for (const b of r.blobs) {
    for (const t of b.targets) lines.push(`  ${b.digest.slice(0, 19)}…  ${String(b.size).padStart(12)} bytes  ${t.target}  ${t.state}${t.error !== undefined ? `: ${redactText(t.error)}` : ''}`)
  }
  io.stdout.write(lines.join('\n') + '\n')
}

export function registerP2pCommands (program: Command, io: Io, setExit: (code: number) => void): void {
  program.command('peer')
    .description('run the p2p peer daemon: a registry mirror for the fsdaemon that shares blob pieces with the other nodes')
    .option('--config <path>', `peer configuration (TOML; default ${DEFAULT_PEER_CONFIG}, defaults apply if that file is absent)`)
    .option('--seed', 'run as a seed peer (preheat target, preferred parent for first downloads)')
    .option('--debug', 'print error causes')
    .action(async (o: { config?: string, seed?: boolean, debug?: boolean }) => {
      let config: PeerConfig
      try {
        config = await loadConfigFile(peerConfigSchema, o.config ?? DEFAULT_PEER_CONFIG, o.config !== undefined)
      } catch (err) {
        setExit(reportError(io, err, o.debug === true))
        return
      }
      const log = createLogger({ service: 'p2p-peer', level: config.log.level as LogLevel })
      const peer = new Peer({ logger: log }, config, o.seed === true ? { seed: true } : {})
      try {
        log.info({ config: o.config ?? DEFAULT_PEER_CONFIG, configDigest: configDigest(config) }, 'configuration loaded')
        const stop = untilSignal(log)
        await peer.start()
        await notifyReady(`peer ready: mirror ${config.mirror.listen}, upload ${config.upload.listen}`, { log })
        await stop
        await notifyStopping('peer stopping', { log })
        await peer.close()
        setExit(0)
      } catch (err) {
        log.error({ err }, 'peer failed')
        await peer.close().catch(() => {})
        setExit(reportError(io, err, o.debug === true))
      }
    })

  program.command('scheduler')
    .description('run the p2p scheduler: tracks hosts, tasks and pieces, picks parents, protects the origin')
    .option('--config <path>', `scheduler configuration (TOML; default ${DEFAULT_SCHEDULER_CONFIG})`)
    .option('--debug', 'print error causes')
    .action(async (o: { config?: string, debug?: boolean }) => {
      let config: SchedulerConfig
      try {
        config = await loadConfigFile(schedulerConfigSchema, o.config ?? DEFAULT_SCHEDULER_CONFIG, o.config !== undefined)
      } catch (err) {
        setExit(reportError(io, err, o.debug === true))
        return
      }
      const log = createLogger({ service: 'p2p-scheduler', level: config.log.level as LogLevel })
      const sc = config.scheduling
      const server = new SchedulerServer({ logger: log }, {
        listen: config.server.listen,
        metricsListen: config.metrics.listen,
        candidateParents: sc.candidate_parents,
        parentSelection: sc.parent_selection,
        originBudgetPerPiece: sc.origin_budget_per_piece,
        originPermitsPerPeer: sc.origin_permits_per_peer,
        originConcurrencyPerTask: sc.origin_concurrency_per_task,
        permitTimeoutMs: sc.permit_timeout,
        blocklistTtlMs: sc.blocklist_ttl,
        failureThreshold: sc.failure_threshold,
        failureWindowMs: sc.failure_window,
        childBlocklistTtlMs: sc.child_blocklist_ttl,
        hostTtlMs: config.hosts.ttl,
        taskTtlMs: config.hosts.task_ttl,
        sweepIntervalMs: config.hosts.sweep_interval,
        graceMs: config.shutdown.grace
      })
      try {
        log.info({ config: o.config ?? DEFAULT_SCHEDULER_CONFIG, configDigest: configDigest(config) }, 'configuration loaded')
        const stop = untilSignal(log)
        await server.start()
        await notifyReady(`scheduler ready: ${config.server.listen}`, { log })
        await stop
        await notifyStopping('scheduler stopping', { log })
        await server.close()
        setExit(0)
      } catch (err) {
        log.error({ err }, 'scheduler failed')
        await server.close().catch(() => {})
        setExit(reportError(io, err, o.debug === true))
      }
    })

  program.command('preheat')
    .description('warm seed peers with an image\'s blobs before a rollout')
    .argument('<ref>', 'image reference: host[:port]/repository[:tag|@digest]')
    .option('--scheduler <address>', 'scheduler gRPC address; the image is preheated on every seed peer it knows')
    .option('--peer <url...>', 'preheat on these peers instead (http://host:port of a seed\'s upload listener or a peer\'s mirror)')
    .option('--platform <os/arch|all>', 'platforms of an index to preheat (default all)', platformsArg)
    .option('--plain-http', 'use plain HTTP for the registry (default: HTTPS, plain HTTP only for loopback addresses)')
    .option('--no-wait', 'return once the peers accepted the work')
    .option('--timeout <duration>', 'give up waiting after this long', durationArg, 30 * 60_000)
    .addOption(new Option('--output <format>', 'output format').choices(['text', 'json']).default('text'))
    .addOption(new Option('--log-level <level>', 'log level (to stderr)').choices(['error', 'warn', 'info', 'debug', 'silent']).default('warn'))
    .option('--debug', 'print error causes')
    .action(async (ref: string, o: { scheduler?: string, peer?: string[], platform?: Platform[] | 'all', plainHttp?: boolean, wait: boolean, timeout: number, output: 'text' | 'json', logLevel: string, debug?: boolean }) => {
      const log = createLogger({ service: 'p2p-preheat', level: o.logLevel as LogLevel, destination: io.stderr as never })
      const ac = new AbortController()
      const onSig = (): void => { ac.abort(new NaiadError('NAIAD_ABORTED', 'interrupted by a signal')) }
      process.once('SIGINT', onSig)
      process.once('SIGTERM', onSig)
      try {
        const r = await preheat({ logger: log }, {
          ref,
          platforms: o.platform ?? 'all',
          ...(o.plainHttp === true ? { plainHttp: true } : {}),
          ...(o.scheduler !== undefined ? { scheduler: o.scheduler } : {}),
          ...(o.peer !== undefined ? { peers: o.peer } : {}),
          wait: o.wait,
          timeoutMs: o.timeout,
          signal: ac.signal,
          ...(o.output === 'text' ? { onProgress: (line: string) => { io.stderr.write(line + '\n') } } : {})
        })
        if (o.output === 'json') io.stdout.write(JSON.stringify(r, null, 2) + '\n')
        else printPreheat(io, r)
        setExit(r.ok ? 0 : toExitCode(new NaiadError('NAIAD_P2P_PREHEAT_FAILED', 'incomplete')))
      } catch (err) {
        setExit(reportError(io, err, o.debug === true))
      } finally {
        process.off('SIGINT', onSig)
        process.off('SIGTERM', onSig)
      }
    })
}
