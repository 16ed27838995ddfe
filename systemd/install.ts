/**
 * `naiad install` and `naiad uninstall`: put the built suite, the systemd units, the example
 * configurations and the containerd snippet on a node, idempotently, and take exactly that away.
 *
 * What goes where (paths inside `--root`, default /; `--prefix` default /usr/local):
 *
 *   <prefix>/lib/naiad/            a self-contained copy of the suite: package.json,
 *                                  package-lock.json, dist/{bin,lib,converter,fsdaemon,snapshotter,
 *                                  p2p,systemd}/*.js, lib/proto/**.proto, lib/fsdapi/fsd-launcher.pl,
 *                                  fsdaemon/fuse/native/build/Release/naiad_fuse.node (if built), docs/**.md, systemd/ (units,
 *                                  examples, snippet: so the installed copy can reinstall itself)
 *                                  and node_modules/ with the production dependencies only (the
 *                                  packages package-lock.json does not mark "dev", as built here:
 *                                  native modules are copied, not rebuilt, so the node must match
 *                                  this machine's architecture and Node ABI).
 *   <prefix>/bin/naiad             a /bin/sh wrapper: exec <this node binary> <prefix>/lib/naiad/dist/bin/naiad.js
 *   /etc/systemd/system/naiad-{snapshotter,peer,scheduler}.service   (ExecStart = the wrapper)
 *   /etc/naiad/{fsd,peer,scheduler,snapshotter}.toml   examples; an operator's edits are never
 *                                  overwritten: when the file differs from the new example and
 *                                  from what an earlier install wrote, the new example is written
 *                                  beside it as <name>.toml.new and the report says so (a file
 *                                  still as installed is updated, as dpkg does with conffiles)
 *   /etc/naiad/containerd-snippet.toml   what to merge into /etc/containerd/config.toml
 *   <prefix>/lib/naiad/install-manifest.json   every file written (with its sha256) and every
 *                                  directory created: what uninstall removes, and what a later
 *                                  install (an upgrade) compares against.
 *
 * We copy rather than point a wrapper at the checkout: the services must not change when someone
 * edits, rebuilds or deletes the checkout; an upgrade is `git pull && npm ci && npm run build &&
 * naiad install`, which replaces changed files, removes files the new version no longer has, and
 * leaves configurations alone.
 *
 * Idempotent: a file whose bytes and mode already match is not touched; a second run reports
 * "nothing to do". `systemctl daemon-reload` runs only when a unit changed, the root is / and
 * systemd is PID 1. containerd's own config is edited only with `configureContainerd` (merge with
 * smol-toml, previous file kept as config.toml.naiad-backup).
 */
