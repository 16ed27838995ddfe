/**
 * The few Linux calls the FUSE session needs that Node.js cannot make, from our own small N-API
 * addon (native/naiad_fuse.c, built by `npm run build`; why: docs/decisions/0005-kernel-passthrough.md).
 * Optional: where the addon is missing (not built, another platform), `nativeFuse()` returns
 * undefined and the daemon serves every read itself, as before.
 */
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { constants } from 'node:os'

interface Addon {
  backingOpen: (dev: number, fd: number) => number
  backingClose: (dev: number, id: number) => number
  mount: (source: string, target: string, type: string, data: string) => number
  openByHandle: (mountFd: number, type: number, bytes: Buffer) => number
  nameToHandle: (path: string) => [number, Buffer] | number
}

/** A failed call: `code` is the errno's name (ELOOP, EPERM…). */
export class NativeCallError extends Error {
  constructor (readonly call: string, readonly errno: number) {
    const code = Object.entries(constants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`
    super(`${call}: ${code}`)
    this.name = 'NativeCallError'
    this.code = code
  }

  readonly code: string
}

export interface NativeFuse {
  /** FUSE_DEV_IOC_BACKING_OPEN: registers `fd` with the FUSE connection of `dev`; the backing id. */
  backingOpen: (dev: number, fd: number) => number
  /** FUSE_DEV_IOC_BACKING_CLOSE */
  backingClose: (dev: number, id: number) => void
  /** mount(2) read-only, nodev, nosuid: `source` may be a regular file (a file-backed EROFS). */
  mount: (source: string, target: string, type: string, data: string) => void
  /** open_by_handle_at(2), read-only: a descriptor. */
  openByHandle: (mountFd: number, type: number, bytes: Buffer) => number
  /** name_to_handle_at(2) */
  nameToHandle: (path: string) => { type: number, bytes: Buffer }
}

/** Where the addon is, relative to this module in the sources (fsdaemon/fuse/) or in dist/. */
function addonPath (): string | undefined {
  for (const rel of ['native/build/Release/naiad_fuse.node', '../../../fsdaemon/fuse/native/build/Release/naiad_fuse.node']) {
    const p = fileURLToPath(new URL(rel, import.meta.url))
    if (existsSync(p)) return p
  }
  return undefined
}

let loaded: NativeFuse | null | undefined

/** The addon's calls, or undefined where it is not built or cannot load (the reason in `nativeFuseProblem()`). */
export function nativeFuse (): NativeFuse | undefined {
  if (loaded !== undefined) return loaded ?? undefined
  loaded = null
  if (process.platform !== 'linux') { problem = 'not Linux'; return undefined }
  const path = addonPath()
  if (path === undefined) { problem = 'the addon fsdaemon/fuse/native is not built (npm run build)'; return undefined }
  let a: Addon
  try {
    a = createRequire(import.meta.url)(path) as Addon
  } catch (err) {
    problem = `the addon ${path} does not load: ${(err as Error).message}`
    return undefined
  }
  const check = (call: string, r: number): number => {
    if (r < 0) throw new NativeCallError(call, -r)
    return r
  }
  loaded = {
    backingOpen: (dev, fd) => check('FUSE_DEV_IOC_BACKING_OPEN', a.backingOpen(dev, fd)),
    backingClose: (dev, id) => { check('FUSE_DEV_IOC_BACKING_CLOSE', a.backingClose(dev, id)) },
    mount: (source, target, type, data) => { check('mount', a.mount(source, target, type, data)) },
    openByHandle: (mountFd, type, bytes) => check('open_by_handle_at', a.openByHandle(mountFd, type, bytes)),
    nameToHandle: (path) => {
      const r = a.nameToHandle(path)
      if (typeof r === 'number') throw new NativeCallError('name_to_handle_at', -r)
      return { type: r[0], bytes: r[1] }
    }
  }
  return loaded
}

let problem: string | undefined

/** Why `nativeFuse()` returned undefined. */
export function nativeFuseProblem (): string | undefined {
  return problem
}
