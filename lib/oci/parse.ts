/**
 * Validating parsers for manifests, indexes and image configs. Every malformed field is reported
 * as NAIAD_OCI_BAD_MANIFEST with its JSON path (`layers[2].digest: …`); media types naiad does not
 * read (Docker schema 1, unknown documents) are NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE. The returned
 * objects are the parsed JSON itself (unknown fields kept), with `mediaType` filled in when the
 * document left it out.
 */
import { parseDigest, type Digest } from '../digest/index.ts'
import { NaiadError } from '../errors/index.ts'
import { baseMediaType, isIndexMediaType, isManifestMediaType, isMediaTypeSyntax, MediaType } from './media-types.ts'
import type { Descriptor, ImageConfig, Index, Manifest, ManifestOrIndex, Platform } from './types.ts'

/** Upper bound for a manifest, index or config document (the distribution spec suggests 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024

type Json = Record<string, unknown>

function bad (path: string, msg: string, cause?: unknown): NaiadError {
  return new NaiadError('NAIAD_OCI_BAD_MANIFEST', `${path === '' ? '(document)' : path}: ${msg}`, {
    ...(cause !== undefined ? { cause } : {}),
    details: { field: path === '' ? '(document)' : path }
  })
}

function describe (v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v)}`
  return typeof v === 'object' ? 'an object' : `${typeof v} ${String(v)}`
}

function isObject (v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function join (path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`
}

function decodeJson (bytes: Uint8Array | string, what: string): Json {
  if (typeof bytes !== 'string' && bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw bad('', `${what} is ${bytes.byteLength} bytes, more than the ${MAX_MANIFEST_BYTES} allowed`)
  }
  let text: string
  try {
    text = typeof bytes === 'string' ? bytes : new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch (err) {
    throw bad('', `${what} is not valid UTF-8`, err)
  }
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch (err) {
    throw bad('', `${what} is not JSON: ${(err as Error).message}`, err)
  }
  if (!isObject(v)) throw bad('', `${what} must be a JSON object, got ${describe(v)}`)
  return v
}

function reqString (o: Json, key: string, path: string): string {
  const v = o[key]
  if (typeof v !== 'string') throw bad(join(path, key), `expected a string, got ${v === undefined ? 'nothing' : describe(v)}`)
  return v
}

function optString (o: Json, key: string, path: string): void {
  const v = o[key]
  if (v !== undefined && typeof v !== 'string') throw bad(join(path, key), `expected a string, got ${describe(v)}`)
}

function optStringArray (o: Json, key: string, path: string, nullable = false): void {
  const v = o[key]
  if (v === undefined || (nullable && v === null)) return
  if (!Array.isArray(v)) throw bad(join(path, key), `expected an array of strings, got ${describe(v)}`)
  v.forEach((s, i) => { if (typeof s !== 'string') throw bad(`${join(path, key)}[${i}]`, `expected a string, got ${describe(s)}`) })
}

function optStringMap (o: Json, key: string, path: string, nullable = false): void {
  const v = o[key]
  if (v === undefined || (nullable && v === null)) return
  if (!isObject(v)) throw bad(join(path, key), `expected an object of strings, got ${describe(v)}`)
  for (const [k, s] of Object.entries(v)) {
    if (typeof s !== 'string') throw bad(`${join(path, key)}[${JSON.stringify(k)}]`, `expected a string, got ${describe(s)}`)
  }
}

function optObject (o: Json, key: string, path: string, nullable = false): void {
  const v = o[key]
  if (v === undefined || (nullable && v === null)) return
  if (!isObject(v)) throw bad(join(path, key), `expected an object, got ${describe(v)}`)
}

function digestField (v: unknown, path: string): Digest {
  if (typeof v !== 'string') throw bad(path, `expected a digest string, got ${v === undefined ? 'nothing' : describe(v)}`)
  try {
    return parseDigest(v)
  } catch (err) {
    throw bad(path, (err as Error).message, err)
  }
}

function mediaTypeField (o: Json, key: string, path: string): string {
  const mt = reqString(o, key, path)
  if (!isMediaTypeSyntax(mt)) throw bad(join(path, key), `not a media type: ${JSON.stringify(mt.slice(0, 100))}`)
  return mt
}

function validatePlatform (v: unknown, path: string): Platform {
  if (!isObject(v)) throw bad(path, `expected an object, got ${describe(v)}`)
  reqString(v, 'os', path)
  reqString(v, 'architecture', path)
  optString(v, 'variant', path)
  optString(v, 'os.version', path)
  optStringArray(v, 'os.features', path)
  return v as unknown as Platform
}

/** Validates one descriptor object in place; `path` names it in errors. */
export function validateDescriptor (v: unknown, path: string): Descriptor {
  if (!isObject(v)) throw bad(path, `expected a descriptor object, got ${v === undefined ? 'nothing' : describe(v)}`)
  mediaTypeField(v, 'mediaType', path)
  v['digest'] = digestField(v['digest'], join(path, 'digest'))
  const size = v['size']
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw bad(join(path, 'size'), `expected a non-negative integer, got ${size === undefined ? 'nothing' : describe(size)}`)
  }
  optStringArray(v, 'urls', path)
  optStringMap(v, 'annotations', path)
  optString(v, 'artifactType', path)
  optString(v, 'data', path)
  if (v['platform'] !== undefined) validatePlatform(v['platform'], join(path, 'platform'))
  return v as unknown as Descriptor
}

