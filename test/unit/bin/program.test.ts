/**
 * The `naiad` composition root loads a component's CLI module only when one of its commands runs:
 * the command table must match what the modules register, the help a lazily built program prints
 * must be the help of the full program, and `naiad --version` must not load any component.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { Writable } from 'node:stream'
import type { Command } from 'commander'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildProgram, COMMAND_MODULES, modulesFor, run } from '../../../bin/program.ts'
import { NAIAD_BIN } from '../../helpers/daemon.ts'

const execFileP = promisify(execFile)

function sink (): { io: { stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream }, text: () => string } {
  let out = ''
  const w = new Writable({ write (chunk, _enc, cb) { out += String(chunk); cb() } })
  return { io: { stdout: w, stderr: w }, text: () => out }
}

/** Every command and subcommand with its path of names (e.g. ['fsctl', 'mount']). */
function walk (cmd: Command, path: string[] = []): Array<{ path: string[], help: string }> {
  return cmd.commands.flatMap((c) => [{ path: [...path, c.name()], help: c.helpInformation() }, ...walk(c, [...path, c.name()])])
}

describe('naiad command table (bin/program.ts)', () => {
  it('lists exactly the commands each module registers, each name once', async () => {
    const all: string[] = []
    for (const m of COMMAND_MODULES) {
      const program = await buildProgram(sink().io, () => {}, [m])
      expect(program.commands.map((c) => c.name())).toEqual(m.names)
      all.push(...m.names)
    }
    expect(new Set(all).size).toBe(all.length)
    const full = await buildProgram(sink().io, () => {})
    expect(full.commands.map((c) => c.name())).toEqual(all)
  })

  it('a program built for one command prints the same help as the full program', async () => {
    const full = walk(await buildProgram(sink().io, () => {}))
    expect(full.length).toBeGreaterThan(10)
    for (const { path, help } of full) {
      const lazy = walk(await buildProgram(sink().io, () => {}, modulesFor([...path, '--help'])))
      expect(lazy.find((c) => c.path.join(' ') === path.join(' '))?.help, path.join(' ')).toBe(help)
    }
  })

  it('picks no module for --version, the owner for a command or `help <command>`, all otherwise', () => {
    expect(modulesFor(['--version'])).toEqual([])
    expect(modulesFor(['-V'])).toEqual([])
    expect(modulesFor(['fsd', '--help']).flatMap((m) => m.names)).toEqual(['fsd', 'fsctl'])
    expect(modulesFor(['help', 'pull']).flatMap((m) => m.names)).toEqual(['pull'])
    expect(modulesFor([])).toBe(COMMAND_MODULES)
    expect(modulesFor(['--help'])).toBe(COMMAND_MODULES)
    expect(modulesFor(['conver'])).toBe(COMMAND_MODULES)
  })

  it('an unknown command still gets the closest suggestion, exit code 2', async () => {
    const s = sink()
    expect(await run(['conver'], s.io)).toBe(2)
    expect(s.text()).toMatch(/unknown command 'conver'[\s\S]*Did you mean convert\?/)
  })

  describe('the built naiad (dist)', () => {
    let dir = ''
    let hook = ''
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'naiad-bin-'))
      // A module resolve hook that prints every file the process loads.
      await writeFile(join(dir, 'hook.mjs'), "export async function resolve (s, c, n) { const r = await n(s, c); if (r.url.startsWith('file:')) process.stderr.write('LOADED ' + r.url + '\\n'); return r }\n")
      await writeFile(join(dir, 'register.mjs'), `import { register } from 'node:module'\nregister(${JSON.stringify(pathToFileURL(join(dir, 'hook.mjs')).href)})\n`)
      hook = join(dir, 'register.mjs')
    })
    afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

    async function loaded (args: string[]): Promise<{ stdout: string, files: string[] }> {
      const { stdout, stderr } = await execFileP(process.execPath, ['--import', hook, NAIAD_BIN, ...args])
      const root = new URL('../', pathToFileURL(NAIAD_BIN)).href // dist/
      const files = stderr.split('\n').filter((l) => l.startsWith('LOADED ' + root)).map((l) => l.slice('LOADED '.length + root.length))
      return { stdout, files }
    }

    it('--version loads nothing but bin/', async () => {
      const r = await loaded(['--version'])
      expect(r.stdout).toMatch(/^\d+\.\d+\.\d+/)
      expect(r.files.length).toBeGreaterThan(0)
      expect(r.files.filter((f) => !f.startsWith('bin/'))).toEqual([])
    })

    it('a command loads its own component only', async () => {
      const fsd = await loaded(['fsd', '--help'])
      expect(fsd.stdout).toContain('Usage: naiad fsd')
      expect(fsd.files).toContain('fsdaemon/cli.js')
      expect(fsd.files.filter((f) => /^(converter|p2p|snapshotter|systemd)\//.test(f))).toEqual([])
      const install = await loaded(['install', '--help'])
      expect(install.files.filter((f) => /^(converter|p2p|snapshotter|fsdaemon)\//.test(f))).toEqual([])
    })
  })
})
