/**
 * Small file I/O helpers shared by the format reader and the fsdaemon.
 */
import type { FileHandle } from 'node:fs/promises'

/**
 * Fills `buf` from `position` of an open file, looping over short reads. Returns the number of
 * bytes read: less than `buf.length` only at end of file. System errors are thrown as they are
 * (callers wrap them with their own context).
 */
export async function preadFully (fh: FileHandle, buf: Buffer, position: number): Promise<number> {
  let got = 0
  while (got < buf.length) {
    const n = (await fh.read(buf, got, buf.length - got, position + got)).bytesRead
    if (n === 0) break
    got += n
  }
  return got
}
