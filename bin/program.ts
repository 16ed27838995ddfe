import { readFileSync } from 'node:fs'
import { Command, CommanderError } from 'commander'
import { registerConverterCommands, type Io } from '../converter/cli.ts'
import { registerP2pCommands } from '../p2p/cli.ts'
import { registerFsdCommands } from '../fsdaemon/cli.ts'
import { registerSnapshotterCommands } from '../snapshotter/cli.ts'
import { registerPullCommand } from '../snapshotter/pull/cli.ts'
import { registerInstallCommands } from '../systemd/cli.ts'

function version (): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

/** Runs the naiad command line; returns the exit code. */
export async function run (argv: string[], io: Io): Promise<number> {
  let code = 0
  const program = new Command('naiad')
    .description('naiad: lazy container images for containerd (Nydus RAFS v6), with P2P distribution')
    .version(version())
    .exitOverride()
    .configureOutput({
      writeOut: (s) => { io.stdout.write(s) },
      writeErr: (s) => { io.stderr.write(s) }
    })
  registerConverterCommands(program, io, (c) => { code = c })
  registerP2pCommands(program, io, (c) => { code = c })
  registerFsdCommands(program, io, (c) => { code = c })
  registerSnapshotterCommands(program, io, (c) => { code = c })
  registerPullCommand(program, io, (c) => { code = c })
  registerInstallCommands(program, io, (c) => { code = c })
  for (const c of program.commands) c.exitOverride()
  try {
    await program.parseAsync(argv, { from: 'user' })
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0
      return 2
    }
    throw err
  }
  return code
}
