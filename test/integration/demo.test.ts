/**
 * The README's main job as a smoke test: `node dist/scripts/demo.js` (what `npm run demo` runs
 * after setup and build) finishes, reports success, and leaves no mount or process behind.
 */
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'

const exec = promisify(execFile)
const DEMO = new URL('../../dist/scripts/demo.js', import.meta.url).pathname

function naiadMounts (): string[] {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').filter(l => l.includes('fuse.naiad') && l.includes('naiad-demo-'))
}

describe('npm run demo', () => {
  it('runs the main job end to end and cleans up', async () => {
    const { stdout } = await exec(process.execPath, [DEMO], { timeout: 300_000, maxBuffer: 64 << 20 })
    expect(stdout).toContain('check passed')
    expect(stdout).toContain('hello from a lazy image')
    expect(stdout).toContain('demo OK')
    expect(naiadMounts()).toEqual([])
    const ps = (await exec('ps', ['-eo', 'args'])).stdout
    expect(ps).not.toMatch(/naiad-demo-|naiad\.js fsd --socket .*naiad-demo/)
  })
})
