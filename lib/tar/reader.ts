/**
 * A streaming, byte-exact tar reader (ustar, PAX, GNU long names, base-256 numbers).
 *
 * Why not tar-stream for reading: it decodes PAX records as UTF-8 text, which destroys binary
 * xattr values (security.capability) and names that are not valid UTF-8 (docs/decisions/0001).
 * Here names, link targets and xattr values stay raw bytes.
 *
 * Every entry's body must be consumed (or skipped with `entry.skip()`) before asking for the next
 * entry. Truncation and checksum errors are NAIAD_TAR_CORRUPT.
 */
import { NaiadError } from '../errors/index.ts'

export type TarEntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo'

export interface TarHeader {
  /** Raw path bytes as in the archive (PAX / GNU long names applied). */
  name: Buffer
  type: TarEntryType
  mode: number
  uid: number
  gid: number
  size: number
  mtime: bigint
  mtimeNsec: number
  /** Symlink target or hard-link target (raw bytes). */
  linkname: Buffer
  devmajor: number
  devminor: number
  /** Extended attributes from PAX `SCHILY.xattr.*` records, values raw. */
  xattrs: Array<{ name: Buffer, value: Buffer }>
}

export interface TarEntry {
  header: TarHeader
  /** The entry's data (regular files). Read it fully, or call skip(). */
  body (): AsyncIterable<Buffer>
  skip (): Promise<void>
}

const BLOCK = 512

function corrupt (msg: string): NaiadError {
  return new NaiadError('NAIAD_TAR_CORRUPT', msg)
}

/** Pulls exact byte counts out of an async iterable of buffers. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0)
  private done = false
  private readonly it: AsyncIterator<Buffer | Uint8Array | string>
  offset = 0

  constructor (src: AsyncIterable<Buffer | Uint8Array | string>) {
    this.it = src[Symbol.asyncIterator]()
  }

  private async fill (min: number): Promise<boolean> {
    const parts: Buffer[] = this.buf.length > 0 ? [this.buf] : []
    let have = this.buf.length
    while (have < min && !this.done) {
      const r = await this.it.next()
      if (r.done === true) { this.done = true; break }
      const b = typeof r.value === 'string' ? Buffer.from(r.value) : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength)
      if (b.length === 0) continue
      parts.push(b)
      have += b.length
    }
    this.buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts, have)
    return have >= min
  }

  /** Exactly n bytes, or null at a clean EOF (nothing buffered); throws on a short read. */
  async read (n: number, what: string): Promise<Buffer | null> {
    if (!(await this.fill(n))) {
      if (this.buf.length === 0) return null
      throw corrupt(`truncated tar: ${what} needs ${n} bytes at offset ${this.offset}, only ${this.buf.length} left`)
    }
    const out = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    this.offset += n
    return out
  }

  /** Streams exactly n bytes. */
  async * stream (n: number, what: string): AsyncGenerator<Buffer> {
    let left = n
    while (left > 0) {
      if (this.buf.length === 0 && !(await this.fill(1))) throw corrupt(`truncated tar: ${what} ends ${left} bytes early at offset ${this.offset}`)
      const take = Math.min(left, this.buf.length)
      const out = this.buf.subarray(0, take)
      this.buf = this.buf.subarray(take)
      this.offset += take
      left -= take
      yield out
    }
  }

  async skip (n: number, what: string): Promise<void> {
    for await (const _ of this.stream(n, what)) { /* discard */ }
  }

  /** True if only zero bytes (or nothing) remain. Used after the end-of-archive marker. */
  async drain (): Promise<void> {
    while (await this.fill(this.buf.length + 1)) { this.offset += this.buf.length; this.buf = Buffer.alloc(0) }
  }
}

function cstr (b: Buffer, off: number, len: number): Buffer {
  const s = b.subarray(off, off + len)
  const z = s.indexOf(0)
  return z === -1 ? s : s.subarray(0, z)
}

/** Octal (space/NUL terminated) or GNU base-256 number. */
function num (b: Buffer, off: number, len: number, field: string): number {
  const f = b.subarray(off, off + len)
  if (((f[0] ?? 0) & 0x80) !== 0) {
    // base-256, big-endian two's complement; we accept non-negative values up to 2^53
    if (((f[0] ?? 0) & 0x40) !== 0) throw corrupt(`tar header field ${field} is negative`)
    let v = BigInt((f[0] ?? 0) & 0x3f)
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i] ?? 0)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`tar header field ${field} is too large`)
    return Number(v)
  }
  const s = f.toString('latin1').replace(/\0.*$/s, '').trim()
  if (s === '') return 0
  if (!/^[0-7]+$/.test(s)) throw corrupt(`tar header field ${field} is not octal: ${JSON.stringify(s)}`)
  const v = parseInt(s, 8)
  if (!Number.isSafeInteger(v)) throw corrupt(`tar header field ${field} is too large`)
  return v
}

function checksumOk (b: Buffer): boolean {
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 32 : b[i]!
    unsigned += c
    signed += c > 127 ? c - 256 : c
  }
  const stored = num(b, 148, 8, 'chksum')
  return stored === unsigned || stored === signed
}

interface Pax { [key: string]: Buffer }

function parsePax (data: Buffer): Pax {
  const out: Pax = {}
  let pos = 0
  while (pos < data.length) {
    if (data[pos] === 0) break // padding some writers leave
    const sp = data.indexOf(0x20, pos)
    if (sp === -1 || sp - pos > 20) throw corrupt('malformed PAX record: no length')
    const len = Number(data.subarray(pos, sp).toString('latin1'))
    if (!Number.isSafeInteger(len) || len <= sp - pos + 2 || pos + len > data.length) throw corrupt('malformed PAX record length')
    const rec = data.subarray(sp + 1, pos + len)
    if (rec[rec.length - 1] !== 0x0a) throw corrupt('malformed PAX record: no newline')
    const eq = rec.indexOf(0x3d)
    if (eq === -1) throw corrupt('malformed PAX record: no "="')
    out[rec.subarray(0, eq).toString('utf8')] = rec.subarray(eq + 1, rec.length - 1)
    pos += len
  }
  return out
}

function parseTime (v: Buffer): { sec: bigint, nsec: number } {
  const s = v.toString('latin1')
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(s)
  if (m === null) throw corrupt(`malformed PAX time ${JSON.stringify(s)}`)
  const neg = m[1] === '-'
  let sec = BigInt(m[2] ?? '0')
  let nsec = Number(((m[3] ?? '') + '000000000').slice(0, 9))
  if (neg) {
    sec = -sec
    if (nsec > 0) { sec -= 1n; nsec = 1_000_000_000 - nsec }
  }
  return { sec, nsec }
}

const MAX_META = 16 * 1024 * 1024

