/**
 * The worker's shard-job branch (MLMF_SOURCE=sqs-shards): backfill of an existing dataset. It takes shard-job
 * messages of `mlm-filter enqueue` one at a time from the SQS queue and runs each with lib/backfill/runner.ts: the
 * shard streamed from S3 through the same pipeline, its outputs under the job's folder, its done marker, then the
 * message deleted. While a shard is in progress its message's visibility lease is renewed (as lib/sources/sqs.ts
 * does for batches); a worker that dies lets it come back, and one that loses the lease (paused past the timeout,
 * the message received by another worker) stops the attempt and touches nothing but its own outputs.
 *
 * Attempts are counted in the job folder, not by SQS receives: an attempt writes its started marker before any work,
 * so a receive that never ran (a worker killed right after its long poll) costs nothing. A job that fails is made
 * visible again after a short backoff; one whose MLMF_SHARD_MAX_ATTEMPTS-th attempt (default 3) failed, or whose
 * input or message can never work, goes to MLMF_SQS_DLQ_URL with the reason, gets a failed marker in its job folder
 * (what `mlm-filter job status` reports) and is deleted. A job started that often without ever finishing (workers
 * killed mid-shard, e.g. out of memory) goes there too, unrun. The queue's redrive policy stays a backstop.
 * Scale-out is SQS competing consumers over ECS tasks, as for the other sources; the audit topic, when configured,
 * still receives every reject.
 */
import { hostname } from 'node:os';
import type { S3Client } from '@aws-sdk/client-s3';
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
  type Message,
} from '@aws-sdk/client-sqs';
import type { Kafka } from 'kafkajs';
import {
  countAttempts,
  failedKey,
  inputDifference,
  jobFolder,
  readDone,
  startAttempt,
  type JobFolder,
  type ShardAttempt,
  type ShardDone,
  type ShardFailed,
} from '../backfill/outputs.ts';
import { runShardJob, type ShardResult } from '../backfill/runner.ts';
import { putObject } from '../backfill/s3-io.ts';
import { isClientError } from '../support/aws-errors.ts';
import { sqsClient } from '../support/aws.ts';
import { RetryPolicy, sleep, type RetryBudget } from '../support/retry.ts';
import { parseShardJob, type ShardJob } from '../backfill/shard-job.ts';
import { topicMaxMessageBytes } from '../kafka/client.ts';
import type { KafkaProducerHub } from '../kafka/producer-hub.ts';
import { observed, type ObservedOutcome, type WorkerMetrics } from '../metrics/index.ts';
import type { ImageIntake, PipelineStats } from '../pipeline/index.ts';
import type { Logger } from '../support/logger.ts';
import type { Policy } from '../policy/index.ts';
import { KafkaAuditSink } from '../sinks/kafka-audit.ts';
import type { ModelInfo, Outcome, Scorer, Sink } from '../types.ts';
import { codeOf, FilterError } from '../errors.ts';
import type { ImageDedupe } from '../cache/dedupe.ts';
import type { ScoreCache } from '../cache/score-cache.ts';
import type { WorkerConfig } from './config.ts';

export interface ShardJobWorkerOptions {
  readonly config: WorkerConfig;
  /** The worker's Kafka client and producer hub, when it has brokers (for the audit topic). */
  readonly kafka: { readonly kafka?: Kafka; readonly hub?: KafkaProducerHub };
  readonly s3: S3Client;
  readonly scorer: Scorer;
  readonly policy: Policy;
  readonly intake: ImageIntake;
  /** The fleet's score cache (MLMF_SCORE_CACHE_TABLE): a re-run or a redelivered shard skips what was scored. */
  readonly scoreCache?: ScoreCache;
  /** MLMF_DEDUPE_IMAGES over the same table: accepted images remembered across workers and jobs. */
  readonly imageDedupe?: ImageDedupe;
  readonly metrics: WorkerMetrics;
  readonly log: Logger;
  /** Graceful stop: no new job is taken; the one in progress finishes. */
  readonly signal: AbortSignal;
  /** Hard stop: the job in progress is abandoned and its message made visible again. */
  readonly abort: AbortSignal;
  /** Called once the worker takes jobs (health turns 200). */
  readonly ready?: () => void;
}

