// Reads vitest's JSON report and prints the plain closing line CI counts: "N passed, N failed".
// A lint failure counts as one failed test. Exit code 1 when anything failed or nothing ran.
import { readFileSync, existsSync } from 'node:fs'

const [file, lintFailed] = process.argv.slice(2)
let passed = 0
let failed = Number(lintFailed ?? 0) > 0 ? 1 : 0
let skipped = 0
if (existsSync(file)) {
  const r = JSON.parse(readFileSync(file, 'utf8'))
  for (const suite of r.testResults ?? []) {
    if ((suite.assertionResults ?? []).length === 0 && suite.status === 'failed') failed++ // a file that failed to load
    for (const t of suite.assertionResults ?? []) {
      if (t.status === 'passed') passed++
      else if (t.status === 'failed') failed++
      else skipped++
    }
  }
} else {
  failed++
}
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`)
process.exit(failed > 0 || passed === 0 ? 1 : 0)
