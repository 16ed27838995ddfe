/**
 * Builds real OCI images for tests: each layer is a directory populated on disk (as root, so
 * owners, devices and security.capability are real), archived by GNU tar in PAX format with
 * xattrs, and added with `umoci raw add-layer`. Whiteouts and opaque markers are ordinary files
 * named `.wh.NAME` / `.wh..wh..opq` in the layer directory, exactly as they appear in OCI layers.
 */
import { execFileSync } from 'node:child_process'
import { chmodSync, chownSync, copyFileSync, linkSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync, utimesSync, openSync, closeSync, ftruncateSync, writeSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export type LayerBuilder = (root: string) => void

export interface BuiltImage {
  layout: string
  tag: string
  /** `oci:<layout>:<tag>` */
  ref: string
}

function run (cmd: string, args: string[], cwd?: string): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Builds an OCI layout image from layer builders. */
export function buildImage (opts: { workDir?: string, tag?: string, layers: LayerBuilder[], cmd?: string[], compress?: 'gzip' | 'none' }): BuiltImage {
  const work = opts.workDir ?? mkdtempSync(join(tmpdir(), 'naiad-img-'))
  const layout = join(work, 'layout')
  const tag = opts.tag ?? 'latest'
  run('umoci', ['init', '--layout', layout])
  run('umoci', ['new', '--image', `${layout}:${tag}`])
  opts.layers.forEach((build, i) => {
    const root = join(work, `layer${i}`)
    mkdirSync(root, { recursive: true })
    build(root)
    const tarPath = join(work, `layer${i}.tar`)
    run('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', root, '-cf', tarPath, '.'])
    run('umoci', ['raw', 'add-layer', '--image', `${layout}:${tag}`, tarPath])
  })
  run('umoci', ['config', '--image', `${layout}:${tag}`, '--config.cmd', (opts.cmd ?? ['/bin/sh'])[0]!, ...(opts.cmd ?? []).slice(1).flatMap(c => ['--config.cmd', c]), '--author', 'naiad-tests'])
  return { layout, tag, ref: `oci:${layout}:${tag}` }
}

/** Copies an OCI layout image into a registry with skopeo (plain HTTP). */
export function pushImage (img: BuiltImage, registryHost: string, repoTag: string, creds?: string, all = false): string {
  run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', ...(creds !== undefined ? ['--dest-creds', creds] : []), ...(all ? ['--all'] : []), `oci:${img.layout}:${img.tag}`, `docker://${registryHost}/${repoTag}`])
  return `${registryHost}/${repoTag}`
}

/** Deterministic pseudo-random bytes (xorshift) with compressible stretches. */
export function patternBytes (size: number, seed: number): Buffer {
  const b = Buffer.alloc(size)
  let x = (seed * 2654435761) >>> 0 || 1
  for (let i = 0; i < size; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    b[i] = (i >> 12) % 3 === 0 ? 0x41 + (i % 26) : x & 0xff
  }
  return b
}

const CAP_NET_RAW = '0x0100000200200000000000000000000000000000'

export const BAD_NAME = Buffer.concat([Buffer.from('latin1-'), Buffer.from([0xe9, 0xff]), Buffer.from('.txt')])

/**
 * Layers covering every fidelity point of the converter issue: file types, hard links, xattrs
 * (incl. security.capability), big uids, special bits, sparse files, 255-byte names, deep paths,
 * non-UTF-8 names, mtimes with nanoseconds and before 1970, whiteouts and opaque directories,
 * cross-layer duplicate content. Needs root.
 */