import { createHash } from 'node:crypto'
import { execFile } from 'node:child_process'
import { chmod, lstat, mkdir, readdir, readFile, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, posix, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml'
import { isNaiadError, NaiadError } from '../lib/errors/index.ts'

export const UNITS = ['naiad-snapshotter.service', 'naiad-fsd.service', 'naiad-peer.service', 'naiad-scheduler.service'] as const
export const CONFIGS = ['fsd.toml', 'peer.toml', 'scheduler.toml', 'snapshotter.toml'] as const
export const SNIPPET = 'containerd-snippet.toml'
/** The ExecStart binary written in the units of the repository; replaced by <prefix>/bin/naiad. */
export const UNIT_BINARY = '/usr/local/bin/naiad'
/** The suite's directory written in the units (Documentation=); replaced by <prefix>/lib/naiad. */
export const UNIT_HOME = '/usr/local/lib/naiad'
const DIST_DIRS = ['bin', 'lib', 'converter', 'fsdaemon', 'snapshotter', 'p2p', 'systemd']
const MANIFEST = 'install-manifest.json'
const NATIVE_ADDON = 'fsdaemon/fuse/native/build/Release/naiad_fuse.node'

export type FileKind = 'program' | 'wrapper' | 'unit' | 'config' | 'config-new' | 'snippet'

export interface InstallOptions {
  /** Directory everything is installed under (a node image, a test): default '/'. */
  root?: string
  /** Absolute program prefix on the target: default '/usr/local'. */
  prefix?: string
  /** Report what would change, change nothing. */
  dryRun?: boolean
  /** Replace files at our paths that a previous `naiad install` did not write. */
  force?: boolean
  /** Merge the snippet into <root>/etc/containerd/config.toml (backup kept). */
  configureContainerd?: boolean
  /** The suite to install (default: the one this code runs from). */
  source?: string
  /** Node binary the wrapper runs (default: this process's). */
  node?: string
  /** Run `systemctl daemon-reload` when units changed (default: only if root is / and PID 1 is systemd). */
  reload?: boolean
}

export interface UninstallOptions {
  root?: string
  prefix?: string
  dryRun?: boolean
  /** Remove the configurations in /etc/naiad too (even edited ones). */
  purge?: boolean
  reload?: boolean
}

export interface Change { action: 'create' | 'update' | 'remove' | 'keep' | 'unchanged', path: string, kind: FileKind | 'dir' | 'containerd', note?: string }

export interface Report {
  changes: Change[]
  /** Human-readable lines (what the CLI prints). */
  lines: string[]
  /** True when nothing was (or, with dryRun, would be) changed. */
  noop: boolean
  reloaded: boolean
}

interface ManifestFile { path: string, sha256: string, kind: FileKind, mode: number }
interface Manifest { version: string, prefix: string, node: string, files: ManifestFile[], dirs: string[], containerdBackup?: string }

interface Wanted { path: string, kind: FileKind, mode: number, data: () => Promise<Buffer> }

/** The package root this code runs from: the checkout (sources or dist/) or an installed copy. */
export function packageRoot (): string {
  for (const up of ['../', '../../']) {
    const p = fileURLToPath(new URL(up, import.meta.url))
    try {
      if ((JSON.parse(readFileSync(join(p, 'package.json'), 'utf8')) as { name?: string }).name === 'naiad') return p.replace(/\/$/, '')
    } catch { /* next */ }
  }
  throw new NaiadError('NAIAD_INSTALL_SOURCE', `cannot find naiad's package.json above ${fileURLToPath(import.meta.url)}`)
}

function sha256 (b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

function checkAbsolute (name: string, p: string): string {
  if (!posix.isAbsolute(p)) throw new NaiadError('NAIAD_CLI_USAGE', `${name} must be an absolute path: ${p}`)
  return posix.normalize(p).replace(/(.)\/$/, '$1')
}

async function walk (dir: string, filter: (rel: string, isDir: boolean) => boolean, base = dir, out: string[] = []): Promise<string[]> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    const rel = relative(base, p)
    if (e.isDirectory()) {
      if (filter(rel, true)) await walk(p, filter, base, out)
    } else if ((e.isFile() || e.isSymbolicLink()) && filter(rel, false)) {
      out.push(rel)
    }
  }
  return out
}

async function fileMode (p: string): Promise<number> {
  return (await stat(p)).mode & 0o777
}

