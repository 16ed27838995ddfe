import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { CODES, NaiadError, isNaiadError, toExitCode, toGrpcStatus, kindOf, causeChain, hasCode } from '../../../lib/errors/index.ts'

describe('error codes', () => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8')
  const documented = new Set([...doc.matchAll(/`(NAIAD_[A-Z0-9_]+)`/g)].map(m => m[1]))

  it('every code is documented in docs/errors.md', () => {
    const missing = Object.keys(CODES).filter(c => !documented.has(c))
    expect(missing).toEqual([])
  })

  it('docs/errors.md documents no code that does not exist', () => {
    const extra = [...documented].filter(c => !(c! in CODES))
    expect(extra).toEqual([])
  })

  it('codes follow NAIAD_<AREA>_<WHAT> and have a summary and hint', () => {
    for (const [code, spec] of Object.entries(CODES)) {
      expect(code).toMatch(/^NAIAD_[A-Z0-9]+(_[A-Z0-9]+)*$/)
      expect(spec.summary.length).toBeGreaterThan(10)
      expect(spec.hint.length).toBeGreaterThan(5)
    }
  })
})

describe('NaiadError', () => {
  it('carries code, kind, hint and cause; maps to exit and gRPC codes', () => {
    const cause = new Error('inner')
    const e = new NaiadError('NAIAD_REG_NOT_FOUND', 'no such blob', { cause })
    expect(isNaiadError(e)).toBe(true)
    expect(hasCode(e, 'NAIAD_REG_NOT_FOUND')).toBe(true)
    expect(e.kind).toBe('NotFound')
    expect(e.hint).toBe(CODES.NAIAD_REG_NOT_FOUND.hint)
    expect(e.cause).toBe(cause)
    expect(toExitCode(e)).toBe(3)
    expect(toGrpcStatus(e)).toBe(5)
    expect(causeChain(e)).toEqual(['NaiadError NAIAD_REG_NOT_FOUND: no such blob', 'Error: inner'])
    expect(JSON.parse(JSON.stringify(e))).toMatchObject({ code: 'NAIAD_REG_NOT_FOUND', kind: 'NotFound' })
  })

  it('classifies platform aborts and unknown errors', () => {
    expect(kindOf(new DOMException('x', 'AbortError'))).toBe('Aborted')
    expect(kindOf(new DOMException('x', 'TimeoutError'))).toBe('DeadlineExceeded')
    expect(kindOf(new Error('x'))).toBe('Unknown')
    expect(isNaiadError(new Error('x'))).toBe(false)
  })
})
