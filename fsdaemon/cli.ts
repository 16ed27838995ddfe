/**
 * `naiad fsd` (the daemon, or one standalone mount) and `naiad fsctl` (talks to a running daemon
 * over its control socket). main.ts is the composition root; this file only parses flags.
 */
import { Option, type Command } from 'commander'
import { FsdClient } from '../lib/fsdapi/index.ts'
import { NaiadError, isNaiadError, toExitCode } from '../lib/errors/index.ts'
import type { FsdCliOptions } from './main.ts'

export interface Io {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

const DEFAULT_SOCKET = '/run/naiad/fsd.sock'

function printError (io: Io, err: unknown): number {
  if (isNaiadError(err)) io.stderr.write(`naiad: ${err.code}: ${err.message}\nhint: ${err.hint}\n`)
  else io.stderr.write(`naiad: ${err instanceof Error ? err.message : String(err)}\n`)
  return toExitCode(err)
}

export function registerFsdCommands (program: Command, io: Io, setExit: (code: number) => void): void {
  program.command('fsd')
    .description('serve RAFS v6 images lazily over FUSE: as a daemon with a control socket, or one standalone mount (--mountpoint)')
    .option('--config <file>', 'configuration file (default /etc/naiad/fsd.toml if it exists)')
    .option('--image <ref>', 'standalone: a Nydus image to mount (its bootstrap layer is fetched, data blobs are read lazily)')
    .option('--bootstrap <file>', 'standalone: a local RAFS v6 bootstrap to mount')
    .option('--blob-dir <dir>', 'with --bootstrap: directory of blob files named by blob id')
    .option('--mountpoint <dir>', 'standalone: where to mount; the daemon runs until SIGINT/SIGTERM, then unmounts')
    .option('--plain-http', 'plain HTTP for the registry')
    .option('--socket <path>', `control socket (default ${DEFAULT_SOCKET}; standalone mode has none unless given)`)
    .option('--cache-dir <dir>', 'chunk cache directory (overrides the config)')
    .option('--state-dir <dir>', 'state directory (overrides the config)')
    .option('--no-prefetch', 'do not prefetch the prefetch table')
    .option('--prefetch-all', 'after the prefetch table, fetch the whole image in the background')
    .option('--mirror <url...>', 'mirrors to try before the origin (e.g. http://127.0.0.1:65001); overrides the config')
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .addOption(new Option('--fuse-fd <fd:hexmountpoint...>', 'FUSE connections of a crashed daemon to adopt (set by the failover launcher)').hideHelp())
    .action(async (o: FsdCliOptions) => {
      // the daemon's modules load only when it runs (`naiad fsctl …`, a readiness probe, stays quick)
      const { runFsd } = await import('./main.ts')
      setExit(await runFsd(o, io))
    })

  const ctl = program.command('fsctl').description('control a running fsdaemon over its socket')
  const sock = (c: Command): Command => c.option('--socket <path>', 'control socket', DEFAULT_SOCKET)
  sock(ctl.command('mount'))
    .description('mount an image (or a local bootstrap) through the daemon')
    .requiredOption('--mountpoint <dir>', 'where to mount (absolute path)')
    .option('--image <ref>', 'a Nydus image reference')
    .option('--bootstrap <file>', 'a local bootstrap')
    .option('--blob-dir <dir>', 'with --bootstrap: blob directory')
    .option('--plain-http', 'plain HTTP for the registry')
    .option('--no-prefetch', 'no prefetch')
    .action(async (o: { socket: string, mountpoint: string, image?: string, bootstrap?: string, blobDir?: string, plainHttp?: boolean, prefetch: boolean }) => {
      try {
        const info = await new FsdClient({ socketPath: o.socket }).mount({
          mountpoint: o.mountpoint,
          ...(o.image !== undefined ? { image: o.image } : {}),
          ...(o.bootstrap !== undefined ? { bootstrap: o.bootstrap } : {}),
          ...(o.blobDir !== undefined ? { blobDir: o.blobDir } : {}),
          ...(o.plainHttp === true ? { plainHttp: true } : {}),
          prefetch: o.prefetch
        })
        io.stdout.write(JSON.stringify(info, null, 2) + '\n')
        setExit(0)
      } catch (err) { setExit(printError(io, err)) }
    })
  sock(ctl.command('umount'))
    .description('unmount')
    .argument('<mountpoint>')
    .action(async (mountpoint: string, o: { socket: string }) => {
      try {
        await new FsdClient({ socketPath: o.socket }).unmount(mountpoint)
        setExit(0)
      } catch (err) { setExit(printError(io, err)) }
    })
  sock(ctl.command('ls'))
    .description('list mounts with per-blob statistics (JSON)')
    .action(async (o: { socket: string }) => {
      try {
        io.stdout.write(JSON.stringify(await new FsdClient({ socketPath: o.socket }).list(), null, 2) + '\n')
        setExit(0)
      } catch (err) { setExit(printError(io, err)) }
    })
  sock(ctl.command('info'))
    .description('daemon information (JSON)')
    .action(async (o: { socket: string }) => {
      try {
        io.stdout.write(JSON.stringify(await new FsdClient({ socketPath: o.socket }).daemon(), null, 2) + '\n')
        setExit(0)
      } catch (err) { setExit(printError(io, err)) }
    })
  sock(ctl.command('blobs'))
    .description('the chunk cache\'s blobs: id, bytes on disk, mounts using it, last use (JSON)')
    .action(async (o: { socket: string }) => {
      try {
        io.stdout.write(JSON.stringify(await new FsdClient({ socketPath: o.socket }).blobs(), null, 2) + '\n')
        setExit(0)
      } catch (err) { setExit(printError(io, err)) }
    })
  sock(ctl.command('handover'))
    .description('upgrade the fsdaemon without unmounting: the running daemon exits leaving every mount to its FUSE holder, and the new one its supervisor starts (the snapshotter\'s watchdog, or systemd for naiad-fsd.service) adopts them; running containers\' reads wait meanwhile')
    .option('--timeout <seconds>', 'how long to wait for the new daemon', '60')
    .action(async (o: { socket: string, timeout: string }) => {
      try {
        const client = new FsdClient({ socketPath: o.socket, timeoutMs: 2000 })
        const old = await client.daemon()
        if (old.failover !== true) throw new NaiadError('NAIAD_FS_NO_HANDOVER', `the fsdaemon on ${o.socket} (pid ${old.pid}) keeps no FUSE holders (a standalone mount, or a version without handover): a handover would break its mounts`)
        process.kill(old.pid, 'SIGUSR2')
        const deadline = Date.now() + Number(o.timeout) * 1000
        for (;;) {
          const now = await client.daemon().catch(() => undefined)
          if (now !== undefined && now.pid !== old.pid) {
            io.stdout.write(`handed over: pid ${old.pid} (${old.version}) -> pid ${now.pid} (${now.version}), ${now.mounts} mount(s)\n`)
            setExit(0)
            return
          }
          if (Date.now() > deadline) throw new NaiadError('NAIAD_FS_HANDOVER_TIMEOUT', `no new fsdaemon answered on ${o.socket} within ${o.timeout} s after pid ${old.pid} ${now !== undefined ? 'was asked to hand over (it still runs)' : 'handed over'}: is it supervised (the snapshotter with [fsdaemon] start = true, or naiad-fsd.service)?`)
          await new Promise((resolve) => setTimeout(resolve, 200))
        }
      } catch (err) { setExit(printError(io, err)) }
    })
  sock(ctl.command('rm-blob'))
    .description('delete the cache of blobs no mount uses (NAIAD_FS_BLOB_IN_USE otherwise)')
    .argument('<blob-id...>', 'blob ids (64 hex characters; the layer digest without sha256:)')
    .action(async (ids: string[], o: { socket: string }) => {
      try {
        const client = new FsdClient({ socketPath: o.socket })
        for (const id of ids) await client.removeBlob(id.replace(/^sha256:/, ''))
        setExit(0)
      } catch (err) { setExit(printError(io, err)) }
    })
}
