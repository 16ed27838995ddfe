#!/usr/bin/env node
/**
 * The `naiad` command: the composition root that registers every component's subcommands.
 */
import { run } from './program.ts'

// The fsdaemon keeps libuv pool threads blocked in reads of /dev/fuse; give the pool room so
// file I/O never waits behind them (read when the pool starts, i.e. before the first async op).
process.env['UV_THREADPOOL_SIZE'] ??= '16'

process.exitCode = await run(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr })
