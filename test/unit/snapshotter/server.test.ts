import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { afterEach, describe, expect, it } from 'vitest'
import { NaiadError } from '../../../lib/errors/index.ts'
import { nullLogger } from '../../../lib/log/index.ts'
import { parseFilters } from '../../../snapshotter/filters.ts'
import { SnapshotsClient } from '../../../snapshotter/grpc/client.ts'
import { fromServiceError, infoFromMsg, infoToMsg, kindFromMsg, toServiceError } from '../../../snapshotter/grpc/convert.ts'
import { SnapshotsServer } from '../../../snapshotter/grpc/service.ts'
import { checkSocketPath } from '../../../snapshotter/grpc/socket.ts'
import { LocalSnapshotter } from '../../../snapshotter/local/overlay.ts'
import type { SnapshotInfo } from '../../../snapshotter/snapshotter.ts'

const dirs: string[] = []
const closers: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c()
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})
async function tmp (): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'naiad-snapsrv-'))
  dirs.push(d)
  return d
}

describe('snapshotter socket', () => {
  it('rejects paths over 107 bytes', () => {
    expect(() => { checkSocketPath('/' + 'x'.repeat(107)) }).toThrow(NaiadError)
    expect(() => { checkSocketPath('/' + 'x'.repeat(106)) }).not.toThrow()
  })

  it('listens with mode 0600, replaces a stale socket, refuses a live one and a non-socket', async () => {
    const d = await tmp()
    const sock = join(d, 'run', 'snap.sock')
    // a stale socket: bound, then the server went away without unlinking
    await mkdir(join(d, 'run'))
    const stale = createServer()
    await new Promise<void>((resolve) => stale.listen(sock, resolve))
    await new Promise<void>((resolve) => { stale.close(() => { resolve() }) })
    await writeFile(join(d, 'placeholder'), '')
    const log = nullLogger()
    const sn = new LocalSnapshotter({ log }, { root: join(d, 'root') })
    closers.push(async () => { await sn.close() })
    const server = new SnapshotsServer({ snapshotter: sn, log }, { socket: sock })
    closers.push(async () => { await server.close() })
    await server.start()
    expect((await stat(sock)).mode & 0o777).toBe(0o600)
    const second = new SnapshotsServer({ snapshotter: sn, log }, { socket: sock })
    await expect(second.start()).rejects.toMatchObject({ code: 'NAIAD_SNAP_SOCKET' })
    const third = new SnapshotsServer({ snapshotter: sn, log }, { socket: join(d, 'placeholder') })
    await expect(third.start()).rejects.toMatchObject({ code: 'NAIAD_SNAP_SOCKET' })
    await server.close()
    await server.close()
  })

  it('errors cross the wire with containerd status codes and our codes', async () => {
    const d = await tmp()
    const log = nullLogger()
    const sn = new LocalSnapshotter({ log }, { root: join(d, 'root') })
    const server = new SnapshotsServer({ snapshotter: sn, log }, { socket: join(d, 's.sock') })
    await server.start()
    const c = new SnapshotsClient({}, { socket: server.socket })
    closers.push(async () => { await c.close(); await server.close(); await sn.close() })
    await expect(c.stat('nope')).rejects.toMatchObject({ code: 'NAIAD_SNAP_NOT_FOUND', kind: 'NotFound' })
    // a client that knows nothing of our metadata key still gets the right kind (containerd's view)
    const e = toServiceError(new NaiadError('NAIAD_SNAP_HAS_CHILDREN', 'x'))
    expect(e.code).toBe(grpc.status.FAILED_PRECONDITION)
    const bare = Object.assign(new Error('x'), { code: grpc.status.ALREADY_EXISTS, details: 'x', metadata: new grpc.Metadata() })
    expect(fromServiceError(bare, 'Prepare').kind).toBe('AlreadyExists')
    const abort = new DOMException('aborted', 'AbortError')
    expect(toServiceError(abort).code).toBe(grpc.status.CANCELLED)
  })
})

describe('snapshotter convert', () => {
  it('info round trip; UNKNOWN kind reads as committed like containerd', () => {
    const i: SnapshotInfo = { name: 'n', parent: 'p', kind: 'view', labels: { a: 'b' }, createdAt: new Date(1234567), updatedAt: new Date(2345678) }
    expect(infoFromMsg(infoToMsg(i))).toEqual(i)
    expect(kindFromMsg('UNKNOWN')).toBe('committed')
  })
})

describe('snapshotter filters', () => {
  const i: SnapshotInfo = { name: 'default/3/x', parent: 'sha256:p', kind: 'active', labels: { 'containerd.io/snapshot.ref': 'sha256:c', plain: 'a,b' }, createdAt: new Date(), updatedAt: new Date() }
  it.each([
    [[], true],
    [['name==default/3/x'], true],
    [['name=="default/3/x"'], true],
    [['labels."containerd.io/snapshot.ref"==sha256:c,parent=="sha256:p"'], true],
    [['labels."containerd.io/snapshot.ref"==sha256:c,parent=="other"'], false],
    [['labels.plain=="a,b"'], true],
    [['labels.missing'], false],
    [['kind==view', 'kind==active'], true],
    [['name~=^default/'], true],
    [['name!=default/3/x'], false]
  ])('%j → %s', (filters, want) => {
    expect(parseFilters(filters as string[])(i)).toBe(want)
  })
  it('rejects malformed filters', () => {
    expect(() => parseFilters(['name=="unterminated'])).toThrow(NaiadError)
    expect(() => parseFilters(['name==a b==c'])).not.toThrow()
    expect(() => parseFilters(['==x'])).toThrow(NaiadError)
  })
})

describe('local snapshotter restart and crash leftovers', () => {
  it('a second instance on the same root sees the same snapshots; cleanup removes unreferenced directories', async () => {
    const d = await tmp()
    const log = nullLogger()
    const a = new LocalSnapshotter({ log }, { root: d })
    await a.prepare('x', '', { labels: { l: '1' } })
    await a.commit('c', 'x', { labels: { l: '1' } })
    await a.view('v', 'c')
    await a.close()
    // leftovers of a crash: a half-made snapshot and a half-removed one
    await mkdir(join(d, 'snapshots', 'new-abc', 'fs'), { recursive: true })
    await mkdir(join(d, 'snapshots', '999', 'fs'), { recursive: true })
    const b = new LocalSnapshotter({ log }, { root: d })
    closers.push(async () => { await b.close() })
    expect(await b.stat('c')).toMatchObject({ kind: 'committed', labels: { l: '1' } })
    expect(await b.stat('v')).toMatchObject({ kind: 'view', parent: 'c' })
    await b.cleanup()
    expect((await readdir(join(d, 'snapshots'))).sort()).toEqual(['1', '2'])
    // ids are never reused
    await b.remove('v')
    await b.prepare('y', 'c')
    expect((await readdir(join(d, 'snapshots'))).sort()).toEqual(['1', '3'])
  })
})
