/**
 * Configuration loading: TOML (smol-toml) → schema (unknown keys rejected, defaults filled, every
 * problem reported at once with its path) → deep freeze. Only composition roots (main.ts) call
 * `loadConfigFile`; components receive their typed slice.
 */
import { readFile } from 'node:fs/promises'
import { parse as parseToml, TomlError } from 'smol-toml'
import { NaiadError } from '../errors/index.ts'
import { deepFreeze, type FieldDoc, type Schema } from './schema.ts'

export * as s from './schema.ts'
export { parseSize, parseDuration, type Schema, type FieldDoc, type InferSchema } from './schema.ts'

/** Parses TOML text against a schema. */
export function parseConfig<T> (schema: Schema<T>, text: string, source = 'config'): T {
  let raw: unknown
  try {
    raw = parseToml(text)
  } catch (err) {
    const where = err instanceof TomlError ? ` at line ${err.line}, column ${err.column}` : ''
    throw new NaiadError('NAIAD_CFG_PARSE', `${source}: invalid TOML${where}: ${(err as Error).message.split('\n')[0] ?? ''}`, { cause: err })
  }
  return validateConfig(schema, raw, source)
}

/** Validates an already-parsed object (e.g. from TOML or built in code) against a schema. */
export function validateConfig<T> (schema: Schema<T>, raw: unknown, source = 'config'): T {
  const errors: string[] = []
  const value = schema.parse(raw, '', errors)
  if (errors.length > 0) {
    throw new NaiadError('NAIAD_CFG_INVALID', `${source}: ${errors.length} problem${errors.length === 1 ? '' : 's'}:\n  ${errors.join('\n  ')}`, { details: { errors } })
  }
  return deepFreeze(value)
}

/**
 * Loads a config file. A missing file is fatal when `explicit` (the user named it with --config);
 * otherwise the schema's defaults are used.
 */
export async function loadConfigFile<T> (schema: Schema<T>, path: string, explicit: boolean): Promise<T> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if (explicit) throw new NaiadError('NAIAD_CFG_NOT_FOUND', `config file ${path} does not exist`, { cause: err })
      return validateConfig(schema, {}, path)
    }
    throw new NaiadError('NAIAD_IO', `cannot read config file ${path}`, { cause: err })
  }
  return parseConfig(schema, text, path)
}

/** The configuration reference as a Markdown table, generated from the schema. */
export function configReference (schema: Schema<unknown>): string {
  const rows: FieldDoc[] = []
  schema.docs('', rows)
  const esc = (x: string): string => x.replace(/\|/g, '\\|')
  return ['| key | type | default | description |', '|---|---|---|---|', ...rows.map(r => `| \`${esc(r.path)}\` | ${esc(r.type)} | ${r.default !== undefined ? '`' + esc(r.default) + '`' : ''} | ${esc(r.description)} |`)].join('\n') + '\n'
}
