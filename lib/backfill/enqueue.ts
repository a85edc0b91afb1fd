/**
 * `mlm-filter enqueue`: lists the input shards (an S3 prefix, page by page, or a list file of s3:// URIs), checks
 * every key before anything is written (a key that cannot be a shard job is listed and skipped, the rest go on),
 * refuses a job name already used for other inputs, skips the shards whose done marker exists, writes the job
 * manifest (shard list, counts) into the job folder and sends one shard-job message per remaining shard
 * (SendMessageBatch, 10 a request). Re-running it after a complete run sends nothing; after a partial run, only the
 * shards without a done marker (a shard still queued from the first run may then be sent twice: the worker that
 * takes the second copy finds the done marker and deletes it).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { SendMessageBatchCommand, type SendMessageBatchRequestEntry, type SQSClient } from '@aws-sdk/client-sqs';
import { httpStatus, isNotFound } from '../support/aws-errors.ts';
import { RetryPolicy } from '../support/retry.ts';
import { FilterError } from '../types.ts';
import { inputDifference, jobFolder, manifestKey, readDone, shardOfMarker, type JobFolder } from './outputs.ts';
import { getJsonObject, listKeys, putObject, withRetry } from './s3-io.ts';
import {
  checkJobName,
  hasControlChars,
  isShardName,
  jobOutput,
  makeShardJob,
  parseS3Uri,
  printable,
  s3Uri,
  type S3Location,
} from './shard-job.ts';

export interface EnqueueOptions {
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  /** `s3://bucket/prefix/` (every .tar under it), `s3://bucket/key.tar`, or a local file of s3:// URIs, one a line. */
  readonly input: string;
  readonly queueUrl: string;
  /** The output root: the job's folder is `<output>/<job>/`. */
  readonly output: string;
  /** Default: derived from the input, so re-running the same command resumes the same job. */
  readonly job?: string;
  /** List and report, send and write nothing. */
  readonly dryRun?: boolean;
  /** ListObjectsV2 page size (tests exercise the pagination with small pages). */
  readonly pageSize?: number;
  /** Told of each key skipped (before anything is sent or written). */
  readonly onSkipped?: (skipped: SkippedKey) => void;
  /** Told of each shard sent. */
  readonly onSent?: (shard: InputShard) => void;
}

export interface InputShard {
  /** The name of the shard's outputs. */
  readonly shard: string;
  readonly input: string;
  /** Bytes and ETag, when the listing (or a HEAD) said: the identity the worker checks and the done marker keeps. */
  readonly bytes?: number;
  readonly etag?: string;
}

/** An input key that cannot be a shard job, and why. */
export interface SkippedKey {
  readonly input: string;
  readonly reason: string;
}

/** The job manifest, `<job>/manifest.json`: every shard enqueued for the job, and the last enqueue's counts. */
export interface JobManifest {
  readonly v: 1;
  readonly kind: 'backfill-manifest';
  readonly job: string;
  readonly output: string;
  readonly input: string;
  readonly queue: string;
  readonly createdAt: string;
  readonly updatedAt: string;
  /** Shards in the job; already done when this enqueue ran; sent by it; input keys it skipped. */
  readonly counts: { shards: number; done: number; sent: number; skipped?: number };
  readonly shards: readonly InputShard[];
  /** The keys the last enqueue skipped (not in `shards`: no shard job will ever be sent for them). */
  readonly skipped?: readonly SkippedKey[];
}

export interface EnqueueResult {
  readonly job: string;
  readonly output: string;
  readonly manifest: string;
  readonly shards: number;
  readonly done: number;
  readonly sent: readonly InputShard[];
  readonly skipped: readonly SkippedKey[];
  readonly dryRun: boolean;
}

export async function enqueue(options: EnqueueOptions): Promise<EnqueueResult> {
  const { s3 } = options;
  const job = checkJobName(options.job ?? defaultJobName(options.input));
  const output = jobOutput(options.output, job);
  const folder = jobFolder(output);
  const { shards: inputs, skipped } = await listInputShards(s3, options.input, options.pageSize, folder);
  skipped.forEach((k) => options.onSkipped?.(k));
  const previous = await readManifest(s3, folder);
  const done = await doneShards(s3, folder, options.pageSize);
  await checkSameInputs(s3, folder, job, inputs, previous, done);
  const toSend = inputs.filter((s) => !done.has(s.shard));
  // Every message is made (and so checked) before the manifest is written or anything is sent.
  const entries = toSend.map((s) => messageEntry(job, output, s, options.queueUrl));
  const result = {
    job,
    output,
    manifest: s3Uri({ bucket: folder.bucket, key: manifestKey(folder) }),
    shards: inputs.length,
    done: inputs.length - toSend.length,
    skipped,
    dryRun: !!options.dryRun,
  };
  if (options.dryRun) return { ...result, sent: toSend };
  // The manifest first: `job status` knows the job's size as soon as the first message can be taken.
  const counts = { done: result.done, skipped: skipped.length };
  const manifest = await writeManifest(s3, folder, options, job, inputs, skipped, { ...counts, sent: 0 }, previous);
  for (let i = 0; i < entries.length; i += 10) {
    await sendBatch(options.sqs, options.queueUrl, entries.slice(i, i + 10));
    toSend.slice(i, i + 10).forEach((s) => options.onSent?.(s));
  }
  await writeManifest(s3, folder, options, job, inputs, skipped, { ...counts, sent: toSend.length }, manifest);
  return { ...result, sent: toSend };
}

