/**
 * What an AWS SDK error says, read without loading the SDK (lib/errors.ts's isRetriable reads it, and everything
 * imports that). lib/support/aws.ts re-exports these with the client factories.
 */

/** HTTP status of an AWS SDK error, when it has one. */
export function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

/** Not found: a 404 status or the SDK's NotFound / NoSuchKey names. */
export function isNotFound(err: unknown): boolean {
  const name = (err as { name?: string } | undefined)?.name;
  return httpStatus(err) === 404 || name === 'NotFound' || name === 'NoSuchKey';
}

/**
 * A 4xx other than timeout and throttling (of the error or its cause): the request itself is wrong or forbidden, a
 * retry gets the same answer.
 */
export function isClientError(err: unknown): boolean {
  const status = httpStatus(err) ?? httpStatus((err as { cause?: unknown } | undefined)?.cause);
  return status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/** A conditional write lost: the object exists already (If-None-Match: *) and was not replaced. */
export function isPreconditionFailed(err: unknown): boolean {
  const e = err as { name?: string; cause?: unknown } | undefined;
  if (httpStatus(err) === 412 || e?.name === 'PreconditionFailed') return true;
  return e?.cause !== undefined && e.cause !== err && isPreconditionFailed(e.cause);
}
