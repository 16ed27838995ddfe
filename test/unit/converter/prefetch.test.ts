import { describe, expect, it } from 'vitest'
import { compilePatterns, parsePatternFile } from '../../../converter/prefetch.ts'

describe('prefetch patterns', () => {
  it('matches files, directory trees and globs', () => {
    const m = compilePatterns(parsePatternFile('# hot files\n/bin/sh\n/usr/lib/python3\n/etc/*.conf\n/opt/**/x.so\n'))
    expect(m('/bin/sh')).toBe(true)
    expect(m('/bin/sha256sum')).toBe(false)
    expect(m('/usr/lib/python3/os.py')).toBe(true)
    expect(m('/usr/lib/python3.11/os.py')).toBe(false)
    expect(m('/etc/a.conf')).toBe(true)
    expect(m('/etc/sub/a.conf')).toBe(false)
    expect(m('/opt/x.so')).toBe(true)
    expect(m('/opt/ax.so')).toBe(false)
    expect(m('/opt/a/b/x.so')).toBe(true)
    expect(compilePatterns(['/'])('/anything')).toBe(true)
  })

  it('rejects relative patterns', () => {
    expect(() => compilePatterns(['bin/sh'])).toThrow(expect.objectContaining({ code: 'NAIAD_CLI_USAGE' }))
  })
})