function descriptorArray (o: Json, key: string, path: string): Descriptor[] {
  const v = o[key]
  if (!Array.isArray(v)) throw bad(join(path, key), `expected an array of descriptors, got ${v === undefined ? 'nothing' : describe(v)}`)
  return v.map((d, i) => validateDescriptor(d, `${join(path, key)}[${i}]`))
}

const GENERIC_CONTENT_TYPES = new Set(['', 'application/json', 'text/plain', 'application/octet-stream', 'binary/octet-stream'])

function unsupported (mt: string): NaiadError {
  const schema1 = mt === MediaType.DockerSchema1 || mt === MediaType.DockerSchema1Signed
  return new NaiadError('NAIAD_OCI_UNSUPPORTED_MEDIA_TYPE',
    schema1
      ? `Docker schema 1 manifests (${mt}) are not supported; re-push the image with a current client`
      : `manifest media type ${JSON.stringify(mt.slice(0, 200))} is not an OCI or Docker schema 2 manifest or index`,
    { details: { mediaType: mt } })
}

/**
 * Decides what a document is from its declared media type (Content-Type or descriptor), its own
 * `mediaType` field, and, when both are absent, its shape (`manifests` → index, `layers` →
 * manifest).
 */
function classify (doc: Json, declared: string | undefined): string {
  const decl = declared === undefined ? undefined : baseMediaType(declared)
  const declKnown = decl !== undefined && !GENERIC_CONTENT_TYPES.has(decl) ? decl : undefined
  const field = doc['mediaType']
  if (field !== undefined && typeof field !== 'string') throw bad('mediaType', `expected a string, got ${describe(field)}`)
  if (doc['schemaVersion'] === 1) throw unsupported(MediaType.DockerSchema1)
  for (const mt of [declKnown, field]) {
    if (mt !== undefined && !isManifestMediaType(mt) && !isIndexMediaType(mt)) throw unsupported(mt)
  }
  if (declKnown !== undefined && field !== undefined && declKnown !== field) {
    throw bad('mediaType', `the document says ${field} but it was served or described as ${declKnown}`)
  }
  const mt = declKnown ?? field
  if (mt !== undefined) return mt
  if (Array.isArray(doc['manifests'])) return MediaType.OciIndex
  if (doc['config'] !== undefined || Array.isArray(doc['layers'])) return MediaType.OciManifest
  throw bad('mediaType', 'missing, and the document has neither layers nor manifests')
}

function schemaVersion2 (doc: Json): void {
  if (doc['schemaVersion'] !== 2) throw bad('schemaVersion', `expected 2, got ${doc['schemaVersion'] === undefined ? 'nothing' : describe(doc['schemaVersion'])}`)
}

function finishManifest (doc: Json, mt: string): Manifest {
  schemaVersion2(doc)
  doc['mediaType'] = mt
  validateDescriptor(doc['config'], 'config')
  descriptorArray(doc, 'layers', '')
  if (doc['subject'] !== undefined) validateDescriptor(doc['subject'], 'subject')
  optStringMap(doc, 'annotations', '')
  optString(doc, 'artifactType', '')
  return doc as unknown as Manifest
}

