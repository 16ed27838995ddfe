/**
 * `naiad snapshotter`: containerd's proxy snapshotter daemon. main.ts is the composition root;
 * this file only parses flags.
 */
import { Option, type Command } from 'commander'
import { DEFAULT_CONFIG, runSnapshotter, type Io, type SnapshotterCliOptions } from './main.ts'

export function registerSnapshotterCommands (program: Command, io: Io, setExit: (code: number) => void): void {
  program.command('snapshotter')
    .description('serve containerd\'s snapshots API on a Unix socket (a proxy snapshotter: [proxy_plugins.nydus] type = "snapshot")')
    .option('--config <file>', `configuration file (default ${DEFAULT_CONFIG} if it exists)`)
    .option('--root <dir>', 'root directory (overrides the config)')
    .option('--socket <path>', 'Unix socket path (overrides the config)')
    .option('--stop-fsdaemon', 'stop the fsdaemon when the snapshotter exits (tests; by default it keeps serving running containers)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .action(async (o: SnapshotterCliOptions) => {
      setExit(await runSnapshotter(o, io))
    })
}
