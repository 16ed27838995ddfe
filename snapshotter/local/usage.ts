/** Disk usage of a directory tree, as containerd's fs.DiskUsage: allocated blocks, inodes counted once. */
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { throwIfAborted } from '../../lib/errors/index.ts'
import type { Usage } from '../snapshotter.ts'

export async function diskUsage (root: string, signal?: AbortSignal): Promise<Usage> {
  const seen = new Set<string>()
  let size = 0
  const visit = async (p: string): Promise<void> => {
    throwIfAborted(signal)
    const st = await lstat(p, { bigint: true })
    const id = `${st.dev}:${st.ino}`
    if (!seen.has(id)) {
      seen.add(id)
      size += Number(st.blocks) * 512
    }
    if (st.isDirectory()) {
      for (const name of await readdir(p)) await visit(join(p, name))
    }
  }
  await visit(root)
  return { size, inodes: seen.size }
}