/**
 * The input's shards with their output names and identities, sorted by input URI, and the keys that cannot be
 * shard jobs (a line terminator or control character in the key, no name, a name over 512 characters, output keys
 * over S3's limit under `folder`, two keys with one output name).
 */
export async function listInputShards(
  s3: S3Client,
  input: string,
  pageSize?: number,
  folder?: JobFolder,
): Promise<{ shards: InputShard[]; skipped: SkippedKey[] }> {
  let locations: { loc: S3Location; bytes?: number; etag?: string }[];
  let base: string | undefined;
  if (input.startsWith('s3://')) {
    const { bucket, key } = parseS3Uri(input, '--input', true);
    if (key.endsWith('.tar')) {
      locations = await identify(s3, [{ bucket, key }]);
    } else {
      base = key === '' || key.endsWith('/') ? key : `${key}/`;
      const keys = await listKeys(s3, bucket, base, { pageSize });
      locations = keys
        .filter((k) => k.key.endsWith('.tar'))
        .map((k) => ({ loc: { bucket, key: k.key }, bytes: k.size, ...(k.etag ? { etag: k.etag } : {}) }));
    }
  } else {
    locations = await identify(s3, await readListFile(input));
  }
  if (locations.length === 0) {
    throw new FilterError('shard_list_empty', `no .tar shards in ${printable(input)}`, { input });
  }
  locations.sort((a, b) => (s3Uri(a.loc) < s3Uri(b.loc) ? -1 : 1));
  base ??= commonFolder(locations.map((l) => l.loc));
  const skipped: SkippedKey[] = [];
  const shards: InputShard[] = [];
  for (const { loc, bytes, etag } of locations) {
    const shard = shardName(loc.key, base);
    const reason = unusable(loc, shard, folder);
    if (reason) skipped.push({ input: s3Uri(loc), reason });
    else
      shards.push({ shard, input: s3Uri(loc), ...(bytes !== undefined ? { bytes } : {}), ...(etag ? { etag } : {}) });
  }
  const colliding = collisions(shards);
  for (const s of shards) {
    const others = colliding.get(s.shard);
    if (others)
      skipped.push({
        input: s.input,
        reason: `${others.length} keys would write output ${s.shard}: list them in separate jobs`,
      });
  }
  return { shards: shards.filter((s) => !colliding.has(s.shard)), skipped };
}

/** Why a key cannot be a shard job; undefined when it can. */
function unusable(loc: S3Location, shard: string, folder?: JobFolder): string | undefined {
  if (hasControlChars(loc.key)) return 'the key holds a line terminator or control character';
  if (shard === '') return 'the key names no shard (nothing before ".tar")';
  if (shard.length > 512) return `its output name is ${shard.length} characters, over 512`;
  if (!isShardName(shard)) return `its output name ${JSON.stringify(shard)} is not usable`;
  // The longest key a shard job writes: a curated index, with an attempt id.
  const longest = `${folder?.prefix ?? ''}curated/${shard}~a999-00000000-00000.index.json`;
  if (Buffer.byteLength(longest) > 1024) return "its output keys would be over S3's 1024 bytes";
  return undefined;
}

/** Output names that more than one input key maps to, each with those keys. */
function collisions(shards: readonly InputShard[]): Map<string, string[]> {
  const by = new Map<string, string[]>();
  for (const s of shards) by.set(s.shard, [...(by.get(s.shard) ?? []), s.input]);
  return new Map([...by].filter(([, inputs]) => inputs.length > 1));
}

