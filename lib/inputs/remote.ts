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
      throw new FilterError('input_unreadable', `cannot read input ${uri}: ${(err as Error).name} (HTTP ${status})`, {
        uri,
        status,
      });
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
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;

/** GETs http(s) inputs through the address guard; one keep-alive agent for all of them. */
export class HttpInputs {
  private readonly agent: Agent;
  private readonly retry = new RetryPolicy({ maxAttempts: 4, baseMs: 250, maxMs: 4000 });

  constructor(private readonly options: HttpInputOptions = {}) {
    const allow = (options.allowAddresses ?? []).map((a) => (typeof a === 'string' ? parseAllowAddress(a) : a));
    const guard = new AddressGuard({ allow });
    const connect = guardedConnector(guard, options.connectTimeoutMs ?? 10_000);
    this.agent = new Agent({ connect, bodyTimeout: options.bodyTimeoutMs ?? 60_000, headersTimeout: 30_000 });
  }

  /** The first bytes of `url` (to recognise its format), read before the run; a failing URL is refused by name. */
  async head(url: string): Promise<Buffer> {
    const res = await this.open(url, { range: `bytes=0-${HEAD_BYTES - 1}` });
    const parts: Buffer[] = [];
    let got = 0;
    for await (const chunk of res.body) {
      parts.push(chunk);
      got += chunk.length;
      if (got >= HEAD_BYTES) break; // a server that ignores Range: the rest is not read
    }
    return Buffer.concat(parts).subarray(0, HEAD_BYTES);
  }

  /**
   * The body of `url`, streamed (nothing buffered past what the reader asks for). A connection lost mid-body is
   * picked up where it stopped with a ranged GET (If-Range on the first answer's ETag or Last-Modified, so a file
   * changed meanwhile is not spliced), up to 3 times; after that, or where the server cannot resume, the read
   * fails with `shard_read_failed` (retriable: a re-run with --resume goes on).
   */
  async chunks(url: string): Promise<AsyncIterable<Buffer>> {
    return this.resuming(url, await this.open(url, {}));
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  private async *resuming(url: string, first: Opened): AsyncGenerator<Buffer> {
    const validator = first.headers.etag ?? first.headers['last-modified'];
    const resumable = first.headers['accept-ranges'] === 'bytes' && typeof validator === 'string';
    let res = first;
    let got = 0;
    for (let resumes = 0; ;) {
      try {
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          got += chunk.length;
          yield chunk;
        }
        return;
      } catch (err) {
        const failed = (why: string) =>
          new FilterError(
            'shard_read_failed',
            `reading ${url} at byte ${got} failed: ${(err as Error).message}${why}`,
            { url, offset: got },
            { cause: err },
          );
        if (!resumable) throw failed(' (the server offers no ranges to resume from)');
        if (++resumes > MAX_RESUMES) throw failed(` (${MAX_RESUMES} resumes)`);
        res = await this.open(url, { range: `bytes=${got}-`, ifRange: validator as string });
        // A 200 is the whole (changed) file, a 206 from elsewhere is not our bytes: either way, not a resume.
        if (res.status !== 206 || !String(res.headers['content-range'] ?? '').startsWith(`bytes ${got}-`)) {
          res.body.destroy();
          throw failed(' (the server did not resume at that byte: changed meanwhile?)');
        }
      }
    }
  }

  private async open(url: string, o: { range?: string; ifRange?: string }): Promise<Opened> {
    let current = new URL(url);
    for (let hop = 0; ; hop++) {
      if (current.protocol !== 'https:' && current.protocol !== 'http:') {
        throw unreadable(url, `redirected to ${current.protocol} (only http and https are read)`);
      }
      const target = current;
      const res = await this.retry
        .run(async () => {
          const r = await request(target, {
            dispatcher: this.agent,
            method: 'GET',
            headers: {
              'user-agent': this.options.userAgent ?? 'mlm-filter-stream (shard input)',
              ...(o.range ? { range: o.range } : {}),
              ...(o.ifRange ? { 'if-range': o.ifRange } : {}),
            },
          });
          if (r.statusCode >= 500 || r.statusCode === 429) {
            r.body.resume();
            throw Object.assign(new Error(`HTTP ${r.statusCode}`), { retriable: true });
          }
          return r;
        })
        .catch((err: Error & { code?: string }) => {
          const hint = err.code === 'address_blocked' ? ' (--allow-address opens it, as for image fetches)' : '';
          throw unreadable(url, err.message + hint);
        });
      if (REDIRECTS.has(res.statusCode)) {
        res.body.resume();
        const location = res.headers.location;
        if (typeof location !== 'string' || hop >= MAX_REDIRECTS) {
          throw unreadable(url, `HTTP ${res.statusCode} without a usable Location (or over ${MAX_REDIRECTS} hops)`);
        }
        current = new URL(location, current);
        continue;
      }
      // 416: an empty body cannot serve byte 0.
      if (res.statusCode === 416 && o.range === `bytes=0-${HEAD_BYTES - 1}`) {
        res.body.resume();
        return { status: 200, headers: {}, body: emptyBody() };
      }
      if (res.statusCode !== 200 && res.statusCode !== 206) {
        res.body.resume();
        throw unreadable(url, `HTTP ${res.statusCode}`);
      }
      return { status: res.statusCode, headers: res.headers, body: res.body };
    }
  }
}

/** An answer being read: its status, headers and body. */
interface Opened {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: AsyncIterable<Buffer> & { destroy(): void };
}

const MAX_RESUMES = 3;

function unreadable(url: string, why: string): FilterError {
  return new FilterError('input_unreadable', `cannot read input ${url}: ${why}`, { url });
}

function emptyBody(): AsyncIterable<Buffer> & { destroy(): void } {
  return { async *[Symbol.asyncIterator]() {}, destroy() {} };
}
