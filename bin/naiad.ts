#!/usr/bin/env node
/**
 * The `naiad` command: the composition root that registers every component's subcommands.
 */
import { run } from './program.ts'

// The fsdaemon's cache does many small concurrent file reads and writes (plus FUSE replies): a
// larger libuv pool than the default 4 helps (read when the pool starts, before the first async op).
process.env['UV_THREADPOOL_SIZE'] ??= '16'

process.exitCode = await run(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr })
