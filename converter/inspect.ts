/**
 * `naiad inspect REF|FILE [--json]`: superblock summary, blob table and a tree listing of a RAFS
 * v6 bootstrap, read from an image (its bootstrap layer), a bootstrap layer file (gzip tar) or a
 * raw bootstrap file.
 */
import type { Bootstrap } from '../lib/format/bootstrap.ts'
import type { Inode } from '../lib/format/types.ts'
import { major, minor } from '../lib/format/types.ts'
import { walk } from './tree.ts'

const FLAG_NAMES: Array<[number, string]> = [
  [0x1, 'COMPRESSION_NONE'], [0x2, 'COMPRESSION_LZ4'], [0x4, 'HASH_BLAKE3'], [0x8, 'HASH_SHA256'],
  [0x10, 'EXPLICIT_UID_GID'], [0x20, 'HAS_XATTR'], [0x40, 'COMPRESSION_GZIP'], [0x80, 'COMPRESSION_ZSTD'],
  [0x100, 'INLINED_CHUNK_DIGEST'], [0x200, 'TARFS_MODE'], [0x0100_0000, 'ENCRYPTION_NONE'], [0x0200_0000, 'ENCRYPTION_AES_128_XTS']
]

function flagNames (f: number): string {
  const names = FLAG_NAMES.filter(([bit]) => (f & bit) !== 0).map(([, n]) => n)
  return `0x${f.toString(16)}${names.length > 0 ? ` (${names.join('|')})` : ''}`
}

function modeString (i: Inode): string {
  const t = { file: '-', dir: 'd', symlink: 'l', char: 'c', block: 'b', fifo: 'p', socket: 's' }[i.type]
  const p = i.perm
  const r = (bit: number, ch: string): string => (p & bit) !== 0 ? ch : '-'
  const x = (bit: number, special: number, on: string, off: string): string => (p & special) !== 0 ? ((p & bit) !== 0 ? on : off) : r(bit, 'x')
  return t + r(0o400, 'r') + r(0o200, 'w') + x(0o100, 0o4000, 's', 'S') + r(0o40, 'r') + r(0o20, 'w') + x(0o10, 0o2000, 's', 'S') + r(0o4, 'r') + r(0o2, 'w') + x(0o1, 0o1000, 't', 'T')
}

function showName (p: Buffer[]): string {
  return '/' + p.map(c => c.toString('utf8')).join('/')
}

export function inspectJson (b: Bootstrap, source: string): Record<string, unknown> {
  const entries = []
  for (const [path, inode] of walk(b.toTree())) {
    entries.push({
      path: showName(path),
      ino: inode.ino,
      type: inode.type,
      mode: '0' + inode.perm.toString(8),
      uid: inode.uid,
      gid: inode.gid,
      size: inode.size,
      mtime: `${inode.mtime}.${String(inode.mtimeNsec).padStart(9, '0')}`,
      ...(inode.symlink !== undefined ? { target: inode.symlink.toString('utf8') } : {}),
      ...(inode.type === 'char' || inode.type === 'block' ? { rdev: `${major(inode.rdev)},${minor(inode.rdev)}` } : {}),
      ...(inode.xattrs.length > 0 ? { xattrs: Object.fromEntries(inode.xattrs.map(x => [x.name.toString('utf8'), x.value.toString('base64')])) } : {}),
      ...(inode.type === 'file' ? { chunks: inode.chunks.length } : {})
    })
  }
  return {
    source,
    superblock: {
      fsVersion: 6,
      size: b.buffer.length,
      chunkSize: b.chunkSize,
      compressor: b.compressor,
      digester: b.digester,
      flags: flagNames(b.flags),
      inodes: b.inodeCount,
      rootNid: b.rootNid,
      buildTime: `${b.buildTime}.${String(b.buildTimeNsec).padStart(9, '0')}`,
      blocks: b.blocks,
      prefetchFiles: b.prefetchNids.length
    },
    blobs: b.blobs.map((x, i) => ({
      index: i,
      blobId: x.blobId,
      chunks: x.chunkCount,
      compressedSize: x.compressedSize,
      uncompressedSize: x.uncompressedSize,
      compressor: x.compressor,
      digester: x.digester,
      features: '0x' + x.features.toString(16),
      ci: { compressor: x.ciCompressor, offset: x.ciOffset, compressedSize: x.ciCompressedSize, uncompressedSize: x.ciUncompressedSize },
      tocSize: x.tocSize
    })),
    entries
  }
}

export function inspectText (b: Bootstrap, source: string): string {
  const j = inspectJson(b, source) as { superblock: Record<string, unknown>, blobs: Array<Record<string, unknown>>, entries: Array<Record<string, unknown>> }
  const sb = j.superblock
  const lines = [
    `source:      ${source}`,
    `format:      RAFS v6 (EROFS bootstrap), ${String(sb['size'])} bytes, ${String(sb['blocks'])} data blocks`,
    `chunks:      ${Number(sb['chunkSize']) / 1024} KiB, ${String(sb['compressor'])}, ${String(sb['digester'])} digests`,
    `flags:       ${String(sb['flags'])}`,
    `inodes:      ${String(sb['inodes'])} (root nid ${String(sb['rootNid'])}), build time ${String(sb['buildTime'])}`,
    `prefetch:    ${String(sb['prefetchFiles'])} files`,
    `blobs:       ${j.blobs.length}`
  ]
  for (const x of j.blobs) {
    const ci = x['ci'] as Record<string, unknown>
    lines.push(`  [${String(x['index'])}] ${String(x['blobId'])}  ${String(x['chunks'])} chunks, ${String(x['compressedSize'])} B compressed, ${String(x['uncompressedSize'])} B uncompressed, features ${String(x['features'])}, chunk table ${String(ci['compressor'])} at ${String(ci['offset'])}+${String(ci['compressedSize'])}`)
  }
  lines.push('tree:')
  const tree = b.toTree()
  for (const [path, inode] of walk(tree)) {
    const extra = inode.type === 'symlink' ? ` -> ${inode.symlink?.toString('utf8') ?? ''}` : inode.type === 'file' ? `  [${inode.chunks.length} chunk${inode.chunks.length === 1 ? '' : 's'}]` : ''
    const size = inode.type === 'char' || inode.type === 'block' ? `${major(inode.rdev)},${minor(inode.rdev)}` : String(inode.size)
    lines.push(`  ${modeString(inode)} ${String(inode.uid).padStart(5)} ${String(inode.gid).padStart(5)} ${size.padStart(10)}  ${showName(path)}${extra}${inode.xattrs.length > 0 ? `  {${inode.xattrs.map(x => x.name.toString('utf8')).join(', ')}}` : ''}`)
  }
  return lines.join('\n') + '\n'
}