/** Codes that no retry can fix: the job goes to the dead-letter queue on its first failure. */
const HOPELESS = new Set([
  'job_object_invalid',
  'shard_job_invalid',
  'shard_input_missing',
  'invalid_s3_uri',
  'shard_input_changed',
  'shard_input_mismatch',
]);

interface Run {
  readonly o: ShardJobWorkerOptions;
  readonly sqs: SQSClient;
  readonly queueUrl: string;
  readonly visibility: number;
  readonly maxAttempts: number;
  readonly audit?: Sink;
  readonly stats: PipelineStats;
  shards: number;
  /** Receives failing in a row: they pace the next try. */
  readonly receiveFailures: RetryBudget;
}

/** A failing receive (the queue or the network down) is tried again after 1 s, then up to 10 s apart. */
const RECEIVE_RETRY = new RetryPolicy({ baseMs: 1000, maxMs: 10_000 });
/** A failed job is visible again after 5 s, then 10, 20... (capped by the visibility timeout): SQS does the waiting. */
const JOB_RETRY = new RetryPolicy({ baseMs: 5000, maxMs: 12 * 3600 * 1000 });
/** Up to 5 tries of a message's delete, 400 ms apart and doubling. */
const DELETE_RETRY = new RetryPolicy({ maxAttempts: 5, baseMs: 400, maxMs: 5000 });

/** Takes shard jobs until a stop; returns totals over the jobs it finished. */
export async function runShardJobs(o: ShardJobWorkerOptions): Promise<{ stats: PipelineStats; shardsWritten: number }> {
  const { config, log } = o;
  const sqs = sqsClient({ region: config.region, endpoint: config.sqsEndpoint });
  const run: Run = {
    o,
    sqs,
    queueUrl: config.sqsQueueUrl!,
    visibility: config.sqsVisibilitySeconds ?? 60,
    maxAttempts: Math.max(1, config.shardMaxAttempts ?? 3),
    audit: await openAudit(o.kafka, config, o.scorer.model),
    stats: { records: 0, accepted: 0, rejected: 0, batchesAcked: 0, scorerBatches: 0, startedAt: Date.now() },
    shards: 0,
    receiveFailures: RECEIVE_RETRY.budget(),
  };
  const sampler = sampleDepth(run, config.backlogSampleMs ?? 30_000);
  o.ready?.();
  log.info('worker consuming shard jobs', {
    queueUrl: run.queueUrl,
    dlqUrl: config.sqsDlqUrl,
    maxAttempts: run.maxAttempts,
    visibilitySeconds: run.visibility,
    audit: !!run.audit,
  });
  try {
    while (!o.signal.aborted && !o.abort.aborted) {
      const message = await receiveOne(run);
      if (message) await handle(run, message).catch((err: unknown) => unhandled(run, message, err));
    }
  } finally {
    clearInterval(sampler);
    if (!o.abort.aborted) await run.audit?.close();
    sqs.destroy();
  }
  run.stats.finishedAt = Date.now();
  const cache = {
    ...(o.scoreCache
      ? { scoreCache: { ...o.scoreCache.counts }, scoreCacheStoreFailures: o.scoreCache.storeFailures }
      : {}),
    ...(o.imageDedupe ? { imageDedupe: { ...o.imageDedupe.counts } } : {}),
  };
  log.info('worker stopped', { ...run.stats, shards: run.shards, ...cache });
  return { stats: run.stats, shardsWritten: run.shards };
}

async function openAudit(parts: ShardJobWorkerOptions['kafka'], config: WorkerConfig, model: ModelInfo) {
  if (!parts.hub || !parts.kafka || !config.auditTopic) return undefined;
  const topicMax = await topicMaxMessageBytes(parts.kafka, config.auditTopic);
  const limit = topicMax ? { topicMaxMessageBytes: topicMax } : {};
  return new KafkaAuditSink({ hub: parts.hub, topic: config.auditTopic, model, ...limit });
}

/** One message, long-polled; undefined on an empty poll or a stop. */
async function receiveOne(run: Run): Promise<Message | undefined> {
  const stop = AbortSignal.any([run.o.signal, run.o.abort]);
  try {
    const res = await run.sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: run.queueUrl,
        MaxNumberOfMessages: 1,
        WaitTimeSeconds: 20,
        VisibilityTimeout: run.visibility,
        MessageSystemAttributeNames: ['ApproximateReceiveCount'],
      }),
      { abortSignal: stop },
    );
    run.receiveFailures.recovered();
    return res.Messages?.[0];
  } catch (err) {
    if (stop.aborted) return undefined;
    run.receiveFailures.failed(err);
    const retryInMs = run.receiveFailures.nextDelayMs();
    run.o.log.error('SQS receive failed, retrying', { queueUrl: run.queueUrl, retryInMs, error: String(err) });
    await sleep(retryInMs, stop).catch(() => undefined);
    return undefined;
  }
}

