/**
 * Registry credentials: from docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`) the way the docker CLI reads it — `credHelpers[host]`, else
 * `credsStore`, else `auths` (`auth` base64 `user:password`, or `username`/`password`,
 * `identitytoken`, `registrytoken`) — or a fixed table. Credentials are only looked up when a
 * registry asks for them (a 401 challenge), so anonymous pulls never run a helper.
 *
 * Nothing here logs a secret: log lines name the registry and the helper, never values.
 */
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { ioError, NaiadError } from '../errors/index.ts'
import { nullLogger, redactText, type Logger } from '../log/index.ts'

/** What a registry may be given. Username+password serve Basic auth and token requests. */
export interface Credentials {
  username?: string
  password?: string
  /** An OAuth2 refresh token (docker's `identitytoken`), exchanged at the token endpoint. */
  identityToken?: string
  /** A bearer token sent to the registry as is (docker's `registrytoken`). */
  registryToken?: string
}

/** Looks up credentials for a registry name (`docker.io`, `host:5000`). */
export interface CredentialProvider {
  /**
   * Credentials for `registry`, or undefined when none are configured (anonymous access). Throws
   * NAIAD_REG_CREDENTIAL_HELPER when a configured helper fails, NAIAD_IO when the config file
   * cannot be read, NAIAD_CFG_PARSE when it is not JSON.
   */
  get (registry: string, opts?: { signal?: AbortSignal }): Promise<Credentials | undefined>
}

/** A provider with a fixed table (keys: registry names as in references). */
export function staticCredentials (table: Record<string, Credentials>): CredentialProvider {
  const normalized = new Map(Object.entries(table).map(([k, v]) => [hostKey(k), v]))
  return {
    async get (registry) {
      return normalized.get(hostKey(registry))
    }
  }
}

const HUB_NAMES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com'])
/** The key docker uses for Docker Hub in config.json and with credential helpers. */
export const DOCKER_HUB_SERVER = 'https://index.docker.io/v1/'

/** `https://host:5000/v1/` → `host:5000`; every Docker Hub alias → `docker.io`. */
export function hostKey (s: string): string {
  let h = s.trim().toLowerCase().replace(/^[a-z]+:\/\//, '')
  const slash = h.indexOf('/')
  if (slash !== -1) h = h.slice(0, slash)
  return HUB_NAMES.has(h) ? 'docker.io' : h
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string, username?: string, password?: string, identitytoken?: string, registrytoken?: string }>
  credHelpers?: Record<string, string>
  credsStore?: string
}

export interface DockerConfigCredentialsDeps {
  logger?: Logger
  /** Environment for DOCKER_CONFIG, HOME and the helpers' PATH (default process.env). */
  env?: Record<string, string | undefined>
}

export interface DockerConfigCredentialsOptions {
  /** Explicit config.json path (overrides DOCKER_CONFIG). */
  configPath?: string
  /** Kill a credential helper after this long (default 30 s). */
  helperTimeoutMs?: number
}

const HELPER_NAME_RE = /^[A-Za-z0-9_.-]+$/

/**
 * Docker's config.json as a CredentialProvider. The file is read once, on the first lookup; a
 * missing file means "no credentials". Helper answers are cached per registry for the life of
 * the provider.
 */
export class DockerConfigCredentials implements CredentialProvider {
  private readonly logger: Logger
  private readonly env: Record<string, string | undefined>
  private readonly options: DockerConfigCredentialsOptions
  private config: Promise<DockerConfigFile> | undefined
  private readonly helperCache = new Map<string, Credentials | undefined>()

  constructor (deps: DockerConfigCredentialsDeps = {}, options: DockerConfigCredentialsOptions = {}) {
    this.logger = (deps.logger ?? nullLogger()).child({ component: 'registry.credentials' })
    this.env = deps.env ?? process.env
    this.options = options
  }

  /** The config.json path this provider reads. */
  get path (): string {
    if (this.options.configPath !== undefined) return this.options.configPath
    const dir = this.env['DOCKER_CONFIG']
    if (dir !== undefined && dir !== '') return join(dir, 'config.json')
    return join(this.env['HOME'] ?? homedir(), '.docker', 'config.json')
  }

  async get (registry: string, opts: { signal?: AbortSignal } = {}): Promise<Credentials | undefined> {
    const cfg = await this.load()
    const key = hostKey(registry)
    const helper = findEntry(cfg.credHelpers, key) ?? (cfg.credsStore !== undefined && cfg.credsStore !== '' ? cfg.credsStore : undefined)
    if (helper !== undefined) {
      if (this.helperCache.has(key)) return this.helperCache.get(key)
      const fromHelper = await this.runHelper(helper, key === 'docker.io' ? DOCKER_HUB_SERVER : key, opts.signal)
      // As the docker CLI does: a helper that knows nothing leaves the file's own entry in force.
      const out = fromHelper ?? fromAuths(cfg, key)
      this.helperCache.set(key, out)
      this.logger.debug({ registry: key, helper, found: out !== undefined }, 'credentials from helper')
      return out
    }
    const out = fromAuths(cfg, key)
    this.logger.debug({ registry: key, found: out !== undefined }, 'credentials from config file')
    return out
  }

