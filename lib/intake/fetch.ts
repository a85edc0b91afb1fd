/**
 * Bounded, SSRF-guarded HTTP(S) fetching of crawled image URLs with undici.
 *
 * One keep-alive Agent is shared by all requests. Its connector resolves every new connection's host through the
 * AddressGuard and dials the address that passed the check (SNI and Host keep the original name), so a DNS answer
 * cannot change between check and connect. Redirects are followed here, not by undici, so each hop is checked.
 */
import { Agent, type Dispatcher } from 'undici';
import { guardedConnector, type AddressGuard } from './address-guard.ts';
import { fetchFailed } from './reject.ts';
import { BlockedAddressError, RejectError, ResolveError } from '../errors.ts';
import { RetryPolicy } from '../support/retry.ts';

export interface FetcherOptions {
  readonly userAgent: string;
  readonly connectTimeoutMs: number;
  readonly headersTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  readonly totalTimeoutMs: number;
  readonly maxBytes: number;
  readonly maxRedirects: number;
  readonly retries: number;
  readonly retryBaseDelayMs: number;
  readonly maxRetryDelayMs: number;
  readonly perHostConcurrency: number;
}

export interface FetchedBody {
  readonly bytes: Buffer;
  /** Media type without parameters, lower-cased; undefined when the server sent none. */
  readonly contentType?: string;
  /** The URL the bytes came from, after redirects. */
  readonly url: string;
  readonly attempts: number;
  readonly redirects: number;
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** Network failures worth another try: the next connection may well succeed. */
const RETRYABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'EAI_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** A 429 or 5xx answer, retried after at least its Retry-After. */
class RetryStatus extends Error {
  constructor(
    readonly status: number,
    readonly retryAfterMs: number | undefined,
  ) {
    super(`HTTP ${status}`);
  }
}

/** An attempt that threw, with the error the caller gets for it and whether another attempt may help. */
class FailedAttempt extends Error {
  constructor(readonly mapped: { error: Error; retryable: boolean }) {
    super(mapped.error.message);
  }
}

type Attempt =
  | { type: 'ok'; bytes: Buffer; contentType?: string }
  | { type: 'redirect'; location: URL }
  | { type: 'retry'; status: number; retryAfterMs?: number };

/** Per-host counting semaphore: a crawl batch often hits one CDN host hundreds of times. */
class HostLimiter {
  private readonly slots = new Map<string, { active: number; waiters: (() => void)[] }>();
  constructor(private readonly limit: number) {}

