/** Small helpers for the peer's HTTP handlers. */
import { once } from 'node:events'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { isNaiadError, kindOf, NaiadError, toHttpStatus } from '../../lib/errors/index.ts'
import { redactText } from '../../lib/log/index.ts'

/** Writes a chunk, waiting for 'drain' when the socket buffer is full; rejects if the client left. */
export async function writeChunk (res: ServerResponse, chunk: Uint8Array, signal?: AbortSignal): Promise<void> {
  if (res.destroyed) throw new NaiadError('NAIAD_ABORTED', 'the client went away')
  if (!res.write(chunk)) {
    await once(res, 'drain', signal !== undefined ? { signal } : {})
  }
}

/** A short error response (JSON) unless headers were sent, in which case the connection is cut. */
export function sendError (res: ServerResponse, status: number, err: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = JSON.stringify({
    code: isNaiadError(err) ? err.code : 'NAIAD_INTERNAL',
    message: redactText(err instanceof Error ? err.message : String(err)).slice(0, 500)
  }) + '\n'
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
  res.end(body)
}

export function statusFor (err: unknown): number {
  if (kindOf(err) === 'Unknown') return 500
  return toHttpStatus(err)
}

/** Reads a small request body (JSON APIs). */
export async function readBody (req: IncomingMessage, limit = 64 * 1024): Promise<string> {
  const parts: Buffer[] = []
  let n = 0
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length
    if (n > limit) throw new NaiadError('NAIAD_P2P_BAD_REQUEST', `request body larger than ${limit} bytes`)
    parts.push(c)
  }
  return Buffer.concat(parts).toString('utf8')
}
