/**
 * `mlm-filter job status`: where a backfill job stands, read from its outputs (the manifest, the done and failed
 * markers) and, when given, the queue's attributes; no database. A done marker holds its shard's counts, so the
 * totals are the sum over done markers; throughput is records over the span from the first shard's start to the last
 * one's finish (the job's average so far), and the ETA assumes the shards left are like the shards done.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand, type QueueAttributeName, type SQSClient } from '@aws-sdk/client-sqs';
import { FilterError } from '../types.ts';
import { readManifest } from './enqueue.ts';
import {
  doneKey,
  failedKey,
  inputDifference,
  jobFolder,
  shardOfMarker,
  type ShardDone,
  type ShardFailed,
} from './outputs.ts';
import { getJsonObject, listKeys } from './s3-io.ts';
import { jobOutput, printable } from './shard-job.ts';

export interface JobStatusOptions {
  readonly s3: S3Client;
  /** The output root given to enqueue. */
  readonly output: string;
  readonly job: string;
  /** With a queue: messages waiting and in flight (the whole queue's, which other jobs may share). */
  readonly sqs?: SQSClient;
  readonly queueUrl?: string;
  /** Done markers read at once. Default 16. */
  readonly concurrency?: number;
}

export interface JobStatus {
  readonly job: string;
  readonly output: string;
  readonly shards: { total: number; done: number; failed: number; pending: number; inFlight: number | null };
  readonly records: number;
  readonly accepted: number;
  readonly rejected: number;
  /** accepted / records; null before any shard is done. */
  readonly acceptRate: number | null;
  readonly reasons: Record<string, number>;
  readonly pairsPerSecond: number | null;
  /** Seconds until the pending shards are done at the rate so far; 0 when none is pending, null when unknown. */
  readonly etaSeconds: number | null;
  readonly failures: readonly Pick<ShardFailed, 'shard' | 'code' | 'message' | 'attempts'>[];
  /** Input keys the last enqueue skipped (they cannot be shard jobs; not counted in `shards`). */
  readonly skipped: number;
  readonly queue: { visible: number; inFlight: number; delayed: number } | null;
}

export async function jobStatus(options: JobStatusOptions): Promise<JobStatus> {
  const { s3 } = options;
  const { output, folder, manifest, done, doneShards } = await readDoneShards(options);
  const inJob = new Set(manifest.shards.map((s) => s.shard));
  const failedShards = (await listKeys(s3, folder.bucket, `${folder.prefix}failed/`))
    .map((k) => shardOfMarker(folder, 'failed', k.key))
    .filter((s): s is string => s !== undefined && inJob.has(s) && !doneShards.has(s));
  const failed = await readAll<ShardFailed>(
    s3,
    folder.bucket,
    failedShards.map((s) => failedKey(folder, s)).slice(0, 20),
  );
  const queue = options.sqs && options.queueUrl ? await queueDepth(options.sqs, options.queueUrl) : null;
  const status = summarise(options.job, output, inJob.size, done, failedShards.length, failed, queue);
  return { ...status, skipped: manifest.skipped?.length ?? 0 };
}

/**
 * The job's published outputs: for each done shard, the curated shards and the rejects file its done marker lists
 * (the one attempt that published). What else lies under curated/ or rejects/ is an attempt in progress or one that
 * lost, and is no output.
 */
export async function jobOutputs(options: JobStatusOptions): Promise<{ curated: string[]; rejects: string[] }> {
  const { folder, done } = await readDoneShards(options);
  const uri = (key: string) => `s3://${folder.bucket}/${key}`;
  const sorted = [...done].sort((a, b) => (a.shard < b.shard ? -1 : 1));
  return {
    curated: sorted.flatMap((d) => d.curated.map((c) => uri(c.key))),
    rejects: sorted.filter((d) => d.rejects.events > 0).map((d) => uri(d.rejects.key)),
  };
}

/** The manifest and the done markers of its shards that are of the shard's input as enqueued (others are not done). */
async function readDoneShards(options: JobStatusOptions) {
  const { s3 } = options;
  const output = jobOutput(options.output, options.job);
  const folder = jobFolder(output);
  const manifest = await readManifest(s3, folder);
  if (!manifest) {
    throw new FilterError(
      'job_not_found',
      `no job ${options.job} under ${options.output} (no ${output}manifest.json)`,
      {
        job: options.job,
        output,
      },
    );
  }
  const entries = new Map(manifest.shards.map((s) => [s.shard, s]));
  const listed = (await listKeys(s3, folder.bucket, `${folder.prefix}done/`))
    .map((k) => shardOfMarker(folder, 'done', k.key))
    .filter((s): s is string => s !== undefined && entries.has(s));
  const markers = await readAll<ShardDone>(
    s3,
    folder.bucket,
    listed.map((s) => doneKey(folder, s)),
    options.concurrency,
  );
  const done = markers.filter((d) => {
    const e = entries.get(d.shard);
    return (
      e && inputDifference(d, e.input, e.etag !== undefined ? { size: e.bytes, etag: e.etag } : undefined) === undefined
    );
  });
  return { output, folder, manifest, done, doneShards: new Set(done.map((d) => d.shard)) };
}

