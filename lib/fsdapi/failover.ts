/**
 * FUSE failover: running containers survive a crash of the fsdaemon.
 *
 * The kernel ends a FUSE connection when the last descriptor of its /dev/fuse file is closed. So
 * for every mount the fsdaemon starts a *holder*, a tiny Perl process that inherited that
 * descriptor (as its fd 3) and only checks every 5 s that the mount is still in the mount table
 * (it ends when the mount is gone):
 * when the fsdaemon dies, the connection stays,
 * and the kernel queues the mount's requests (readers wait instead of failing with ENOTCONN). The
 * holders are listed in a file next to the control socket (`<socket>.fuse-holders`, on /run:
 * holders live no longer than the boot), one line per mount: `pid TAB fd TAB hex(mountpoint)`.
 *
 * The next fsdaemon is started through {@link launchCommand}: a small Perl program
 * (lib/fsdapi/fsd-launcher.pl; perl-base is on every Debian system; Node cannot take a descriptor
 * from another process; naiad-fsd.service's ExecStart runs it too) duplicates each
 * live holder's descriptor with pidfd_getfd(2) (Linux 5.6+), clears close-on-exec and execs the
 * fsdaemon with `--fuse-fd <fd>:<hex(mountpoint)>`. The fsdaemon then adopts the connection instead of
 * mounting again (no new INIT: node ids are the images' inode numbers, so they stay valid), and
 * sends FUSE_NOTIFY_RESEND (Linux 6.9+) so that the requests the dead daemon had read but not
 * answered are queued again. Without perl, without live holders, or on an older kernel, the
 * fsdaemon falls back to what it did before: detach the dead mount and mount again (running
 * containers of the image then see ENOTCONN).
 */
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export interface FuseHolder {
  /** The holder process. */
  pid: number
  /** The /dev/fuse descriptor number in the holder. */
  fd: number
  mountpoint: string
}

/** Where the fsdaemon listening on `socket` lists its holders. */
export function holdersFile (socket: string): string {
  return `${socket}.fuse-holders`
}

export function formatHolders (holders: readonly FuseHolder[]): string {
  return holders.map((h) => `${h.pid}\t${h.fd}\t${Buffer.from(h.mountpoint).toString('hex')}\n`).join('')
}

/** Lines that do not parse are skipped (the file is advisory: a holder is checked before use). */
export function parseHolders (text: string): FuseHolder[] {
  const out: FuseHolder[] = []
  for (const line of text.split('\n')) {
    const m = /^(\d+)\t(\d+)\t((?:[0-9a-f]{2})+)$/.exec(line)
    if (m === null) continue
    out.push({ pid: Number(m[1]), fd: Number(m[2]), mountpoint: Buffer.from(m[3]!, 'hex').toString() })
  }
  return out
}

/** `--fuse-fd` values: `<fd>:<hex(mountpoint)>` → mountpoint → fd. Throws on a malformed value. */
export function parseFuseFds (values: readonly string[]): Map<string, number> {
  const out = new Map<string, number>()
  for (const v of values) {
    const m = /^(\d+):((?:[0-9a-f]{2})+)$/.exec(v)
    if (m === null) throw new Error(`--fuse-fd ${JSON.stringify(v)}: expected <fd>:<hex of the mountpoint>`)
    out.set(Buffer.from(m[2]!, 'hex').toString(), Number(m[1]))
  }
  return out
}

/**
 * The launcher (lib/fsdapi/fsd-launcher.pl; tsc does not copy it, so it is found next to the
 * sources both from the sources and from dist/, and `naiad install` installs it with the suite).
 */
export function launcherScript (): string | undefined {
  // sources: lib/fsdapi/failover.ts; compiled: dist/lib/fsdapi/failover.js
  for (const up of ['./fsd-launcher.pl', '../../../lib/fsdapi/fsd-launcher.pl']) {
    const p = fileURLToPath(new URL(up, import.meta.url))
    if (existsSync(p)) return p
  }
  return undefined
}

/**
 * The command that starts the fsdaemon `cmd args` (listening on `socket`) so that it can adopt the
 * FUSE connections of a crashed predecessor; `cmd args` unchanged when perl or the launcher file
 * is missing.
 */
export function launchCommand (socket: string, cmd: string, args: readonly string[], perl = '/usr/bin/perl'): { cmd: string, args: string[] } {
  const script = launcherScript()
  if (!existsSync(perl) || script === undefined) return { cmd, args: [...args] }
  return { cmd: perl, args: [script, holdersFile(socket), cmd, ...args] }
}