/** Size and ETag of listed objects (HEAD, 16 at a time); a missing one goes without (the worker dead-letters it). */
async function identify(s3: S3Client, locs: readonly S3Location[]) {
  const out: { loc: S3Location; bytes?: number; etag?: string }[] = [];
  let next = 0;
  const worker = async () => {
    while (next < locs.length) {
      const loc = locs[next++]!;
      try {
        const head = await withRetry(`head ${s3Uri(loc)}`, () =>
          s3.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key })),
        );
        out.push({ loc, bytes: head.ContentLength ?? 0, ...(head.ETag ? { etag: head.ETag } : {}) });
      } catch (err) {
        if (!isNotFound(err) && httpStatus(err) !== 403) throw err;
        out.push({ loc });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, locs.length) }, worker));
  return out;
}

async function readListFile(path: string): Promise<S3Location[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new FilterError('input_unreadable', `cannot read the list file ${path}: ${(err as Error).message}`, { path });
  }
  const out: S3Location[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const loc = parseS3Uri(line, `${path} line ${i + 1}:`);
    if (!loc.key.endsWith('.tar')) {
      throw new FilterError('invalid_s3_uri', `${path} line ${i + 1}: ${printable(line)} is not a .tar shard`, {
        path,
        line: i + 1,
      });
    }
    out.push(loc);
  });
  return out;
}

/** The folder shared by every key when they are in one bucket (their names are relative to it), else ''. */
function commonFolder(locs: readonly S3Location[]): string {
  if (new Set(locs.map((l) => l.bucket)).size > 1) return '';
  let common = locs[0]!.key.slice(0, locs[0]!.key.lastIndexOf('/') + 1);
  for (const { key } of locs)
    while (!key.startsWith(common)) common = common.slice(0, common.lastIndexOf('/', common.length - 2) + 1);
  return common;
}

/** The key relative to `base`, without `.tar`, each path segment made safe for output keys. */
function shardName(key: string, base: string): string {
  const rel = (key.startsWith(base) ? key.slice(base.length) : key).replace(/\.tar$/, '');
  return rel
    .split('/')
    .filter((s) => s !== '')
    .map((s) => s.replace(/[^A-Za-z0-9._=+-]/g, '_').replace(/^\./, '_'))
    .join('/');
}

/** `<last input segment>-<8 hex of the input's hash>`: stable for the same --input, distinct for different ones. */
export function defaultJobName(input: string): string {
  const trimmed = input.replace(/\/+$/, '');
  const last = basename(trimmed.replace(/^s3:\/\//, '')).replace(/\.(tar|txt|lst|list)$/, '');
  const stem =
    last
      .replace(/[^A-Za-z0-9._-]/g, '_')
      .replace(/^[^A-Za-z0-9]+/, '')
      .slice(0, 100) || 'backfill';
  return `${stem}-${createHash('sha256').update(input).digest('hex').slice(0, 8)}`;
}

/** Shards of the job whose done marker exists (one listing of done/). */
export async function doneShards(s3: S3Client, folder: JobFolder, pageSize?: number): Promise<Set<string>> {
  const keys = await listKeys(s3, folder.bucket, `${folder.prefix}done/`, { pageSize });
  return new Set(keys.map((k) => shardOfMarker(folder, 'done', k.key)).filter((s): s is string => s !== undefined));
}

/** The job's manifest, checked for shape; undefined when there is none. */
export async function readManifest(s3: S3Client, folder: JobFolder): Promise<JobManifest | undefined> {
  const key = manifestKey(folder);
  const m = await getJsonObject<JobManifest>(s3, folder.bucket, key);
  if (m === undefined) return undefined;
  const ok =
    m !== null &&
    m.kind === 'backfill-manifest' &&
    Array.isArray(m.shards) &&
    m.shards.every((s) => typeof s?.shard === 'string' && typeof s.input === 'string');
  if (!ok) {
    throw new FilterError('job_object_invalid', `s3://${folder.bucket}/${key} is not a job manifest`, {
      bucket: folder.bucket,
      key,
    });
  }
  return m;
}

/**
 * Refuses a job name used for other inputs: a shard whose manifest entry or done marker names another object (or
 * the same object at another size or ETag) would be counted done without ever filtering the new input.
 */
async function checkSameInputs(
  s3: S3Client,
  folder: JobFolder,
  job: string,
  inputs: readonly InputShard[],
  manifest: JobManifest | undefined,
  done: ReadonlySet<string>,
): Promise<void> {
  const before = new Map((manifest?.shards ?? []).map((s) => [s.shard, s]));
  // One difference per shard (the manifest and the done marker may both tell it).
  const found = new Map<string, string>();
  const compare = (shard: InputShard, was: { input: string; identity?: { size?: number; etag?: string } }) => {
    const d = inputDifference(
      { input: was.input, identity: was.identity as never },
      shard.input,
      shard.etag !== undefined ? { size: shard.bytes, etag: shard.etag } : undefined,
    );
    if (d !== undefined && !found.has(shard.shard)) found.set(shard.shard, `shard ${shard.shard} is of ${d}`);
  };
  for (const s of inputs) {
    const b = before.get(s.shard);
    if (b) compare(s, { input: b.input, identity: b.etag !== undefined ? { size: b.bytes, etag: b.etag } : undefined });
  }
  let next = 0;
  const doneInputs = inputs.filter((s) => done.has(s.shard));
  const worker = async () => {
    while (next < doneInputs.length) {
      const s = doneInputs[next++]!;
      const marker = await readDone(s3, folder, s.shard);
      if (marker) compare(s, marker);
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, doneInputs.length) }, worker));
  const differences = [...found.values()];
  if (differences.length > 0) {
    const more = differences.length > 1 ? ` (and ${differences.length - 1} more)` : '';
    throw new FilterError(
      'job_input_mismatch',
      `job ${job} at s3://${folder.bucket}/${folder.prefix} holds other inputs: ${printable(differences[0]!)}${more}; ` +
        'give these inputs another --job',
      { job, differences: differences.slice(0, 20) },
    );
  }
}

