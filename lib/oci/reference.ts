/**
 * Image references, after the grammar of distribution/reference (what `docker pull` accepts), plus
 * `oci:<dir>[:<tag>|@<digest>]` for OCI image layout directories (skopeo's transport syntax).
 *
 * Docker Hub rules: a name with no registry part is on `docker.io`; a one-component repository on
 * docker.io gets `library/`; `index.docker.io` is an alias of `docker.io`; the HTTP endpoint of
 * docker.io is `registry-1.docker.io`. Without a tag or digest the tag is `latest`.
 */
import { parseDigest, type Digest } from '../digest/index.ts'
import { NaiadError } from '../errors/index.ts'

export const DOCKER_HUB = 'docker.io'
export const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io'
export const DEFAULT_TAG = 'latest'

/** An image in a registry. `registry` is the name users write; `endpoint` the host to connect to. */
export interface RegistryReference {
  kind: 'registry'
  /** `host[:port]` as written (docker.io for Docker Hub); the key for credentials. */
  registry: string
  /** `host[:port]` to talk HTTP to (registry-1.docker.io for Docker Hub). */
  endpoint: string
  /** Path of the repository, e.g. `library/busybox`. */
  repository: string
  tag?: string
  digest?: Digest
}

/** An image in an OCI image layout directory. */
export interface LayoutReference {
  kind: 'layout'
  dir: string
  tag?: string
  digest?: Digest
}

export type ImageReference = RegistryReference | LayoutReference

const TAG_RE = /^[\w][\w.-]{0,127}$/
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
const DOMAIN_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]{1,5})?$`)
const MAX_NAME_LENGTH = 255

function invalid (s: string, why: string, cause?: unknown): NaiadError {
  return new NaiadError('NAIAD_REF_INVALID', `invalid image reference ${JSON.stringify(s.slice(0, 300))}: ${why}`, {
    ...(cause !== undefined ? { cause } : {}),
    details: { reference: s.slice(0, 300) }
  })
}

/** True if `s` is a valid tag. */
export function isValidTag (s: string): boolean {
  return TAG_RE.test(s)
}

/** The HTTP endpoint of a registry name: docker.io → registry-1.docker.io, others unchanged. */
export function registryEndpoint (registry: string): string {
  return registry === DOCKER_HUB || registry === 'index.docker.io' ? DOCKER_HUB_ENDPOINT : registry
}

function splitDigest (s: string, body: string): { rest: string, digest?: Digest } {
  const at = body.indexOf('@')
  if (at === -1) return { rest: body }
  const d = body.slice(at + 1)
  try {
    return { rest: body.slice(0, at), digest: parseDigest(d) }
  } catch (err) {
    throw invalid(s, `bad digest ${JSON.stringify(d.slice(0, 100))}`, err)
  }
}

function parseLayout (s: string): LayoutReference {
  const { rest, digest } = splitDigest(s, s.slice(4))
  let dir = rest
  let tag: string | undefined
  // The tag is what follows the last ':' when that part has no '/'; so a directory whose name
  // contains ':' needs a trailing tag, as in skopeo's oci: transport.
  const colon = rest.lastIndexOf(':')
  if (colon !== -1 && !rest.slice(colon + 1).includes('/')) {
    dir = rest.slice(0, colon)
    tag = rest.slice(colon + 1)
    if (!isValidTag(tag)) throw invalid(s, `bad tag ${JSON.stringify(tag.slice(0, 130))}`)
  }
  if (dir === '') throw invalid(s, 'the layout directory is empty')
  const out: LayoutReference = { kind: 'layout', dir }
  if (tag !== undefined) out.tag = tag
  if (digest !== undefined) out.digest = digest
  return out
}

/**
 * Parses an image reference. Throws NAIAD_REF_INVALID (saying why) for anything `docker pull`
 * would reject, for URLs (`https://…`), and for digests other than sha256/sha512.
 *
 * @example
 *   parseReference('busybox')             // docker.io, library/busybox, tag latest
 *   parseReference('localhost:5000/a/b@sha256:…')
 *   parseReference('oci:./img:v1')         // { kind: 'layout', dir: './img', tag: 'v1' }
 */
export function parseReference (s: string): ImageReference {
  if (s.startsWith('oci:')) return parseLayout(s)
  if (s === '') throw invalid(s, 'empty')
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) throw invalid(s, 'a reference has no URL scheme; write host[:port]/repository[:tag]')
  if (/\s/.test(s)) throw invalid(s, 'contains whitespace')
  const { rest, digest } = splitDigest(s, s)
  let name = rest
  let tag: string | undefined
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) {
    // A ':' after the last '/' starts the tag; a ':' inside the first component with no '/' after
    // it is a port only when there is a path (`host:5000/x`), which the lastIndexOf check handles.
    name = rest.slice(0, colon)
    tag = rest.slice(colon + 1)
    if (!isValidTag(tag)) throw invalid(s, `bad tag ${JSON.stringify(tag.slice(0, 130))}`)
  }
  if (name === '') throw invalid(s, 'no repository name')

  let registry = DOCKER_HUB
  let path = name
  const slash = name.indexOf('/')
  if (slash !== -1) {
    const first = name.slice(0, slash)
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      registry = first
      path = name.slice(slash + 1)
    }
  }
  if (!DOMAIN_RE.test(registry)) throw invalid(s, `bad registry host ${JSON.stringify(registry)}`)
  const port = /:([0-9]+)$/.exec(registry)?.[1]
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) throw invalid(s, `bad port ${port}`)
  if (registry === 'index.docker.io') registry = DOCKER_HUB
  if (path === '') throw invalid(s, 'no repository name')
  if (path !== path.toLowerCase()) throw invalid(s, 'repository names must be lowercase')
  const components = path.split('/')
  for (const c of components) {
    if (!PATH_COMPONENT_RE.test(c)) {
      throw invalid(s, c === '' ? 'empty path component (leading, trailing or double /)' : `bad repository path component ${JSON.stringify(c.slice(0, 100))}`)
    }
  }
  if (registry === DOCKER_HUB && components.length === 1) path = `library/${path}`
  if (`${registry}/${path}`.length > MAX_NAME_LENGTH) throw invalid(s, `the name is longer than ${MAX_NAME_LENGTH} characters`)

  const out: RegistryReference = { kind: 'registry', registry, endpoint: registryEndpoint(registry), repository: path }
  if (tag !== undefined) out.tag = tag
  if (digest !== undefined) out.digest = digest
  if (tag === undefined && digest === undefined) out.tag = DEFAULT_TAG
  return out
}

/** Parses and requires a registry reference (a layout reference is NAIAD_REF_INVALID). */
export function parseRegistryReference (s: string): RegistryReference {
  const r = parseReference(s)
  if (r.kind !== 'registry') throw invalid(s, 'expected a registry reference, not an oci: layout')
  return r
}

/**
 * The fully qualified string form: `docker.io/library/busybox:latest`,
 * `host:5000/repo@sha256:…`, `oci:dir:tag`. parseReference(formatReference(r)) equals r (for
 * layout directories without ':' in their name).
 */
export function formatReference (r: ImageReference): string {
  const suffix = `${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`
  if (r.kind === 'layout') return `oci:${r.dir}${suffix}`
  return `${r.registry}/${r.repository}${suffix}`
}