async function handle(run: Run, message: Message): Promise<void> {
  const { log, s3 } = run.o;
  const receives = Number(message.Attributes?.ApproximateReceiveCount ?? 1);
  let job: ShardJob;
  try {
    job = parseShardJob(message.Body ?? '');
  } catch (err) {
    return deadLetter(run, message, undefined, err, { receives, attempts: 0 });
  }
  const folder = jobFolder(job.output);
  const ctx = { job: job.job, shard: job.shard, receives };
  let done: ShardDone | undefined;
  try {
    done = await readDone(s3, folder, job.shard);
  } catch (err) {
    // A done marker that is not one: no attempt may replace it (it is create-only) and none can be taken for done.
    if ((err as { code?: string }).code !== 'job_object_invalid') throw err;
    return deadLetter(run, message, job, err, { receives, attempts: 0 }, false);
  }
  if (done) {
    const difference = inputDifference(done, job.input, job);
    // Finished by an earlier delivery whose delete did not happen, or sent twice by enqueue.
    if (difference === undefined) {
      log.info('shard already done: message deleted', ctx);
      return deleteMessage(run, message);
    }
    const why = `shard ${job.shard} of job ${job.job} is done for ${difference}: enqueue other inputs as another job`;
    const err = new FilterError('shard_input_mismatch', why, ctx);
    return deadLetter(run, message, job, err, { receives, attempts: 0 }, false);
  }
  let begun: { started: number; attempt?: ShardAttempt };
  try {
    begun = await begin(run, job, folder);
  } catch (err) {
    // A job folder that cannot be listed or written (no such bucket, access denied) cannot count attempts: the
    // receives stand in (each of them got this far and failed). Anything else comes back and is tried again.
    if (!isClientError(err)) throw err;
    const coded =
      err instanceof FilterError
        ? err
        : new FilterError(
            'backfill_output_failed',
            `cannot use the job folder s3://${folder.bucket}/${folder.prefix}: ${String(err)}`,
            ctx,
            { cause: err },
          );
    return failed(run, message, job, coded, { receives, attempts: receives });
  }
  const { started, attempt } = begun;
  if (!attempt) {
    const why = `started ${started} times without finishing: workers stopped or died mid-shard (memory?)`;
    const err = new FilterError('shard_job_incomplete', why, ctx);
    return deadLetter(run, message, job, err, { receives, attempts: started });
  }
  const lease = new Lease(run, message);
  const actx = { ...ctx, attempt: attempt.attempt, attemptId: attempt.attemptId };
  log.info('shard job started', { ...actx, input: job.input });
  // The attempt's outcomes count once its done marker is published: a failed or beaten attempt counts nothing.
  const outcomes: ObservedOutcome[] = [];
  try {
    const result = await runJob(run, job, attempt, lease, (o) => outcomes.push(observed(o)));
    await deleteMessage(run, message);
    if (!result.published) return log.info('shard job done by another attempt first: message deleted', actx);
    run.o.metrics.observeAll(outcomes);
    count(run, result.done);
    const { records, accepted, seconds } = result.done;
    log.info('shard job done', { ...actx, records, accepted, seconds });
    run.o.metrics.observeBatchLatency(seconds * 1000);
  } catch (err) {
    if (lease.lost) {
      // Another worker may hold the message now: its visibility, retries and dead-lettering are that worker's.
      log.warn('shard job stopped: its visibility lease was lost', { ...actx, why: lease.lost });
      return;
    }
    await failed(run, message, job, err, { receives, attempts: attempt.attempt });
  } finally {
    lease.stop();
  }
}

/** Counts the attempts started so far and, below the limit, writes this one's started marker before any work. */
async function begin(run: Run, job: ShardJob, folder: JobFolder): Promise<{ started: number; attempt?: ShardAttempt }> {
  const started = await countAttempts(run.o.s3, folder, job.shard);
  if (started >= run.maxAttempts) return { started };
  const marker = { job: job.job, shard: job.shard, input: job.input, attempt: started + 1, worker: hostname() };
  return { started, attempt: await startAttempt(run.o.s3, folder, marker) };
}

