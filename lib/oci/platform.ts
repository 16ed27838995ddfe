/**
 * Platforms: `os/architecture[/variant]` strings, normalisation (containerd's rules: aarch64 →
 * arm64, arm64/v8 is the default arm64, arm means arm/v7, x86_64 → amd64), matching, and picking
 * manifests out of an index.
 */
import { NaiadError } from '../errors/index.ts'
import { Annotation, MediaType, NYDUS_REMOTE_IMAGE_FEATURE } from './media-types.ts'
import type { Descriptor, Index, Platform } from './types.ts'

const PART_RE = /^[a-z0-9._-]+$/

/**
 * Parses `os/arch[/variant]` (e.g. `linux/arm64/v8`, `linux/amd64`); values are lower-cased and
 * normalised. Platform strings come from flags and config, so a malformed one throws
 * NAIAD_CLI_USAGE (kind InvalidArgument) with a hint showing the expected form.
 */
export function parsePlatform (s: string): Platform {
  const parts = s.trim().toLowerCase().split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some(p => !PART_RE.test(p))) {
    throw new NaiadError('NAIAD_CLI_USAGE', `not a platform: ${JSON.stringify(s.slice(0, 80))}`, { hint: 'use os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm64/v8' })
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined]
  return normalizePlatform(variant === undefined ? { os, architecture } : { os, architecture, variant })
}

/** `os/arch[/variant]` of a platform, as given (not normalised). */
export function formatPlatform (p: Platform): string {
  return p.variant !== undefined && p.variant !== '' ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`
}

/** containerd's normalisation of architecture and variant names. */
export function normalizePlatform (p: Platform): Platform {
  const os = p.os.toLowerCase() === 'macos' ? 'darwin' : p.os.toLowerCase()
  let arch = p.architecture.toLowerCase()
  let variant = p.variant?.toLowerCase()
  if (variant === '') variant = undefined
  switch (arch) {
    case 'i386': arch = '386'; variant = undefined; break
    case 'x86_64': case 'x86-64': case 'amd64':
      arch = 'amd64'
      if (variant === 'v1') variant = undefined
      break
    case 'aarch64': case 'arm64':
      arch = 'arm64'
      if (variant === '8' || variant === 'v8' || variant === 'v8.0') variant = undefined
      break
    case 'armhf': arch = 'arm'; variant = 'v7'; break
    case 'armel': arch = 'arm'; variant = 'v6'; break
    case 'arm':
      if (variant === undefined || variant === '7') variant = 'v7'
      else if (variant === '5' || variant === '6' || variant === '8') variant = `v${variant}`
      break
  }
  const out: Platform = { os, architecture: arch }
  if (variant !== undefined) out.variant = variant
  if (p['os.version'] !== undefined) out['os.version'] = p['os.version']
  if (p['os.features'] !== undefined) out['os.features'] = [...p['os.features']]
  return out
}

/**
 * True if `have` (an index entry's platform) satisfies `want`. OS and architecture must be equal
 * after normalisation. A variant in `want` must be matched exactly (arm64 without a variant is
 * arm64/v8); `want` without a variant accepts any variant of that architecture, except for arm,
 * where no variant means v7.
 */
export function matchPlatform (want: Platform, have: Platform): boolean {
  const w = normalizePlatform(want)
  const h = normalizePlatform(have)
  if (w.os !== h.os || w.architecture !== h.architecture) return false
  if (w.variant === undefined) return true
  return w.variant === h.variant
}

/** The platform of the machine running naiad, in OCI spelling. */
export function hostPlatform (): Platform {
  const arch = process.arch === 'x64' ? 'amd64' : process.arch === 'ia32' ? '386' : process.arch
  return normalizePlatform({ os: process.platform, architecture: arch })
}

/** True for index entries that describe a Nydus manifest in a merged index. */
export function isNydusIndexEntry (d: Descriptor): boolean {
  return d.artifactType === MediaType.NydusManifestArtifact ||
    (d.platform?.['os.features']?.includes(NYDUS_REMOTE_IMAGE_FEATURE) ?? false)
}

function isAttestation (d: Descriptor): boolean {
  return d.annotations?.[Annotation.DockerReferenceType] === 'attestation-manifest' ||
    (d.platform?.os === 'unknown' && d.platform.architecture === 'unknown')
}

export interface SelectOptions {
  /**
   * Which entries of a merged index (OCI and Nydus manifests side by side) to consider:
   * `'exclude'` skips Nydus entries (for reading the source image), `'only'` keeps only them,
   * `'include'` (default) keeps both in index order.
   */
  nydus?: 'include' | 'exclude' | 'only'
}

/**
 * The manifests of `index` to use for `platform`. For one platform it returns exactly one
 * descriptor: the first entry whose variant matches exactly, else the first compatible entry.
 * For `'all'` it returns every platform entry (attestation manifests left out). Throws
 * NAIAD_OCI_NO_PLATFORM, listing what the index offers, when nothing matches.
 */
export function selectManifest (index: Index, platform: Platform | 'all', opts: SelectOptions = {}): Descriptor[] {
  const nydus = opts.nydus ?? 'include'
  const candidates = index.manifests.filter(d => {
    if (isAttestation(d)) return false
    const isNydus = isNydusIndexEntry(d)
    return nydus === 'include' || (nydus === 'only' ? isNydus : !isNydus)
  })
  if (platform === 'all') {
    if (candidates.length === 0) throw noPlatform(index, 'any platform')
    return candidates
  }
  const want = normalizePlatform(platform)
  const compatible = candidates.filter(d => d.platform !== undefined && matchPlatform(want, d.platform))
  const exact = compatible.find(d => d.platform !== undefined && normalizePlatform(d.platform).variant === want.variant)
  const pick = exact ?? compatible[0]
  if (pick === undefined) throw noPlatform(index, formatPlatform(platform))
  return [pick]
}

function noPlatform (index: Index, wanted: string): NaiadError {
  const offered = index.manifests.map(d => {
    const p = d.platform === undefined ? 'no platform' : formatPlatform(d.platform)
    return isNydusIndexEntry(d) ? `${p} (nydus)` : isAttestation(d) ? `${p} (attestation)` : p
  })
  return new NaiadError('NAIAD_OCI_NO_PLATFORM',
    `no manifest for ${wanted}; the index offers ${offered.length === 0 ? 'nothing' : offered.join(', ')}`,
    { details: { wanted, offered } })
}
