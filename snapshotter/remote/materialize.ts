/**
 * The snapshotter's full-download fallback (a Materializer): the image's filesystem written out
 * from the local bootstrap and the data blobs of the image's repository (lib/nydus/materialize.ts),
 * with the same registry credentials (docker config.json) and plain-HTTP rule as the fsdaemon.
 */
import { readFile } from 'node:fs/promises'
import { NaiadError } from '../../lib/errors/index.ts'
import { Bootstrap } from '../../lib/format/bootstrap.ts'
import type { Logger } from '../../lib/log/index.ts'
import { materializeImage } from '../../lib/nydus/materialize.ts'
import { parseReference } from '../../lib/oci/reference.ts'
import { openImageStore } from '../../lib/registry/open.ts'
import type { Materializer } from '../local/overlay.ts'
import type { OpOptions } from '../snapshotter.ts'
import type { ImageCredentials, RemoteImage } from './filesystem.ts'

export class RegistryMaterializer implements Materializer {
  readonly #log: Logger
  readonly #plainHttp: boolean
  readonly #credentials: ImageCredentials | undefined

  constructor (deps: { log: Logger, credentials?: ImageCredentials }, options: { plainHttp: boolean }) {
    this.#log = deps.log.child({ component: 'snapshotter.materialize' })
    this.#credentials = deps.credentials
    this.#plainHttp = options.plainHttp
  }

  async materialize (dir: string, image: RemoteImage, opts: OpOptions = {}): Promise<void> {
    let raw: Buffer
    try {
      raw = await readFile(image.bootstrap)
    } catch (err) {
      throw new NaiadError('NAIAD_IO', `cannot read the bootstrap ${image.bootstrap}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err })
    }
    const bootstrap = Bootstrap.parse(raw)
    const ref = parseReference(image.image)
    if (ref.kind !== 'registry') throw new NaiadError('NAIAD_CLI_USAGE', `image ${image.image} must be a registry reference`)
    // the CRI's credentials for the image if it gave some, else the node's docker config.json
    const credentials = this.#credentials?.get(image.image)
    const store = openImageStore(ref, { plainHttp: this.#plainHttp ? true : 'loopback', logger: this.#log, ...(credentials !== undefined ? { credentials } : {}) })
    const t0 = Date.now()
    try {
      const stats = await materializeImage(dir, bootstrap, store, {
        ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
        warn: (msg, path) => { this.#log.warn({ path, image: image.image }, msg) }
      })
      this.#log.info({ image: image.image, dir, ...stats, ms: Date.now() - t0 }, 'image written out in full')
    } finally {
      await store.close()
    }
  }
}