function runJob(
  run: Run,
  job: ShardJob,
  attempt: ShardAttempt,
  lease: Lease,
  onOutcome: (o: Outcome) => void,
): Promise<ShardResult> {
  const { o } = run;
  const { metrics, log } = o;
  return runShardJob(job, {
    s3: o.s3,
    scorer: o.scorer,
    intake: o.intake,
    policy: o.policy,
    ...(o.scoreCache ? { scoreCache: o.scoreCache } : {}),
    ...(o.imageDedupe ? { imageDedupe: o.imageDedupe } : {}),
    extraSinks: run.audit ? [run.audit] : [],
    samplesPerShard: o.config.samplesPerShard,
    maxSampleBytes: o.config.maxSampleBytes,
    maxPendingBytes: o.config.maxPendingBytes,
    intakeConcurrency: o.config.intakeConcurrency,
    abort: AbortSignal.any([o.abort, lease.signal]),
    attempt: attempt.attempt,
    attemptId: attempt.attemptId,
    beforePublish: () => lease.check(),
    onOutcome,
    onStage: (stage, ms) => metrics.observeStage(stage, ms),
    logger: metrics.countingErrors(log, 'pipeline'),
    retry: {
      onRetry: (what, n, error) => log.warn('S3 request failed, retrying', { what, attempt: n, error: String(error) }),
    },
  });
}

function count(run: Run, done: ShardDone): void {
  run.stats.records += done.records;
  run.stats.accepted += done.accepted;
  run.stats.rejected += done.rejected;
  run.stats.batchesAcked++;
  run.shards += done.curated.length;
}

/** Something around the job failed (S3 or SQS unreachable): the message comes back after its visibility timeout. */
function unhandled(run: Run, message: Message, err: unknown): void {
  run.o.metrics.countError('shard_job');
  run.o.log.error('shard job handling failed; the message comes back after its visibility timeout', {
    messageId: message.MessageId,
    error: String(err),
  });
}

interface Tries {
  /** SQS receives of the message (ApproximateReceiveCount): includes receives that never ran. */
  readonly receives: number;
  /** Real attempts: started markers, this one included. */
  readonly attempts: number;
}

/** A job that threw: back to the queue (hard stop: at once; else after a backoff), or to the dead-letter queue. */
async function failed(run: Run, message: Message, job: ShardJob, err: unknown, tries: Tries): Promise<void> {
  const code = codeOf(err);
  const ctx = { job: job.job, shard: job.shard, ...tries, code, error: String((err as Error).message ?? err) };
  if (run.o.abort.aborted) {
    run.o.log.warn('shard job abandoned on hard stop: visible again now', ctx);
    return setVisibility(run, message, 0);
  }
  if (HOPELESS.has(code) || tries.attempts >= run.maxAttempts) return deadLetter(run, message, job, err, tries);
  const retryIn = Math.min(run.visibility, Math.ceil(JOB_RETRY.delayMs(tries.attempts) / 1000));
  run.o.log.warn('shard job failed; it will be retried', { ...ctx, retryInSeconds: retryIn });
  await setVisibility(run, message, retryIn);
}

/**
 * To the DLQ with the reason (when one is configured), a failed marker in the job folder (unless `marker` is false:
 * a message at odds with a done shard must not mark it failed), then deleted.
 */
async function deadLetter(
  run: Run,
  message: Message,
  job: ShardJob | undefined,
  err: unknown,
  tries: Tries,
  marker = true,
) {
  const { config, log } = run.o;
  const failure = {
    code: codeOf(err),
    message: String((err as Error).message ?? err),
    ...tries,
    worker: hostname(),
    at: new Date().toISOString(),
  };
  const body = JSON.stringify({ ...(job ?? { body: message.Body }), failure });
  // Not sent: not deleted either (the error reaches unhandled(); the message comes back and is tried again).
  if (config.sqsDlqUrl) await run.sqs.send(new SendMessageCommand({ QueueUrl: config.sqsDlqUrl, MessageBody: body }));
  if (job && marker)
    await writeFailedMarker(run, job, failure).catch((e: unknown) =>
      log.warn('failed marker not written', { error: String(e) }),
    );
  await deleteMessage(run, message);
  log.error('shard job dead-lettered', { job: job?.job, shard: job?.shard, dlqUrl: config.sqsDlqUrl, ...failure });
}

