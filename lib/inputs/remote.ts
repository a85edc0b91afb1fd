/**
 * Remote inputs: S3 objects (through the backfill worker's ranged reader, lib/backfill/shard-input.ts: one reader)
 * and http(s) URLs, streamed. A URL is fetched through the same SSRF guard as crawled images (lib/intake): private,
 * loopback and link-local addresses are refused unless `--allow-address` opens them (the explicit opt-in a local
 * server needs), every connection dials the address that passed the check, and redirects are followed here so that
 * each hop is checked.
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Agent, request } from 'undici';
import { openS3Object } from '../backfill/shard-input.ts';
import { withRetry } from '../backfill/s3-io.ts';
import type { S3Location } from '../backfill/shard-job.ts';
import { AddressGuard, guardedConnector, parseAllowAddress, type AllowRule } from '../intake/address-guard.ts';
import { httpStatus, isNotFound } from '../support/aws-errors.ts';
import { RetryPolicy } from '../support/retry.ts';
import { FilterError } from '../types.ts';
import { HEAD_BYTES } from './sniff.ts';

const uriOf = (loc: S3Location) => `s3://${loc.bucket}/${loc.key}`;

/** The first bytes of an S3 object (to recognise its format), read before the run; missing or forbidden: refused. */
export async function s3Head(s3: S3Client, loc: S3Location): Promise<Buffer> {
  const uri = uriOf(loc);
  try {
    return await withRetry(`get ${uri} (first bytes)`, async () => {
      const res = await s3.send(
        new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key, Range: `bytes=0-${HEAD_BYTES - 1}` }),
      );
      return Buffer.from(await res.Body!.transformToByteArray());
    });
  } catch (err) {
    // An empty object has no byte 0: S3 answers 416.
    if (httpStatus(err) === 416) return Buffer.alloc(0);
    const status = httpStatus(err);
    if (isNotFound(err) || status === 403) {
      // `s3://bucket/prefix` without its slash names one object: the likelier intent is the shards under it.
      const hint = isNotFound(err) && !loc.key.endsWith('/') ? ` (the shards under a prefix: ${uri}/)` : '';
      const why = `${(err as Error).name} (HTTP ${status})${hint}`;
      throw new FilterError('input_unreadable', `cannot read input ${uri}: ${why}`, { uri, status });
    }
    throw new FilterError('shard_read_failed', `input ${uri}: ${(err as Error).message}`, { uri }, { cause: err });
  }
}

/** An S3 object's bytes, ranged reads one ahead (memory stays at two ranges whatever its size). */
export async function s3Chunks(s3: S3Client, loc: S3Location): Promise<AsyncIterable<Buffer>> {
  return (await openS3Object(s3, loc)).chunks;
}

export interface HttpInputOptions {
  /** `--allow-address` rules: what the guard lets through (a loopback test server, a private mirror). */
  readonly allowAddresses?: readonly (string | AllowRule)[];
  readonly userAgent?: string;
  readonly connectTimeoutMs?: number;
  /** Longest wait for the next bytes of a body, ms. Default 60 s. */
  readonly bodyTimeoutMs?: number;
  /**
   * The slowest body read: fewer than `bytes` in `windowMs` of waiting on the server (time the reader spends on
   * what it got does not count) fails the read as a stall would. Default 16 KiB a minute: a server that trickles a
   * byte now and then to dodge `bodyTimeoutMs` does not hold a run forever.
   */
  readonly lowSpeed?: { readonly bytes: number; readonly windowMs: number };
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
const MAX_RESUMES = 3;
const LOW_SPEED = { bytes: 16 * 1024, windowMs: 60_000 };

/** Query parameters that carry a secret: presigned S3 URLs, Azure SAS, bearer tokens. */
const SECRET_PARAMS =
  /([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|access_token)=)[^&#]*/gi;

/**
 * The URL as it may be shown (errors, logs, summary.json, rejects): any user and password in it, and the values of
 * query parameters that sign or authorise it, are `***`.
 */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i, '$1***@').replace(SECRET_PARAMS, '$1***');
}

/**
 * GETs http(s) inputs through the address guard; one keep-alive agent for all of them. A user and password in a URL
 * are sent as HTTP Basic authentication to that URL's origin only (a redirect elsewhere does not get them), and are
 * never shown: every message names the URL as `redactUrl` writes it.
 */