export function fidelityLayers (): LayerBuilder[] {
  const base: LayerBuilder = (r) => {
    mkdirSync(join(r, 'bin'))
    copyFileSync('/bin/busybox', join(r, 'bin', 'busybox'))
    chmodSync(join(r, 'bin', 'busybox'), 0o755)
    for (const l of ['sh', 'ls', 'cat', 'find', 'stat', 'sha256sum', 'echo']) symlinkSync('busybox', join(r, 'bin', l))
    mkdirSync(join(r, 'etc'))
    writeFileSync(join(r, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n')
    writeFileSync(join(r, 'etc', 'to-delete'), 'gone in layer 2\n')
    mkdirSync(join(r, 'opaque', 'sub'), { recursive: true })
    writeFileSync(join(r, 'opaque', 'old1'), 'hidden by the opaque marker')
    writeFileSync(join(r, 'opaque', 'sub', 'old2'), 'also hidden')
    mkdirSync(join(r, 'data'))
    writeFileSync(join(r, 'data', 'big.bin'), patternBytes(3 * 1024 * 1024 + 12345, 1))
    writeFileSync(join(r, 'data', 'empty'), '')
    mkdirSync(join(r, 'data', 'emptydir'))
    // sparse: 6 MiB with data only at 2 MiB and at the end
    const fd = openSync(join(r, 'data', 'sparse.img'), 'w')
    ftruncateSync(fd, 6 * 1024 * 1024)
    writeSync(fd, Buffer.from('in the middle'), 0, 13, 2 * 1024 * 1024)
    writeSync(fd, Buffer.from('at the end'), 0, 10, 6 * 1024 * 1024 - 10)
    closeSync(fd)
    writeFileSync(join(r, 'data', 'hl-a'), 'hard linked content\n')
    linkSync(join(r, 'data', 'hl-a'), join(r, 'data', 'hl-b'))
    mkdirSync(join(r, 'dev'))
    execFileSync('mknod', [join(r, 'dev', 'null'), 'c', '1', '3'])
    execFileSync('mknod', [join(r, 'dev', 'loopx'), 'b', '7', '200'])
    execFileSync('mknod', [join(r, 'dev', 'bigminor'), 'c', '259', '70000'])
    execFileSync('mkfifo', [join(r, 'dev', 'fifo')])
    writeFileSync(join(r, 'data', 'xattrs'), 'x')
    execFileSync('setfattr', ['-n', 'user.comment', '-v', 'hello world', join(r, 'data', 'xattrs')])
    execFileSync('setfattr', ['-n', 'user.binary', '-v', '0x00ff7f80', join(r, 'data', 'xattrs')])
    execFileSync('setfattr', ['-n', 'trusted.naiad', '-v', 'trusted-value', join(r, 'data', 'xattrs')])
    writeFileSync(join(r, 'bin', 'ping'), 'not really ping')
    execFileSync('setfattr', ['-n', 'security.capability', '-v', CAP_NET_RAW, join(r, 'bin', 'ping')])
    writeFileSync(join(r, 'data', 'bigids'), 'owned by 70000:80000')
    chownSync(join(r, 'data', 'bigids'), 70000, 80000)
    writeFileSync(join(r, 'data', 'setuid'), '#!/bin/sh\n'); chmodSync(join(r, 'data', 'setuid'), 0o4755)
    writeFileSync(join(r, 'data', 'setgid'), '#!/bin/sh\n'); chmodSync(join(r, 'data', 'setgid'), 0o2711)
    mkdirSync(join(r, 'tmp')); chmodSync(join(r, 'tmp'), 0o1777)
    writeFileSync(join(r, 'data', 'n'.repeat(255)), 'long name')
    let deep = join(r, 'deep')
    for (let i = 0; i < 60; i++) deep = join(deep, `level${i}`)
    mkdirSync(deep, { recursive: true })
    writeFileSync(join(deep, 'bottom.txt'), 'deep')
    writeFileSync(Buffer.concat([Buffer.from(join(r, 'data') + '/'), BAD_NAME]), 'non utf-8 name')
    symlinkSync('/etc/passwd', join(r, 'data', 'abs-link'))
    symlinkSync('../etc/passwd', join(r, 'data', 'rel-link'))
    symlinkSync('does-not-exist', join(r, 'data', 'dangling'))
    writeFileSync(join(r, 'data', 'old'), 'from 1960')
    execFileSync('touch', ['-h', '-d', '1960-06-15 12:00:00.5', join(r, 'data', 'old')])
    execFileSync('touch', ['-h', '-d', '2024-01-02 03:04:05.123456789', join(r, 'data', 'xattrs')])
    utimesSync(join(r, 'etc', 'passwd'), 1_600_000_000, 1_600_000_000)
  }
  const second: LayerBuilder = (r) => {
    mkdirSync(join(r, 'etc'))
    writeFileSync(join(r, 'etc', '.wh.to-delete'), '')
    writeFileSync(join(r, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n')
    mkdirSync(join(r, 'opaque'))
    writeFileSync(join(r, 'opaque', '.wh..wh..opq'), '')
    writeFileSync(join(r, 'opaque', 'new'), 'after the opaque marker')
    mkdirSync(join(r, 'data'))
    chmodSync(join(r, 'data'), 0o750)
    writeFileSync(join(r, 'data', '.wh.dangling'), '')
  }
  const third: LayerBuilder = (r) => {
    mkdirSync(join(r, 'copy'))
    // the same bytes as layer 1's big.bin: deduplicated across layers
    writeFileSync(join(r, 'copy', 'big-again.bin'), patternBytes(3 * 1024 * 1024 + 12345, 1))
    for (let i = 0; i < 50; i++) writeFileSync(join(r, 'copy', `small-${i}.txt`), `small file ${i}\n`.repeat(i + 1))
  }
  return [base, second, third]
}

/**
 * A multi-platform image: one manifest per platform (different file content each), all listed in
 * an OCI image index tagged `tag` in the layout.
 */
export function buildMultiPlatformImage (opts: { workDir: string, tag?: string, platforms: Array<{ architecture: string, variant?: string }> }): BuiltImage {
  const tag = opts.tag ?? 'multi'
  const layout = join(opts.workDir, 'layout')
  const manifests: Array<{ mediaType: string, digest: string, size: number, platform: Record<string, string> }> = []
  opts.platforms.forEach((p, i) => {
    const t = `${p.architecture}${p.variant ?? ''}`
    const sub = join(opts.workDir, `p${i}`)
    mkdirSync(sub, { recursive: true })
    if (i === 0) run('umoci', ['init', '--layout', layout])
    run('umoci', ['new', '--image', `${layout}:${t}`])
    const root = join(sub, 'root')
    mkdirSync(join(root, 'etc'), { recursive: true })
    writeFileSync(join(root, 'etc', 'arch'), `${t}\n`)
    writeFileSync(join(root, 'etc', 'shared'), patternBytes(200_000, 7))
    run('tar', ['--format=pax', '--numeric-owner', '--sort=name', '-C', root, '-cf', join(sub, 'l.tar'), '.'])
    run('umoci', ['raw', 'add-layer', '--image', `${layout}:${t}`, join(sub, 'l.tar')])
    run('umoci', ['config', '--image', `${layout}:${t}`, '--architecture', p.architecture, '--os', 'linux', '--config.cmd', '/bin/sh'])
    const idx = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ mediaType: string, digest: string, size: number, annotations?: Record<string, string> }> }
    const m = idx.manifests.find(x => x.annotations?.['org.opencontainers.image.ref.name'] === t)!
    manifests.push({ mediaType: m.mediaType, digest: m.digest, size: m.size, platform: { os: 'linux', architecture: p.architecture, ...(p.variant !== undefined ? { variant: p.variant } : {}) } })
  })
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }))
  const digest = createHash('sha256').update(index).digest('hex')
  writeFileSync(join(layout, 'blobs', 'sha256', digest), index)
  const top = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: unknown[] }
  top.manifests.push({ mediaType: 'application/vnd.oci.image.index.v1+json', digest: `sha256:${digest}`, size: index.length, annotations: { 'org.opencontainers.image.ref.name': tag } })
  writeFileSync(join(layout, 'index.json'), JSON.stringify(top))
  return { layout, tag, ref: `oci:${layout}:${tag}` }
}

/** Writes a raw layer (already a tar, possibly malicious) into a fresh single-layer image. */
export function imageFromTar (opts: { workDir: string, tar: Buffer, tag?: string }): BuiltImage {
  const tag = opts.tag ?? 'latest'
  const layout = join(opts.workDir, 'layout')
  run('umoci', ['init', '--layout', layout])
  run('umoci', ['new', '--image', `${layout}:${tag}`])
  writeFileSync(join(opts.workDir, 'raw.tar'), opts.tar)
  run('umoci', ['raw', 'add-layer', '--image', `${layout}:${tag}`, join(opts.workDir, 'raw.tar')])
  return { layout, tag, ref: `oci:${layout}:${tag}` }
}
