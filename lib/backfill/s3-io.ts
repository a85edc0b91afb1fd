/**
 * The few S3 operations backfill needs (list with pagination, get JSON, exists, put and delete), under the one retry
 * policy (lib/support/retry.ts): transient failures (5xx, throttling, network) back off and retry; a client error
 * (403, 404, 400...) cannot succeed on retry and is thrown at once.
 */
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { isNotFound } from '../support/aws-errors.ts';
import { RetryPolicy } from '../support/retry.ts';
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

export function withRetry<T>(what: string, fn: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const policy = new RetryPolicy({
    maxAttempts: options.attempts ?? 6,
    baseMs: options.baseMs ?? 200,
    maxMs: options.maxMs ?? 5000,
  });
  return policy.run(fn, {
    signal: options.signal,
    onRetry: ({ attempt, error }) => options.onRetry?.(what, attempt, error),
  });
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
