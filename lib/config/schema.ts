/**
 * A small typed schema for TOML configuration: strict objects (unknown keys rejected), defaults
 * filled from the schema, every problem reported at once with its TOML path, and a description per
 * field from which the configuration reference is generated.
 */

export interface FieldDoc {
  path: string
  type: string
  default?: string
  description: string
}

export interface Schema<T> {
  readonly typeName: string
  readonly description: string
  readonly defaultValue: T | undefined
  /** Returns the parsed value; pushes `path: problem` strings into errors. */
  parse (value: unknown, path: string, errors: string[]): T
  docs (path: string, out: FieldDoc[]): void
}

interface Common<T> { description?: string, default?: T }

function scalar<T> (typeName: string, opts: Common<T>, check: (v: unknown, path: string, errors: string[]) => T | undefined): Schema<T> {
  return {
    typeName,
    description: opts.description ?? '',
    defaultValue: opts.default,
    parse (value, path, errors) {
      if (value === undefined) {
        if (opts.default !== undefined) return opts.default
        errors.push(`${path}: required`)
        return undefined as T
      }
      const r = check(value, path, errors)
      return r as T
    },
    docs (path, out) {
      out.push({ path, type: typeName, ...(opts.default !== undefined ? { default: JSON.stringify(opts.default) } : {}), description: opts.description ?? '' })
    }
  }
}

export function string (opts: Common<string> & { pattern?: RegExp, oneOf?: readonly string[] } = {}): Schema<string> {
  const t = opts.oneOf !== undefined ? opts.oneOf.map(x => JSON.stringify(x)).join(' | ') : 'string'
  return scalar(t, opts, (v, path, errors) => {
    if (typeof v !== 'string') { errors.push(`${path}: expected ${t}, got ${typeof v}`); return undefined }
    if (opts.oneOf !== undefined && !opts.oneOf.includes(v)) { errors.push(`${path}: expected one of ${t}, got ${JSON.stringify(v)}`); return undefined }
    if (opts.pattern !== undefined && !opts.pattern.test(v)) { errors.push(`${path}: ${JSON.stringify(v)} does not match ${String(opts.pattern)}`); return undefined }
    return v
  })
}

export function oneOf<const L extends string> (values: readonly L[], opts: Common<L> = {}): Schema<L> {
  return string({ ...opts, oneOf: values }) as Schema<L>
}

export function boolean (opts: Common<boolean> = {}): Schema<boolean> {
  return scalar('boolean', opts, (v, path, errors) => {
    if (typeof v !== 'boolean') { errors.push(`${path}: expected boolean, got ${typeof v}`); return undefined }
    return v
  })
}

export function integer (opts: Common<number> & { min?: number, max?: number } = {}): Schema<number> {
  return scalar('integer', opts, (v, path, errors) => {
    const n = typeof v === 'bigint' ? Number(v) : v
    if (typeof n !== 'number' || !Number.isSafeInteger(n)) { errors.push(`${path}: expected integer, got ${typeof v}`); return undefined }
    if (opts.min !== undefined && n < opts.min) { errors.push(`${path}: must be >= ${opts.min}, got ${n}`); return undefined }
    if (opts.max !== undefined && n > opts.max) { errors.push(`${path}: must be <= ${opts.max}, got ${n}`); return undefined }
    return n
  })
}

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, K: 1e3, KB: 1e3, M: 1e6, MB: 1e6, G: 1e9, GB: 1e9, T: 1e12, TB: 1e12, KIB: 1024, MIB: 1024 ** 2, GIB: 1024 ** 3, TIB: 1024 ** 4 }

/** Parses "512MiB", "4 KiB", "10GB" or a bare number of bytes. */
export function parseSize (s: string | number): number | undefined {
  if (typeof s === 'number') return Number.isSafeInteger(s) && s >= 0 ? s : undefined
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(s)
  if (m === null) return undefined
  const unit = SIZE_UNITS[(m[2] ?? '').toUpperCase()]
  if (unit === undefined) return undefined
  const n = Math.round(Number(m[1]) * unit)
  return Number.isSafeInteger(n) ? n : undefined
}

