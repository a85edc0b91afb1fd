/**
 * `mlm-filter enqueue`: lists the input shards (an S3 prefix, page by page, or a list file of s3:// URIs), skips those
 * whose done marker exists, sends one shard-job message per remaining shard (SendMessageBatch, 10 a request), and
 * writes the job manifest (shard list, counts) into the job folder. Re-running it after a complete run sends nothing;
 * after a partial run, only the shards without a done marker (a shard still queued from the first run may then be sent
 * twice: the worker that takes the second copy finds the done marker and deletes it).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { SendMessageBatchCommand, type SendMessageBatchRequestEntry, type SQSClient } from '@aws-sdk/client-sqs';
import { setTimeout as sleep } from 'node:timers/promises';
import { FilterError } from '../types.ts';
import { jobFolder, manifestKey, shardOfMarker, type JobFolder } from './outputs.ts';
import { getJsonObject, listKeys, putObject } from './s3-io.ts';
import { checkJobName, jobOutput, makeShardJob, parseS3Uri, s3Uri, type S3Location } from './shard-job.ts';

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
  /** Told of each shard sent. */
  readonly onSent?: (shard: InputShard) => void;
}

export interface InputShard {
  /** The name of the shard's outputs. */
  readonly shard: string;
  readonly input: string;
  /** Bytes, when the listing said. */
  readonly bytes?: number;
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
  /** Shards in the job; already done when this enqueue ran; sent by it. */
  readonly counts: { shards: number; done: number; sent: number };
  readonly shards: readonly InputShard[];
}

export interface EnqueueResult {
  readonly job: string;
  readonly output: string;
  readonly manifest: string;
  readonly shards: number;
  readonly done: number;
  readonly sent: readonly InputShard[];
  readonly dryRun: boolean;
}

export async function enqueue(options: EnqueueOptions): Promise<EnqueueResult> {
  const { s3 } = options;
  const inputs = await listInputShards(s3, options.input, options.pageSize);
  const job = checkJobName(options.job ?? defaultJobName(options.input));
  const output = jobOutput(options.output, job);
  const folder = jobFolder(output);
  const done = await doneShards(s3, folder, options.pageSize);
  const toSend = inputs.filter((s) => !done.has(s.shard));
  const result = {
    job,
    output,
    manifest: s3Uri({ bucket: folder.bucket, key: manifestKey(folder) }),
    shards: inputs.length,
    done: inputs.length - toSend.length,
    dryRun: !!options.dryRun,
  };
  if (options.dryRun) return { ...result, sent: toSend };
  // The manifest first: `job status` knows the job's size as soon as the first message can be taken.
  const manifest = await writeManifest(s3, folder, options, job, inputs, { done: result.done, sent: 0 });
  for (let i = 0; i < toSend.length; i += 10) {
    const chunk = toSend.slice(i, i + 10);
    await sendBatch(
      options.sqs,
      options.queueUrl,
      chunk.map((s) => messageEntry(job, output, s, options.queueUrl)),
    );
    chunk.forEach((s) => options.onSent?.(s));
  }
  await writeManifest(s3, folder, options, job, inputs, { done: result.done, sent: toSend.length }, manifest);
  return { ...result, sent: toSend };
}

