/**
 * The README's main job as a smoke test: `node dist/scripts/demo.js` (what `npm run demo` runs
 * after setup and build) brings up the full stack (registry, scheduler, two peers, two private
 * containerds with naiad's snapshotter and fsdaemon), runs the sample image normally and lazily
 * on both nodes, reports success, and leaves no mount or process behind.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { expectDemoLeftNothing } from '../helpers/demo.ts'

const exec = promisify(execFile)
const DEMO = new URL('../../dist/scripts/demo.js', import.meta.url).pathname

describe('npm run demo', () => {
  it('runs the main job end to end and cleans up', { timeout: 600_000 }, async () => {
    const { stdout } = await exec(process.execPath, [DEMO], { timeout: 600_000, maxBuffer: 64 << 20 })
    expect(stdout).toContain('check passed')
    expect(stdout).toContain('hello from a lazy image')
    expect(stdout).toContain('demo OK')
    // node b got its bytes from peer a, not from the registry
    expect(stdout).toMatch(/\| node b, naiad pull \+ run \(nydus\) \| [^|]+\| [^|]+\| 0\.\d MiB \|/)
    // demo --image runs beside this test with its own work dir
    await expectDemoLeftNothing(stdout)
  })
})