/** Everything install writes, as target paths (without the root). */
async function wantedFiles (source: string, prefix: string, node: string): Promise<Wanted[]> {
  const home = `${prefix}/lib/naiad`
  const out: Wanted[] = []
  const copy = async (rel: string, kind: FileKind = 'program'): Promise<void> => {
    const from = join(source, rel)
    const mode = (await fileMode(from)) & 0o111 ? 0o755 : 0o644
    out.push({ path: `${home}/${rel}`, kind, mode, data: async () => await readFile(from) })
  }
  for (const f of ['package.json', 'package-lock.json', `dist/bin/naiad.js`]) {
    if (!existsSync(join(source, f))) throw new NaiadError('NAIAD_INSTALL_SOURCE', `${join(source, f)} is missing`)
  }
  await copy('package.json')
  await copy('package-lock.json')
  for (const d of DIST_DIRS) {
    if (!existsSync(join(source, 'dist', d))) continue
    for (const rel of await walk(join(source, 'dist', d), (r, isDir) => isDir || r.endsWith('.js'))) await copy(`dist/${d}/${rel}`)
  }
  for (const rel of await walk(join(source, 'lib/proto'), (r, isDir) => isDir || r.endsWith('.proto'))) await copy(`lib/proto/${rel}`)
  // the fsdaemon's failover launcher (naiad-fsd.service's ExecStart; the snapshotter runs it too)
  await copy('lib/fsdapi/fsd-launcher.pl')
  // the native addon for kernel passthrough (fsdaemon/fuse/native.ts), where it was built
  if (existsSync(join(source, NATIVE_ADDON))) await copy(NATIVE_ADDON)
  for (const rel of [...UNITS, SNIPPET, ...CONFIGS.map(c => `etc/naiad/${c}`)]) await copy(`systemd/${rel}`)
  // the units' Documentation= points here
  if (existsSync(join(source, 'docs'))) for (const rel of await walk(join(source, 'docs'), (r, isDir) => isDir || r.endsWith('.md'))) await copy(`docs/${rel}`)
  // production dependencies, as package-lock.json lists them
  const lock = JSON.parse(await readFile(join(source, 'package-lock.json'), 'utf8')) as { packages?: Record<string, { dev?: boolean, link?: boolean }> }
  for (const [key, meta] of Object.entries(lock.packages ?? {})) {
    if (key === '' || meta.dev === true || meta.link === true) continue
    const dir = join(source, key)
    if (!existsSync(dir)) continue // an optional package for another platform
    // nested node_modules are packages of their own in the lock
    for (const rel of await walk(dir, (r, isDir) => !(isDir && (r === 'node_modules' || r.endsWith('/node_modules'))))) await copy(`${key}/${rel}`)
  }
  out.sort((a, b) => a.path < b.path ? -1 : 1)

  const wrapper = `#!/bin/sh\n# naiad, installed by \`naiad install\` (${home}); \`naiad uninstall\` removes it.\nexec '${node}' '${home}/dist/bin/naiad.js' "$@"\n`
  out.push({ path: `${prefix}/bin/naiad`, kind: 'wrapper', mode: 0o755, data: async () => Buffer.from(wrapper) })
  for (const u of UNITS) {
    out.push({
      path: `/etc/systemd/system/${u}`,
      kind: 'unit',
      mode: 0o644,
      data: async () => Buffer.from((await readFile(join(source, 'systemd', u), 'utf8')).split(UNIT_BINARY).join(`${prefix}/bin/naiad`).split(UNIT_HOME).join(home))
    })
  }
  for (const c of CONFIGS) out.push({ path: `/etc/naiad/${c}`, kind: 'config', mode: 0o644, data: async () => await readFile(join(source, 'systemd/etc/naiad', c)) })
  out.push({ path: `/etc/naiad/${SNIPPET}`, kind: 'snippet', mode: 0o644, data: async () => await readFile(join(source, 'systemd', SNIPPET)) })
  return out
}