export class HttpInputs {
  private readonly agent: Agent;
  private readonly retry = new RetryPolicy({ maxAttempts: 4, baseMs: 250, maxMs: 4000 });
  /** What each URL's first-bytes probe saw: the read that follows must get the same object. */
  private readonly probed = new Map<string, Version>();

  constructor(private readonly options: HttpInputOptions = {}) {
    const allow = (options.allowAddresses ?? []).map((a) => (typeof a === 'string' ? parseAllowAddress(a) : a));
    const guard = new AddressGuard({ allow });
    const connect = guardedConnector(guard, options.connectTimeoutMs ?? 10_000);
    this.agent = new Agent({ connect, bodyTimeout: options.bodyTimeoutMs ?? 60_000, headersTimeout: 30_000 });
  }

  /** The first bytes of `url` (to recognise its format), read before the run; a failing URL is refused by name. */
  async head(url: string): Promise<Buffer> {
    const res = await this.open(url, { range: `bytes=0-${HEAD_BYTES - 1}` });
    this.probed.set(url, res.version);
    const parts: Buffer[] = [];
    let got = 0;
    try {
      for await (const chunk of paced(res.body, this.options.lowSpeed ?? LOW_SPEED)) {
        parts.push(chunk);
        got += chunk.length;
        if (got >= HEAD_BYTES) break; // a server that ignores Range: the rest is not read
      }
    } catch (err) {
      throw unreadable(url, `its first bytes: ${(err as Error).message}`);
    }
    return Buffer.concat(parts).subarray(0, HEAD_BYTES);
  }

