/**
 * What a shard job writes, under its job folder `s3://bucket/prefix/<job>/`. Each attempt at a shard (a delivery
 * of its message that got as far as starting) has an attempt id, and every output of the attempt carries it, so two
 * attempts of one shard (a redelivery racing a paused worker, two workers with different MLMF_SHARD_SAMPLES) never
 * write, overwrite or delete each other's objects:
 *
 *   attempts/<shard>~<attempt>.json                 written when the attempt starts, before any work: the count of
 *                                                   real attempts (receives that never ran write none)
 *   curated/<shard>~<attempt>-00000.tar (+ .index.json)  accepted samples, WebDataset (ShardBuilder)
 *   rejects/<shard>~<attempt>.jsonl                 one audit event per rejected record
 *   done/<shard>.json                               the shard's summary, written LAST and create-only
 *                                                   (If-None-Match: *): the commit of exactly one attempt
 *   failed/<shard>.json                             why the shard went to the dead-letter queue (until it is done)
 *   manifest.json                                   written by `mlm-filter enqueue`: the job's shard list and counts
 *
 * The done marker names the attempt that won and lists its curated shards and rejects file: those are the shard's
 * outputs, and readers go through it (`mlm-filter job outputs`, `job status`). The winner then removes every other
 * attempt's objects of the shard; an attempt that loses the race, fails or loses its visibility lease removes only
 * its own. `~` cannot occur in a shard name, so `curated/<shard>~` lists one shard's objects and no other's.
 *
 * The job is the unit of acknowledgement (its SQS message is deleted after the done marker), so the sinks here are
 * `staged`: what they take is part of the job's output only once the done marker is written, as a Kafka transaction's
 * messages are part of the topic only once it commits.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { encodeAuditEvent, toAuditEvent } from '../formats/audit-event.ts';
import { ShardBuilder } from '../sinks/webdataset.ts';
import type { RunSummary } from '../metrics/run-summary.ts';
import type { ModelInfo, Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';
import { deleteKeys, getJsonObject, listKeys, putObject, type RetryOptions } from './s3-io.ts';
import { parseS3Uri, type InputIdentity } from './shard-job.ts';

/** Where one job's outputs live. */
export interface JobFolder {
  readonly bucket: string;
  /** The job folder's key prefix, ending with `/`. */
  readonly prefix: string;
}

export function jobFolder(output: string): JobFolder {
  const { bucket, key } = parseS3Uri(output, 'job output', true);
  return { bucket, prefix: key === '' || key.endsWith('/') ? key : `${key}/` };
}

export const manifestKey = (f: JobFolder) => `${f.prefix}manifest.json`;
export const doneKey = (f: JobFolder, shard: string) => `${f.prefix}done/${shard}.json`;
export const failedKey = (f: JobFolder, shard: string) => `${f.prefix}failed/${shard}.json`;
export const attemptKey = (f: JobFolder, shard: string, attempt: string) =>
  `${f.prefix}attempts/${shard}~${attempt}.json`;
export const rejectsKey = (f: JobFolder, shard: string, attempt: string) =>
  `${f.prefix}rejects/${shard}~${attempt}.jsonl`;
export const curatedBase = (f: JobFolder, shard: string, attempt: string, n: number) =>
  `${f.prefix}curated/${shard}~${attempt}-${String(n).padStart(5, '0')}`;

/** An attempt id: the real attempt's number and a random part (two attempts may start with the same number). */
export const newAttemptId = (attempt: number) => `a${attempt}-${randomBytes(4).toString('hex')}`;
const ATTEMPT_ID = /^a\d+-[0-9a-f]{8}$/;

/** The shard name a done/ or failed/ key stands for. */
export function shardOfMarker(f: JobFolder, folder: 'done' | 'failed', key: string): string | undefined {
  const head = `${f.prefix}${folder}/`;
  return key.startsWith(head) && key.endsWith('.json') ? key.slice(head.length, -'.json'.length) : undefined;
}

