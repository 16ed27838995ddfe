/**
 * OCI image spec v1.1 objects (and their Docker schema 2 twins, which share the shape). The
 * parsers in parse.ts return these types; they keep every unknown field of the JSON document, so a
 * converter can rewrite a config or manifest without dropping fields it does not know.
 */
import type { Digest } from '../digest/index.ts'

/** `os/architecture[/variant]` plus the rarely used OS version and features. */
export interface Platform {
  os: string
  architecture: string
  variant?: string
  'os.version'?: string
  'os.features'?: string[]
}

/** A content descriptor: what a manifest, index or layout says about a blob. */
export interface Descriptor {
  mediaType: string
  digest: Digest
  size: number
  urls?: string[]
  annotations?: Record<string, string>
  /** Only meaningful on index entries. */
  platform?: Platform
  artifactType?: string
  /** Embedded content, base64. */
  data?: string
}

/** An image manifest (OCI or Docker schema 2). `mediaType` is always set after parsing. */
export interface Manifest {
  schemaVersion: 2
  mediaType: string
  artifactType?: string
  config: Descriptor
  layers: Descriptor[]
  subject?: Descriptor
  annotations?: Record<string, string>
  [extra: string]: unknown
}

/** An image index (OCI) or manifest list (Docker). `mediaType` is always set after parsing. */
export interface Index {
  schemaVersion: 2
  mediaType: string
  artifactType?: string
  manifests: Descriptor[]
  subject?: Descriptor
  annotations?: Record<string, string>
  [extra: string]: unknown
}

export interface HistoryEntry {
  created?: string
  created_by?: string
  author?: string
  comment?: string
  empty_layer?: boolean
  [extra: string]: unknown
}

/** The runtime part of an image config (`config` key); everything is optional. */
export interface ContainerConfig {
  User?: string
  ExposedPorts?: Record<string, unknown>
  Env?: string[] | null
  Entrypoint?: string[] | null
  Cmd?: string[] | null
  Volumes?: Record<string, unknown> | null
  WorkingDir?: string
  Labels?: Record<string, string> | null
  StopSignal?: string
  [extra: string]: unknown
}

/** An image configuration (OCI `application/vnd.oci.image.config.v1+json` or Docker's). */
export interface ImageConfig {
  architecture: string
  os: string
  variant?: string
  'os.version'?: string
  'os.features'?: string[]
  created?: string
  author?: string
  config?: ContainerConfig
  rootfs: { type: 'layers', diff_ids: Digest[] }
  history?: HistoryEntry[]
  [extra: string]: unknown
}

/** A manifest or an index, told apart by `kind`. */
export type ManifestOrIndex =
  | { kind: 'manifest', manifest: Manifest }
  | { kind: 'index', index: Index }
