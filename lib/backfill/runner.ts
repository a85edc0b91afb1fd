/**
 * One shard job: the input shard streamed from S3 through the same pipeline as every other source (runPipeline), into
 * the job's outputs (outputs.ts), then the done marker. Inside the job nothing is acknowledged record by record
 * (the committer is NO_COMMIT): the job's SQS message is the unit of acknowledgement, deleted by the caller only after
 * runShardJob resolves, i.e. after the done marker is written. A job that fails or is stopped leaves no done marker
 * and its message comes back; the retry rewrites the same keys.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { SummaryCollector } from '../metrics/run-summary.ts';
import type { PairOptions } from '../pair/index.ts';
import { runPipeline, type ImageIntake, type PipelineLogger } from '../pipeline/index.ts';
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
  removeStaleCurated,
  type JobFolder,
  type ShardDone,
} from './outputs.ts';
import { deleteKeys, putObject, type RetryOptions } from './s3-io.ts';
import { openS3Shard } from './shard-input.ts';
import { parseS3Uri, type ShardJob } from './shard-job.ts';

export interface ShardJobOptions {
  /** Reads the input and writes the outputs. */
  readonly s3: S3Client;
  readonly scorer: Scorer;
  readonly intake: ImageIntake;
  readonly policy: Policy;
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
  /** The delivery this is (SQS ApproximateReceiveCount), recorded in the done marker. */
  readonly attempt?: number;
  readonly onOutcome?: (outcome: Outcome) => void;
  readonly onStage?: (stage: 'intake' | 'score', ms: number) => void;
  readonly logger?: PipelineLogger;
}

/** Runs the job to its done marker; throws when it cannot (nothing is marked done then). */
export async function runShardJob(job: ShardJob, options: ShardJobOptions): Promise<ShardDone> {
  const startedAt = new Date();
  const folder = jobFolder(job.output);
  const { s3, abort, retry } = options;
  const input = await openS3Shard(s3, parseS3Uri(job.input, 'input'), {
    signal: abort,
    retry,
    rangeBytes: options.rangeBytes,
  });
  const sinkOptions = { s3, folder, shard: job.shard, model: options.scorer.model, retry };
  const curated = new JobCuratedSink({
    ...sinkOptions,
    samplesPerShard: options.samplesPerShard,
    indexSource: { kind: 'backfill', job: job.job, input: job.input },
    onShard: (key, samples) =>
      options.logger?.info('curated shard written', { job: job.job, shard: job.shard, key, samples }),
  });
  const rejects = new JobRejectsSink(sinkOptions);
  const summary = new SummaryCollector();
  const source = new WholeShard(
    WebDatasetSource.of([{ path: job.input, open: async () => input.bytes }], {
      batchSize: options.batchSize ?? 64,
      maxMemberBytes: options.maxMemberBytes,
      maxSampleBytes: options.maxSampleBytes,
    }),
  );
  try {
    const stats = await runPipeline({
      source,
      intake: options.intake,
      scorer: options.scorer,
      policy: options.policy,
      sinks: [curated, rejects, ...(options.extraSinks ?? [])],
      pair: options.pair,
      intakeConcurrency: options.intakeConcurrency,
      maxPendingRecords: options.maxPendingRecords ?? 1024,
      maxPendingBytes: options.maxPendingBytes,
      // One shard, one run: a repeated id inside the shard is a `duplicate` reject, as in `mlm-filter filter`.
      dedupe: true,
      abort,
      onOutcome: (o) => {
        summary.add(o);
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
          (abort?.aborted ? ' (stopped)' : ''),
        { job: job.job, shard: job.shard },
      );
    }
    await curated.close();
    await rejects.close();
  } catch (err) {
    await rejects.abort();
    await input.bytes.close().catch(() => undefined);
    throw err;
  }
  return finish(job, folder, options, { startedAt, summary, curated, rejects });
}

interface Finished {
  readonly startedAt: Date;
  readonly summary: SummaryCollector;
  readonly curated: JobCuratedSink;
  readonly rejects: JobRejectsSink;
}

/** Removes what an earlier attempt left that this one did not write, then writes the done marker. */
async function finish(job: ShardJob, folder: JobFolder, options: ShardJobOptions, f: Finished): Promise<ShardDone> {
  const { s3, retry } = options;
  const curated = [...f.curated.written].sort((a, b) => (a.key < b.key ? -1 : 1));
  const stale = await removeStaleCurated(
    s3,
    folder,
    job.shard,
    curated.map((c) => c.key),
    retry,
  );
  if (stale.length > 0)
    options.logger?.info('removed curated shards of an earlier attempt', { shard: job.shard, stale });
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
    curated,
    rejects: { key: f.rejects.key, events: f.rejects.events },
    model: options.scorer.model,
    startedAt: f.startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    seconds: (finishedAt.getTime() - f.startedAt.getTime()) / 1000,
    attempt: options.attempt ?? 1,
  };
  await putObject(
    s3,
    folder.bucket,
    doneKey(folder, job.shard),
    JSON.stringify(done, null, 1),
    'application/json',
    retry,
  );
  // A shard that went to the dead-letter queue once and is done now is no longer failed.
  await deleteKeys(s3, folder.bucket, [failedKey(folder, job.shard)], retry).catch(() => undefined);
  return done;
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