function finishIndex (doc: Json, mt: string): Index {
  schemaVersion2(doc)
  doc['mediaType'] = mt
  descriptorArray(doc, 'manifests', '')
  if (doc['subject'] !== undefined) validateDescriptor(doc['subject'], 'subject')
  optStringMap(doc, 'annotations', '')
  optString(doc, 'artifactType', '')
  return doc as unknown as Index
}

/**
 * Parses a manifest or an index. `mediaType` is the Content-Type it was served with or the media
 * type of the descriptor that pointed at it (optional; generic types like application/json are
 * ignored).
 */
export function parseManifestOrIndex (bytes: Uint8Array | string, mediaType?: string): ManifestOrIndex {
  const doc = decodeJson(bytes, 'manifest')
  const mt = classify(doc, mediaType)
  if (isIndexMediaType(mt)) return { kind: 'index', index: finishIndex(doc, mt) }
  return { kind: 'manifest', manifest: finishManifest(doc, mt) }
}

/** Parses an image manifest; an index is NAIAD_OCI_BAD_MANIFEST ("expected a manifest"). */
export function parseManifest (bytes: Uint8Array | string, mediaType?: string): Manifest {
  const doc = decodeJson(bytes, 'manifest')
  const mt = classify(doc, mediaType)
  if (isIndexMediaType(mt)) throw bad('mediaType', `expected an image manifest, got an index (${mt})`)
  return finishManifest(doc, mt)
}

/** Parses an image index or Docker manifest list; a manifest is NAIAD_OCI_BAD_MANIFEST. */
export function parseIndex (bytes: Uint8Array | string, mediaType?: string): Index {
  const doc = decodeJson(bytes, 'index')
  const mt = classify(doc, mediaType)
  if (!isIndexMediaType(mt)) throw bad('mediaType', `expected an index, got an image manifest (${mt})`)
  return finishIndex(doc, mt)
}

function validateContainerConfig (v: unknown, path: string): void {
  if (v === undefined || v === null) return
  if (!isObject(v)) throw bad(path, `expected an object, got ${describe(v)}`)
  optString(v, 'User', path)
  optObject(v, 'ExposedPorts', path, true)
  optStringArray(v, 'Env', path, true)
  optStringArray(v, 'Entrypoint', path, true)
  optStringArray(v, 'Cmd', path, true)
  optObject(v, 'Volumes', path, true)
  optString(v, 'WorkingDir', path)
  optStringMap(v, 'Labels', path, true)
  optString(v, 'StopSignal', path)
}

/** Parses an image config (OCI or Docker). Requires architecture, os and rootfs.diff_ids. */
export function parseImageConfig (bytes: Uint8Array | string): ImageConfig {
  const doc = decodeJson(bytes, 'image config')
  reqString(doc, 'architecture', '')
  reqString(doc, 'os', '')
  optString(doc, 'variant', '')
  optString(doc, 'os.version', '')
  optStringArray(doc, 'os.features', '')
  optString(doc, 'created', '')
  optString(doc, 'author', '')
  validateContainerConfig(doc['config'], 'config')
  const rootfs = doc['rootfs']
  if (!isObject(rootfs)) throw bad('rootfs', `expected an object, got ${rootfs === undefined ? 'nothing' : describe(rootfs)}`)
  if (rootfs['type'] !== 'layers') throw bad('rootfs.type', `expected "layers", got ${rootfs['type'] === undefined ? 'nothing' : describe(rootfs['type'])}`)
  const diffIds = rootfs['diff_ids']
  if (!Array.isArray(diffIds)) throw bad('rootfs.diff_ids', `expected an array of digests, got ${diffIds === undefined ? 'nothing' : describe(diffIds)}`)
  diffIds.forEach((d, i) => { diffIds[i] = digestField(d, `rootfs.diff_ids[${i}]`) })
  const history = doc['history']
  if (history !== undefined && history !== null) {
    if (!Array.isArray(history)) throw bad('history', `expected an array, got ${describe(history)}`)
    history.forEach((h, i) => {
      const p = `history[${i}]`
      if (!isObject(h)) throw bad(p, `expected an object, got ${describe(h)}`)
      for (const k of ['created', 'created_by', 'author', 'comment']) optString(h, k, p)
      if (h['empty_layer'] !== undefined && typeof h['empty_layer'] !== 'boolean') throw bad(`${p}.empty_layer`, `expected a boolean, got ${describe(h['empty_layer'])}`)
    })
  }
  return doc as unknown as ImageConfig
}