async function writeFailedMarker(
  run: Run,
  job: ShardJob,
  f: { code: string; message: string; attempts: number; at: string },
) {
  const folder = jobFolder(job.output);
  const marker: ShardFailed = {
    v: 1,
    kind: 'shard-failed',
    job: job.job,
    shard: job.shard,
    input: job.input,
    code: f.code,
    message: f.message,
    attempts: f.attempts,
    at: f.at,
  };
  await putObject(
    run.o.s3,
    folder.bucket,
    failedKey(folder, job.shard),
    JSON.stringify(marker, null, 1),
    'application/json',
    {
      attempts: 3,
    },
  );
}

/** SQS's answers that say the receipt handle no longer holds the message (received again, or deleted). */
const LEASE_GONE = new Set([
  'ReceiptHandleIsInvalid',
  'InvalidParameterValue',
  'MessageNotInflight',
  'AWS.SimpleQueueService.MessageNotInflight',
]);

/**
 * The message's visibility lease while its shard runs: renewed every third of the timeout. It is lost when SQS
 * refuses the receipt handle, or when no renewal succeeded within a timeout (the message may be another worker's
 * by then); a lost lease aborts the attempt (`signal`), and check() (right before the done marker) renews it once
 * more and throws `shard_lease_lost` when it cannot.
 */
class Lease {
  /** Why the lease was lost; undefined while it holds. */
  lost: string | undefined;
  private readonly controller = new AbortController();
  readonly signal = this.controller.signal;
  private validUntil: number;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly run: Run,
    private readonly message: Message,
  ) {
    // The receive set the timeout a moment ago: counting from now is at most that moment generous.
    this.validUntil = Date.now() + run.visibility * 1000;
    this.timer = setInterval(() => void this.renew(), Math.max(1000, (run.visibility * 1000) / 3));
    this.timer.unref();
  }

  private async renew(): Promise<void> {
    if (this.lost) return;
    const asked = Date.now();
    try {
      await setVisibility(this.run, this.message, this.run.visibility);
      this.validUntil = asked + this.run.visibility * 1000;
    } catch (err) {
      const name = (err as { name?: string }).name ?? '';
      if (LEASE_GONE.has(name)) return this.lose(`SQS refused the receipt handle: ${name}`);
      if (Date.now() >= this.validUntil) return this.lose(`no renewal within ${this.run.visibility} s: ${String(err)}`);
      this.run.o.log.warn('visibility extension failed', { error: String(err) });
    }
  }

  private lose(why: string): void {
    if (this.lost) return;
    this.lost = why;
    this.controller.abort(new FilterError('shard_lease_lost', `visibility lease lost: ${why}`, {}));
  }

  async check(): Promise<void> {
    await this.renew();
    if (this.lost) throw new FilterError('shard_lease_lost', `visibility lease lost: ${this.lost}`, {});
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

async function setVisibility(run: Run, message: Message, seconds: number): Promise<void> {
  await run.sqs.send(
    new ChangeMessageVisibilityCommand({
      QueueUrl: run.queueUrl,
      ReceiptHandle: message.ReceiptHandle!,
      VisibilityTimeout: seconds,
    }),
  );
}

async function deleteMessage(run: Run, message: Message): Promise<void> {
  const { sqs, queueUrl } = run;
  try {
    await DELETE_RETRY.run(() =>
      sqs.send(new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: message.ReceiptHandle! })),
    );
  } catch (err) {
    // The outputs are complete: a message that comes back anyway finds the done marker and is deleted then.
    run.o.log.warn('delete failed; the message may come back', { error: String(err) });
  }
}

/** The queue's backlog for autoscaling and alarms, sampled off the hot path. */
function sampleDepth(run: Run, everyMs: number): NodeJS.Timeout {
  const timer = setInterval(() => {
    run.sqs
      .send(new GetQueueAttributesCommand({ QueueUrl: run.queueUrl, AttributeNames: ['ApproximateNumberOfMessages'] }))
      .then((res) => run.o.metrics.setSourceQueueDepth(Number(res.Attributes?.ApproximateNumberOfMessages ?? 0)))
      .catch((err: unknown) => run.o.log.warn('backlog sample failed', { error: String(err) }));
  }, everyMs);
  timer.unref();
  return timer;
}
