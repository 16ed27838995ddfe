import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { buildImage, fidelityLayers } from '../helpers/images.ts'

function sink (): { stream: Writable, text: () => string } {
  const parts: string[] = []
  return { stream: new Writable({ write (c, _e, cb) { parts.push(String(c)); cb() } }), text: () => parts.join('') }
}

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out = sink(); const err = sink()
  const code = await run(argv, { stdout: out.stream, stderr: err.stream })
  return { code, out: out.text(), err: err.text() }
}

describe('convert between OCI layouts', () => {
  it('converts the fidelity image and naiad check passes', async () => {
    const work = mkdtempSync(join(tmpdir(), 'naiad-conv-'))
    const img = buildImage({ workDir: work, layers: fidelityLayers(), cmd: ['/bin/sh'] })
    const target = `oci:${join(work, 'nydus')}:converted`
    const c = await naiad('convert', '--source', img.ref, '--target', target, '--output', 'json')
    expect(c.err).toBe('')
    expect(c.code).toBe(0)
    const r = JSON.parse(c.out)
    expect(r.platforms[0].blobs.length).toBe(3)
    const k = await naiad('check', '--source', img.ref, '--target', target)
    console.log(c.out.slice(0, 3000), k.out)
    expect(k.out).toContain('check passed')
    expect(k.code).toBe(0)
  })
})
