/**
 * One shard job: the input shard streamed from S3 through the same pipeline as every other source (runPipeline), into
 * the job's outputs (outputs.ts), then the done marker. Inside the job nothing is acknowledged record by record
 * (the committer is NO_COMMIT): the job's SQS message is the unit of acknowledgement, deleted by the caller only after
 * runShardJob resolves, i.e. after the done marker is written. Every output carries the attempt's id, and the done
 * marker is create-only: of two attempts that both finish, one publishes and the other removes its own outputs; an
 * attempt that fails or is stopped removes its own and leaves no done marker, and its message comes back.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { SummaryCollector } from '../metrics/run-summary.ts';
import type { PairOptions } from '../pair/index.ts';
import { runPipeline, type ImageIntake } from '../pipeline/index.ts';
import type { ImageDedupe } from '../cache/dedupe.ts';
import type { ScoreCache } from '../cache/score-cache.ts';
import type { Logger } from '../support/logger.ts';
import type { Policy } from '../policy/index.ts';
import { WebDatasetSource } from '../sources/webdataset.ts';
import type { ByteAdmission, Outcome, Scorer, Sink, Source, SourceBatch } from '../types.ts';
import { FilterError } from '../types.ts';
import {
  doneKey,
  failedKey,
  jobFolder,
  JobCuratedSink,
  JobRejectsSink,
  newAttemptId,
  readDone,
  removeAttemptOutputs,
  type JobFolder,
  type ShardDone,
} from './outputs.ts';
import { isPreconditionFailed } from '../support/aws-errors.ts';
import { deleteKeys, putObject, type RetryOptions } from './s3-io.ts';
import { openS3Shard } from './shard-input.ts';
import { parseS3Uri, type InputIdentity, type ShardJob } from './shard-job.ts';

export interface ShardJobOptions {
  /** Reads the input and writes the outputs. */
  readonly s3: S3Client;
  readonly scorer: Scorer;
  readonly intake: ImageIntake;
  readonly policy: Policy;
  /** Scores stored by earlier runs (lib/cache): a hit is not scored again. Default none. */
  readonly scoreCache?: ScoreCache;
  /** Rejects a pair whose image was already accepted (lib/cache/dedupe.ts). Default none. */
  readonly imageDedupe?: ImageDedupe;
  /** Sinks every outcome also goes to (the audit topic, where the worker has one). */
  readonly extraSinks?: readonly Sink[];
  /** Accepted samples per curated shard. Default 1000. */
  readonly samplesPerShard?: number;
  /** Samples per source batch. Default 64. */
  readonly batchSize?: number;
  /** Records admitted and not yet written: with the shard's raw samples, the bound on memory. Default 1024. */
  readonly maxPendingRecords?: number;
  readonly intakeConcurrency?: number;
  readonly maxMemberBytes?: number;
  /** Most bytes one input sample keeps (lib/sources/webdataset.ts). Default 32 MiB. */
  readonly maxSampleBytes?: number;
  /** Input sample bytes read and not yet written (runPipeline's maxPendingBytes). Default 256 MiB. */
  readonly maxPendingBytes?: number;
  readonly rangeBytes?: number;
  readonly pair?: PairOptions;
  readonly retry?: RetryOptions;
  /** Hard stop: the job is abandoned (no done marker); its message is the caller's to release. */
  readonly abort?: AbortSignal;
  /** The real attempt this is (started markers, this one included), recorded in the done marker. Default 1. */
  readonly attempt?: number;
  /** The attempt's id, part of every output's name (its started marker's). Default: a new one. */
  readonly attemptId?: string;
  /** Called right before the done marker is written; throws when this attempt may not publish (a lost lease). */
  readonly beforePublish?: () => Promise<void>;
  readonly onOutcome?: (outcome: Outcome) => void;
  readonly onStage?: (stage: 'intake' | 'score', ms: number) => void;
  readonly logger?: Logger;
}

export interface ShardResult {
  /** The shard's done marker: this attempt's, or the one another attempt published first. */
  readonly done: ShardDone;
  /** False when another attempt's done marker was there first: this attempt's outputs were removed. */
  readonly published: boolean;
}