/** The done marker: the shard's summary. */
export interface ShardDone {
  readonly v: 1;
  readonly kind: 'shard-done';
  readonly job: string;
  readonly shard: string;
  readonly input: string;
  /** Records read from the shard; each is exactly one of accepted (in `curated`) or rejected (in `rejects`). */
  readonly records: number;
  readonly accepted: number;
  readonly rejected: number;
  readonly reasons: RunSummary['reasons'];
  readonly scores: RunSummary['scores'];
  readonly curated: readonly { key: string; samples: number }[];
  readonly rejects: { key: string; events: number };
  readonly model: ModelInfo;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly seconds: number;
  /** The real attempt that finished it (attempts started, not SQS receives), and its id in the output names. */
  readonly attempt: number;
  readonly attemptId?: string;
  /** The input object the outputs are of (absent in markers of older workers: `input` alone then). */
  readonly identity?: InputIdentity;
}

/** The started marker of an attempt. */
export interface ShardAttempt {
  readonly v: 1;
  readonly kind: 'shard-attempt';
  readonly job: string;
  readonly shard: string;
  readonly input: string;
  readonly attempt: number;
  readonly attemptId: string;
  readonly worker: string;
  readonly at: string;
}

/** The failed marker: why the job went to the dead-letter queue. */
export interface ShardFailed {
  readonly v: 1;
  readonly kind: 'shard-failed';
  readonly job: string;
  readonly shard: string;
  readonly input: string;
  readonly code: string;
  readonly message: string;
  readonly attempts: number;
  readonly at: string;
}

export interface JobSinkOptions {
  readonly s3: S3Client;
  readonly folder: JobFolder;
  readonly shard: string;
  /** The attempt whose outputs these are (part of every key). */
  readonly attempt: string;
  readonly model: ModelInfo;
  readonly retry?: RetryOptions;
}

/**
 * Accepted samples as curated shards `curated/<shard>~<attempt>-NNNNN.tar` + index. A write adds its accepts to the
 * open shard; a shard cut by count or size is uploaded while the next fills, and a write waits for the previous
 * upload first, so at most two shards are held whatever the input's size. close() uploads the last, partial shard.
 */
export class JobCuratedSink implements Sink {
  readonly name = 'backfill-curated';
  readonly durability = 'staged' as const;
  readonly written: { key: string; samples: number }[] = [];
  private builder: ShardBuilder;
  private next = 0;
  private uploading: Promise<void> = Promise.resolve();
  private failure: unknown;

  constructor(
    private readonly options: JobSinkOptions & {
      /** Samples per curated shard. Default 1000. */
      readonly samplesPerShard?: number;
      /** Shard size cap, bytes. Default 256 MiB. */
      readonly maxShardBytes?: number;
      /** The index's `source` field (where the samples came from). */
      readonly indexSource?: Record<string, unknown>;
      readonly onShard?: (key: string, samples: number) => void;
    },
  ) {
    this.builder = new ShardBuilder(options.model);
  }

  async write(outcomes: readonly Outcome[]): Promise<void> {
    this.throwIfFailed();
    const perShard = this.options.samplesPerShard ?? 1000;
    const maxBytes = this.options.maxShardBytes ?? 256 * 1024 * 1024;
    for (const o of outcomes) {
      if (o.decision !== 'accept') continue;
      this.builder.add(o);
      if (this.builder.count >= perShard || this.builder.bytes >= maxBytes) await this.cut();
    }
  }

  /** Seals the open shard; its upload starts once the previous one is done. */
  private async cut(): Promise<void> {
    const builder = this.builder;
    this.builder = new ShardBuilder(this.options.model);
    if (builder.count === 0) return;
    const base = curatedBase(this.options.folder, this.options.shard, this.options.attempt, this.next++);
    await this.uploading;
    this.throwIfFailed();
    this.uploading = this.upload(builder, base).catch((err: unknown) => {
      this.failure = err;
    });
  }

