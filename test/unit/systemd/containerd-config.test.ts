/**
 * `naiad install --configure-containerd`: the snippet merged into Debian's containerd config (and
 * into none), the backup, idempotence, refusals; and real containerd (`containerd config dump`)
 * accepts both the snippet and the merged file with naiad as its CRI snapshotter.
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseToml } from 'smol-toml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mergeContainerdConfig } from '../../../systemd/install.ts'

const SNIPPET = fileURLToPath(new URL('../../../systemd/containerd-snippet.toml', import.meta.url))
const CONTAINERD = '/usr/bin/containerd'
// what Debian's containerd 1.6 package ships as /etc/containerd/config.toml
const DEBIAN = `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`

async function dump (config: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile(CONTAINERD, ['-c', config, 'config', 'dump'], (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`))
      else resolve(stdout)
    })
  })
}

describe('merging the snippet into containerd\'s config.toml', () => {
  let dir: string
  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'naiad-ctrd-cfg-')) })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  it('merges into Debian\'s file, keeps the original as a backup, and is idempotent', async () => {
    const root = join(dir, 'debian')
    await mkdir(join(root, 'etc/containerd'), { recursive: true })
    await writeFile(join(root, 'etc/containerd/config.toml'), DEBIAN)
    const r = await mergeContainerdConfig(root, SNIPPET, false)
    expect(r.change.action).toBe('update')
    expect(r.backup).toBe('/etc/containerd/config.toml.naiad-backup')
    expect(await readFile(join(root, 'etc/containerd/config.toml.naiad-backup'), 'utf8')).toBe(DEBIAN)
    const merged = parseToml(await readFile(join(root, 'etc/containerd/config.toml'), 'utf8')) as any // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(merged.proxy_plugins.nydus).toEqual({ type: 'snapshot', address: '/run/naiad/snapshotter.sock' })
    expect(merged.plugins['io.containerd.grpc.v1.cri'].containerd).toEqual({ snapshotter: 'nydus', disable_snapshot_annotations: false, discard_unpacked_layers: false })
    // Debian's settings survive
    expect(merged.plugins['io.containerd.grpc.v1.cri'].cni).toEqual({ bin_dir: '/usr/lib/cni', conf_dir: '/etc/cni/net.d' })
    expect(merged.plugins['io.containerd.internal.v1.opt'].path).toBe('/var/lib/containerd/opt')
    const again = await mergeContainerdConfig(root, SNIPPET, false)
    expect(again.change.action).toBe('unchanged')
  })

  it('creates the file when there is none, and a dry run writes nothing', async () => {
    const root = join(dir, 'none')
    expect((await mergeContainerdConfig(root, SNIPPET, true)).change.action).toBe('create')
    expect(existsSync(join(root, 'etc/containerd/config.toml'))).toBe(false)
    const r = await mergeContainerdConfig(root, SNIPPET, false)
    expect(r.change.action).toBe('create')
    expect(r.backup).toBeUndefined()
    expect(existsSync(join(root, 'etc/containerd/config.toml'))).toBe(true)
  })

  it('refuses invalid TOML, config version 1 and a conflicting type with NAIAD_INSTALL_CONTAINERD_CONFIG', async () => {
    for (const [name, text] of [['bad', 'version = 2\n[plugins\n'], ['v1', 'version = 1\n'], ['clash', 'version = 2\nproxy_plugins = "x"\n']]) {
      const root = join(dir, name!)
      await mkdir(join(root, 'etc/containerd'), { recursive: true })
      await writeFile(join(root, 'etc/containerd/config.toml'), text!)
      await expect(mergeContainerdConfig(root, SNIPPET, false)).rejects.toMatchObject({ code: 'NAIAD_INSTALL_CONTAINERD_CONFIG' })
      expect(await readFile(join(root, 'etc/containerd/config.toml'), 'utf8')).toBe(text)
    }
  })

  it.skipIf(!existsSync(CONTAINERD))('real containerd accepts the snippet and the merged file: naiad is the CRI snapshotter', async () => {
    for (const file of [SNIPPET, join(dir, 'debian/etc/containerd/config.toml')]) {
      const out = await dump(file)
      expect(out).toMatch(/\[proxy_plugins\.nydus\]\s+address = "\/run\/naiad\/snapshotter\.sock"\s+type = "snapshot"/)
      expect(out).toMatch(/^\s+snapshotter = "nydus"$/m)
      expect(out).toMatch(/^\s+disable_snapshot_annotations = false$/m)
      expect(out).toMatch(/^\s+discard_unpacked_layers = false$/m)
    }
  })
})