/** Runs the job to its done marker; throws when it cannot (nothing is marked done then). */
export async function runShardJob(job: ShardJob, options: ShardJobOptions): Promise<ShardResult> {
  const startedAt = new Date();
  const folder = jobFolder(job.output);
  const { s3, retry } = options;
  const attemptId = options.attemptId ?? newAttemptId(options.attempt ?? 1);
  const { input, identity } = await openInput(job, options);
  const removeOwn = () =>
    removeAttemptOutputs(s3, folder, job.shard, (a) => a === attemptId, { ...retry, attempts: 3 }).catch(
      (err: unknown) =>
        options.logger?.warn("could not remove the attempt's outputs", { shard: job.shard, error: String(err) }),
    );
  const sinkOptions = { s3, folder, shard: job.shard, attempt: attemptId, model: options.scorer.model, retry };
  const curated = new JobCuratedSink({
    ...sinkOptions,
    samplesPerShard: options.samplesPerShard,
    indexSource: { kind: 'backfill', job: job.job, input: job.input },
    onShard: (key, samples) =>
      options.logger?.info('curated shard written', { job: job.job, shard: job.shard, key, samples }),
  });
  const rejects = new JobRejectsSink(sinkOptions);
  const summary = new SummaryCollector();
  try {
    await scoreShard(job, options, input, { curated, rejects, summary });
    await curated.close();
    await rejects.close();
    await options.beforePublish?.();
  } catch (err) {
    await rejects.abort();
    await input.bytes.close().catch(() => undefined);
    await curated.flush().catch(() => undefined);
    await removeOwn();
    throw err;
  }
  const attempt = { number: options.attempt ?? 1, id: attemptId, identity, startedAt };
  return publish(job, folder, options, attempt, { summary, curated, rejects }, removeOwn);
}

type OpenedShard = Awaited<ReturnType<typeof openS3Shard>>;

/** The input shard opened for ranged reads, refused when it changed since enqueue listed it. */
async function openInput(job: ShardJob, options: ShardJobOptions) {
  const loc = parseS3Uri(job.input, 'input');
  const input = await openS3Shard(options.s3, loc, {
    signal: options.abort,
    retry: options.retry,
    rangeBytes: options.rangeBytes,
  });
  const identity: InputIdentity = { bucket: loc.bucket, key: loc.key, size: input.size, etag: input.etag };
  if (job.etag !== undefined && (job.etag !== input.etag || job.size !== input.size)) {
    await input.bytes.close().catch(() => undefined);
    throw new FilterError(
      'shard_input_changed',
      `input shard ${job.input} is now size ${input.size}, ETag ${input.etag}; ` +
        `enqueue listed size ${job.size}, ETag ${job.etag}: enqueue the new data as a new job`,
      { job: job.job, shard: job.shard },
    );
  }
  return { input, identity };
}

/** Scores the whole shard into the attempt's sinks; a shard not read to its end, or not all settled, fails. */
async function scoreShard(
  job: ShardJob,
  options: ShardJobOptions,
  input: OpenedShard,
  out: { curated: Sink; rejects: Sink; summary: SummaryCollector },
): Promise<void> {
  const source = new WholeShard(
    WebDatasetSource.of([{ path: job.input, open: async () => input.bytes }], {
      batchSize: options.batchSize ?? 64,
      maxMemberBytes: options.maxMemberBytes,
      maxSampleBytes: options.maxSampleBytes,
    }),
  );
  const stats = await runPipeline({
    source,
    intake: options.intake,
    scorer: options.scorer,
    policy: options.policy,
    sinks: [out.curated, out.rejects, ...(options.extraSinks ?? [])],
    pair: options.pair,
    intakeConcurrency: options.intakeConcurrency,
    maxPendingRecords: options.maxPendingRecords ?? 1024,
    maxPendingBytes: options.maxPendingBytes,
    // One shard, one run: a repeated id inside the shard is a `duplicate` reject, as in `mlm-filter filter`.
    dedupe: true,
    ...(options.scoreCache ? { scoreCache: options.scoreCache } : {}),
    ...(options.imageDedupe ? { imageDedupe: options.imageDedupe } : {}),
    abort: options.abort,
    onOutcome: (o) => {
      out.summary.add(o);
      options.onOutcome?.(o);
    },
    onStage: options.onStage,
    logger: options.logger,
  });
  if (!source.readToEnd || stats.records !== source.records) {
    throw new FilterError(
      'shard_job_incomplete',
      `shard ${job.input}: ${stats.records} of ${source.records} records settled` +
        (source.readToEnd ? '' : ', the shard was not read to its end') +
        (options.abort?.aborted ? ' (stopped)' : ''),
      { job: job.job, shard: job.shard },
    );
  }
}

