import { describe, expect, it } from 'vitest'
import { formatPlatform, matchPlatform, MediaType, normalizePlatform, parseIndex, parsePlatform, selectManifest, type Index } from '../../../lib/oci/index.ts'

const d = (n: number): string => `sha256:${String(n).repeat(64).slice(0, 64)}`

function index (entries: Array<Record<string, unknown>>): Index {
  return parseIndex(JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaType.OciIndex,
    manifests: entries.map((e, i) => ({ mediaType: MediaType.OciManifest, digest: d(i + 1), size: 100 + i, ...e }))
  }))
}

describe('platforms', () => {
  it('parses and formats', () => {
    expect(parsePlatform('linux/arm64/v8')).toEqual({ os: 'linux', architecture: 'arm64' })
    expect(parsePlatform('linux/amd64')).toEqual({ os: 'linux', architecture: 'amd64' })
    expect(parsePlatform('linux/arm')).toEqual({ os: 'linux', architecture: 'arm', variant: 'v7' })
    expect(parsePlatform('Linux/ARM/v6')).toEqual({ os: 'linux', architecture: 'arm', variant: 'v6' })
    expect(parsePlatform('linux/x86_64')).toEqual({ os: 'linux', architecture: 'amd64' })
    expect(parsePlatform('linux/aarch64')).toEqual({ os: 'linux', architecture: 'arm64' })
    expect(formatPlatform({ os: 'linux', architecture: 'arm64', variant: 'v8' })).toBe('linux/arm64/v8')
    expect(formatPlatform({ os: 'linux', architecture: 'amd64' })).toBe('linux/amd64')
    for (const s of ['linux', 'linux/', 'a/b/c/d', 'linux/amd 64', '']) {
      expect(() => parsePlatform(s), s).toThrow(expect.objectContaining({ code: 'NAIAD_CLI_USAGE' }) as Error)
    }
  })

  it('normalises and matches like containerd', () => {
    expect(normalizePlatform({ os: 'linux', architecture: 'arm64', variant: 'v8' })).toEqual({ os: 'linux', architecture: 'arm64' })
    expect(matchPlatform(parsePlatform('linux/arm64'), { os: 'linux', architecture: 'arm64', variant: 'v8' })).toBe(true)
    expect(matchPlatform(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64' })).toBe(true)
    expect(matchPlatform(parsePlatform('linux/arm'), { os: 'linux', architecture: 'arm', variant: 'v6' })).toBe(false)
    expect(matchPlatform(parsePlatform('linux/arm/v6'), { os: 'linux', architecture: 'arm', variant: 'v6' })).toBe(true)
    expect(matchPlatform(parsePlatform('linux/amd64'), { os: 'windows', architecture: 'amd64' })).toBe(false)
  })

  const idx = index([
    { platform: { os: 'linux', architecture: 'amd64' } },
    { platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
    { platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    { platform: { os: 'unknown', architecture: 'unknown' }, annotations: { 'vnd.docker.reference.type': 'attestation-manifest' } },
    { platform: { os: 'linux', architecture: 'amd64', 'os.features': ['nydus.remoteimage.v1'] } }
  ])

  it('selects one manifest for a platform', () => {
    expect(selectManifest(idx, parsePlatform('linux/arm64')).map(x => x.digest)).toEqual([d(4)])
    expect(selectManifest(idx, parsePlatform('linux/arm/v6')).map(x => x.digest)).toEqual([d(2)])
    expect(selectManifest(idx, parsePlatform('linux/arm')).map(x => x.digest)).toEqual([d(3)])
    expect(selectManifest(idx, parsePlatform('linux/amd64')).map(x => x.digest)).toEqual([d(1)])
    expect(selectManifest(idx, parsePlatform('linux/amd64'), { nydus: 'only' }).map(x => x.digest)).toEqual([d(6)])
  })

  it("selects every platform for 'all', without attestations", () => {
    expect(selectManifest(idx, 'all').map(x => x.digest)).toEqual([d(1), d(2), d(3), d(4), d(6)])
    expect(selectManifest(idx, 'all', { nydus: 'exclude' }).map(x => x.digest)).toEqual([d(1), d(2), d(3), d(4)])
  })

  it('lists what the index offers when nothing matches', () => {
    let err: unknown
    try { selectManifest(idx, parsePlatform('linux/s390x')) } catch (e) { err = e }
    expect(err).toMatchObject({ code: 'NAIAD_OCI_NO_PLATFORM' })
    expect((err as Error).message).toContain('linux/s390x')
    expect((err as Error).message).toContain('linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8, unknown/unknown (attestation), linux/amd64 (nydus)')
  })
})
