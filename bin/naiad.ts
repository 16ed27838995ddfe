#!/usr/bin/env node
/**
 * The `naiad` command: the composition root that registers every component's subcommands.
 */
import { run } from './program.ts'

process.exitCode = await run(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr })
