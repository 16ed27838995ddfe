/**
 * The properties of the units that matter and that `systemd-analyze verify` (see
 * test/integration/install.test.ts) cannot know: Type=notify, Restart=always, KillMode=process on
 * the snapshotter, no option that would give the snapshotter or the fsdaemon a private mount
 * namespace (their FUSE mounts must reach containerd), /dev/fuse allowed, CAP_SYS_ADMIN kept,
 * ordering before containerd, shared runtime directory preserved, no MemoryDenyWriteExecute (V8).
 */
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { holdersFile } from '../../../lib/fsdapi/failover.ts'

const root = new URL('../../../', import.meta.url)

type Unit = Record<string, Record<string, string[]>>

function parseUnit (text: string): Unit {
  const out: Unit = {}
  let section = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue
    const h = /^\[(.+)\]$/.exec(line)
    if (h !== null) { section = h[1]!; out[section] ??= {}; continue }
    const i = line.indexOf('=')
    const key = line.slice(0, i)
    ;(out[section]![key] ??= []).push(line.slice(i + 1))
  }
  return out
}

const unit = (name: string): Unit => parseUnit(readFileSync(new URL(`systemd/${name}`, root), 'utf8'))
const one = (u: Unit, s: string, k: string): string | undefined => u[s]?.[k]?.at(-1)
const words = (u: Unit, s: string, k: string): string[] => (u[s]?.[k] ?? []).flatMap(v => v.split(/\s+/)).filter(w => w !== '')

const ALL = ['naiad-snapshotter.service', 'naiad-fsd.service', 'naiad-peer.service', 'naiad-scheduler.service']
const MOUNTING = ['naiad-snapshotter.service', 'naiad-fsd.service']
// each of these puts the service in a mount namespace of its own (systemd.exec(5))
const NAMESPACING = ['PrivateTmp', 'PrivateDevices', 'PrivateMounts', 'ProtectSystem', 'ProtectHome', 'ReadWritePaths', 'ReadOnlyPaths',
  'InaccessiblePaths', 'ProtectKernelTunables', 'ProtectKernelModules', 'ProtectKernelLogs', 'ProtectControlGroups', 'ProtectProc',
  'ProcSubset', 'TemporaryFileSystem', 'BindPaths', 'BindReadOnlyPaths', 'MountFlags', 'RootDirectory', 'RootImage', 'DynamicUser', 'ProtectHostname', 'ProtectClock']

describe('systemd units', () => {
  it.each(ALL)('%s: Type=notify, restarts always, starts the installed naiad with its config', (name) => {
    const u = unit(name)
    expect(one(u, 'Service', 'Type')).toBe('notify')
    expect(one(u, 'Service', 'NotifyAccess')).toBe('all')
    expect(one(u, 'Service', 'Restart')).toBe('always')
    // naiad-fsd.service starts through the failover launcher (it execs naiad: same pid)
    const launcher = name === 'naiad-fsd.service' ? '/usr/bin/perl /usr/local/lib/naiad/lib/fsdapi/fsd-launcher.pl /run/naiad/fsd.sock.fuse-holders ' : ''
    const daemon = name.replace(/^naiad-/, '').replace(/\.service$/, '')
    expect(one(u, 'Service', 'ExecStart')).toBe(`${launcher}/usr/local/bin/naiad ${daemon} --config /etc/naiad/${daemon}.toml`)
    expect(Number(one(u, 'Service', 'LimitNOFILE'))).toBeGreaterThanOrEqual(65536)
    expect(u['Service']?.['MemoryDenyWriteExecute']).toBeUndefined()
    expect(one(u, 'Install', 'WantedBy')).toBe('multi-user.target')
  })

  it.each(MOUNTING)('%s: FUSE and mounts stay possible and visible to containerd', (name) => {
    const u = unit(name)
    expect(NAMESPACING.filter(k => u['Service']?.[k] !== undefined)).toEqual([])
    expect(words(u, 'Service', 'CapabilityBoundingSet')).toContain('CAP_SYS_ADMIN')
    expect(u['Service']?.['DeviceAllow']).toEqual(['/dev/fuse rw'])
    expect(words(u, 'Unit', 'Before')).toContain('containerd.service')
    expect(one(u, 'Service', 'RuntimeDirectory')).toBe('naiad')
    expect(one(u, 'Service', 'RuntimeDirectoryPreserve')).toBe('yes')
    expect(Number(one(u, 'Service', 'OOMScoreAdjust'))).toBeLessThan(-900)
  })

  it('the snapshotter signals only itself on stop (KillMode=process), so its FUSE daemon outlives restarts', () => {
    expect(one(unit('naiad-snapshotter.service'), 'Service', 'KillMode')).toBe('process')
    // the units sharing /run/naiad must not remove it when one of them stops
    for (const n of ['naiad-snapshotter.service', 'naiad-fsd.service', 'naiad-peer.service']) expect(one(unit(n), 'Service', 'RuntimeDirectoryPreserve')).toBe('yes')
  })

  it("naiad-fsd.service: the FUSE connections' holders outlive a crash (KillMode=process) and the launcher it starts through exists", () => {
    expect(one(unit('naiad-fsd.service'), 'Service', 'KillMode')).toBe('process')
    const [perl, script, holders] = one(unit('naiad-fsd.service'), 'Service', 'ExecStart').split(' ')
    expect(perl).toBe('/usr/bin/perl')
    // the installed copy of the repository's lib/fsdapi/fsd-launcher.pl, for the default [socket] path
    expect(existsSync(fileURLToPath(new URL(`../../../${script!.replace('/usr/local/lib/naiad/', '')}`, import.meta.url)))).toBe(true)
    expect(holders).toBe(holdersFile('/run/naiad/fsd.sock'))
  })

  it('the peer and the scheduler wait for the network and are sandboxed without capabilities', () => {
    for (const n of ['naiad-peer.service', 'naiad-scheduler.service']) {
      const u = unit(n)
      expect(words(u, 'Unit', 'After')).toContain('network-online.target')
      expect(words(u, 'Unit', 'Wants')).toContain('network-online.target')
      expect(u['Service']?.['CapabilityBoundingSet']).toEqual([''])
      expect(one(u, 'Service', 'ProtectSystem')).toBe('strict')
      expect(one(u, 'Service', 'NoNewPrivileges')).toBe('yes')
    }
    expect(one(unit('naiad-scheduler.service'), 'Service', 'DynamicUser')).toBe('yes')
  })
})