  private async upload(builder: ShardBuilder, base: string): Promise<void> {
    const { s3, folder, retry } = this.options;
    const { tar, index } = await builder.finish(base.slice(base.lastIndexOf('/') + 1), this.options.indexSource);
    // Tar first, then its index: an index always describes a whole tar.
    await putObject(s3, folder.bucket, `${base}.tar`, tar, 'application/x-tar', retry);
    await putObject(s3, folder.bucket, `${base}.index.json`, JSON.stringify(index), 'application/json', retry);
    this.written.push({ key: `${base}.tar`, samples: index.count });
    this.options.onShard?.(`${base}.tar`, index.count);
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /**
   * Makes the shards already cut durable, without cutting the open one: the pipeline also flushes when it waits,
   * and a cut at such a moment would make shard boundaries depend on timing. close() cuts the last shard.
   */
  async flush(): Promise<void> {
    await this.uploading;
    this.throwIfFailed();
  }

  /** Cuts and uploads the last, partial shard; called once the shard job has read its whole input. */
  async close(): Promise<void> {
    await this.cut();
    await this.flush();
  }
}

/**
 * Rejects as audit events, one JSON line each, streamed into `rejects/<shard>~<attempt>.jsonl` by a multipart
 * upload: memory stays at a part (8 MiB) whatever the number of rejects. The object appears whole at close(), or not
 * at all (abort(): the parts are discarded).
 */
export class JobRejectsSink implements Sink {
  readonly name = 'backfill-rejects';
  readonly durability = 'staged' as const;
  readonly key: string;
  events = 0;
  private readonly body = new PassThrough();
  private readonly upload: Upload;
  private readonly done: Promise<unknown>;

  constructor(private readonly options: JobSinkOptions) {
    this.key = rejectsKey(options.folder, options.shard, options.attempt);
    this.upload = new Upload({
      client: options.s3,
      params: { Bucket: options.folder.bucket, Key: this.key, Body: this.body, ContentType: 'application/x-ndjson' },
      partSize: 8 * 1024 * 1024,
      queueSize: 2,
    });
    this.done = this.upload.done();
    this.done.catch(() => undefined);
  }

  async write(outcomes: readonly Outcome[]): Promise<void> {
    const lines = outcomes
      .filter((o) => o.decision === 'reject')
      .map((o) => encodeAuditEvent(toAuditEvent(o, this.options.model)) + '\n');
    if (lines.length === 0) return;
    this.events += lines.length;
    if (!this.body.write(lines.join(''))) {
      // A failed upload stops reading the body: its error ends the wait, not a drain that never comes.
      await Promise.race([
        once(this.body, 'drain'),
        this.done.then(
          () => this.failed(new Error('the upload ended before the body')),
          (err: unknown) => this.failed(err),
        ),
      ]);
    }
  }

  private failed(err: unknown): never {
    throw new FilterError(
      'backfill_output_failed',
      `cannot write s3://${this.options.folder.bucket}/${this.key}: ${(err as Error).message}`,
      { key: this.key },
      { cause: err },
    );
  }

  /** Nothing to do before close(): the object is complete only when the body ends. */
  async flush(): Promise<void> {}

  async close(): Promise<void> {
    this.body.end();
    await this.done.catch((err: unknown) => this.failed(err));
  }