/** A size written as a string with a unit ("512MiB"); parsed to bytes. */
export function size (opts: Common<string> & { min?: number, max?: number, powerOfTwo?: boolean } = {}): Schema<number> {
  const def = opts.default !== undefined ? parseSize(opts.default) : undefined
  return scalar<number>('size ("512MiB")', { ...(opts.description !== undefined ? { description: opts.description } : {}), ...(def !== undefined ? { default: def } : {}) }, (v, path, errors) => {
    if (typeof v !== 'string' && typeof v !== 'number') { errors.push(`${path}: expected a size like "512MiB"`); return undefined }
    const n = parseSize(v)
    if (n === undefined) { errors.push(`${path}: ${JSON.stringify(v)} is not a size like "512MiB"`); return undefined }
    if (opts.min !== undefined && n < opts.min) { errors.push(`${path}: must be at least ${opts.min} bytes`); return undefined }
    if (opts.max !== undefined && n > opts.max) { errors.push(`${path}: must be at most ${opts.max} bytes`); return undefined }
    if (opts.powerOfTwo === true && (n & (n - 1)) !== 0) { errors.push(`${path}: must be a power of two`); return undefined }
    return n
  })
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** Parses "30s", "500ms", "1h30m". */
export function parseDuration (s: string): number | undefined {
  if (!/^(\d+(ms|s|m|h))+$/.test(s.trim())) return undefined
  let total = 0
  for (const m of s.trim().matchAll(/(\d+)(ms|s|m|h)/g)) total += Number(m[1]) * (DURATION_UNITS[m[2] ?? ''] ?? 0)
  return total
}

/** A duration written as a string with a unit ("30s"); parsed to milliseconds. */
export function duration (opts: Common<string> & { min?: number } = {}): Schema<number> {
  const def = opts.default !== undefined ? parseDuration(opts.default) : undefined
  return scalar<number>('duration ("30s")', { ...(opts.description !== undefined ? { description: opts.description } : {}), ...(def !== undefined ? { default: def } : {}) }, (v, path, errors) => {
    const n = typeof v === 'string' ? parseDuration(v) : undefined
    if (n === undefined) { errors.push(`${path}: ${JSON.stringify(v)} is not a duration like "30s"`); return undefined }
    if (opts.min !== undefined && n < opts.min) { errors.push(`${path}: must be at least ${opts.min} ms`); return undefined }
    return n
  })
}

export function array<T> (item: Schema<T>, opts: Common<T[]> = {}): Schema<T[]> {
  return {
    typeName: `array of ${item.typeName}`,
    description: opts.description ?? '',
    defaultValue: opts.default,
    parse (value, path, errors) {
      if (value === undefined) {
        if (opts.default !== undefined) return opts.default
        errors.push(`${path}: required`)
        return []
      }
      if (!Array.isArray(value)) { errors.push(`${path}: expected an array`); return [] }
      return value.map((v, i) => item.parse(v, `${path}[${i}]`, errors))
    },
    docs (path, out) {
      out.push({ path, type: `array of ${item.typeName}`, ...(opts.default !== undefined ? { default: JSON.stringify(opts.default) } : {}), description: opts.description ?? '' })
      if (item.typeName === 'table') item.docs(`${path}[]`, out)
    }
  }
}

export function optional<T> (inner: Schema<T>): Schema<T | undefined> {
  return {
    typeName: inner.typeName,
    description: inner.description,
    defaultValue: undefined,
    parse (value, path, errors) {
      return value === undefined ? undefined : inner.parse(value, path, errors)
    },
    docs (path, out) {
      const before = out.length
      inner.docs(path, out)
      const first = out[before]
      if (first !== undefined) first.type += ' (optional)'
    }
  }
}

type Shape = Record<string, Schema<unknown>>
type Infer<S extends Shape> = { [K in keyof S]: S[K] extends Schema<infer T> ? T : never }

function isPlainObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date)
}

/** A TOML table. Unknown keys are errors. A missing table is parsed as an empty one. */
export function object<S extends Shape> (shape: S, opts: { description?: string } = {}): Schema<Infer<S>> {
  return {
    typeName: 'table',
    description: opts.description ?? '',
    defaultValue: undefined,
    parse (value, path, errors) {
      const v = value === undefined ? {} : value
      if (!isPlainObject(v)) { errors.push(`${path === '' ? '(root)' : path}: expected a table`); return {} as Infer<S> }
      const out: Record<string, unknown> = {}
      for (const key of Object.keys(v)) {
        if (!Object.hasOwn(shape, key)) errors.push(`${path === '' ? '' : path + '.'}${key}: unknown key`)
      }
      for (const [key, sch] of Object.entries(shape)) {
        out[key] = sch.parse(v[key], path === '' ? key : `${path}.${key}`, errors)
      }
      return out as Infer<S>
    },
    docs (path, out) {
      if (path !== '' && opts.description !== undefined) out.push({ path: `[${path}]`, type: 'table', description: opts.description })
      for (const [key, sch] of Object.entries(shape)) sch.docs(path === '' ? key : `${path}.${key}`, out)
    }
  }
}

export type InferSchema<S> = S extends Schema<infer T> ? T : never

export function deepFreeze<T> (v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v)
    for (const x of Object.values(v)) deepFreeze(x)
  }
  return v
}