  async acquire(host: string, signal: AbortSignal): Promise<() => void> {
    let s = this.slots.get(host);
    if (!s) this.slots.set(host, (s = { active: 0, waiters: [] }));
    const slot = s;
    if (slot.active >= this.limit) {
      await new Promise<void>((resolve, reject) => {
        const wake = (): void => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = (): void => {
          const i = slot.waiters.indexOf(wake);
          if (i >= 0) slot.waiters.splice(i, 1);
          reject(signal.reason);
        };
        slot.waiters.push(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    } else {
      slot.active++;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = slot.waiters.shift();
      if (next)
        next(); // the slot passes straight to the waiter
      else if (--slot.active === 0) this.slots.delete(host);
    };
  }
}

/** Retry-After as ms from now (delta-seconds or HTTP-date), undefined when absent or unparseable. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined || v.trim() === '') return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

function header(h: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Accepted media types: images other than SVG (script-capable, not a raster), and generic binary. */
function contentTypeOk(type: string | undefined): boolean {
  if (type === undefined || type === '') return true; // many origins omit it; the magic-byte check decides
  if (type === 'image/svg+xml') return false;
  return type.startsWith('image/') || type === 'application/octet-stream' || type === 'binary/octet-stream';
}

export class Fetcher {
  private readonly agent: Agent;
  private readonly limiter: HostLimiter;
  private readonly retry: RetryPolicy;

  constructor(
    private readonly opts: FetcherOptions,
    private readonly guard: AddressGuard,
  ) {
    const connect = guardedConnector(guard, opts.connectTimeoutMs);
    this.agent = new Agent({
      connect,
      connections: opts.perHostConcurrency,
      headersTimeout: opts.headersTimeoutMs,
      bodyTimeout: opts.bodyTimeoutMs,
      keepAliveTimeout: 10_000,
    });
    this.limiter = new HostLimiter(opts.perHostConcurrency);
    this.retry = new RetryPolicy({
      maxAttempts: opts.retries + 1,
      baseMs: opts.retryBaseDelayMs,
      maxMs: opts.maxRetryDelayMs,
      // Up to half of each wait off at random, so a burst of failures against one host does not retry in lockstep.
      jitter: 0.5,
      // A Retry-After longer than the longest wait allowed: the server asks for more than this fetch may give.
      retriable: (e) =>
        e instanceof RetryStatus
          ? !(e.retryAfterMs !== undefined && e.retryAfterMs > opts.maxRetryDelayMs)
          : e instanceof FailedAttempt && e.mapped.retryable,
      retryAfterMs: (e) => (e instanceof RetryStatus ? e.retryAfterMs : undefined),
    });
  }

  /** GETs `url` following checked redirects. Rejects with RejectError `fetch_failed`, or `signal.reason` on abort. */
  async fetch(url: string, signal?: AbortSignal): Promise<FetchedBody> {
    signal?.throwIfAborted();
    // A plain controller + cleared timer instead of AbortSignal.timeout/any: those stay alive (with undici's
    // listeners and the request they reference) until the deadline passes, which at 100+ fetches/s kept tens of MB
    // reachable and made V8 run a full mark-compact every few dozen images.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new Error('intake total timeout')), this.opts.totalTimeoutMs);
    const forward = (): void => ac.abort(signal?.reason);
    signal?.addEventListener('abort', forward, { once: true });
    try {
      return await this.fetchHops(url, ac.signal, signal);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', forward);
    }
  }

  private async fetchHops(url: string, sig: AbortSignal, signal: AbortSignal | undefined): Promise<FetchedBody> {
    let current = checkScheme(url);
    let attempts = 0;
    for (let redirects = 0; ; redirects++) {
      const hop = await this.fetchHop(current, sig, signal);
      attempts += hop.attempts;
      if (hop.result.type === 'ok') {
        return {
          bytes: hop.result.bytes,
          contentType: hop.result.contentType,
          url: current.href,
          attempts,
          redirects,
        };
      }
      if (redirects >= this.opts.maxRedirects) {
        throw fetchFailed('too_many_redirects', `more than ${this.opts.maxRedirects} redirects fetching ${url}`, {
          limit: this.opts.maxRedirects,
          url,
        });
      }
      current = checkScheme(hop.result.location.href);
    }
  }

  private async fetchHop(
    url: URL,
    sig: AbortSignal,
    callerSignal: AbortSignal | undefined,
  ): Promise<{ result: Exclude<Attempt, { type: 'retry' }>; attempts: number }> {
    let attempts = 0;
    const once = async (attempt: number) => {
      attempts = attempt;
      const release = await this.limiter.acquire(url.host, sig).catch((e: unknown) => {
        throw this.mapError(e, url, sig, callerSignal).error;
      });
      try {
        const outcome = await this.attempt(url, sig).catch((err: unknown) => {
          throw new FailedAttempt(this.mapError(err, url, sig, callerSignal));
        });
        if (outcome.type === 'retry') throw new RetryStatus(outcome.status, outcome.retryAfterMs);
        return outcome;
      } finally {
        // Before the backoff: the host's slot is not held while waiting.
        release();
      }
    };
    try {
      return { result: await this.retry.run(once, { signal: sig }), attempts };
    } catch (err) {
      throw this.hopFailure(err, attempts, url, sig, callerSignal);
    }
  }

  /** The error a hop's last failure gives the caller. */
  private hopFailure(
    err: unknown,
    attempts: number,
    url: URL,
    sig: AbortSignal,
    callerSignal: AbortSignal | undefined,
  ): Error {
    // A stop or the total timeout cut the wait for a retry short: that, not the failure before it, is the answer.
    if (sig.aborted && this.retry.retriable(err)) return this.mapError(sig.reason, url, sig, callerSignal).error;
    if (err instanceof RetryStatus) {
      return fetchFailed('http_status', `HTTP ${err.status} from ${url.host} after ${attempts} attempt(s)`, {
        status: err.status,
        attempts,
        ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
        url: url.href,
      });
    }
    if (!(err instanceof FailedAttempt)) return err as Error;
    const { error } = err.mapped;
    if (error instanceof RejectError && error.reason.detail && attempts > 1) {
      (error.reason.detail as Record<string, unknown>).attempts = attempts;
    }
    return error;
  }

  private async attempt(url: URL, sig: AbortSignal): Promise<Attempt> {
    const res = await this.agent.request({
      origin: url.origin,
      path: url.pathname + url.search,
      method: 'GET',
      headers: { 'user-agent': this.opts.userAgent, accept: 'image/*,application/octet-stream;q=0.9,*/*;q=0.5' },
      signal: sig,
    });
    const { statusCode: status, headers, body } = res;
    const discard = (): void => {
      body.on('error', () => undefined); // destroy() without a cause still emits an abort error
      body.destroy();
    };
    const drain = (): void => {
      // Small leftovers are read so the connection returns to the pool; large ones just close it.
      body.dump({ limit: 64 * 1024 }).catch(() => undefined);
    };
    if (REDIRECT_STATUSES.has(status)) {
      const loc = header(headers, 'location');
      drain();
      if (loc === undefined)
        throw fetchFailed('http_status', `HTTP ${status} without Location from ${url.host}`, { status });
      let location: URL;
      try {
        location = new URL(loc, url);
      } catch {
        throw fetchFailed('http_status', `HTTP ${status} with invalid Location from ${url.host}`, { status });
      }
      return { type: 'redirect', location };
    }
    if (status === 429 || status >= 500) {
      const retryAfterMs = status === 429 || status === 503 ? parseRetryAfter(headers['retry-after']) : undefined;
      drain();
      return { type: 'retry', status, retryAfterMs };
    }
    if (status < 200 || status >= 300) {
      drain();
      throw fetchFailed('http_status', `HTTP ${status} from ${url.host}`, { status, url: url.href });
    }
    const contentType = header(headers, 'content-type')?.split(';')[0]?.trim().toLowerCase();
    if (!contentTypeOk(contentType)) {
      discard();
      throw fetchFailed('bad_content_type', `content type ${contentType} from ${url.host} is not an image`, {
        contentType,
        url: url.href,
      });
    }
    const max = this.opts.maxBytes;
    const declared = Number(header(headers, 'content-length'));
    if (Number.isFinite(declared) && declared > max) {
      discard();
      throw fetchFailed('too_large', `${url.host} declares ${declared} bytes, over the ${max}-byte limit`, {
        limit: max,
        contentLength: declared,
      });
    }
    const chunks: Buffer[] = [];
    let received = 0;
    for await (const chunk of body as AsyncIterable<Buffer>) {
      received += chunk.length;
      if (received > max) {
        discard();
        throw fetchFailed('too_large', `body from ${url.host} exceeds the ${max}-byte limit`, {
          limit: max,
          received,
        });
      }
      chunks.push(chunk);
    }
    if (received === 0) throw fetchFailed('empty_body', `empty body from ${url.host}`, { url: url.href });
    return { type: 'ok', bytes: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received), contentType };
  }

  private mapError(
    err: unknown,
    url: URL,
    sig: AbortSignal,
    callerSignal: AbortSignal | undefined,
  ): { error: Error; retryable: boolean } {
    if (err instanceof RejectError) return { error: err, retryable: false };
    if (callerSignal?.aborted) return { error: toError(callerSignal.reason), retryable: false };
    if (sig.aborted) {
      return {
        error: fetchFailed('timeout', `fetching ${url.href} took over ${this.opts.totalTimeoutMs} ms`, {
          phase: 'total',
          ms: this.opts.totalTimeoutMs,
        }),
        retryable: false,
      };
    }
    const e = findCause(err);
    if (e instanceof BlockedAddressError) {
      return {
        error: fetchFailed('blocked_address', e.message, { address: e.address, host: e.host, range: e.range }),
        retryable: false,
      };
    }
    const code = e instanceof ResolveError ? e.dnsCode : ((e as NodeJS.ErrnoException).code ?? 'UNKNOWN');
    const timeoutPhase =
      code === 'UND_ERR_CONNECT_TIMEOUT'
        ? 'connect'
        : code === 'UND_ERR_HEADERS_TIMEOUT'
          ? 'headers'
          : code === 'UND_ERR_BODY_TIMEOUT'
            ? 'body'
            : code === 'EAI_TIMEOUT'
              ? 'dns'
              : undefined;
    const retryable = RETRYABLE_CODES.has(code);
    if (timeoutPhase) {
      return {
        error: fetchFailed('timeout', `${timeoutPhase} timeout fetching from ${url.host}`, { phase: timeoutPhase }),
        retryable,
      };
    }
    return {
      error: fetchFailed('connection_error', `connection to ${url.host} failed: ${code} ${(e as Error).message}`, {
        code,
        host: url.host,
      }),
      retryable,
    };
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}

/** Only http(s) may be fetched: the pair parser already enforces this, but redirects can point anywhere. */
function checkScheme(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw fetchFailed('bad_scheme', `not a valid URL: ${url.slice(0, 200)}`, { url: url.slice(0, 200) });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw fetchFailed('bad_scheme', `refusing ${u.protocol} URL (only http and https)`, { scheme: u.protocol });
  }
  if (u.username || u.password) u.username = u.password = '';
  return u;
}

function findCause(err: unknown): unknown {
  let e = err;
  for (let i = 0; i < 5 && e instanceof Error; i++) {
    if (e instanceof BlockedAddressError || e instanceof ResolveError) return e;
    if (e.cause === undefined) break;
    e = e.cause;
  }
  return err;
}

function toError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}
