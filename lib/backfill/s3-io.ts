/**
 * The few S3 operations backfill needs (list with pagination, get JSON, exists, put and delete), with one retry
 * policy: transient failures (5xx, throttling, network) back off and retry; a client error (403, 404, 400...) cannot
 * succeed on retry and is thrown at once.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { FilterError } from '../types.ts';

export interface RetryOptions {
  /** Attempts in all. Default 6. */
  readonly attempts?: number;
  /** Backoff base and cap, ms. Default 200 and 5000. */
  readonly baseMs?: number;
  readonly maxMs?: number;
  /** Stops waiting between attempts; the last error is thrown. */
  readonly signal?: AbortSignal;
  /** Told of each failed attempt that will be retried. */
  readonly onRetry?: (what: string, attempt: number, error: unknown) => void;
}

/** HTTP status of an AWS SDK error, when it has one. */
export function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

/** Not found: a 404 status or the SDK's NotFound / NoSuchKey names. */
export function isNotFound(err: unknown): boolean {
  const name = (err as { name?: string })?.name;
  return httpStatus(err) === 404 || name === 'NotFound' || name === 'NoSuchKey';
}

/** A 4xx other than timeout and throttling: the request itself is wrong or forbidden, a retry gets the same answer. */
export function isClientError(err: unknown): boolean {
  const status = httpStatus(err) ?? httpStatus((err as { cause?: unknown })?.cause);
  return status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429;
}

export async function withRetry<T>(what: string, fn: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = options.attempts ?? 6;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (isClientError(err) || attempt >= attempts || options.signal?.aborted) throw err;
      options.onRetry?.(what, attempt, err);
      const delay = Math.min(options.maxMs ?? 5000, (options.baseMs ?? 200) * 2 ** (attempt - 1));
      await sleep(delay, undefined, { signal: options.signal }).catch(() => undefined);
      if (options.signal?.aborted) throw err;
    }
  }
}

export interface ListedKey {
  readonly key: string;
  readonly size: number;
  readonly etag?: string;
}

/**
 * Every key under `prefix` (ListObjectsV2, page by page), url-encoded on the wire: an XML listing turns a key's `\r`
 * into `\n`, so a raw listing may name an object that does not exist. `pageSize` is for tests of the pagination.
 */
export async function listKeys(
  s3: S3Client,
  bucket: string,
  prefix: string,
  options: RetryOptions & { pageSize?: number } = {},
): Promise<ListedKey[]> {
  const out: ListedKey[] = [];
  let token: string | undefined;
  do {
    const page = await withRetry(
      `list s3://${bucket}/${prefix}`,
      () =>
        s3.send(
          new ListObjectsV2Command({
            Bucket: bucket,
            Prefix: prefix,
            ContinuationToken: token,
            EncodingType: 'url',
            ...(options.pageSize ? { MaxKeys: options.pageSize } : {}),
          }),
        ),
      options,
    );
    for (const o of page.Contents ?? []) {
      if (o.Key) out.push({ key: urlDecode(o.Key), size: o.Size ?? 0, ...(o.ETag ? { etag: o.ETag } : {}) });
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out;
}

/** S3's url encoding of listed keys (`+` for a space, as S3 writes it; `%2B` for a plus). */
const urlDecode = (key: string) => decodeURIComponent(key.replace(/\+/g, ' '));

/**
 * The object parsed as JSON, or undefined when it does not exist; one that is not JSON is `job_object_invalid`
 * (a job's objects are written by the tools alone: a broken one is a fault to report, not a stack).
 */
export async function getJsonObject<T>(
  s3: S3Client,
  bucket: string,
  key: string,
  options: RetryOptions = {},
): Promise<T | undefined> {
  let text: string;
  try {
    text = await withRetry(
      `get s3://${bucket}/${key}`,
      () => s3.send(new GetObjectCommand({ Bucket: bucket, Key: key })).then(async (r) => r.Body!.transformToString()),
      options,
    );
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new FilterError('job_object_invalid', `s3://${bucket}/${key} is not JSON: ${(err as Error).message}`, {
      bucket,
      key,
    });
  }
}

/** A conditional write lost: the object exists already (If-None-Match: *) and was not replaced. */
export function isPreconditionFailed(err: unknown): boolean {
  const e = err as { name?: string; cause?: unknown };
  if (httpStatus(err) === 412 || e?.name === 'PreconditionFailed') return true;
  return e?.cause !== undefined && e.cause !== err && isPreconditionFailed(e.cause);
}

export async function objectExists(s3: S3Client, bucket: string, key: string, options: RetryOptions = {}) {
  try {
    await withRetry(
      `head s3://${bucket}/${key}`,
      () => s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key })),
      options,
    );
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

/** Writes an object (multipart above 16 MiB); a failure after the retries is `backfill_output_failed`. */
export async function putObject(
  s3: S3Client,
  bucket: string,
  key: string,
  body: Buffer | string,
  contentType: string,
  options: RetryOptions & { ifNoneMatch?: boolean } = {},
): Promise<void> {
  // Create-only: the write fails with 412 (isPreconditionFailed) when the key exists. Small bodies only.
  const condition = options.ifNoneMatch ? { IfNoneMatch: '*' } : {};
  try {
    await withRetry(
      `put s3://${bucket}/${key}`,
      () =>
        typeof body === 'string' || body.length < 16 * 1024 * 1024
          ? s3.send(
              new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType, ...condition }),
            )
          : new Upload({
              client: s3,
              params: { Bucket: bucket, Key: key, Body: body, ContentType: contentType },
              partSize: 16 * 1024 * 1024,
              queueSize: 4,
            }).done(),
      options,
    );
  } catch (err) {
    throw new FilterError(
      'backfill_output_failed',
      `cannot write s3://${bucket}/${key}: ${(err as Error).message}`,
      { bucket, key },
      { cause: err },
    );
  }
}

/** Deletes keys, 1000 per request. */
export async function deleteKeys(s3: S3Client, bucket: string, keys: readonly string[], options: RetryOptions = {}) {
  for (let i = 0; i < keys.length; i += 1000) {
    const chunk = keys.slice(i, i + 1000);
    await withRetry(
      `delete ${chunk.length} objects in s3://${bucket}`,
      () => s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: chunk.map((Key) => ({ Key })) } })),
      options,
    );
  }
}
