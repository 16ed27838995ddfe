/**
 * The image as the kernel's own EROFS driver reads it: the bootstrap mounted file-backed (Linux
 * 6.12+, CONFIG_EROFS_FS_BACKED_BY_FILE) with the blobs' cache files as its devices, in blob
 * table order. A RAFS v6 chunk index names a blob (device) and the chunk's uncompressed block
 * address, which is exactly where the chunk cache keeps each chunk's bytes, so every file whose
 * chunks are all in the cache reads correctly there. Such files are handed to the kernel through
 * FUSE passthrough (docs/decisions/0005-kernel-passthrough.md): their reads and mmaps no longer
 * reach the daemon. Files with chunks still missing are never opened here (the sparse cache file
 * would give zeros).
 *
 * The mount is private to the daemon (under its state directory), read-only, nodev, nosuid,
 * made on the first file that needs it and detached (lazily: open files keep it) at close(),
 * which also removes its bootstrap file and mount point.
 */
import { closeSync, constants, existsSync, fstatSync, mkdirSync, openSync, readFileSync, renameSync, rmdirSync, rmSync, writeFileSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import type { Logger } from '../../lib/log/index.ts'
import { kernelMounts } from '../state.ts'
import { nativeFuse, type NativeFuse } from '../fuse/native.ts'

const execFileP = promisify(execFile)

/** FILEID_INO64_GEN: EROFS's file handles are the 64-bit nid (high, low u32) and a generation. */
const EROFS_HANDLE_TYPE = 0x81
/** mount(2) takes at most a page of options. */
const MAX_MOUNT_DATA = 4000

export interface KernelViewDeps {
  /** The bootstrap's bytes (written to `bootstrapFile` for the kernel). */
  bootstrap: Buffer
  /** The blobs' cache files, in the bootstrap's blob table order. */
  devices: readonly string[]
  log: Logger
}

export interface KernelViewOptions {
  /** Where to mount (created; anything mounted there before is detached first). */
  mountpoint: string
  /** Where the bootstrap is written for the kernel. */
  bootstrapFile: string
}

export class KernelView {
  private mountFd = -1
  private mounting: Promise<boolean> | undefined
  private broken = false
  private closed = false

  constructor (private readonly deps: KernelViewDeps, private readonly opts: KernelViewOptions) {}

  /**
   * A read-only descriptor of inode `nid` in the kernel's mount (expected to be a regular file of
   * `size` bytes), or undefined if the kernel cannot mount the image here.
   */
  async open (nid: number, size: number): Promise<number | undefined> {
    if (this.broken || this.closed) return undefined
    this.mounting ??= this.mount()
    if (!(await this.mounting) || this.closed) return undefined
    const native = nativeFuse()!
    const fh = Buffer.alloc(12)
    fh.writeUInt32LE(Math.floor(nid / 2 ** 32), 0)
    fh.writeUInt32LE(nid >>> 0, 4)
    const fd = native.openByHandle(this.mountFd, EROFS_HANDLE_TYPE, fh)
    const st = fstatSync(fd)
    if (!st.isFile() || st.size !== size || st.ino !== nid) {
      closeSync(fd)
      this.deps.log.error({ nid, ino: st.ino, size: st.size, want: size }, 'the kernel\'s EROFS mount shows another file than the bootstrap: passthrough off for this image')
      this.broken = true
      return undefined
    }
    return fd
  }

  private async mount (): Promise<boolean> {
    const native: NativeFuse | undefined = nativeFuse()
    if (native === undefined) { this.broken = true; return false }
    const mp = this.opts.mountpoint
    const data = ['ro', ...this.deps.devices.map(d => `device=${d}`)].join(',')
    if (data.length > MAX_MOUNT_DATA || this.deps.devices.some(d => /[,\s]/.test(d))) {
      this.deps.log.info({ blobs: this.deps.devices.length }, 'too many blobs (or odd cache paths) for one EROFS mount: no kernel passthrough for this image')
      this.broken = true
      return false
    }
    try {
      mkdirSync(mp, { recursive: true, mode: 0o700 })
      await detach(mp)
      this.writeBootstrap()
      native.mount(this.opts.bootstrapFile, mp, 'erofs', data)
      this.mountFd = openSync(mp, constants.O_RDONLY | constants.O_DIRECTORY)
      this.deps.log.debug({ mountpoint: mp }, 'kernel EROFS view mounted (passthrough)')
      return true
    } catch (err) {
      this.deps.log.info({ err, mountpoint: mp }, 'the kernel cannot mount this image file-backed (EROFS on a file needs Linux 6.12+): no kernel passthrough for it')
      this.broken = true
      return false
    }
  }

  private writeBootstrap (): void {
    const f = this.opts.bootstrapFile
    if (existsSync(f)) {
      try {
        if (readFileSync(f).equals(this.deps.bootstrap)) return
      } catch {}
    }
    writeFileSync(`${f}.tmp`, this.deps.bootstrap, { mode: 0o600 })
    renameSync(`${f}.tmp`, f)
  }

  /** Detaches the mount (open passthrough files keep it until they close). Safe to call twice. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    const mounted = this.mounting !== undefined && await this.mounting
    if (this.mountFd >= 0) {
      try { closeSync(this.mountFd) } catch {}
      this.mountFd = -1
    }
    if (mounted) await detach(this.opts.mountpoint)
    // (the kernel holds the bootstrap open while files of the view are open)
    try { rmSync(this.opts.bootstrapFile, { force: true }) } catch {}
    try { rmdirSync(this.opts.mountpoint) } catch {}
  }
}

/** Lazily unmounts whatever is mounted at `mp` (a leftover of a dead daemon), if anything. */
export async function detach (mp: string): Promise<void> {
  let n = (await kernelMounts().catch(() => [])).filter(m => m.mountpoint === mp).length
  while (n-- > 0) await execFileP('umount', ['-l', mp]).catch(() => {})
}