  /** Abandons the upload (a failed or stopped job): no object, no parts left behind. */
  async abort(): Promise<void> {
    this.body.destroy();
    await this.upload.abort().catch(() => undefined);
  }
}

/** The curated and rejects objects of `shard`, each with the attempt that wrote it. */
export async function attemptOutputs(
  s3: S3Client,
  folder: JobFolder,
  shard: string,
  retry?: RetryOptions,
): Promise<{ key: string; attempt: string }[]> {
  const out: { key: string; attempt: string }[] = [];
  for (const kind of ['curated', 'rejects'] as const) {
    const head = `${folder.prefix}${kind}/${shard}~`;
    const tail = kind === 'curated' ? /^(.+)-\d{5}\.(?:tar|index\.json)$/ : /^(.+)\.jsonl$/;
    for (const { key } of await listKeys(s3, folder.bucket, head, retry)) {
      const attempt = tail.exec(key.slice(head.length))?.[1];
      if (attempt !== undefined && ATTEMPT_ID.test(attempt)) out.push({ key, attempt });
    }
  }
  return out;
}

/**
 * Deletes the outputs of `shard` written by the attempts `which` selects: the winner removes the others' (none of
 * them can be published any more), any other attempt only its own.
 */
export async function removeAttemptOutputs(
  s3: S3Client,
  folder: JobFolder,
  shard: string,
  which: (attempt: string) => boolean,
  retry?: RetryOptions,
): Promise<string[]> {
  const keys = (await attemptOutputs(s3, folder, shard, retry)).filter((o) => which(o.attempt)).map((o) => o.key);
  await deleteKeys(s3, folder.bucket, keys, retry);
  return keys;
}

/** Attempts started at `shard` (their started markers); receives that never got to start are not among them. */
export async function countAttempts(s3: S3Client, folder: JobFolder, shard: string, retry?: RetryOptions) {
  const head = `${folder.prefix}attempts/${shard}~`;
  const keys = await listKeys(s3, folder.bucket, head, retry);
  return keys.filter((k) => k.key.endsWith('.json') && ATTEMPT_ID.test(k.key.slice(head.length, -5))).length;
}

/** Writes the started marker of a new attempt, before any work: from then on the attempt counts. */
export async function startAttempt(
  s3: S3Client,
  folder: JobFolder,
  marker: Omit<ShardAttempt, 'v' | 'kind' | 'attemptId' | 'at'>,
  retry?: RetryOptions,
): Promise<ShardAttempt> {
  const full: ShardAttempt = {
    v: 1,
    kind: 'shard-attempt',
    ...marker,
    attemptId: newAttemptId(marker.attempt),
    at: new Date().toISOString(),
  };
  const key = attemptKey(folder, marker.shard, full.attemptId);
  await putObject(s3, folder.bucket, key, JSON.stringify(full), 'application/json', retry);
  return full;
}

/** The done marker of `shard`, checked for shape; undefined when there is none. */
export async function readDone(s3: S3Client, folder: JobFolder, shard: string, retry?: RetryOptions) {
  const key = doneKey(folder, shard);
  const done = await getJsonObject<ShardDone>(s3, folder.bucket, key, retry);
  if (done === undefined) return undefined;
  if (done?.kind !== 'shard-done' || typeof done.input !== 'string' || !Array.isArray(done.curated)) {
    throw new FilterError('job_object_invalid', `s3://${folder.bucket}/${key} is not a done marker`, { key });
  }
  return done;
}

/**
 * Whether a done marker is of the input `job` names: same object, and, where both know them, the same size and
 * ETag. Where they differ, says how (for the error).
 */
export function inputDifference(
  done: Pick<ShardDone, 'input' | 'identity'>,
  input: string,
  identity?: { size?: number; etag?: string },
): string | undefined {
  const what = (uri: string, i?: { size?: number; etag?: string }) =>
    i?.etag !== undefined ? `${uri} (size ${i.size}, ETag ${i.etag})` : uri;
  if (done.input !== input) return `${what(done.input, done.identity)}, not ${what(input, identity)}`;
  if (done.identity && identity?.etag !== undefined) {
    if (done.identity.etag !== identity.etag || done.identity.size !== identity.size) {
      return `${what(done.input, done.identity)}, not ${what(input, identity)} (the object changed)`;
    }
  }
  return undefined;
}
