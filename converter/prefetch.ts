/**
 * Prefetch patterns, one per line, as `nydusify --prefetch-patterns` takes them: an absolute path
 * names a file or a whole directory tree (`/usr/lib/python3`); `*` matches within one path
 * component and `**` across components (`/usr/lib/**\/*.so`); `#` starts a comment. The files
 * matched are listed in the bootstrap's prefetch table in pattern order, so a runtime fetches them
 * first.
 */
import { NaiadError } from '../lib/errors/index.ts'

export function parsePatternFile (text: string): string[] {
  return text.split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
}

function globToRegExp (glob: string): RegExp {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === '*') {
      if (glob[i + 1] === '*') {
        i++
        if (glob[i + 1] === '/') { re += '(?:.*/)?'; i++ } else re += '.*'
      } else re += '[^/]*'
    } else if (c === '?') re += '[^/]'
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&')
  }
  return new RegExp(`^${re}(/.*)?$`)
}

/** Returns a predicate over absolute paths ("/a/b"). */
export function compilePatterns (patterns: string[]): (path: string) => boolean {
  const res = patterns.map(p => {
    if (!p.startsWith('/')) throw new NaiadError('NAIAD_CLI_USAGE', `prefetch pattern ${JSON.stringify(p)} must be an absolute path`)
    const clean = p.length > 1 ? p.replace(/\/+$/, '') : p
    return clean === '/' ? /^\// : globToRegExp(clean)
  })
  return (path) => res.some(r => r.test(path))
}
