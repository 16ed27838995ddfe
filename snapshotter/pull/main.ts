/**
 * The composition root of `naiad pull`: parses the reference, opens the registry (docker config
 * credentials, plain HTTP for loopback or with --plain-http) and containerd's socket, runs the
 * pull with progress lines on stderr, and prints a summary (text or JSON) on stdout.
 */
import { parseDigest } from '../../lib/digest/index.ts'
import { causeChain, isNaiadError, NaiadError, toExitCode } from '../../lib/errors/index.ts'
import { createLogger, redactText, type LogLevel } from '../../lib/log/index.ts'
import { formatReference, hostPlatform, parsePlatform, parseRegistryReference, type Descriptor } from '../../lib/oci/index.ts'
import { openImageStore } from '../../lib/registry/index.ts'
import { ContainerdClient } from './containerd.ts'
import { pullImage, type PullResult } from './pull.ts'
import type { PullProgress, PullSource } from './types.ts'

export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock'

export interface PullCliOptions {
  address: string
  namespace: string
  snapshotter: string
  plainHttp?: boolean
  platform?: string
  output: 'text' | 'json'
  logLevel?: LogLevel
  debug?: boolean
}

export interface Io { stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream }

function mib (n: number): string {
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`
}

function progressLine (e: PullProgress): string {
  switch (e.type) {
    case 'resolved': return `resolved ${e.reference} -> ${e.digest} (${e.layers} layers)\n`
    case 'layer': {
      const what = { present: 'already unpacked', remote: 'remote (not downloaded)', downloaded: `downloaded ${mib(e.size)} and unpacked`, applied: 'unpacked from the content store' }[e.outcome]
      return `layer ${e.index + 1}/${e.count} ${e.digest.slice(0, 19)}: ${what} (${e.durationMs} ms)\n`
    }
    case 'image': return `image ${e.name} ${e.action}\n`
  }
}

function summary (r: PullResult): string {
  return [
    `pulled ${r.image}`,
    `digest:      ${r.digest}`,
    `snapshotter: ${r.snapshotter} (top snapshot ${r.chainId})`,
    `layers:      ${r.layers.length} (${r.skipped} skipped, ${r.downloaded} downloaded)`,
    `downloaded:  ${r.bytesDownloaded} bytes (${mib(r.bytesDownloaded)})`,
    `time:        ${(r.durationMs / 1000).toFixed(2)} s`
  ].join('\n') + '\n'
}

/** Prints an error for the user and returns the exit code. */
function reportError (io: Io, err: unknown, json: boolean, debug: boolean): number {
  const code = toExitCode(err)
  if (json) {
    const o = isNaiadError(err) ? err.toJSON() : { code: 'NAIAD_INTERNAL', kind: 'Unknown', message: err instanceof Error ? err.message : String(err) }
    io.stderr.write(redactText(JSON.stringify({ error: o })) + '\n')
    return code
  }
  io.stderr.write(redactText(isNaiadError(err) ? `naiad: ${err.code}: ${err.message}\nhint: ${err.hint}\n` : `naiad: ${err instanceof Error ? err.message : String(err)}\n`))
  if (debug) io.stderr.write(redactText(causeChain(err).map((l) => `  caused by ${l}`).join('\n') + '\n'))
  return code
}

/** Runs `naiad pull`; returns the exit code. */
export async function runPull (refArg: string, o: PullCliOptions, io: Io, signal?: AbortSignal): Promise<number> {
  const json = o.output === 'json'
  const log = createLogger({ service: 'pull', level: o.logLevel ?? 'warn', destination: io.stderr as never })
  let containerd: ContainerdClient | undefined
  let store: ReturnType<typeof openImageStore> | undefined
  try {
    const ref = parseRegistryReference(refArg)
    if (o.namespace === '') throw new NaiadError('NAIAD_CLI_USAGE', '--namespace must not be empty')
    if (o.snapshotter === '') throw new NaiadError('NAIAD_CLI_USAGE', '--snapshotter must not be empty')
    const platform = o.platform !== undefined ? parsePlatform(o.platform) : hostPlatform()
    store = openImageStore(ref, { plainHttp: o.plainHttp === true ? true : 'loopback', logger: log.child({ component: 'registry' }) })
    const s = store
    const source: PullSource = {
      getManifest: async (target, opts) => await s.getManifest(typeof target === 'object' ? { ...target, digest: parseDigest(target.digest) } as Descriptor : target, opts ?? {}),
      getBlob: async (digest, opts) => await s.getBlob(parseDigest(digest), opts ?? {})
    }
    containerd = new ContainerdClient({}, { address: o.address, namespace: o.namespace })
    const result = await pullImage({
      containerd,
      source,
      log,
      onProgress: (e) => { if (!json) io.stderr.write(progressLine(e)) }
    }, {
      reference: formatReference(ref),
      registry: ref.registry,
      repository: ref.repository,
      snapshotter: o.snapshotter,
      platform,
      ...(signal !== undefined ? { signal } : {})
    })
    io.stdout.write(json ? JSON.stringify(result, null, 2) + '\n' : summary(result))
    return 0
  } catch (err) {
    return reportError(io, err, json, o.debug === true)
  } finally {
    await containerd?.close()
    await store?.close()
  }
}
