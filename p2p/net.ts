/**
 * Listener helpers shared by the peer and the scheduler: parsing `host:port` / `unix:/path`
 * addresses, starting an HTTP server on one (a stale Unix socket is removed first, its directory
 * created 0700), and closing it gracefully (stop accepting, let in-flight requests finish within a
 * grace period, then cut the rest). `close()` is safe to call twice.
 */
import { mkdir, rm } from 'node:fs/promises'
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { dirname } from 'node:path'
import { NaiadError } from '../lib/errors/index.ts'

export type ListenAddress = { kind: 'tcp', host: string, port: number } | { kind: 'unix', path: string }

/** Parses `host:port`, `[v6]:port`, `:port` (all interfaces) or `unix:/path`. */
export function parseListen (s: string): ListenAddress {
  if (s.startsWith('unix:')) {
    const path = s.slice(5).replace(/^\/\/(?=\/)/, '')
    if (!path.startsWith('/')) throw new NaiadError('NAIAD_CFG_INVALID', `unix socket path must be absolute: ${s}`)
    if (Buffer.byteLength(path) > 107) throw new NaiadError('NAIAD_CFG_INVALID', `unix socket path longer than 107 bytes (sun_path): ${s}`)
    return { kind: 'unix', path }
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})$/.exec(s)
  const port = Number(m?.[3])
  if (m === null || port > 65535) throw new NaiadError('NAIAD_CFG_INVALID', `not a listen address (host:port or unix:/path): ${JSON.stringify(s)}`)
  return { kind: 'tcp', host: m[1] ?? (m[2] === '' ? '0.0.0.0' : (m[2] ?? '0.0.0.0')), port }
}

export function formatAddress (a: ListenAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`
}

/** Starts `server` on `addr`; resolves with the bound address (the real port for port 0). */
export async function listen (server: Server, addr: ListenAddress): Promise<ListenAddress> {
  if (addr.kind === 'unix') {
    await mkdir(dirname(addr.path), { recursive: true, mode: 0o700 })
    await rm(addr.path, { force: true })
  }
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => { reject(new NaiadError('NAIAD_IO', `cannot listen on ${formatAddress(addr)}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err })) }
    server.once('error', onError)
    const done = (): void => { server.off('error', onError); resolve() }
    if (addr.kind === 'unix') server.listen(addr.path, done)
    else server.listen(addr.port, addr.host, done)
  })
  if (addr.kind === 'unix') return addr
  const a = server.address() as AddressInfo
  return { kind: 'tcp', host: addr.host, port: a.port }
}

/**
 * Stops accepting, waits up to `graceMs` for in-flight requests, then destroys what is left.
 * Idle keep-alive connections are closed at once.
 */
export async function closeServer (server: Server, graceMs: number): Promise<void> {
  if (!server.listening) return
  const closed = new Promise<void>(resolve => server.close(() => resolve()))
  server.closeIdleConnections()
  const timer = setTimeout(() => server.closeAllConnections(), graceMs)
  timer.unref()
  await closed
  clearTimeout(timer)
}
