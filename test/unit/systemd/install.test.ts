/**
 * `install`/`uninstall` refusals with their codes (the full install into a temporary root is
 * test/integration/install.test.ts): an unbuilt source, relative paths, a root that cannot be
 * written, nothing installed, and the warning about a node binary the sandboxed units cannot reach.
 */
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { install, uninstall } from '../../../systemd/install.ts'

const REPO = fileURLToPath(new URL('../../../', import.meta.url))
const built = existsSync(join(REPO, 'dist/bin/naiad.js'))

describe('naiad install refusals', () => {
  let dir: string
  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'naiad-install-unit-')) })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  it('an unbuilt source is NAIAD_INSTALL_SOURCE, and nothing is written', async () => {
    const src = join(dir, 'src')
    await mkdir(src)
    await writeFile(join(src, 'package.json'), '{"name":"naiad"}')
    await expect(install({ root: join(dir, 'r1'), source: src })).rejects.toMatchObject({ code: 'NAIAD_INSTALL_SOURCE', message: expect.stringMatching(/package-lock.json is missing/) })
    expect(existsSync(join(dir, 'r1'))).toBe(false)
  })

  it('relative --root, --prefix or --node are NAIAD_CLI_USAGE', async () => {
    await expect(install({ root: 'rel' })).rejects.toMatchObject({ code: 'NAIAD_CLI_USAGE' })
    await expect(install({ root: dir, prefix: 'usr/local' })).rejects.toMatchObject({ code: 'NAIAD_CLI_USAGE' })
    await expect(install({ root: dir, node: 'node' })).rejects.toMatchObject({ code: 'NAIAD_CLI_USAGE' })
  })

  it.skipIf(!built)('a root that cannot be written is NAIAD_IO naming the path', async () => {
    const file = join(dir, 'not-a-dir')
    await writeFile(file, 'x')
    await expect(install({ root: file })).rejects.toMatchObject({ code: 'NAIAD_IO', message: expect.stringContaining(file) })
  })

  it('uninstall without an installation is NAIAD_INSTALL_NOT_INSTALLED', async () => {
    await expect(uninstall({ root: join(dir, 'empty') })).rejects.toMatchObject({ code: 'NAIAD_INSTALL_NOT_INSTALLED' })
  })

  it.skipIf(!built)('warns when the wrapper would run a node binary under /root or /home', async () => {
    const r = await install({ root: join(dir, 'r2'), dryRun: true, node: '/root/.nvm/versions/node/v20/bin/node' })
    expect(r.lines.join('\n')).toMatch(/warning: the wrapper runs \/root\/\.nvm\/.*ProtectHome/)
    expect(existsSync(join(dir, 'r2'))).toBe(false)
  })
})
