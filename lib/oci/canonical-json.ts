/**
 * Deterministic JSON for documents naiad writes (manifests, indexes, configs): object keys sorted
 * by UTF-16 code unit order at every level, no insignificant whitespace, UTF-8. The same value
 * always gives the same bytes, so the same conversion always gives the same digests.
 */
import { NaiadError } from '../errors/index.ts'

function write (v: unknown, path: string, out: string[]): void {
  if (v === null) { out.push('null'); return }
  switch (typeof v) {
    case 'string': out.push(JSON.stringify(v)); return
    case 'boolean': out.push(v ? 'true' : 'false'); return
    case 'number':
      if (!Number.isFinite(v)) throw new NaiadError('NAIAD_INTERNAL', `canonical JSON: ${path} is ${v}, which JSON cannot represent`)
      out.push(JSON.stringify(v))
      return
    case 'object': {
      if (Array.isArray(v)) {
        out.push('[')
        v.forEach((x, i) => {
          if (i > 0) out.push(',')
          // JSON.stringify writes undefined array members as null; do the same.
          write(x === undefined ? null : x, `${path}[${i}]`, out)
        })
        out.push(']')
        return
      }
      if (typeof (v as { toJSON?: unknown }).toJSON === 'function') {
        write((v as { toJSON: () => unknown }).toJSON(), path, out)
        return
      }
      const keys = Object.keys(v).filter(k => (v as Record<string, unknown>)[k] !== undefined).sort()
      out.push('{')
      keys.forEach((k, i) => {
        if (i > 0) out.push(',')
        out.push(JSON.stringify(k), ':')
        write((v as Record<string, unknown>)[k], `${path}.${k}`, out)
      })
      out.push('}')
      return
    }
    default:
      throw new NaiadError('NAIAD_INTERNAL', `canonical JSON: ${path} is a ${typeof v}, which JSON cannot represent`)
  }
}

/** The canonical JSON text of `value` (properties that are `undefined` are left out). */
export function canonicalJsonString (value: unknown): string {
  const out: string[] = []
  write(value, '$', out)
  return out.join('')
}

/** The canonical JSON bytes of `value`, ready to hash and push. */
export function canonicalJson (value: unknown): Buffer {
  return Buffer.from(canonicalJsonString(value), 'utf8')
}