  /**
   * The body of `url`, streamed (nothing buffered past what the reader asks for). It must be the object the probe
   * recognised (same ETag, Last-Modified and length where both answers give them). A connection lost mid-body is
   * picked up where it stopped with a ranged GET (If-Range on the first answer's strong ETag or Last-Modified), up to
   * 3 times; the resumed bytes must come from that same object, else the read fails with `input_changed` rather than
   * splice two objects. A server that cannot resume fails it with `shard_read_failed` (retriable).
   */
  async chunks(url: string): Promise<AsyncIterable<Buffer>> {
    const first = await this.open(url, {});
    const probed = this.probed.get(url);
    const diff = probed && difference(probed, first.version);
    if (diff) {
      discard(first.body);
      throw changedError(url, 0, `since its first bytes were read (${diff})`);
    }
    return this.resuming(url, first);
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  private async *resuming(url: string, first: Opened): AsyncGenerator<Buffer> {
    let res = first;
    let got = 0;
    for (let resumes = 0; ;) {
      try {
        for await (const chunk of paced(res.body, this.options.lowSpeed ?? LOW_SPEED)) {
          got += chunk.length;
          yield chunk;
        }
        return;
      } catch (err) {
        const failed = (why: string) =>
          new FilterError(
            'shard_read_failed',
            `reading ${redactUrl(url)} at byte ${got} failed: ${(err as Error).message}${why}`,
            { url: redactUrl(url), offset: got },
            { cause: err },
          );
        const validator = ifRangeOf(first);
        if (!validator) throw failed(' (the server gave no strong ETag or Last-Modified to resume against)');
        if (++resumes > MAX_RESUMES) throw failed(` (${MAX_RESUMES} resumes)`);
        res = await this.resume(url, first.version, validator, got);
      }
    }
  }

  /**
   * The rest of the object from byte `got`, checked to be the same object: never another one's bytes. An answer
   * that contradicts the first is `input_changed`; one that cannot be proven to continue it, `shard_read_failed`.
   */
  private async resume(url: string, version: Version, validator: string, got: number): Promise<Opened> {
    const res = await this.open(url, { range: `bytes=${got}-`, ifRange: validator });
    if (res.status === 416) {
      discard(res.body);
      throw changedError(url, got, `while it was read (it now ends before byte ${got})`);
    }
    const diff = difference(version, res.version);
    const why = diff ? undefined : unresumable(res, version, validator, got);
    if (!diff && !why) {
      if (res.status === 206) return res;
      // The same object whole again (a server that ignores Range): what was read already is skipped.
      return { ...res, body: Object.assign(skipped(res.body, got), { destroy: () => discard(res.body) }) };
    }
    discard(res.body);
    if (diff) throw changedError(url, got, `while it was read (${diff})`);
    const shown = redactUrl(url);
    throw new FilterError('shard_read_failed', `reading ${shown} at byte ${got} failed and cannot be resumed: ${why}`, {
      url: shown,
      offset: got,
    });
  }

  private async open(url: string, o: { range?: string; ifRange?: string }): Promise<Opened> {
    const start = parseUrl(url);
    const auth = basicAuth(start);
    let current = start;
    for (let hop = 0; ; hop++) {
      if (current.protocol !== 'https:' && current.protocol !== 'http:') {
        throw unreadable(url, `redirected to ${current.protocol} (only http and https are read)`);
      }
      const headers = {
        'user-agent': this.options.userAgent ?? 'mlm-filter-stream (shard input)',
        ...(o.range ? { range: o.range } : {}),
        ...(o.ifRange ? { 'if-range': o.ifRange } : {}),
        // Credentials go to the origin they were given for, not to wherever it redirects.
        ...(auth && current.origin === start.origin ? { authorization: auth } : {}),
      };
      const res = await this.request(url, withoutCredentials(current), headers);
      if (REDIRECTS.has(res.statusCode)) {
        discard(res.body);
        current = this.redirect(url, current, res, hop);
        continue;
      }
      // 416: an empty body cannot serve byte 0.
      if (res.statusCode === 416 && o.range === `bytes=0-${HEAD_BYTES - 1}`) {
        discard(res.body);
        return { status: 200, headers: {}, version: { total: '0' }, body: emptyBody() };
      }
      // A resume's 416 (the object now ends before that byte) is for the resume to judge.
      const resumed416 = res.statusCode === 416 && o.ifRange !== undefined;
      if (res.statusCode !== 200 && res.statusCode !== 206 && !resumed416) {
        discard(res.body);
        throw unreadable(url, `HTTP ${res.statusCode}`);
      }
      return { status: res.statusCode, headers: res.headers, version: versionOf(res), body: res.body };
    }
  }

  /** One GET, retried under the one policy on 5xx, 429 and network errors. */
  private async request(url: string, target: URL, headers: Record<string, string>) {
    return this.retry
      .run(async () => {
        const r = await request(target, { dispatcher: this.agent, method: 'GET', headers });
        if (r.statusCode >= 500 || r.statusCode === 429) {
          discard(r.body);
          throw Object.assign(new Error(`HTTP ${r.statusCode}`), { retriable: true });
        }
        return r;
      })
      .catch((err: Error & { code?: string }) => {
        const hint = err.code === 'address_blocked' ? ' (--allow-address opens it, as for image fetches)' : '';
        throw unreadable(url, err.message + hint);
      });
  }

  /** Where a redirect points (each hop goes through the guard again when it is requested). */
  private redirect(url: string, from: URL, res: { statusCode: number; headers: Headers }, hop: number): URL {
    const location = res.headers.location;
    if (typeof location !== 'string') throw unreadable(url, `HTTP ${res.statusCode} without a Location`);
    if (hop >= MAX_REDIRECTS) throw unreadable(url, `redirected more than ${MAX_REDIRECTS} times (a loop?)`);
    try {
      return new URL(location, from);
    } catch {
      throw unreadable(url, `HTTP ${res.statusCode} to an invalid Location ${JSON.stringify(redactUrl(location))}`);
    }
  }
}

type Headers = Record<string, string | string[] | undefined>;

/** What one answer says of the object it serves: a resumed or re-read body must agree on every one it gives. */
interface Version {
  readonly etag?: string;
  readonly lastModified?: string;
  /**
   * The object's length in bytes (Content-Length of a 200, the total of a 206's Content-Range), as its digits without
   * leading zeros: compared, never computed with, so two lengths past 2^53 that differ are still told apart.
   */
  readonly total?: string;
}

/** An answer being read: its status, headers, what it says of its object, and its body. */
interface Opened {
  readonly status: number;
  readonly headers: Headers;
  readonly version: Version;
  readonly body: AsyncIterable<Buffer> & { destroy(): void };
}

const header = (headers: Headers, name: string) => {
  const v = headers[name];
  return typeof v === 'string' ? v : undefined;
};

function versionOf(res: { statusCode: number; headers: Headers }): Version {
  const length =
    res.statusCode === 206
      ? /\/(\d+)$/.exec(header(res.headers, 'content-range') ?? '')?.[1]
      : header(res.headers, 'content-length');
  return {
    ...(header(res.headers, 'etag') ? { etag: header(res.headers, 'etag') } : {}),
    ...(header(res.headers, 'last-modified') ? { lastModified: header(res.headers, 'last-modified') } : {}),
    ...(length !== undefined && /^\d+$/.test(length) ? { total: length.replace(/^0+(?=\d)/, '') } : {}),
  };
}

/** How `later` contradicts `first` on a field both give, else undefined. */
function difference(first: Version, later: Version): string | undefined {
  for (const [field, name] of [
    ['etag', 'ETag'],
    ['lastModified', 'Last-Modified'],
    ['total', 'length'],
  ] as const) {
    const [a, b] = [first[field], later[field]];
    if (a !== undefined && b !== undefined && a !== b) return `${name} ${a} became ${b}`;
  }
  return undefined;
}

/** The If-Range validator of a first answer: a strong ETag (a weak one may not be used), else Last-Modified. */
function ifRangeOf(first: Opened): string | undefined {
  if (first.headers['accept-ranges'] === 'none') return undefined;
  const { etag, lastModified } = first.version;
  return etag && !etag.startsWith('W/') ? etag : lastModified;
}

/** Why an answer to a resume at byte `got` is not provably the rest of the object, or undefined when it is. */
function unresumable(res: Opened, version: Version, validator: string, got: number): string | undefined {
  if (res.status === 200) {
    const strong = version.etag !== undefined && !version.etag.startsWith('W/') && res.version.etag === version.etag;
    return strong ? undefined : 'the server sent the whole object again, and no strong ETag proves it the same';
  }
  const range = String(res.headers['content-range'] ?? '');
  if (!range.startsWith(`bytes ${got}-`))
    return `the server answered ${range || 'without a range'}, not byte ${got} on`;
  if (validatorOf(res, validator) !== validator)
    return 'the ranged answer does not repeat the validator it was asked for';
  return undefined;
}

/** The validator a resumed answer carries of the kind that was sent (a 206 must repeat it). */
function validatorOf(res: Opened, sent: string): string | undefined {
  return sent.startsWith('"') ? res.version.etag : res.version.lastModified;
}

function parseUrl(url: string): URL {
  try {
    return new URL(url);
  } catch {
    throw unreadable(url, 'not a valid URL');
  }
}

function withoutCredentials(url: URL): URL {
  if (!url.username && !url.password) return url;
  const bare = new URL(url);
  bare.username = '';
  bare.password = '';
  return bare;
}

function basicAuth(url: URL): string | undefined {
  if (!url.username && !url.password) return undefined;
  const pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return `Basic ${Buffer.from(pair).toString('base64')}`;
}

/** The body, failing like a stall when it comes slower than `floor` (only time spent waiting on it counts). */
async function* paced(body: AsyncIterable<Buffer>, floor: { bytes: number; windowMs: number }) {
  const it = body[Symbol.asyncIterator]();
  let waited = 0;
  let bytes = 0;
  try {
    for (;;) {
      const asked = performance.now();
      const next = await it.next();
      waited += performance.now() - asked;
      if (next.done) return;
      bytes += next.value.length;
      if (waited >= floor.windowMs) {
        if (bytes < floor.bytes) {
          throw new Error(`too slow: ${bytes} bytes in ${Math.round(waited)} ms, under ${floor.bytes} a window`);
        }
        [waited, bytes] = [0, 0];
      }
      yield next.value;
    }
  } finally {
    await it.return?.();
  }
}

/** The body without its first `n` bytes. */
async function* skipped(body: AsyncIterable<Buffer>, n: number): AsyncGenerator<Buffer> {
  let left = n;
  for await (const chunk of body) {
    if (left >= chunk.length) left -= chunk.length;
    else {
      yield left > 0 ? chunk.subarray(left) : chunk;
      left = 0;
    }
  }
}

function unreadable(url: string, why: string): FilterError {
  const shown = redactUrl(url);
  return new FilterError('input_unreadable', `cannot read input ${shown}: ${why}`, { url: shown });
}

function changedError(url: string, offset: number, why: string): FilterError {
  const shown = redactUrl(url);
  return new FilterError(
    'input_changed',
    `input ${shown} changed ${why}: its bytes from two versions are not spliced; read it again`,
    { url: shown, offset },
  );
}

/**
 * Drops an answer's body unread, closing its connection: draining it to reuse the connection would read a hostile
 * server's endless body forever. undici reports a body destroyed unread as an error, which is the point here.
 */
function discard(body: { destroy(): void; on?(event: 'error', listener: () => void): unknown }): void {
  body.on?.('error', () => undefined);
  body.destroy();
}

function emptyBody(): AsyncIterable<Buffer> & { destroy(): void } {
  return { async *[Symbol.asyncIterator]() {}, destroy() {} };
}
