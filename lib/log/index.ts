/**
 * Logging: one pino root logger per process (created by a composition root), child loggers per
 * component (`component: "converter.push"`), JSON lines to stdout or a given stream. Credentials are
 * redacted by path and, for free-text fields, by pattern (Authorization headers, bearer tokens,
 * passwords in URLs).
 */
import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino'

export type { Logger } from 'pino'

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

/** Paths pino censors wherever they appear in a log object. */
export const REDACT_PATHS: readonly string[] = [
  'authorization', 'Authorization', '*.authorization', '*.Authorization',
  'headers.authorization', 'headers.Authorization', '*.headers.authorization', '*.headers.Authorization',
  'password', '*.password', 'token', '*.token', 'access_token', '*.access_token',
  'auth', '*.auth', 'identitytoken', '*.identitytoken', 'secret', '*.secret',
  'credentials', '*.credentials', 'registry_token', '*.registry_token'
]

const SECRET_PATTERNS: ReadonlyArray<[RegExp, string]> = [
  [/(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/g, '$1 [REDACTED]'],
  [/(\/\/[^/:@\s]+:)[^@/\s]+@/g, '$1[REDACTED]@'],
  [/((?:access_)?token=)[^&\s"]+/gi, '$1[REDACTED]'],
  [/(password=)[^&\s"]+/gi, '$1[REDACTED]']
]

/** Removes credentials from free text (error messages, URLs). */
export function redactText (s: string): string {
  let out = s
  for (const [re, rep] of SECRET_PATTERNS) out = out.replace(re, rep)
  return out
}

export interface CreateLoggerOptions {
  service: string
  level?: LogLevel
  destination?: DestinationStream
  base?: Record<string, unknown>
}

export function createLogger (opts: CreateLoggerOptions): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? 'info',
    base: { service: opts.service, pid: process.pid, ...opts.base },
    redact: { paths: [...REDACT_PATHS], censor: '[REDACTED]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: {
      level: (label) => ({ level: label })
    },
    hooks: {
      logMethod (args, method) {
        // Scrub strings (message and interpolation arguments) for credentials.
        const cleaned = args.map(a => typeof a === 'string' ? redactText(a) : a) as typeof args
        method.apply(this, cleaned)
      }
    },
    serializers: {
      err: (err: unknown) => {
        const s = pino.stdSerializers.err(err as Error) as unknown as Record<string, unknown>
        if (typeof s['message'] === 'string') s['message'] = redactText(s['message'])
        if (typeof s['stack'] === 'string') s['stack'] = redactText(s['stack'])
        return s
      }
    }
  }
  return opts.destination !== undefined ? pino(options, opts.destination) : pino(options)
}

/** A logger that discards everything (for library callers that pass none). */
export function nullLogger (): Logger {
  return pino({ level: 'silent' })
}
