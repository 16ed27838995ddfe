/**
 * `naiad pull REF`: lazy-pull an image into containerd (see pull.ts). main.ts composes; this file
 * only parses flags.
 */
import { Option, type Command } from 'commander'
import { NaiadError } from '../../lib/errors/index.ts'
import { DEFAULT_CONTAINERD_ADDRESS, runPull, type Io, type PullCliOptions } from './main.ts'

export function registerPullCommand (program: Command, io: Io, setExit: (code: number) => void): void {
  program.command('pull')
    .description('lazy-pull an image into containerd through its gRPC services, sending the remote-snapshot labels, so `ctr run --snapshotter nydus REF` works without downloading lazy layers')
    .argument('<ref>', 'image reference, host[:port]/repo[:tag][@digest]')
    .option('--address <socket>', 'containerd gRPC socket', DEFAULT_CONTAINERD_ADDRESS)
    .option('--namespace <ns>', 'containerd namespace', 'default')
    .option('--snapshotter <name>', 'containerd snapshotter (naiad\'s proxy plugin name)', 'nydus')
    .option('--plain-http', 'talk plain HTTP to the registry (always for localhost and 127.0.0.0/8)')
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform index (default: this host)')
    .addOption(new Option('--output <format>', 'summary format').choices(['text', 'json']).default('text'))
    .addOption(new Option('--log-level <level>', 'log level (stderr)').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .option('--debug', 'print the cause chain of errors')
    .action(async (ref: string, o: PullCliOptions) => {
      // a signal stops the pull: the lease is dropped (what it held is collected) and no image
      // record is made
      const ac = new AbortController()
      const onSigint = (): void => { ac.abort(new NaiadError('NAIAD_ABORTED', 'naiad pull interrupted by SIGINT')) }
      const onSigterm = (): void => { ac.abort(new NaiadError('NAIAD_ABORTED', 'naiad pull interrupted by SIGTERM')) }
      process.once('SIGINT', onSigint)
      process.once('SIGTERM', onSigterm)
      try {
        setExit(await runPull(ref, o, io, ac.signal))
      } finally {
        process.off('SIGINT', onSigint)
        process.off('SIGTERM', onSigterm)
      }
    })
}
