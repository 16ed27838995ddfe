import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { createLogger, redactText } from '../../../lib/log/index.ts'

function capture (): { stream: Writable, text: () => string } {
  const chunks: string[] = []
  const stream = new Writable({ write (c, _e, cb) { chunks.push(String(c)); cb() } })
  return { stream, text: () => chunks.join('') }
}

describe('logging', () => {
  it('redacts credentials by path and in free text', async () => {
    const cap = capture()
    const log = createLogger({ service: 'test', destination: cap.stream, level: 'debug' })
    log.info({ headers: { authorization: 'Bearer abc.def.ghi' }, auth: 'dXNlcjpwYXNz', password: 'hunter2' }, 'request to https://user:hunter2@registry.example/v2/?token=sekrit')
    log.error({ err: new Error('GET failed with Authorization: Basic dXNlcjpwYXNz') }, 'failed')
    await new Promise(resolve => setTimeout(resolve, 20))
    const out = cap.text()
    expect(out).not.toContain('abc.def.ghi')
    expect(out).not.toContain('hunter2')
    expect(out).not.toContain('dXNlcjpwYXNz')
    expect(out).not.toContain('sekrit')
    expect(out).toContain('[REDACTED]')
    expect(out).toContain('"service":"test"')
  })

  it('redactText leaves ordinary text alone', () => {
    expect(redactText('pulling sha256:abc from registry:5000')).toBe('pulling sha256:abc from registry:5000')
    expect(redactText('Authorization: Bearer xyz')).toBe('Authorization: Bearer [REDACTED]')
  })
})