async function writeManifest(
  s3: S3Client,
  folder: JobFolder,
  options: EnqueueOptions,
  job: string,
  inputs: readonly InputShard[],
  skipped: readonly SkippedKey[],
  counts: { done: number; sent: number; skipped: number },
  previous: JobManifest | undefined,
): Promise<JobManifest> {
  // Shards enqueued by earlier runs of the job stay in it (a grown input adds to them), except keys found unusable
  // now (an earlier enqueue may have listed them): no job is ever sent for those, they would stay pending for ever.
  const unusableNow = new Set(skipped.map((k) => k.input));
  const kept = (previous?.shards ?? []).filter((s) => isShardName(s.shard) && !unusableNow.has(s.input));
  const shards = new Map(kept.map((s) => [s.shard, s]));
  for (const s of inputs) shards.set(s.shard, s);
  const now = new Date().toISOString();
  const manifest: JobManifest = {
    v: 1,
    kind: 'backfill-manifest',
    job,
    output: s3Uri({ bucket: folder.bucket, key: folder.prefix }),
    input: options.input,
    queue: options.queueUrl,
    createdAt: previous?.createdAt ?? now,
    updatedAt: now,
    counts: { shards: shards.size, ...counts },
    shards: [...shards.values()].sort((a, b) => (a.shard < b.shard ? -1 : 1)),
    skipped,
  };
  await putObject(s3, folder.bucket, manifestKey(folder), JSON.stringify(manifest, null, 1), 'application/json');
  return manifest;
}

function messageEntry(job: string, output: string, s: InputShard, queueUrl: string): SendMessageBatchRequestEntry {
  const identity = s.etag !== undefined ? { size: s.bytes ?? 0, etag: s.etag } : undefined;
  const body = JSON.stringify(makeShardJob(job, s.input, output, s.shard, identity));
  const id = createHash('sha256').update(`${job}\n${s.shard}`).digest('hex').slice(0, 40);
  // FIFO queues: a group per shard (any worker may take any shard) and a deduplication id per job and shard.
  const fifo = queueUrl.endsWith('.fifo') ? { MessageGroupId: id, MessageDeduplicationId: id } : {};
  return { Id: id, MessageBody: body, ...fifo };
}

/** Up to 5 tries of a SendMessageBatch, 400 ms apart and doubling. */
const SEND_RETRY = new RetryPolicy({ maxAttempts: 5, baseMs: 400, maxMs: 5000 });

/** One SendMessageBatch with its failed entries resent; a sender fault (a bad entry) fails at once. */
async function sendBatch(sqs: SQSClient, queueUrl: string, entries: SendMessageBatchRequestEntry[]): Promise<void> {
  let pending = entries;
  try {
    await SEND_RETRY.run(async () => {
      const failed = (await sqs.send(new SendMessageBatchCommand({ QueueUrl: queueUrl, Entries: pending }))).Failed;
      const fault = failed?.find((f) => f.SenderFault);
      // Not the queue's trouble but the entry's: resending it gets the same answer.
      if (fault) throw Object.assign(new Error(`${fault.Code}: ${fault.Message}`), { retriable: false });
      const again = new Set(failed?.map((f) => f.Id));
      pending = pending.filter((e) => again.has(e.Id));
      if (pending.length > 0) throw new Error(failed?.[0]?.Message ?? 'refused');
    });
  } catch (err) {
    throw sendFailed(queueUrl, pending.length, err);
  }
}

function sendFailed(queueUrl: string, n: number, cause: unknown): FilterError {
  return new FilterError(
    'sqs_send_failed',
    `could not send ${n} shard jobs to ${queueUrl}: ${(cause as Error).message}`,
    { queueUrl },
    { cause },
  );
}
