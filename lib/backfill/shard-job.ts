/**
 * The shard-job message: one input WebDataset shard of an existing dataset to filter, and where its job's outputs go.
 * `mlm-filter enqueue` sends one per shard; the worker (MLMF_SOURCE=sqs-shards) runs each through the pipeline.
 * The message names everything the worker needs, so workers hold no per-job state and any worker can take any job.
 */
import { FilterError } from '../types.ts';

export const SHARD_JOB_VERSION = 1;

export interface ShardJob {
  readonly v: 1;
  readonly kind: 'shard-job';
  /** The job's name: every shard of one enqueue shares it. */
  readonly job: string;
  /** The input shard, `s3://bucket/key.tar`. */
  readonly input: string;
  /** The job's output folder, `s3://bucket/prefix/<job>/`. */
  readonly output: string;
  /** The shard's name in the outputs (its key relative to the input prefix, without `.tar`). */
  readonly shard: string;
  /**
   * The input object as enqueue listed it: the worker reads exactly that object (a changed one is refused) and its
   * done marker records it. Absent in messages of older enqueues (the worker then takes the object as it finds it).
   */
  readonly size?: number;
  readonly etag?: string;
}

/** What identifies an input shard: a done marker is for this object and no other. */
export interface InputIdentity {
  readonly bucket: string;
  readonly key: string;
  readonly size: number;
  readonly etag: string;
}

export interface S3Location {
  readonly bucket: string;
  readonly key: string;
}

const JOB_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Segments of a shard name: no empty, `.` or `..` segment, no characters S3 tools or shells trip on. */
const SHARD_SEGMENT = /^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*$/;

export function checkJobName(job: string): string {
  if (!JOB_NAME.test(job)) {
    throw new FilterError(
      'invalid_job_name',
      `job name ${JSON.stringify(job)} must be 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit`,
      { job },
    );
  }
  return job;
}

/** Splits `s3://bucket/key`; `key` may be empty (`s3://bucket/`, `s3://bucket`) only when a prefix is meant. */
export function parseS3Uri(uri: string, what = 'URI', allowEmptyKey = false): S3Location {
  const m = /^s3:\/\/([A-Za-z0-9][A-Za-z0-9._-]{1,254})(?:\/(.*))?$/.exec(uri);
  if (!m || (!allowEmptyKey && !m[2])) {
    throw new FilterError('invalid_s3_uri', `${what} ${JSON.stringify(uri)} is not s3://bucket/key`, { uri });
  }
  return { bucket: m[1]!, key: m[2] ?? '' };
}

export const s3Uri = (loc: S3Location) => `s3://${loc.bucket}/${loc.key}`;

/** True when `shard` can name outputs: `/`-separated safe segments. */
export function isShardName(shard: string): boolean {
  return shard.length > 0 && shard.length <= 512 && shard.split('/').every((s) => SHARD_SEGMENT.test(s));
}

/** The job's output folder under an output root: `s3://bucket/prefix/<job>/`. */
export function jobOutput(root: string, job: string): string {
  const { bucket, key } = parseS3Uri(root, '--output', true);
  const prefix = key === '' || key.endsWith('/') ? key : `${key}/`;
  return s3Uri({ bucket, key: `${prefix}${checkJobName(job)}/` });
}

export function makeShardJob(
  job: string,
  input: string,
  output: string,
  shard: string,
  identity?: { size: number; etag: string },
): ShardJob {
  return validate({ v: SHARD_JOB_VERSION, kind: 'shard-job', job, input, output, shard, ...identity });
}

/** Characters a key may hold that a terminal or a line-based reader would act on: controls, line and bidi marks. */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** True when `s` holds a line terminator or another control character. */
export const hasControlChars = (s: string) => new RegExp(UNPRINTABLE.source).test(s);

/** `s` with every control, line-terminator and bidi character shown as `\u{XXXX}`: safe to print on a terminal. */
export function printable(s: string): string {
  return s.replace(UNPRINTABLE, (c) => `\\u{${c.codePointAt(0)!.toString(16).padStart(4, '0')}}`);
}

/** Parses and checks a message body; every problem is a `shard_job_invalid` naming what is wrong. */
export function parseShardJob(body: string): ShardJob {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (err) {
    throw invalid(`the message is not JSON: ${(err as Error).message}`, body);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid('not a JSON object', body);
  const o = value as Record<string, unknown>;
  if (o.kind !== 'shard-job') throw invalid(`kind is ${JSON.stringify(o.kind)}, not "shard-job"`, body);
  if (o.v !== SHARD_JOB_VERSION) throw invalid(`version ${JSON.stringify(o.v)} is not ${SHARD_JOB_VERSION}`, body);
  for (const field of ['job', 'input', 'output', 'shard'] as const) {
    if (typeof o[field] !== 'string') throw invalid(`${field} must be a string`, body);
  }
  if ((o.size === undefined) !== (o.etag === undefined)) throw invalid('size and etag go together', body);
  if (o.size !== undefined && !(Number.isSafeInteger(o.size) && (o.size as number) >= 0)) {
    throw invalid('size must be a non-negative integer', body);
  }
  if (o.etag !== undefined && (typeof o.etag !== 'string' || o.etag === '' || o.etag.length > 256)) {
    throw invalid('etag must be a non-empty string', body);
  }
  return validate(o as unknown as ShardJob, body);
}

function validate(job: ShardJob, body = JSON.stringify(job)): ShardJob {
  if (!JOB_NAME.test(job.job)) throw invalid(`job ${JSON.stringify(job.job)} is not a valid job name`, body);
  if (!isShardName(job.shard)) throw invalid(`shard ${JSON.stringify(job.shard)} is not a valid shard name`, body);
  const input = tryParse(job.input);
  if (!input || !input.key.endsWith('.tar'))
    throw invalid(`input ${JSON.stringify(job.input)} is not s3://bucket/key.tar`, body);
  const output = tryParse(job.output);
  if (!output || !job.output.endsWith(`/${job.job}/`)) {
    throw invalid(`output ${JSON.stringify(job.output)} is not s3://bucket/[prefix/]${job.job}/`, body);
  }
  return {
    v: SHARD_JOB_VERSION,
    kind: 'shard-job',
    job: job.job,
    input: job.input,
    output: job.output,
    shard: job.shard,
    ...(job.etag !== undefined ? { size: job.size, etag: job.etag } : {}),
  };
}

function tryParse(uri: string): S3Location | undefined {
  try {
    return parseS3Uri(uri, 'URI', true);
  } catch {
    return undefined;
  }
}

function invalid(why: string, body: string): FilterError {
  return new FilterError('shard_job_invalid', `invalid shard-job message: ${why}`, { body: body.slice(0, 500) });
}
