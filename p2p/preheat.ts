/**
 * `naiad preheat REF`: warm seed peers with an image's blobs before a rollout. The image's
 * manifest (or every manifest of its index, filtered by platform) is read with this machine's
 * credentials; each layer blob is then handed to every target peer (`POST /api/v1/preheat`, served
 * by seed peers on their upload listener and by any peer on its local mirror listener), which
 * downloads it through the normal p2p path with its own node's credentials — so each blob leaves
 * the registry about once however many seeds there are. No credential is ever sent to a peer.
 *
 * Targets: `peers` (URLs) if given, else every seed the scheduler knows.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { NaiadError, throwIfAborted } from '../lib/errors/index.ts'
import { nullLogger, type Logger } from '../lib/log/index.ts'
import { parseManifestOrIndex, selectManifest, type Descriptor, type Platform } from '../lib/oci/index.ts'
import { parseRegistryReference } from '../lib/oci/reference.ts'
import { openImageStore, type CredentialProvider } from '../lib/registry/index.ts'
import { SchedulerAdmin } from './peer/scheduler-client.ts'

export interface PreheatOptions {
  ref: string
  /** Plain HTTP to the registry (default: only for loopback addresses). */
  plainHttp?: boolean
  platforms: Platform[] | 'all'
  scheduler?: string
  peers?: string[]
  /** Wait until every blob is complete and verified on every target (default true). */
  wait?: boolean
  timeoutMs?: number
  signal?: AbortSignal
  onProgress?: (line: string) => void
}

export interface PreheatBlobResult {
  digest: string
  size: number
  targets: Array<{ target: string, taskId: string, state: 'done' | 'running' | 'failed', error?: string }>
}

export interface PreheatResult {
  reference: string
  origin: string
  blobs: PreheatBlobResult[]
  ok: boolean
}

function isLoopback (endpoint: string): boolean {
  const h = endpoint.replace(/:\d+$/, '')
  return h === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '[::1]'
}

/** The layer blobs of an image (all selected platforms), deduplicated. */
export async function imageBlobs (ref: string, o: { plainHttp?: boolean, platforms: Platform[] | 'all', logger?: Logger, credentials?: CredentialProvider, signal?: AbortSignal }): Promise<{ origin: string, repository: string, blobs: Descriptor[] }> {
  const r = parseRegistryReference(ref)
  const plain = o.plainHttp === true || isLoopback(r.endpoint)
  const store = openImageStore(r, { plainHttp: plain, ...(o.logger !== undefined ? { logger: o.logger } : {}), ...(o.credentials !== undefined ? { credentials: o.credentials } : {}) })
  try {
    const sig = o.signal !== undefined ? { signal: o.signal } : {}
    const top = await store.getManifest(undefined, sig)
    const parsed = parseManifestOrIndex(top.bytes, top.mediaType)
    const manifests = []
    if (parsed.kind === 'manifest') manifests.push(parsed.manifest)
    else {
      const picks = o.platforms === 'all' ? selectManifest(parsed.index, 'all') : o.platforms.flatMap(p => selectManifest(parsed.index, p))
      for (const d of picks) {
        const m = await store.getManifest(d, sig)
        const p = parseManifestOrIndex(m.bytes, m.mediaType)
        if (p.kind === 'manifest') manifests.push(p.manifest)
      }
    }
    const seen = new Map<string, Descriptor>()
    for (const m of manifests) for (const l of m.layers) seen.set(l.digest, l)
    return { origin: `${plain ? 'http' : 'https'}://${r.endpoint}`, repository: r.repository, blobs: [...seen.values()] }
  } finally {
    await store.close()
  }
}

