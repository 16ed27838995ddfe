// Regenerates the code table in docs/errors.md from lib/errors/codes.ts (run after `npm run build`).
import { readFileSync, writeFileSync } from 'node:fs'
import { CODES } from '../dist/lib/errors/codes.js'
import { EXIT_CODE } from '../dist/lib/errors/kinds.js'

const doc = 'docs/errors.md'
const text = readFileSync(doc, 'utf8')
const begin = '<!-- codes:begin -->'
const end = '<!-- codes:end -->'
const rows = Object.entries(CODES).map(([code, s]) => `| \`${code}\` | ${s.kind} | ${EXIT_CODE[s.kind]} | ${s.summary} | ${s.hint} |`)
const table = ['| code | kind | exit | what happened | what to do |', '|---|---|---|---|---|', ...rows].join('\n')
const out = text.slice(0, text.indexOf(begin) + begin.length) + '\n' + table + '\n' + text.slice(text.indexOf(end))
writeFileSync(doc, out)
