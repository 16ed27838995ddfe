/**
 * For the tests of `npm run demo` (scripts/demo.ts): what a finished demo must have left behind,
 * judged by its own work dir, so that two demos running side by side do not see each other's.
 */
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { expect } from 'vitest'

const exec = promisify(execFile)

/** The demo's work dir (its first line names it) is gone, with every mount and process under it. */
export async function expectDemoLeftNothing (stdout: string): Promise<void> {
  const work = /work dir (\/\S+)/.exec(stdout)?.[1] ?? ''
  expect(work).toMatch(/naiad-demo-/)
  expect(readFileSync('/proc/self/mounts', 'utf8')).not.toContain(work)
  expect(existsSync(work)).toBe(false)
  // containerd, shims, daemons: their arguments name the work dir
  expect((await exec('ps', ['-eo', 'args'])).stdout).not.toContain(work)
}