  private async load (): Promise<DockerConfigFile> {
    this.config ??= (async () => {
      const path = this.path
      let text: string
      try {
        text = await readFile(path, 'utf8')
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {}
        throw ioError('cannot read docker config', path, err)
      }
      try {
        const v = JSON.parse(text) as unknown
        return typeof v === 'object' && v !== null ? v as DockerConfigFile : {}
      } catch (err) {
        // Never quote the file: it holds secrets.
        throw new NaiadError('NAIAD_CFG_PARSE', `docker config ${path} is not valid JSON`, { cause: new Error((err as Error).name), hint: 'fix the JSON of that file (docker login rewrites it)' })
      }
    })()
    try {
      return await this.config
    } catch (err) {
      this.config = undefined
      throw err
    }
  }

  /** Runs `docker-credential-<helper> get` with the server URL on stdin. */
  private async runHelper (helper: string, server: string, signal: AbortSignal | undefined): Promise<Credentials | undefined> {
    const bin = `docker-credential-${helper}`
    if (!HELPER_NAME_RE.test(helper)) {
      throw new NaiadError('NAIAD_REG_CREDENTIAL_HELPER', `credential helper name ${JSON.stringify(helper.slice(0, 60))} is not valid`)
    }
    const timeoutMs = this.options.helperTimeoutMs ?? 30_000
    const result = await new Promise<{ code: number | null, stdout: string, stderr: string }>((resolve, reject) => {
      const child = spawn(bin, ['get'], {
        env: this.env as NodeJS.ProcessEnv,
        stdio: ['pipe', 'pipe', 'pipe'],
        timeout: timeoutMs,
        ...(signal !== undefined ? { signal } : {})
      })
      const out: Buffer[] = []
      const errOut: Buffer[] = []
      child.stdout.on('data', (b: Buffer) => out.push(b))
      child.stderr.on('data', (b: Buffer) => errOut.push(b))
      child.stdin.on('error', () => { /* the helper may exit without reading */ })
      child.on('error', (err) => {
        if (err.name === 'AbortError') { reject(err); return }
        const missing = (err as NodeJS.ErrnoException).code === 'ENOENT'
        reject(new NaiadError('NAIAD_REG_CREDENTIAL_HELPER', missing ? `${bin} is not on PATH` : `${bin} could not be run: ${err.message}`, { cause: err, details: { helper: bin } }))
      })
      child.on('close', (code, sig) => {
        if (sig !== null && code === null) {
          reject(new NaiadError('NAIAD_REG_CREDENTIAL_HELPER', `${bin} was killed by ${sig}${sig === 'SIGTERM' ? ` (timeout ${timeoutMs} ms?)` : ''}`, { details: { helper: bin } }))
          return
        }
        resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(errOut).toString('utf8') })
      })
      child.stdin.end(server)
    })
    if (result.code !== 0) {
      const msg = `${result.stdout} ${result.stderr}`.trim()
      if (/credentials not found/i.test(msg)) return undefined
      throw new NaiadError('NAIAD_REG_CREDENTIAL_HELPER', `${bin} get exited with ${String(result.code)}: ${redactText(msg).slice(0, 200)}`, { details: { helper: bin, exitCode: result.code } })
    }
    let parsed: { Username?: unknown, Secret?: unknown }
    try {
      parsed = JSON.parse(result.stdout) as typeof parsed
    } catch {
      throw new NaiadError('NAIAD_REG_CREDENTIAL_HELPER', `${bin} get printed something that is not JSON`, { details: { helper: bin } })
    }
    if (typeof parsed.Secret !== 'string' || parsed.Secret === '') return undefined
    const user = typeof parsed.Username === 'string' ? parsed.Username : ''
    // The helper protocol marks identity (refresh) tokens with the user name "<token>".
    if (user === '<token>') return { identityToken: parsed.Secret }
    return { username: user, password: parsed.Secret }
  }
}

function findEntry<T> (table: Record<string, T> | undefined, key: string): T | undefined {
  if (table === undefined || typeof table !== 'object') return undefined
  if (Object.hasOwn(table, key)) return table[key]
  for (const [k, v] of Object.entries(table)) if (hostKey(k) === key) return v
  return undefined
}

function fromAuths (cfg: DockerConfigFile, key: string): Credentials | undefined {
  const e = findEntry(cfg.auths, key)
  if (e === undefined || typeof e !== 'object' || e === null) return undefined
  const out: Credentials = {}
  if (typeof e.auth === 'string' && e.auth !== '') {
    const decoded = Buffer.from(e.auth, 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon > 0) {
      out.username = decoded.slice(0, colon)
      out.password = decoded.slice(colon + 1)
    }
  }
  if (typeof e.username === 'string' && e.username !== '') out.username = e.username
  if (typeof e.password === 'string' && e.password !== '') out.password = e.password
  if (typeof e.identitytoken === 'string' && e.identitytoken !== '') out.identityToken = e.identitytoken
  if (typeof e.registrytoken === 'string' && e.registrytoken !== '') out.registryToken = e.registrytoken
  return Object.keys(out).length === 0 ? undefined : out
}
