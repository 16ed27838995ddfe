/**
 * `naiad install` and `naiad uninstall` (install.ts does the work; this file parses flags and
 * prints the report).
 */
import type { Command } from 'commander'
import { causeChain, isNaiadError, toExitCode } from '../lib/errors/index.ts'
import { install, uninstall, type Report } from './install.ts'

export interface Io { stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream }

function fail (io: Io, err: unknown): number {
  io.stderr.write(`naiad: ${isNaiadError(err) ? err.code : 'NAIAD_INTERNAL'}: ${err instanceof Error ? err.message : String(err)}\n`)
  if (isNaiadError(err) && err.hint !== '') io.stderr.write(`hint: ${err.hint}\n`)
  else for (const line of causeChain(err)) io.stderr.write(`  ${line}\n`)
  return toExitCode(err)
}

function print (io: Io, r: Report): void {
  io.stdout.write(r.lines.join('\n') + '\n')
}

export function registerInstallCommands (program: Command, io: Io, setExit: (code: number) => void): void {
  program.command('install')
    .description('install this build of naiad on the node: the suite under <prefix>/lib/naiad, <prefix>/bin/naiad, systemd units, example configs in /etc/naiad (never overwritten), the containerd snippet; idempotent')
    .option('--root <dir>', 'install under this directory instead of / (a node image, a test)', '/')
    .option('--prefix <dir>', 'program prefix on the node', '/usr/local')
    .option('--dry-run', 'print what would change, change nothing')
    .option('--force', 'replace files at naiad\'s paths that a previous naiad install did not write')
    .option('--configure-containerd', 'also merge the snippet into /etc/containerd/config.toml (backup kept as config.toml.naiad-backup)')
    .option('--node <path>', 'node binary the wrapper runs (default: the one running this command)')
    .action(async (o: { root: string, prefix: string, dryRun?: boolean, force?: boolean, configureContainerd?: boolean, node?: string }) => {
      try {
        print(io, await install({ root: o.root, prefix: o.prefix, dryRun: o.dryRun === true, force: o.force === true, configureContainerd: o.configureContainerd === true, ...(o.node !== undefined ? { node: o.node } : {}) }))
        setExit(0)
      } catch (err) {
        setExit(fail(io, err))
      }
    })
  program.command('uninstall')
    .description('remove what naiad install wrote (its manifest lists it); configurations in /etc/naiad stay unless --purge. Stop the services first.')
    .option('--root <dir>', 'the --root given to naiad install', '/')
    .option('--prefix <dir>', 'the --prefix given to naiad install', '/usr/local')
    .option('--dry-run', 'print what would be removed, remove nothing')
    .option('--purge', 'remove the configurations in /etc/naiad too')
    .action(async (o: { root: string, prefix: string, dryRun?: boolean, purge?: boolean }) => {
      try {
        print(io, await uninstall({ root: o.root, prefix: o.prefix, dryRun: o.dryRun === true, purge: o.purge === true }))
        setExit(0)
      } catch (err) {
        setExit(fail(io, err))
      }
    })
}