function version (source: string): string {
  try {
    return (JSON.parse(readFileSync(join(source, 'package.json'), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

async function readManifest (root: string, prefix: string): Promise<Manifest | undefined> {
  try {
    return JSON.parse(await readFile(join(root, prefix, 'lib/naiad', MANIFEST), 'utf8')) as Manifest
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new NaiadError('NAIAD_IO', `cannot read the install manifest: ${(err as Error).message}`, { cause: err })
  }
}

/** The current bytes and mode of a file, or undefined if there is none. Directories are conflicts. */
async function current (p: string): Promise<{ data: Buffer, mode: number } | undefined> {
  let st
  try {
    st = await lstat(p)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  if (!st.isFile()) return { data: Buffer.alloc(0), mode: -1 }
  return { data: await readFile(p), mode: st.mode & 0o777 }
}

/** Creates the missing directories of `dir` (inside root), recording each one created. */
async function ensureDir (root: string, dir: string, created: Set<string>, dryRun: boolean): Promise<void> {
  const missing: string[] = []
  for (let d = dir; d !== '/' && d !== '.'; d = posix.dirname(d)) {
    if (existsSync(join(root, d))) break
    missing.push(d)
  }
  for (const d of missing.reverse()) {
    if (!dryRun) await mkdir(join(root, d), { mode: 0o755 })
    created.add(d)
  }
}

async function writeAtomic (p: string, data: Buffer, mode: number): Promise<void> {
  const tmp = `${p}.naiad-tmp-${process.pid}`
  await writeFile(tmp, data, { mode })
  await chmod(tmp, mode)
  await rename(tmp, p)
}

function isSystemdPid1 (): boolean {
  try {
    return readFileSync('/proc/1/comm', 'utf8').trim() === 'systemd'
  } catch {
    return false
  }
}

async function daemonReload (): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    execFile('systemctl', ['daemon-reload'], { timeout: 60_000 }, (err, _o, stderr) => {
      if (err !== null) reject(new NaiadError('NAIAD_IO', `systemctl daemon-reload failed: ${String(stderr).trim() || err.message}`, { cause: err }))
      else resolve()
    })
  })
}

function describe (c: Change): string {
  const sign = { create: '+', update: '~', remove: '-', keep: '!', unchanged: '=' }[c.action]
  return `${sign} ${c.path}${c.note !== undefined ? `  (${c.note})` : ''}`
}

function summarize (changes: Change[], dryRun: boolean, verb: string, programDir: string): { lines: string[], noop: boolean } {
  const unchanged = changes.filter(c => c.action === 'unchanged').length
  const shown = changes.filter(c => c.action !== 'unchanged')
  const noop = shown.every(c => c.action === 'keep')
  // the thousands of files of the suite itself are counted, not listed (removals are listed)
  const lines: string[] = []
  const bulk = { create: 0, update: 0, remove: 0 }
  let dirs = 0
  for (const c of shown) {
    if (c.kind === 'program' && c.note === undefined && (c.action === 'create' || c.action === 'update' || c.action === 'remove')) bulk[c.action]++
    else if (c.kind === 'dir' && c.path.startsWith(`${programDir}/`)) dirs++
    else lines.push(describe(c))
  }
  if (bulk.create + bulk.update + bulk.remove + dirs > 0) {
    const parts = [['created', bulk.create], ['updated', bulk.update], ['removed', bulk.remove]].filter(([, n]) => n !== 0).map(([w, n]) => `${String(n)} files ${String(w)}`)
    if (dirs > 0) parts.push(`${dirs} directories removed`)
    lines.unshift(`~ ${programDir}/  (${parts.join(', ')})`)
  }
  const prefix = dryRun ? 'dry run: ' : ''
  if (noop) lines.push(`${prefix}nothing to do: ${verb} is up to date (${unchanged} files unchanged)`)
  else lines.push(`${prefix}${shown.filter(c => c.action !== 'keep').length} changes, ${unchanged} files unchanged`)
  return { lines, noop }
}

/** Errors of file operations as NAIAD_IO naming the path; ours pass through. */
function asNaiadError (err: unknown): unknown {
  if (isNaiadError(err)) return err
  const e = err as NodeJS.ErrnoException
  if (typeof e?.code !== 'string' || typeof e.syscall !== 'string') return err
  const denied = e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS'
  return new NaiadError('NAIAD_IO', `${e.syscall} ${e.path ?? ''}: ${e.code}`, { cause: err, ...(denied ? { hint: 'run naiad install/uninstall as root, or pass --root DIR to install into a directory you can write' } : {}) })
}

/** Installs (or upgrades) naiad under `root`. */
export async function install (o: InstallOptions = {}): Promise<Report> {
  try {
    return await installUnder(o)
  } catch (err) {
    throw asNaiadError(err)
  }
}

async function installUnder (o: InstallOptions): Promise<Report> {
  const root = checkAbsolute('--root', o.root ?? '/')
  const prefix = checkAbsolute('--prefix', o.prefix ?? '/usr/local')
  const dryRun = o.dryRun === true
  const source = o.source ?? packageRoot()
  const node = o.node ?? process.execPath
  if (!posix.isAbsolute(node) || /['\n]/.test(node)) throw new NaiadError('NAIAD_CLI_USAGE', `--node must be an absolute path without quotes: ${node}`)
  const previous = await readManifest(root, prefix)
  const known = new Map((previous?.files ?? []).map(f => [f.path, f]))
  const wanted = await wantedFiles(source, prefix, node)
  if (!dryRun) await mkdir(root, { recursive: true }) // an image root may not exist yet; it is never removed
  const changes: Change[] = []
  const created = new Set(previous?.dirs ?? [])
  const written: ManifestFile[] = []

  // conflicts first: never half-install
  if (o.force !== true) {
    if (previous === undefined && existsSync(join(root, prefix, 'lib/naiad'))) {
      throw new NaiadError('NAIAD_INSTALL_CONFLICT', `${join(root, prefix, 'lib/naiad')} exists and was not written by naiad install (no ${MANIFEST})`, { details: { path: join(root, prefix, 'lib/naiad') } })
    }
    for (const w of wanted) {
      if (w.kind === 'config' || w.kind === 'program') continue
      const cur = await current(join(root, w.path))
      if (cur === undefined || known.has(w.path)) continue
      if (cur.mode === -1 || !cur.data.equals(await w.data())) {
        throw new NaiadError('NAIAD_INSTALL_CONFLICT', `${join(root, w.path)} exists and was not written by naiad install`, { details: { path: join(root, w.path) } })
      }
    }
  }

  // compare everything first, many files at a time (thousands of small files in node_modules)
  const state = await mapLimit(wanted, 32, async (w) => {
    if (w.kind === 'config') return undefined
    const data = await w.data()
    const cur = await current(join(root, w.path))
    return { sha: sha256(data), same: cur !== undefined && cur.mode === w.mode && cur.data.equals(data), exists: cur !== undefined, notFile: cur?.mode === -1 }
  })

  for (const [i, w] of wanted.entries()) {
    const target = join(root, w.path)
    const st = state[i]
    if (st !== undefined) {
      written.push({ path: w.path, sha256: st.sha, kind: w.kind, mode: w.mode })
      if (st.same) {
        changes.push({ action: 'unchanged', path: w.path, kind: w.kind })
        continue
      }
      await ensureDir(root, posix.dirname(w.path), created, dryRun)
      if (!dryRun) {
        if (st.notFile) await rm(target, { recursive: true, force: true })
        await writeAtomic(target, await w.data(), w.mode)
      }
      changes.push({ action: st.exists ? 'update' : 'create', path: w.path, kind: w.kind })
      continue
    }
    // a configuration
    const data = await w.data()
    const cur = await current(target)
    // as dpkg does with conffiles: a configuration still as an earlier install wrote it is ours to
    // update; one the operator changed is theirs
    const pristine = cur !== undefined && known.get(w.path)?.kind === 'config' && known.get(w.path)?.sha256 === sha256(cur.data)
    if (cur !== undefined && !cur.data.equals(data) && !pristine) {
      // the operator's configuration: keep it, put the new example beside it
      const neu: Wanted = { ...w, path: `${w.path}.new`, kind: 'config-new' }
      const curNew = await current(join(root, neu.path))
      if (curNew !== undefined && curNew.data.equals(data) && curNew.mode === w.mode) {
        changes.push({ action: 'keep', path: w.path, kind: 'config', note: `yours differs from the example; the example is ${neu.path}` })
      } else {
        if (!dryRun) await writeAtomic(join(root, neu.path), data, w.mode)
        changes.push({ action: 'keep', path: w.path, kind: 'config', note: 'yours differs from the example; kept' })
        changes.push({ action: curNew === undefined ? 'create' : 'update', path: neu.path, kind: 'config-new', note: `new example: compare with ${w.path}` })
      }
      written.push({ path: neu.path, sha256: sha256(data), kind: 'config-new', mode: w.mode })
      if (known.get(w.path)?.kind === 'config') written.push(known.get(w.path)!)
      continue
    }
    written.push({ path: w.path, sha256: sha256(data), kind: w.kind, mode: w.mode })
    if (cur !== undefined && cur.mode === w.mode && cur.data.equals(data)) {
      changes.push({ action: 'unchanged', path: w.path, kind: w.kind })
      continue
    }
    await ensureDir(root, posix.dirname(w.path), created, dryRun)
    if (!dryRun) {
      if (cur?.mode === -1) await rm(target, { recursive: true, force: true })
      await writeAtomic(target, data, w.mode)
    }
    changes.push({ action: cur === undefined ? 'create' : 'update', path: w.path, kind: w.kind, ...(pristine ? { note: 'unchanged since installed: the new example replaces it' } : {}) })
  }

  // files of the previous install the new one no longer has (an upgrade): remove
  const now = new Set(written.map(f => f.path))
  for (const f of previous?.files ?? []) {
    if (now.has(f.path) || f.kind === 'config') continue
    if (!dryRun) await rm(join(root, f.path), { force: true })
    changes.push({ action: 'remove', path: f.path, kind: f.kind, note: 'no longer part of naiad' })
  }
  if (!dryRun) await removeEmptyDirs(root, [...created].filter(d => !hasFileUnder(d, now)), created)

  let containerdBackup = previous?.containerdBackup
  if (o.configureContainerd === true) {
    const r = await mergeContainerdConfig(root, join(source, 'systemd', SNIPPET), dryRun)
    changes.push(r.change)
    containerdBackup ??= r.backup
  }

  const manifest: Manifest = { version: version(source), prefix, node, files: written, dirs: [...created].sort(), ...(containerdBackup !== undefined ? { containerdBackup } : {}) }
  const manifestPath = join(root, prefix, 'lib/naiad', MANIFEST)
  const manifestData = Buffer.from(JSON.stringify(manifest, null, 1) + '\n')
  const curManifest = await current(manifestPath)
  const changed = changes.some(c => c.action !== 'unchanged' && c.action !== 'keep') || curManifest === undefined || !curManifest.data.equals(manifestData)
  if (!dryRun && changed) await writeAtomic(manifestPath, manifestData, 0o644)

  const { lines, noop } = summarize(changes, dryRun, 'the installation', `${prefix}/lib/naiad`)
  const unitsChanged = changes.some(c => c.kind === 'unit' && c.action !== 'unchanged')
  let reloaded = false
  if (!dryRun && unitsChanged && (o.reload ?? (root === '/' && isSystemdPid1()))) {
    await daemonReload()
    reloaded = true
    lines.push('systemctl daemon-reload: done')
  } else if (unitsChanged && !dryRun) {
    lines.push('units changed: run `systemctl daemon-reload` on the node (systemd is not PID 1 here, or --root is not /)')
  }
  if (/^\/(root|home)\//.test(node)) {
    lines.push(`warning: the wrapper runs ${node}; the scheduler's unit (ProtectHome=yes) cannot reach it. Install with a system-wide node (/usr/bin/node) or pass --node PATH`)
  }
  if (!dryRun && !noop) {
    lines.push('next: review /etc/naiad/*.toml, merge /etc/naiad/containerd-snippet.toml into /etc/containerd/config.toml,')
    lines.push('      systemctl enable --now naiad-peer naiad-snapshotter (and naiad-scheduler on one node), systemctl restart containerd')
  }
  return { changes, lines, noop: noop && !changed, reloaded }
}

async function mapLimit<T, R> (items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}

function hasFileUnder (dir: string, files: Set<string>): boolean {
  for (const f of files) if (f.startsWith(`${dir}/`)) return true
  return false
}

/** Removes the given directories (deepest first) if they are empty; forgets the removed ones. */
async function removeEmptyDirs (root: string, dirs: string[], created: Set<string>): Promise<string[]> {
  const removed: string[] = []
  for (const d of [...dirs].sort((a, b) => b.length - a.length)) {
    try {
      await rmdir(join(root, d))
      removed.push(d)
      created.delete(d)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT') { created.delete(d); continue }
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err
    }
  }
  return removed
}

/** Removes what install wrote under `root`. */
export async function uninstall (o: UninstallOptions = {}): Promise<Report> {
  try {
    return await uninstallUnder(o)
  } catch (err) {
    throw asNaiadError(err)
  }
}

async function uninstallUnder (o: UninstallOptions): Promise<Report> {
  const root = checkAbsolute('--root', o.root ?? '/')
  const prefix = checkAbsolute('--prefix', o.prefix ?? '/usr/local')
  const dryRun = o.dryRun === true
  const manifest = await readManifest(root, prefix)
  if (manifest === undefined) throw new NaiadError('NAIAD_INSTALL_NOT_INSTALLED', `no ${join(root, prefix, 'lib/naiad', MANIFEST)}`)
  const changes: Change[] = []
  for (const f of manifest.files) {
    const p = join(root, f.path)
    if (f.kind === 'config' && o.purge !== true) {
      if (existsSync(p)) changes.push({ action: 'keep', path: f.path, kind: f.kind, note: 'configuration kept (--purge removes it)' })
      continue
    }
    if (!existsSync(p)) continue
    if (!dryRun) await rm(p, { force: true })
    changes.push({ action: 'remove', path: f.path, kind: f.kind })
  }
  if (o.purge === true) {
    // edited configurations were never in the manifest as ours: the examples were written as .new
    for (const c of CONFIGS) {
      const path = `/etc/naiad/${c}`
      if (manifest.files.some(f => f.path === path) || !existsSync(join(root, path))) continue
      if (!dryRun) await rm(join(root, path), { force: true })
      changes.push({ action: 'remove', path, kind: 'config', note: '--purge' })
    }
  }
  if (o.purge === true && !dryRun) {
    // /etc/naiad is naiad's: with the configurations gone, an empty one goes too (a reinstall over
    // kept configurations does not record it as created)
    try { await rmdir(join(root, '/etc/naiad')); changes.push({ action: 'remove', path: '/etc/naiad', kind: 'dir' }) } catch { /* not empty or absent */ }
  }
  if (manifest.containerdBackup !== undefined) {
    changes.push({ action: 'keep', path: '/etc/containerd/config.toml', kind: 'containerd', note: `merged by --configure-containerd; the file before it is ${manifest.containerdBackup}` })
  }
  if (!dryRun) {
    await rm(join(root, prefix, 'lib/naiad', MANIFEST), { force: true })
    const created = new Set(manifest.dirs)
    for (const d of await removeEmptyDirs(root, manifest.dirs, created)) changes.push({ action: 'remove', path: d, kind: 'dir' })
  }
  const { lines, noop } = summarize(changes, dryRun, 'the removal', `${prefix}/lib/naiad`)
  const unitsChanged = changes.some(c => c.kind === 'unit' && c.action === 'remove')
  let reloaded = false
  if (!dryRun && unitsChanged && (o.reload ?? (root === '/' && isSystemdPid1()))) {
    await daemonReload()
    reloaded = true
    lines.push('systemctl daemon-reload: done')
  }
  return { changes, lines, noop, reloaded }
}

type Table = Record<string, unknown>

function table (t: Table, key: string, where: string): Table {
  const v = t[key]
  if (v === undefined) { const n: Table = {}; t[key] = n; return n }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new NaiadError('NAIAD_INSTALL_CONTAINERD_CONFIG', `${where}.${key} is not a table`)
  return v as Table
}

/**
 * Merges the snippet's settings into <root>/etc/containerd/config.toml (created if absent). The
 * previous file is kept as config.toml.naiad-backup (once: the first merge's original). Comments
 * of the old file are lost in the merged one (smol-toml does not keep them); they stay in the backup.
 */
export async function mergeContainerdConfig (root: string, snippetPath: string, dryRun: boolean): Promise<{ change: Change, backup?: string }> {
  const path = '/etc/containerd/config.toml'
  const target = join(root, path)
  const snippet = parseToml(await readFile(snippetPath, 'utf8')) as Table
  let text = ''
  try { text = await readFile(target, 'utf8') } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err }
  let cfg: Table
  try {
    cfg = parseToml(text) as Table
  } catch (err) {
    throw new NaiadError('NAIAD_INSTALL_CONTAINERD_CONFIG', `${target} is not valid TOML: ${(err as Error).message}`, { cause: err })
  }
  const version = cfg['version'] ?? (text.trim() === '' ? 2 : 1)
  if (version !== 2) throw new NaiadError('NAIAD_INSTALL_CONTAINERD_CONFIG', `${target} has config version ${String(version)}; only version 2 (containerd 1.x) is merged automatically`)
  const before = JSON.stringify(cfg)
  cfg['version'] = 2
  const proxy = table(table(cfg, 'proxy_plugins', ''), 'nydus', 'proxy_plugins')
  Object.assign(proxy, (snippet['proxy_plugins'] as Table)['nydus'] as Table)
  const criSnippet = ((snippet['plugins'] as Table)['io.containerd.grpc.v1.cri'] as Table)['containerd'] as Table
  const cri = table(table(table(cfg, 'plugins', ''), 'io.containerd.grpc.v1.cri', 'plugins'), 'containerd', 'plugins."io.containerd.grpc.v1.cri"')
  Object.assign(cri, criSnippet)
  if (JSON.stringify(cfg) === before) return { change: { action: 'unchanged', path, kind: 'containerd' } }
  const backup = `${path}.naiad-backup`
  if (!dryRun) {
    await mkdir(dirname(target), { recursive: true })
    if (text !== '' && !existsSync(join(root, backup))) await writeFile(join(root, backup), text, { mode: 0o644 })
    await writeAtomic(target, Buffer.from(`# merged with /etc/naiad/containerd-snippet.toml by naiad install; the previous file is ${backup}\n${stringifyToml(cfg)}\n`), 0o644)
  }
  return { change: { action: text === '' ? 'create' : 'update', path, kind: 'containerd', note: `merged the naiad snippet${text !== '' ? `; previous file kept as ${backup}` : ''}; restart containerd` }, ...(text !== '' ? { backup } : {}) }
}
