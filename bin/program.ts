import { readFileSync } from 'node:fs'
import { Command, CommanderError } from 'commander'
import type { Io } from '../converter/cli.ts'

type SetExit = (code: number) => void
type Register = (program: Command, io: Io, setExit: SetExit) => void

/**
 * Every component's subcommands, in the order `naiad --help` lists them. A component's CLI module
 * (and with it the component: gRPC, the registry client, FUSE…) is imported only when its command
 * runs, so `naiad --version`, `naiad pull` or the `naiad fsd` the snapshotter starts pay only for
 * what they use. `names` must match the commands `load()` registers (a test holds them in step).
 */
export const COMMAND_MODULES: ReadonlyArray<{ readonly names: readonly string[], readonly load: () => Promise<Register> }> = [
  { names: ['convert', 'check', 'inspect'], load: async () => (await import('../converter/cli.ts')).registerConverterCommands },
  { names: ['peer', 'scheduler', 'preheat'], load: async () => (await import('../p2p/cli.ts')).registerP2pCommands },
  { names: ['fsd', 'fsctl'], load: async () => (await import('../fsdaemon/cli.ts')).registerFsdCommands },
  { names: ['snapshotter'], load: async () => (await import('../snapshotter/cli.ts')).registerSnapshotterCommands },
  { names: ['pull'], load: async () => (await import('../snapshotter/pull/cli.ts')).registerPullCommand },
  { names: ['install', 'uninstall'], load: async () => (await import('../systemd/cli.ts')).registerInstallCommands }
]

/**
 * The command modules a command line needs: none for `--version`, the one that owns the named
 * command (also for `help <command>`), and all of them for the top-level help or an unknown command
 * (so commander can list them or suggest the closest).
 */
export function modulesFor (argv: readonly string[]): typeof COMMAND_MODULES {
  const first = argv[0]
  if (first === '-V' || first === '--version') return []
  const name = first === 'help' ? argv[1] : first
  const owner = COMMAND_MODULES.find((m) => name !== undefined && m.names.includes(name))
  return owner === undefined ? COMMAND_MODULES : [owner]
}

function version (): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

/**
 * Builds the `naiad` program with the commands of `modules` registered (all of them by default).
 * `setExit` receives a command's exit code.
 */
export async function buildProgram (io: Io, setExit: SetExit, modules: typeof COMMAND_MODULES = COMMAND_MODULES): Promise<Command> {
  const program = new Command('naiad')
    .description('naiad: lazy container images for containerd (Nydus RAFS v6), with P2P distribution')
    .version(version())
    .exitOverride()
    .configureOutput({
      writeOut: (s) => { io.stdout.write(s) },
      writeErr: (s) => { io.stderr.write(s) }
    })
  const registers = await Promise.all(modules.map(async (m) => await m.load()))
  for (const register of registers) register(program, io, setExit)
  for (const c of program.commands) c.exitOverride()
  return program
}

/** Runs the naiad command line; returns the exit code. */
export async function run (argv: string[], io: Io): Promise<number> {
  let code = 0
  const program = await buildProgram(io, (c) => { code = c }, modulesFor(argv))
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