interface Finished {
  readonly summary: SummaryCollector;
  readonly curated: JobCuratedSink;
  readonly rejects: JobRejectsSink;
}

interface Attempt {
  readonly number: number;
  readonly id: string;
  readonly identity: InputIdentity;
  readonly startedAt: Date;
}

/**
 * Writes the done marker, create-only: the first attempt to get there publishes its outputs and removes every other
 * attempt's; a later one finds the marker there, removes its own outputs and returns the winner's marker.
 */
async function publish(
  job: ShardJob,
  folder: JobFolder,
  options: ShardJobOptions,
  attempt: Attempt,
  f: Finished,
  removeOwn: () => Promise<unknown>,
): Promise<ShardResult> {
  const { s3, retry } = options;
  const s = f.summary.summary();
  const finishedAt = new Date();
  const done: ShardDone = {
    v: 1,
    kind: 'shard-done',
    job: job.job,
    shard: job.shard,
    input: job.input,
    records: s.records,
    accepted: s.decisions.accept,
    rejected: s.decisions.reject,
    reasons: s.reasons,
    scores: s.scores,
    curated: [...f.curated.written].sort((a, b) => (a.key < b.key ? -1 : 1)),
    rejects: { key: f.rejects.key, events: f.rejects.events },
    model: options.scorer.model,
    startedAt: attempt.startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    seconds: (finishedAt.getTime() - attempt.startedAt.getTime()) / 1000,
    attempt: attempt.number,
    attemptId: attempt.id,
    identity: attempt.identity,
  };
  const key = doneKey(folder, job.shard);
  try {
    await putObject(s3, folder.bucket, key, JSON.stringify(done, null, 1), 'application/json', {
      ...retry,
      ifNoneMatch: true,
    });
  } catch (err) {
    // Any other failure leaves the outputs: the marker may have been written and its answer lost.
    if (!isPreconditionFailed(err)) throw err;
    const winner = await readDone(s3, folder, job.shard, retry);
    // Our own write, retried after its answer was lost, finds itself.
    if (winner?.attemptId !== attempt.id) {
      await removeOwn();
      if (!winner) throw err;
      options.logger?.info('shard published by another attempt first: this attempt removed its outputs', {
        shard: job.shard,
        attemptId: attempt.id,
        winner: winner.attemptId,
      });
      return { done: winner, published: false };
    }
  }
  const others = await removeAttemptOutputs(s3, folder, job.shard, (a) => a !== attempt.id, retry).catch(
    (err: unknown) => {
      options.logger?.warn("other attempts' outputs not removed", { shard: job.shard, error: String(err) });
      return [];
    },
  );
  if (others.length > 0) options.logger?.info("removed other attempts' outputs", { shard: job.shard, others });
  // A shard that went to the dead-letter queue once and is done now is no longer failed.
  await deleteKeys(s3, folder.bucket, [failedKey(folder, job.shard)], retry).catch(() => undefined);
  return { done, published: true };
}

/**
 * The shard's source, counting what it hands out and whether it reached the end: a run stopped early (a hard stop,
 * a fatal error) must not be taken for a finished shard.
 */
class WholeShard implements Source {
  records = 0;
  readToEnd = false;

  constructor(private readonly inner: WebDatasetSource) {}

  async *batches(signal: AbortSignal, admission?: ByteAdmission): AsyncIterable<SourceBatch> {
    for await (const batch of this.inner.batches(signal, admission)) {
      this.records += batch.records.length;
      yield batch;
    }
    this.readToEnd = !signal.aborted;
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