export async function preheat (deps: { logger?: Logger, credentials?: CredentialProvider }, o: PreheatOptions): Promise<PreheatResult> {
  const log = (deps.logger ?? nullLogger()).child({ component: 'p2p.preheat' })
  const deadline = Date.now() + (o.timeoutMs ?? 30 * 60_000)
  if ((o.peers ?? []).length === 0 && (o.scheduler === undefined || o.scheduler === '')) throw new NaiadError('NAIAD_CLI_USAGE', 'preheat needs --scheduler (to find seed peers) or --peer URL')
  const { origin, repository, blobs } = await imageBlobs(o.ref, { ...(o.plainHttp !== undefined ? { plainHttp: o.plainHttp } : {}), platforms: o.platforms, logger: log, ...(deps.credentials !== undefined ? { credentials: deps.credentials } : {}), ...(o.signal !== undefined ? { signal: o.signal } : {}) })
  let targets = (o.peers ?? []).map(p => p.replace(/\/+$/, ''))
  if (targets.length === 0 && o.scheduler !== undefined) {
    const admin = new SchedulerAdmin({ address: o.scheduler })
    try {
      const seeds = await admin.listHosts(true, o.signal !== undefined ? { signal: o.signal } : {})
      targets = seeds.filter(s => s.blocklistedUntil === 0).map(s => `http://${s.host.ip.includes(':') ? `[${s.host.ip}]` : s.host.ip}:${s.host.uploadPort}`)
    } finally {
      admin.close()
    }
    if (targets.length === 0) throw new NaiadError('NAIAD_P2P_NO_SEEDS', `the scheduler at ${o.scheduler} knows no seed peers`)
  }
  o.onProgress?.(`preheating ${blobs.length} blob(s) of ${o.ref} on ${targets.length} peer(s)`)
  const results: PreheatBlobResult[] = blobs.map(b => ({ digest: b.digest, size: b.size, targets: [] }))
  for (const [i, b] of blobs.entries()) {
    for (const t of targets) {
      const entry: PreheatBlobResult['targets'][number] = { target: t, taskId: '', state: 'running' }
      ;(results[i] as PreheatBlobResult).targets.push(entry)
      try {
        const res = await request(`${t}/api/v1/preheat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ origin, repository, digest: b.digest }), ...(o.signal !== undefined ? { signal: o.signal } : {}) })
        const text = await res.body.text()
        if (res.statusCode !== 202) throw new NaiadError('NAIAD_P2P_PREHEAT_FAILED', `${t} refused the preheat of ${b.digest}: HTTP ${res.statusCode} ${text.slice(0, 200)}`)
        entry.taskId = (JSON.parse(text) as { taskId: string }).taskId
      } catch (err) {
        entry.state = 'failed'
        entry.error = err instanceof Error ? err.message : String(err)
        log.warn({ err, target: t, digest: b.digest }, 'preheat request failed')
      }
    }
  }
  if (o.wait !== false) {
    for (;;) {
      throwIfAborted(o.signal)
      let pending = 0
      for (const r of results) {
        for (const e of r.targets) {
          if (e.state !== 'running') continue
          try {
            const res = await request(`${e.target}/api/v1/tasks/${e.taskId}`, { method: 'GET', ...(o.signal !== undefined ? { signal: o.signal } : {}) })
            const st = await res.body.json() as { verified?: boolean, piecesHeld?: number, pieceCount?: number, preheat?: string, error?: string }
            if (st.verified === true) { e.state = 'done'; o.onProgress?.(`${e.target}: ${r.digest} done`) } else if (st.preheat === 'failed') { e.state = 'failed'; e.error = st.error ?? 'failed' } else pending++
          } catch (err) {
            pending++
            log.debug({ err, target: e.target }, 'preheat status poll failed')
          }
        }
      }
      if (pending === 0) break
      if (Date.now() > deadline) {
        for (const r of results) for (const e of r.targets) if (e.state === 'running') { e.state = 'failed'; e.error = 'timed out' }
        break
      }
      await sleep(500, undefined, o.signal !== undefined ? { signal: o.signal } : {})
    }
  }
  const ok = results.every(r => r.targets.every(t => t.state === 'done' || (o.wait === false && t.state === 'running')))
  return { reference: o.ref, origin, blobs: results, ok }
}

