/**
 * Our .proto files (lib/proto/**: containerd's wire contracts written by us, and naiad's own), and
 * the one way to load them at runtime with @grpc/proto-loader. tsc does not copy .proto files, so
 * the path resolves to the repository's lib/proto both from the sources and from dist/.
 */
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { NaiadError } from '../errors/index.ts'

/** The lib/proto directory (the include root of every proto). */
export function protoRoot (): string {
  // sources: lib/proto/index.ts; compiled: dist/lib/proto/index.js
  for (const up of ['./', '../../../lib/proto/']) {
    const p = fileURLToPath(new URL(up, import.meta.url))
    if (existsSync(`${p}/containerd`) || existsSync(`${p}/naiad`)) return p.replace(/\/$/, '')
  }
  throw new NaiadError('NAIAD_INTERNAL', `cannot find lib/proto next to ${fileURLToPath(import.meta.url)}`)
}

/** Absolute path of a proto file given relative to lib/proto (e.g. `naiad/p2p/v1/scheduler.proto`). */
export function protoPath (rel: string): string {
  const p = `${protoRoot()}/${rel}`
  if (!existsSync(p)) throw new NaiadError('NAIAD_INTERNAL', `cannot find proto ${rel} in ${protoRoot()}`)
  return p
}

/**
 * Loads a proto (relative to lib/proto, which is also the include root) with the options every
 * naiad adapter uses: camelCase fields, numbers for 64-bit integers, enum names, defaults, oneofs.
 */
export function loadProto (rel: string, extra: protoLoader.Options = {}): grpc.GrpcObject {
  return grpc.loadPackageDefinition(protoLoader.loadSync(protoPath(rel), {
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [protoRoot()],
    ...extra
  }))
}