/** Reads a tar stream entry by entry. */
export async function * readTar (src: AsyncIterable<Buffer | Uint8Array | string>): AsyncGenerator<TarEntry> {
  const r = new ByteReader(src)
  let global: Pax = {}
  let pax: Pax | null = null
  let longName: Buffer | null = null
  let longLink: Buffer | null = null
  let sawAny = false
  for (;;) {
    const hdr = await r.read(BLOCK, 'header')
    if (hdr === null) {
      if (!sawAny) throw corrupt('empty tar stream (no end-of-archive marker)')
      // EOF without the two zero blocks: accepted (many writers omit them)
      if (pax !== null || longName !== null || longLink !== null) throw corrupt('tar ends after an extended header with no entry')
      return
    }
    sawAny = true
    if (hdr.every(x => x === 0)) {
      await r.drain()
      return
    }
    if (!checksumOk(hdr)) throw corrupt(`tar header checksum mismatch at offset ${r.offset - BLOCK}`)
    const flag = hdr[156] === 0 ? '0' : String.fromCharCode(hdr[156]!)
    const size = num(hdr, 124, 12, 'size')
    const padded = Math.ceil(size / BLOCK) * BLOCK
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META) throw corrupt(`tar extended header of ${size} bytes is too large`)
      const data = size === 0 ? Buffer.alloc(0) : Buffer.from((await r.read(padded, 'extended header'))?.subarray(0, size) ?? Buffer.alloc(0))
      if (data.length !== size) throw corrupt('truncated tar extended header')
      if (flag === 'x') pax = { ...(pax ?? {}), ...parsePax(data) }
      else if (flag === 'g') global = { ...global, ...parsePax(data) }
      else if (flag === 'L') longName = cstr(data, 0, data.length)
      else longLink = cstr(data, 0, data.length)
      continue
    }
    const p: Pax = { ...global, ...(pax ?? {}) }
    pax = null
    const magic = hdr.subarray(257, 263).toString('latin1')
    let name = cstr(hdr, 0, 100)
    if (magic === 'ustar\0') {
      const prefix = cstr(hdr, 345, 155)
      if (prefix.length > 0) name = Buffer.concat([prefix, Buffer.from('/'), name])
    }
    if (longName !== null) { name = longName; longName = null }
    if (p['path'] !== undefined) name = p['path']
    let linkname = cstr(hdr, 157, 100)
    if (longLink !== null) { linkname = longLink; longLink = null }
    if (p['linkpath'] !== undefined) linkname = p['linkpath']
    let type: TarEntryType
    switch (flag) {
      case '0': case '7': type = 'file'; break
      case '1': type = 'link'; break
      case '2': type = 'symlink'; break
      case '3': type = 'char'; break
      case '4': type = 'block'; break
      case '5': type = 'dir'; break
      case '6': type = 'fifo'; break
      case 'S': throw new NaiadError('NAIAD_TAR_UNSUPPORTED', `entry ${JSON.stringify(name.toString('utf8'))} is an old-GNU sparse file, which naiad does not read`)
      default: throw new NaiadError('NAIAD_TAR_UNSUPPORTED', `entry ${JSON.stringify(name.toString('utf8'))} has tar type ${JSON.stringify(flag)}`)
    }
    if (Object.keys(p).some(k => k.startsWith('GNU.sparse.'))) {
      throw new NaiadError('NAIAD_TAR_UNSUPPORTED', `entry ${JSON.stringify(name.toString('utf8'))} is a PAX sparse file, which naiad does not read`)
    }
    if (type === 'file' && name.length > 0 && name[name.length - 1] === 0x2f && flag === '0') type = 'dir'
    let fileSize = p['size'] !== undefined ? Number(p['size'].toString('latin1')) : size
    if (!Number.isSafeInteger(fileSize) || fileSize < 0) throw corrupt('bad PAX size')
    if (type !== 'file') fileSize = type === 'link' || type === 'symlink' || type === 'dir' || type === 'char' || type === 'block' || type === 'fifo' ? 0 : fileSize
    let mtime = BigInt(num(hdr, 136, 12, 'mtime'))
    let mtimeNsec = 0
    if (p['mtime'] !== undefined) { const t = parseTime(p['mtime']); mtime = t.sec; mtimeNsec = t.nsec }
    const xattrs: Array<{ name: Buffer, value: Buffer }> = []
    for (const [k, v] of Object.entries(p)) {
      if (k.startsWith('SCHILY.xattr.')) xattrs.push({ name: Buffer.from(k.slice('SCHILY.xattr.'.length), 'utf8'), value: Buffer.from(v) })
    }
    const header: TarHeader = {
      name: Buffer.from(name),
      type,
      mode: num(hdr, 100, 8, 'mode') & 0o7777,
      uid: p['uid'] !== undefined ? Number(p['uid'].toString('latin1')) : num(hdr, 108, 8, 'uid'),
      gid: p['gid'] !== undefined ? Number(p['gid'].toString('latin1')) : num(hdr, 116, 8, 'gid'),
      size: fileSize,
      mtime,
      mtimeNsec,
      linkname: Buffer.from(linkname),
      devmajor: num(hdr, 329, 8, 'devmajor'),
      devminor: num(hdr, 337, 8, 'devminor'),
      xattrs
    }
    if (!Number.isSafeInteger(header.uid) || !Number.isSafeInteger(header.gid) || header.uid < 0 || header.gid < 0) throw corrupt('bad uid/gid')
    // Data occupies `size` bytes of the archive (the PAX size overrides the header's).
    const dataSize = p['size'] !== undefined ? fileSize : size
    const dataPadded = Math.ceil(dataSize / BLOCK) * BLOCK
    let consumed = false
    const what = `entry ${JSON.stringify(name.toString('utf8'))}`
    const entry: TarEntry = {
      header,
      body: () => {
        if (consumed) throw new Error('tar entry body read twice')
        consumed = true
        return (async function * () {
          yield * r.stream(type === 'file' ? dataSize : 0, what)
          if (type !== 'file') await r.skip(dataSize, what)
          await r.skip(dataPadded - dataSize, what)
        })()
      },
      skip: async () => {
        if (consumed) return
        consumed = true
        await r.skip(dataPadded, what)
      }
    }
    yield entry
    if (!consumed) await entry.skip()
  }
}
