/**
 * Round trip through a real registry (Debian's docker-registry, distribution 2.8) with htpasswd
 * auth: umoci builds the image, skopeo pushes it, naiad converts registry → registry with
 * credentials from a docker config.json, and naiad check proves the result. Conversion failures
 * leave nothing behind the target tag; credentials never reach the logs.
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { run } from '../../bin/program.ts'
import { buildImage, fidelityLayers, imageFromTar, pushImage, buildMultiPlatformImage } from '../helpers/images.ts'
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts'

async function naiad (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const out: string[] = []; const err: string[] = []
  const w = (a: string[]): Writable => new Writable({ write (c, _e, cb) { a.push(String(c)); cb() } })
  const code = await run(argv, { stdout: w(out), stderr: w(err) })
  return { code, out: out.join(''), err: err.join('') }
}

const USER = 'naiad'
const PASSWORD = 'p4ss-w0rd-secret'

describe('convert through a real registry with auth', () => {
  let reg: RunningRegistry
  let work: string
  let oldDockerConfig: string | undefined

  beforeAll(async () => {
    reg = await startRegistry({ htpasswd: { user: USER, password: PASSWORD } })
    work = mkdtempSync(join(tmpdir(), 'naiad-reg-'))
    const cfgDir = join(work, 'docker')
    const { mkdirSync } = await import('node:fs')
    mkdirSync(cfgDir)
    writeFileSync(join(cfgDir, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString('base64') } } }))
    oldDockerConfig = process.env['DOCKER_CONFIG']
    process.env['DOCKER_CONFIG'] = cfgDir
  })

  afterAll(async () => {
    if (oldDockerConfig === undefined) delete process.env['DOCKER_CONFIG']
    else process.env['DOCKER_CONFIG'] = oldDockerConfig
    await reg?.stop()
  })

  it('converts registry → registry, check passes, converting again gives the same digest', async () => {
    const img = buildImage({ workDir: join(work, 'fid'), layers: fidelityLayers() })
    pushImage(img, reg.host, 'app/fidelity:v1', `${USER}:${PASSWORD}`)
    const src = `${reg.host}/app/fidelity:v1`
    const dst = `${reg.host}/app/fidelity:v1-nydus`
    const c = await naiad('convert', '--source', src, '--target', dst, '--plain-http', '--output', 'json', '--log-level', 'debug')
    expect(c.code).toBe(0)
    expect(c.err).not.toContain(PASSWORD)
    expect(c.err).not.toContain(Buffer.from(`${USER}:${PASSWORD}`).toString('base64'))
    const first = JSON.parse(c.out)
    const k = await naiad('check', '--source', src, '--target', dst, '--plain-http')
    expect(k.out).toContain('check passed')
    expect(k.code).toBe(0)
    const again = JSON.parse((await naiad('convert', '--source', src, '--target', `${reg.host}/other/repo:x`, '--plain-http', '--output', 'json')).out)
    expect(again.digest).toBe(first.digest)
    // the converted image is readable by inspect straight from the registry
    const i = await naiad('inspect', dst, '--plain-http')
    expect(i.code).toBe(0)
    expect(i.out).toContain('/data/hl-b')
  })

  it('check fails with a readable diff when the target holds another filesystem', async () => {
    const a = buildImage({ workDir: join(work, 'a'), layers: [(r) => { writeFileSync(join(r, 'f'), 'one') }] })
    const b = buildImage({ workDir: join(work, 'b'), layers: [(r) => { writeFileSync(join(r, 'f'), 'two'); writeFileSync(join(r, 'g'), 'extra') }] })
    pushImage(a, reg.host, 'diff/a:1', `${USER}:${PASSWORD}`)
    pushImage(b, reg.host, 'diff/b:1', `${USER}:${PASSWORD}`)
    expect((await naiad('convert', '--source', `${reg.host}/diff/b:1`, '--target', `${reg.host}/diff/b:nydus`, '--plain-http')).code).toBe(0)
    const k = await naiad('check', '--source', `${reg.host}/diff/a:1`, '--target', `${reg.host}/diff/b:nydus`, '--plain-http')
    expect(k.code).toBe(1)
    expect(k.out).toContain('~ /f  sha256')
    expect(k.out).toContain('+ /g')
    expect(k.out).toContain('check FAILED')
  })

  it('a multi-platform image converts into an index in the registry', async () => {
    const img = buildMultiPlatformImage({ workDir: join(work, 'multi'), platforms: [{ architecture: 'amd64' }, { architecture: 'arm64', variant: 'v8' }] })
    pushImage(img, reg.host, 'multi/img:1', `${USER}:${PASSWORD}`, true)
    const c = await naiad('convert', '--source', `${reg.host}/multi/img:1`, '--target', `${reg.host}/multi/img:1-nydus`, '--platform', 'all', '--plain-http', '--output', 'json')
    expect(c.err).toBe('')
    expect(JSON.parse(c.out).platforms.length).toBe(2)
    const k = await naiad('check', '--source', `${reg.host}/multi/img:1`, '--target', `${reg.host}/multi/img:1-nydus`, '--plain-http')
    expect(k.code).toBe(0)
  })

  it('a failing conversion leaves nothing behind the target tag; wrong credentials give NAIAD_REG_UNAUTHORIZED', async () => {
    const bad = imageFromTar({ workDir: join(work, 'bad'), tar: Buffer.alloc(2048, 0x41) })
    pushImage(bad, reg.host, 'bad/img:1', `${USER}:${PASSWORD}`)
    const c = await naiad('convert', '--source', `${reg.host}/bad/img:1`, '--target', `${reg.host}/bad/img:nydus`, '--plain-http')
    expect(c.err).toContain('NAIAD_TAR_CORRUPT')
    const i = await naiad('inspect', `${reg.host}/bad/img:nydus`, '--plain-http')
    expect(i.err).toContain('NAIAD_REG_NOT_FOUND')
    const missing = await naiad('convert', '--source', `${reg.host}/no/such:tag`, '--target', `${reg.host}/x/y:z`, '--plain-http')
    expect(missing.err).toContain('NAIAD_REG_NOT_FOUND')
    const cfg = join(work, 'wrong')
    const { mkdirSync } = await import('node:fs')
    mkdirSync(cfg)
    writeFileSync(join(cfg, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER}:wrong`).toString('base64') } } }))
    const saved = process.env['DOCKER_CONFIG']
    process.env['DOCKER_CONFIG'] = cfg
    try {
      const u = await naiad('convert', '--source', `${reg.host}/app/fidelity:v1`, '--target', `${reg.host}/x/y:z`, '--plain-http')
      expect(u.err).toContain('NAIAD_REG_UNAUTHORIZED')
      expect(u.err).not.toContain('wrong')
    } finally {
      process.env['DOCKER_CONFIG'] = saved
    }
  })
})
