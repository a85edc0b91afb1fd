/**
 * An input shard in S3 as the tar reader's bytes: ranged GetObject requests of a fixed size, one prefetched ahead,
 * each pinned to the ETag the job started with. Memory stays at two ranges whatever the shard's size; a transient
 * failure retries its range at its offset (not the whole shard); nothing holds a connection open while the pipeline
 * is busy, so a slow scorer cannot time a long download out.
 */
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { streamTarBytes, type TarBytes } from '../formats/tar-reader.ts';
import { FilterError } from '../types.ts';
import { httpStatus, isNotFound } from '../support/aws-errors.ts';
import { withRetry, type RetryOptions } from './s3-io.ts';
import type { S3Location } from './shard-job.ts';

export interface ShardInputOptions {
  /** Bytes per ranged GET. Default 8 MiB. */
  readonly rangeBytes?: number;
  readonly retry?: RetryOptions;
  /** Hard stop: cancels the request in flight. */
  readonly signal?: AbortSignal;
}

export interface S3Shard {
  readonly size: number;
  readonly etag: string;
  readonly bytes: TarBytes;
}

/** Looks the shard up (size, ETag) and returns its bytes; a missing or forbidden object is `shard_input_missing`. */
export async function openS3Shard(s3: S3Client, loc: S3Location, options: ShardInputOptions = {}): Promise<S3Shard> {
  const { size, etag, chunks } = await openS3Object(s3, loc, options);
  return { size, etag, bytes: streamTarBytes(chunks) };
}

/** An S3 object's bytes as the ranges above, in order (for readers that decompress them before the tar reader). */
export interface S3ObjectChunks {
  readonly size: number;
  readonly etag: string;
  readonly chunks: AsyncIterable<Buffer>;
}

/** The one ranged S3 reader (backfill shard jobs and `filter --input s3://...`); errors as openS3Shard's. */
export async function openS3Object(
  s3: S3Client,
  loc: S3Location,
  options: ShardInputOptions = {},
): Promise<S3ObjectChunks> {
  const uri = `s3://${loc.bucket}/${loc.key}`;
  let head;
  try {
    head = await withRetry(
      `head ${uri}`,
      () => s3.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key }), { abortSignal: options.signal }),
      options.retry,
    );
  } catch (err) {
    const status = httpStatus(err);
    if (isNotFound(err) || status === 403) {
      throw new FilterError('shard_input_missing', `input shard ${uri} cannot be read: ${describe(err)}`, {
        uri,
        status,
      });
    }
    throw new FilterError('shard_read_failed', `input shard ${uri}: ${describe(err)}`, { uri }, { cause: err });
  }
  const size = head.ContentLength ?? 0;
  const etag = head.ETag ?? '';
  return { size, etag, chunks: rangesOf(s3, loc, size, etag, options) };
}

async function* rangesOf(
  s3: S3Client,
  loc: S3Location,
  size: number,
  etag: string,
  options: ShardInputOptions,
): AsyncGenerator<Buffer> {
  const step = options.rangeBytes ?? 8 * 1024 * 1024;
  const fetch = (start: number) => {
    const p = fetchRange(s3, loc, start, Math.min(size, start + step) - 1, etag, options);
    p.catch(() => undefined); // awaited below; a prefetch the reader never gets to must not be an unhandled rejection
    return p;
  };
  let next = size > 0 ? fetch(0) : undefined;
  for (let start = 0; next; start += step) {
    const current = await next;
    next = start + step < size ? fetch(start + step) : undefined;
    yield current;
  }
}

async function fetchRange(
  s3: S3Client,
  loc: S3Location,
  first: number,
  last: number,
  etag: string,
  options: ShardInputOptions,
): Promise<Buffer> {
  const uri = `s3://${loc.bucket}/${loc.key}`;
  const want = last - first + 1;
  try {
    return await withRetry(
      `get ${uri} bytes ${first}-${last}`,
      async () => {
        const res = await s3.send(
          new GetObjectCommand({
            Bucket: loc.bucket,
            Key: loc.key,
            Range: `bytes=${first}-${last}`,
            ...(etag ? { IfMatch: etag } : {}),
          }),
          { abortSignal: options.signal },
        );
        const data = Buffer.from(await res.Body!.transformToByteArray());
        // A connection cut short can end a body early without an error: a short range is a failed request.
        if (data.length !== want) throw new Error(`got ${data.length} of ${want} bytes`);
        return data;
      },
      options.retry,
    );
  } catch (err) {
    // Retriable as a job: the object changed (412) or went away mid-read, or the store kept failing.
    throw new FilterError(
      'shard_read_failed',
      `reading ${uri} at byte ${first} failed: ${describe(err)}`,
      { uri, offset: first, status: httpStatus(err) },
      { cause: err },
    );
  }
}

function describe(err: unknown): string {
  const status = httpStatus(err);
  const e = err as { name?: string; message?: string };
  return `${e.name ?? 'Error'}${status ? ` (HTTP ${status})` : ''}: ${e.message ?? String(err)}`;
}