/** The input's shards with their output names, sorted by input URI. */
export async function listInputShards(s3: S3Client, input: string, pageSize?: number): Promise<InputShard[]> {
  let locations: { loc: S3Location; bytes?: number }[];
  let base: string | undefined;
  if (input.startsWith('s3://')) {
    const { bucket, key } = parseS3Uri(input, '--input', true);
    if (key.endsWith('.tar')) {
      locations = [{ loc: { bucket, key } }];
    } else {
      base = key === '' || key.endsWith('/') ? key : `${key}/`;
      const keys = await listKeys(s3, bucket, base, { pageSize });
      locations = keys
        .filter((k) => k.key.endsWith('.tar'))
        .map((k) => ({ loc: { bucket, key: k.key }, bytes: k.size }));
    }
  } else {
    locations = (await readListFile(input)).map((loc) => ({ loc }));
  }
  if (locations.length === 0) {
    throw new FilterError('shard_list_empty', `no .tar shards in ${input}`, { input });
  }
  locations.sort((a, b) => (s3Uri(a.loc) < s3Uri(b.loc) ? -1 : 1));
  base ??= commonFolder(locations.map((l) => l.loc));
  const shards = locations.map(({ loc, bytes }) => ({
    shard: shardName(loc.key, base),
    input: s3Uri(loc),
    ...(bytes !== undefined ? { bytes } : {}),
  }));
  checkUnique(shards);
  return shards;
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
      throw new FilterError('invalid_s3_uri', `${path} line ${i + 1}: ${line} is not a .tar shard`, {
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

function checkUnique(shards: readonly InputShard[]): void {
  const seen = new Map<string, string>();
  for (const s of shards) {
    const other = seen.get(s.shard);
    if (other !== undefined && other !== s.input) {
      throw new FilterError(
        'shard_name_collision',
        `${other} and ${s.input} would both write the outputs of shard ${s.shard}: list them in separate jobs`,
        { shard: s.shard, inputs: [other, s.input] },
      );
    }
    seen.set(s.shard, s.input);
  }
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

async function writeManifest(
  s3: S3Client,
  folder: JobFolder,
  options: EnqueueOptions,
  job: string,
  inputs: readonly InputShard[],
  counts: { done: number; sent: number },
  previous?: JobManifest,
): Promise<JobManifest> {
  const before = previous ?? (await getJsonObject<JobManifest>(s3, folder.bucket, manifestKey(folder)));
  // Shards enqueued by earlier runs of the job stay in it (a grown input adds to them).
  const shards = new Map((before?.shards ?? []).map((s) => [s.shard, s]));
  for (const s of inputs) shards.set(s.shard, s);
  const now = new Date().toISOString();
  const manifest: JobManifest = {
    v: 1,
    kind: 'backfill-manifest',
    job,
    output: s3Uri({ bucket: folder.bucket, key: folder.prefix }),
    input: options.input,
    queue: options.queueUrl,
    createdAt: before?.createdAt ?? now,
    updatedAt: now,
    counts: { shards: shards.size, ...counts },
    shards: [...shards.values()].sort((a, b) => (a.shard < b.shard ? -1 : 1)),
  };
  await putObject(s3, folder.bucket, manifestKey(folder), JSON.stringify(manifest, null, 1), 'application/json');
  return manifest;
}

function messageEntry(job: string, output: string, s: InputShard, queueUrl: string): SendMessageBatchRequestEntry {
  const body = JSON.stringify(makeShardJob(job, s.input, output, s.shard));
  const id = createHash('sha256').update(`${job}\n${s.shard}`).digest('hex').slice(0, 40);
  // FIFO queues: a group per shard (any worker may take any shard) and a deduplication id per job and shard.
  const fifo = queueUrl.endsWith('.fifo') ? { MessageGroupId: id, MessageDeduplicationId: id } : {};
  return { Id: id, MessageBody: body, ...fifo };
}

/** One SendMessageBatch with its failed entries retried; a sender fault (a bad entry) fails at once. */
async function sendBatch(sqs: SQSClient, queueUrl: string, entries: SendMessageBatchRequestEntry[]): Promise<void> {
  let pending = entries;
  for (let attempt = 1; pending.length > 0; attempt++) {
    let failed: { Id?: string; SenderFault?: boolean; Code?: string; Message?: string }[];
    try {
      failed = (await sqs.send(new SendMessageBatchCommand({ QueueUrl: queueUrl, Entries: pending }))).Failed ?? [];
    } catch (err) {
      if (attempt >= 5) throw sendFailed(queueUrl, pending.length, err);
      failed = pending.map((e) => ({ Id: e.Id, SenderFault: false, Message: String(err) }));
    }
    const fault = failed.find((f) => f.SenderFault);
    if (fault) throw sendFailed(queueUrl, failed.length, new Error(`${fault.Code}: ${fault.Message}`));
    const again = new Set(failed.map((f) => f.Id));
    pending = pending.filter((e) => again.has(e.Id));
    if (pending.length === 0) return;
    if (attempt >= 5) throw sendFailed(queueUrl, pending.length, new Error(failed[0]?.Message ?? 'refused'));
    await sleep(200 * 2 ** attempt);
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