function summarise(
  job: string,
  output: string,
  total: number,
  done: readonly ShardDone[],
  failedCount: number,
  failed: readonly ShardFailed[],
  queue: JobStatus['queue'],
): Omit<JobStatus, 'skipped'> {
  const sum = (f: (d: ShardDone) => number) => done.reduce((n, d) => n + f(d), 0);
  const records = sum((d) => d.records);
  const accepted = sum((d) => d.accepted);
  const reasons: Record<string, number> = {};
  for (const d of done) for (const [code, n] of Object.entries(d.reasons)) reasons[code] = (reasons[code] ?? 0) + n;
  const pending = total - done.length - failedCount;
  let pairsPerSecond: number | null = null;
  if (done.length > 0) {
    // reduce, not Math.min(...spread): a job may have more shards than a call has arguments.
    const start = done.reduce((t, d) => Math.min(t, Date.parse(d.startedAt)), Infinity);
    const end = done.reduce((t, d) => Math.max(t, Date.parse(d.finishedAt)), -Infinity);
    pairsPerSecond = records / Math.max((end - start) / 1000, 1e-3);
  }
  const perShard = done.length > 0 ? records / done.length : null;
  const etaSeconds =
    pending === 0 ? 0 : pairsPerSecond && perShard !== null ? (pending * perShard) / pairsPerSecond : null;
  return {
    job,
    output,
    shards: {
      total,
      done: done.length,
      failed: failedCount,
      pending,
      inFlight: queue ? Math.min(pending, queue.inFlight) : null,
    },
    records,
    accepted,
    rejected: sum((d) => d.rejected),
    acceptRate: records > 0 ? accepted / records : null,
    reasons: Object.fromEntries(Object.entries(reasons).sort((a, b) => b[1] - a[1])),
    pairsPerSecond,
    etaSeconds,
    failures: failed.map(({ shard, code, message, attempts }) => ({ shard, code, message, attempts })),
    queue,
  };
}

async function readAll<T>(s3: S3Client, bucket: string, keys: readonly string[], concurrency = 16): Promise<T[]> {
  const out: T[] = [];
  let next = 0;
  const worker = async () => {
    while (next < keys.length) {
      const value = await getJsonObject<T>(s3, bucket, keys[next++]!);
      if (value) out.push(value);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, keys.length) }, worker));
  return out;
}

async function queueDepth(sqs: SQSClient, queueUrl: string): Promise<NonNullable<JobStatus['queue']>> {
  const res = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: queueUrl,
      AttributeNames: [
        'ApproximateNumberOfMessages',
        'ApproximateNumberOfMessagesNotVisible',
        'ApproximateNumberOfMessagesDelayed',
      ],
    }),
  );
  const n = (k: QueueAttributeName) => Number(res.Attributes?.[k] ?? 0);
  return {
    visible: n('ApproximateNumberOfMessages'),
    inFlight: n('ApproximateNumberOfMessagesNotVisible'),
    delayed: n('ApproximateNumberOfMessagesDelayed'),
  };
}

const duration = (s: number) =>
  s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;

export function formatJobStatus(s: JobStatus): string {
  const inFlight = s.shards.inFlight === null ? '' : `, ${s.shards.inFlight} in flight`;
  const lines = [
    `job ${s.job} (${s.output}): ${s.shards.done}/${s.shards.total} shards done${inFlight}, ` +
      `${s.shards.pending} pending, ${s.shards.failed} failed`,
    `pairs ${s.records}: accepted ${s.accepted}, rejected ${s.rejected}` +
      (s.acceptRate === null ? '' : ` (accept rate ${(s.acceptRate * 100).toFixed(1)}%)`),
    `throughput ${s.pairsPerSecond === null ? 'unknown' : `${s.pairsPerSecond.toFixed(1)} pairs/s`}, ETA ` +
      (s.etaSeconds === null ? 'unknown' : s.etaSeconds === 0 ? 'none (nothing pending)' : duration(s.etaSeconds)),
  ];
  if (Object.keys(s.reasons).length > 0) {
    lines.push(
      `reject reasons: ${Object.entries(s.reasons)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    );
  }
  if (s.queue) {
    lines.push(
      `queue: ${s.queue.visible} waiting, ${s.queue.inFlight} in flight, ${s.queue.delayed} delayed (whole queue)`,
    );
  }
  if (s.skipped > 0)
    lines.push(`skipped by enqueue: ${s.skipped} input keys that cannot be shard jobs (manifest.json)`);
  for (const f of s.failures) lines.push(`failed ${f.shard} after ${f.attempts} attempts: [${f.code}] ${f.message}`);
  // Messages quote input keys, which may hold anything: nothing reaches the terminal unescaped.
  return lines.map(printable).join('\n');
}
