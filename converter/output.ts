/**
 * User-facing output of the converter commands: progress bars per layer on a terminal, JSON log
 * lines otherwise; errors as `naiad: CODE: message` + `hint:`, or one JSON object with
 * --output json.
 */
import { MultiBar, Presets, type SingleBar } from 'cli-progress'
import { causeChain, isNaiadError, toExitCode } from '../lib/errors/index.ts'
import { redactText, type Logger } from '../lib/log/index.ts'
import type { ProgressEvent } from './convert.ts'

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean }
  stderr: NodeJS.WritableStream & { isTTY?: boolean }
}

export function progressReporter (io: Io, log: Logger, json: boolean): { onProgress: (e: ProgressEvent) => void, stop: () => void } {
  if (io.stderr.isTTY === true && !json) {
    const multi = new MultiBar({ clearOnComplete: false, hideCursor: true, format: ' {name} [{bar}] {percentage}% | {value}/{total} bytes in | {status}', stream: io.stderr as NodeJS.WritableStream & { isTTY: boolean } as never }, Presets.shades_classic)
    const bars = new Map<string, SingleBar>()
    return {
      onProgress (e) {
        const key = e.type === 'push' ? '' : `${e.platform}#${e.index}`
        if (e.type === 'layer-start') {
          bars.set(key, multi.create(e.size, 0, { name: `${e.platform} layer ${e.index + 1}/${e.count} ${e.digest.slice(7, 19)}`, status: 'converting' }))
        } else if (e.type === 'layer-progress') {
          // progress counts uncompressed bytes; show them against the compressed size until done
          const b = bars.get(key)
          if (b !== undefined) { if (e.bytes > b.getTotal()) b.setTotal(e.bytes); b.update(e.bytes) }
        } else if (e.type === 'layer-done') {
          const b = bars.get(key)
          b?.setTotal(e.uncompressed); b?.update(e.uncompressed, { status: `${e.chunks} new chunks` })
        }
      },
      stop () { multi.stop() }
    }
  }
  let last = 0
  return {
    onProgress (e) {
      if (e.type === 'layer-progress') {
        const now = Date.now()
        if (now - last < 2000) return
        last = now
      }
      log.info({ event: e.type, ...e }, e.type)
    },
    stop () {}
  }
}

/** Prints an error for the user and returns the exit code. */
export function reportError (io: Io, err: unknown, json: boolean, debug: boolean): number {
  const code = toExitCode(err)
  if (json) {
    const o = isNaiadError(err) ? err.toJSON() : { code: 'NAIAD_INTERNAL', kind: 'Unknown', message: err instanceof Error ? err.message : String(err) }
    io.stderr.write(redactText(JSON.stringify({ error: o })) + '\n')
    return code
  }
  if (isNaiadError(err)) {
    io.stderr.write(redactText(`naiad: ${err.code}: ${err.message}\nhint: ${err.hint}\n`))
  } else {
    io.stderr.write(redactText(`naiad: ${err instanceof Error ? err.message : String(err)}\n`))
  }
  if (debug) io.stderr.write(redactText(causeChain(err).map(l => `  caused by ${l}`).join('\n') + '\n' + (err instanceof Error ? err.stack ?? '' : '') + '\n'))
  return code
}
