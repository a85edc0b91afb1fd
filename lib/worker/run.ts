/**
 * The streaming worker, composed: Kafka or SQS in, MLM filter, curated S3 shards + audit/accepted/DLQ topics out,
 * offsets committed (or messages deleted) only once every outcome is written; or shard jobs (backfill). Run by the
 * container entry point (functions/worker/main.ts: environment, signals, exit code) and by `mlm-filter worker`
 * (flags over the environment, configFrom). Logs: one JSON object per line on stdout. Health: GET /healthz on
 * MLMF_HEALTH_PORT, 200 while consuming, 503 while starting or draining.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { access, mkdir, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline as streamPipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Intake } from '../intake/index.ts';
import { startGpuSampling, WorkerMetrics } from '../metrics/index.ts';
import { runPipeline, type ImageIntake, type PipelineStats } from '../pipeline/index.ts';
import { DeadLetterSink } from '../sinks/dead-letter.ts';
import { KafkaAcceptedSink } from '../sinks/kafka-accepted.ts';
import { KafkaAuditSink } from '../sinks/kafka-audit.ts';
import { KafkaProducerHub } from '../kafka/producer-hub.ts';
import { readScramSecret } from '../kafka/scram-secret.ts';
import { S3CuratedSink } from '../sinks/s3-curated.ts';
import { createKafka, topicMaxMessageBytes, type KafkaAuth } from '../kafka/client.ts';
import { KafkaSource } from '../sources/kafka.ts';
import { SqsSource } from '../sources/sqs.ts';
import type { ModelInfo, Scorer, Sink } from '../types.ts';
import type { Policy } from '../policy/index.ts';
import type { Kafka } from 'kafkajs';
import { FilterError } from '../types.ts';
import { Closers } from '../pipeline/closers.ts';
import { s3Client, sqsClient } from '../support/aws.ts';
import { jsonLogger, type Logger } from '../support/logger.ts';
import type { ImageDedupe } from '../cache/dedupe.ts';
import type { ScoreCache } from '../cache/score-cache.ts';
import { runShardJobs } from './shard-jobs.ts';
import { imageDedupeFor, openScoreStore, scoreCacheFor } from './score-cache.ts';
import { policyFromConfig, scoredMetrics, validateConfig, type WorkerConfig } from './config.ts';

export { configFrom, configFromEnv, validateConfig, type WorkerConfig } from './config.ts';

/** One JSON object per line on stdout (CloudWatch Logs / any log shipper parses it as is); debug with MLMF_DEBUG. */
export const workerLog: Logger = jsonLogger(process.stdout);

export interface RunWorkerOptions {
  /** Graceful stop (what SIGTERM does): no new batches, in-flight work finishes and is acked. */
  readonly signal?: AbortSignal;
  /** Hard stop: in-flight work is abandoned unacked. */
  readonly abort?: AbortSignal;
  /** Where the worker logs. Default workerLog (stdout). */
  readonly logger?: Logger;
  /** Called once the worker consumes (health turns 200), with the health server's port. */
  readonly onReady?: (info: { healthPort?: number }) => void;
  /** Where EMF metric lines go. Default stdout (CloudWatch Logs extracts them); null for none. */
  readonly metricsOut?: ((line: string) => void) | null;
  /** EMF aggregation interval, ms. Default 60000 (CloudWatch's standard resolution); tests shorten it. */
  readonly metricsIntervalMs?: number;
}

export interface WorkerResult {
  readonly stats: PipelineStats;
  readonly shardsWritten: number;
}

/** Fetches the model archive from S3 into `dir` when `dir` holds no model, verifying its SHA-256 first. */
export async function ensureModel(config: WorkerConfig, s3: S3Client, log: Logger): Promise<string> {
  const dir = config.modelDir ?? '/opt/mlm-filter/model';
  const present = await access(join(dir, 'config.json')).then(
    () => true,
    () => false,
  );
  if (present || !config.modelS3Uri) return dir;
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(config.modelS3Uri);
  if (!m)
    throw new FilterError('worker_config', `MLMF_MODEL_S3_URI must be s3://bucket/key`, { uri: config.modelS3Uri });
  log.info('downloading the model', { uri: config.modelS3Uri, dir });
  await mkdir(dir, { recursive: true });
  const archive = join(dir, '.model-archive');
  const res = await s3.send(new GetObjectCommand({ Bucket: m[1], Key: m[2] }));
  const hash = createHash('sha256');
  const body = res.Body as Readable;
  body.on('data', (c: Buffer) => hash.update(c));
  await streamPipeline(body, createWriteStream(archive));
  const digest = hash.digest('hex');
  if (digest !== config.modelSha256!.toLowerCase()) {
    await rm(archive, { force: true });
    throw new FilterError('model_digest_mismatch', `model archive sha256 ${digest} != MLMF_MODEL_SHA256`, {
      uri: config.modelS3Uri,
      expected: config.modelSha256,
      actual: digest,
    });
  }
  // The archive is the model directory as a (gzipped) tar; system tar handles both.
  await promisify(execFile)('tar', ['-xf', archive, '-C', dir]);
  await rm(archive, { force: true });
  return dir;
}

async function kafkaAuth(config: WorkerConfig, region: string): Promise<KafkaAuth> {
  switch (config.kafkaAuth ?? 'none') {
    case 'none':
      return { mechanism: 'none' };
    case 'iam':
      return { mechanism: 'iam', region };
    case 'scram-sha-512':
      return readScramSecret(config.kafkaSecretArn!, region);
  }
}

function healthServer(
  port: number,
  state: () => 'starting' | 'consuming' | 'draining',
  metrics: WorkerMetrics,
): Promise<Server> {
  const prometheus = metrics.metricsHandler();
  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/metrics') return prometheus(req, res);
    if (req.method === 'GET' && (req.url === '/healthz' || req.url === '/health')) {
      const s = state();
      res.writeHead(s === 'consuming' ? 200 : 503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: s }));
      return;
    }
    res.writeHead(404).end();
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => resolve(server));
  });
}

type WorkerState = 'starting' | 'consuming' | 'draining';

interface KafkaParts {
  readonly kafka?: Kafka;
  readonly hub?: KafkaProducerHub;
  readonly exactlyOnce: boolean;
}

/** The Kafka client and the one producer hub (transactional when the source is Kafka and exactly-once is on). */
async function openKafka(config: WorkerConfig, region: string, log: Logger, closers: Closers): Promise<KafkaParts> {
  const exactlyOnce = config.source === 'kafka' && config.exactlyOnce !== false;
  if (!config.brokers?.length) return { exactlyOnce };
  const kafka = await createKafka({
    brokers: config.brokers,
    clientId: `mlm-filter-${config.pipeline ?? 'worker'}`,
    auth: await kafkaAuth(config, region),
    tls: config.kafkaTls ?? false,
    logger: log,
  });
  const groupId = config.groupId ?? 'mlm-filter';
  const hub = await KafkaProducerHub.open({
    kafka,
    transactions: exactlyOnce ? { groupId, idPrefix: config.transactionalIdPrefix } : undefined,
    commitRetryBudgetMs: config.kafkaRetryBudgetMs,
    logger: log,
  });
  closers.last(() => hub.close());
  return { kafka, hub, exactlyOnce };
}

/** The configured scorer, or the MLM filter loaded from the model directory (downloaded first when needed). */
async function openScorer(config: WorkerConfig, policy: Policy, s3: S3Client, log: Logger): Promise<Scorer> {
  if (config.scorer) return config.scorer;
  const { loadScorer } = await import('../model/index.ts');
  const dir = await ensureModel(config, s3, log);
  return loadScorer(dir, {
    executionProvider: config.executionProvider,
    // A GPU task that cannot create its provider must fail its start (health never turns 200), not score on CPU.
    fallbackToCpu: false,
    batchSize: config.batchSize,
    metrics: scoredMetrics(config, policy),
    logger: log.child({ component: 'scorer' }),
  });
}

interface SinkParts {
  readonly sinks: Sink[];
  readonly curated: S3CuratedSink;
  readonly deadLetter?: DeadLetterSink;
}

/** Curated S3 shards always; the audit, accepted and dead-letter topics when configured. */
async function buildSinks(
  config: WorkerConfig,
  { kafka, hub }: KafkaParts,
  s3: S3Client,
  model: ModelInfo,
  hard: AbortSignal,
  log: Logger,
): Promise<SinkParts> {
  const curated = new S3CuratedSink({
    s3,
    bucket: config.bucket,
    prefix: config.prefix,
    model,
    samplesPerShard: config.samplesPerShard,
    idleFlushMs: config.idleFlushMs ?? 0,
    signal: hard,
    logger: log,
  });
  const deadLetter =
    hub && config.dlqTopic ? new DeadLetterSink({ target: { kind: 'kafka', hub, topic: config.dlqTopic } }) : undefined;
  const sinks: Sink[] = [curated];
  if (hub && kafka && config.auditTopic) {
    // The topic's own limit, not a hard-coded one: a smaller max.message.bytes would refuse an event the sink let
    // through, fail the transaction and stall the partition.
    const topicMax = await topicMaxMessageBytes(kafka, config.auditTopic);
    const limit = topicMax ? { topicMaxMessageBytes: topicMax } : {};
    sinks.push(new KafkaAuditSink({ hub, topic: config.auditTopic, model, deadLetter, ...limit }));
  }
  if (hub && config.acceptedTopic)
    sinks.push(new KafkaAcceptedSink({ hub, topic: config.acceptedTopic, model, curated }));
  if (deadLetter) sinks.push(deadLetter);
  return { sinks, curated, deadLetter };
}

/** The Kafka consumer-group source or the SQS source, each committing through its own committer. */
function openSource(
  config: WorkerConfig,
  { kafka, hub, exactlyOnce }: KafkaParts,
  metrics: WorkerMetrics,
  region: string,
  log: Logger,
  closers: Closers,
): KafkaSource | SqsSource {
  const onAcked = (_n: number, ms: number) => metrics.observeBatchLatency(ms);
  if (config.source === 'kafka') {
    const session = config.sessionTimeoutMs;
    return new KafkaSource({
      kafka: kafka!,
      topic: config.sourceTopic!,
      groupId: config.groupId ?? 'mlm-filter',
      maxBatchRecords: config.sourceBatch ?? 1000,
      sessionTimeoutMs: session,
      heartbeatIntervalMs: session ? Math.min(3000, Math.floor(session / 3)) : undefined,
      restartBudgetMs: config.kafkaRetryBudgetMs,
      hub: exactlyOnce ? hub : undefined,
      onAcked,
      logger: log,
    });
  }
  const sqs = sqsClient({ region, endpoint: config.sqsEndpoint });
  closers.last(async () => sqs.destroy());
  return new SqsSource({
    client: sqs,
    queueUrl: config.sqsQueueUrl!,
    visibilityTimeoutSeconds: config.sqsVisibilitySeconds,
    onAcked,
    logger: log,
  });
}

/** Backlog for autoscaling and alarms: consumer lag (Kafka) or queue depth (SQS), sampled off the hot path. */
function sampleBacklog(source: KafkaSource | SqsSource, metrics: WorkerMetrics, everyMs: number, log: Logger) {
  const timer = setInterval(() => {
    const sample =
      source instanceof KafkaSource
        ? source.lag().then((lag) => (lag === undefined ? undefined : metrics.setConsumerLag(lag)))
        : source.depth().then((d) => metrics.setSourceQueueDepth(d));
    sample.catch((err: unknown) => log.warn('backlog sample failed', { error: String(err) }));
  }, everyMs);
  timer.unref();
  return async () => clearInterval(timer);
}

function buildIntake(config: WorkerConfig, s3: S3Client, scorer: Scorer, log: Logger): ImageIntake {
  if (config.intake) return config.intake;
  const intake = new Intake(
    {
      s3,
      ...(config.allowAddresses?.length ? { allowAddresses: [...config.allowAddresses] } : {}),
      ...(config.jpegDecoder ? { jpegDecoder: config.jpegDecoder } : {}),
      ...(config.jpegDctScaling !== undefined ? { jpegDctScaling: config.jpegDctScaling } : {}),
      // The image dedupe reads each image's perceptual hash, made beside the tensor.
      ...(config.dedupeImages && config.dedupeImages.mode !== 'off' ? { perceptualHash: true } : {}),
    },
    scorer.preprocess,
  );
  log.info('intake JPEG decoder', { jpegDecoder: intake.jpegDecoder });
  return intake;
}

/** Execution provider and GPU sampling (GpuUtilization from the task's own GPU; none off cuda). */
function observeScorer(config: WorkerConfig, scorer: Scorer, metrics: WorkerMetrics, log: Logger, closers: Closers) {
  // The provider in use (the MLM scorer reports it; stand-ins do not). No CPU fallback here: see fallbackToCpu.
  const provider = (scorer as { executionProvider?: string }).executionProvider ?? config.executionProvider ?? 'cpu';
  metrics.setExecutionProvider(provider, scorer.model);
  const gpu = startGpuSampling(provider, metrics, log);
  if (gpu) closers.first(async () => gpu.stop());
}

interface PairParts {
  readonly config: WorkerConfig;
  readonly kafka: KafkaParts;
  readonly s3: S3Client;
  readonly scorer: Scorer;
  readonly policy: Policy;
  readonly intake: ImageIntake;
  readonly scoreCache?: ScoreCache;
  readonly imageDedupe?: ImageDedupe;
  readonly metrics: WorkerMetrics;
  readonly log: Logger;
  readonly closers: Closers;
  readonly region: string;
}

interface PairRun {
  readonly signal: AbortSignal;
  readonly abort: AbortSignal;
  /** The worker takes records now: health turns 200. */
  readonly consuming: () => void;
  readonly healthPort?: number;
}

/** Pair records from Kafka or SQS through the pipeline into the curated bucket and the topics. */
async function consumePairs(parts: PairParts, run: PairRun): Promise<WorkerResult> {
  const { config, kafka, s3, scorer, policy, intake, scoreCache, imageDedupe, metrics, log, closers, region } = parts;
  const { sinks, curated, deadLetter } = await buildSinks(config, kafka, s3, scorer.model, run.abort, log);
  const source = openSource(config, kafka, metrics, region, log, closers);
  closers.first(() => source.close());
  closers.first(sampleBacklog(source, metrics, config.backlogSampleMs ?? 30_000, log));
  run.consuming();
  log.info('worker consuming', {
    ...{ source: config.source, topic: config.sourceTopic, queueUrl: config.sqsQueueUrl },
    groupId: config.groupId ?? 'mlm-filter',
    bucket: config.bucket,
    exactlyOnce: kafka.exactlyOnce,
    committer: source.committer.kind,
    healthPort: run.healthPort,
    model: scorer.model,
    scoredMetrics: scorer.metrics,
    scoreCacheTable: config.scoreCacheTable,
    dedupeImages: imageDedupe ? { mode: imageDedupe.mode, maxDistance: imageDedupe.maxDistance } : 'off',
  });
  const stats = await runPipeline({
    source,
    intake,
    scorer,
    policy,
    sinks,
    deadLetter,
    signal: run.signal,
    abort: run.abort,
    intakeConcurrency: config.intakeConcurrency,
    // In-run id dedupe is off by default: an SQS message redelivered while its first copy is still in work would
    // become a `duplicate` reject instead of the same outcome written twice (duplicates carry the same id).
    dedupe: config.dedupe ?? false,
    ...(scoreCache ? { scoreCache } : {}),
    ...(imageDedupe ? { imageDedupe } : {}),
    onOutcome: (o) => metrics.observe(o),
    onStage: (stage, ms) => metrics.observeStage(stage, ms),
    logger: metrics.countingErrors(log, 'pipeline'),
  });
  if (!run.abort.aborted) await Promise.all(sinks.map((s) => s.close()));
  log.info('worker stopped', {
    ...stats,
    shards: curated.shardsWritten,
    replaySkipped: curated.skippedReplayed,
    // Topic messages of offsets another owner (or an earlier attempt) had committed already: not published again.
    topicReplaySkipped: kafka.hub?.skippedReplayed ?? 0,
    ...(scoreCache ? { scoreCache: { ...scoreCache.counts }, scoreCacheStoreFailures: scoreCache.storeFailures } : {}),
    ...(imageDedupe ? { imageDedupe: { ...imageDedupe.counts } } : {}),
  });
  return { stats, shardsWritten: curated.shardsWritten };
}

/** Runs the worker until the source ends or `signal` aborts; sinks flushed and closed on return. */
export async function runWorker(config: WorkerConfig, options: RunWorkerOptions = {}): Promise<WorkerResult> {
  validateConfig(config);
  const log = options.logger ?? workerLog;
  const region = config.region ?? 'us-east-1';
  let state: WorkerState = 'starting';
  const hard = options.abort ?? new AbortController().signal;
  const graceful = options.signal ?? new AbortController().signal;
  const onGraceful = () => {
    state = 'draining';
    log.info('draining: no new batches; finishing, flushing and committing in-flight work');
  };
  graceful.addEventListener('abort', onGraceful, { once: true });
  const emit = options.metricsOut === undefined ? undefined : options.metricsOut;
  const metrics = new WorkerMetrics({
    pipeline: config.pipeline,
    namespace: config.metricsNamespace,
    emit,
    emfIntervalMs: options.metricsIntervalMs,
  });
  const health =
    config.healthPort === 0 ? undefined : await healthServer(config.healthPort ?? 8080, () => state, metrics);
  const healthPort = (health?.address() as { port?: number } | null)?.port;
  // A hung S3 request must fail and be retried, not hold the pipeline forever.
  const s3 = s3Client({ region, endpoint: config.s3Endpoint, requestTimeoutMs: config.s3RequestTimeoutMs ?? 30_000 });
  const closers = new Closers();
  try {
    const kafka = await openKafka(config, region, log, closers);
    const policy = policyFromConfig(config);
    const cacheStore = await openScoreStore(config);
    if (cacheStore) closers.last(() => cacheStore.close());
    const scorer = await openScorer(config, policy, s3, log);
    closers.last(() => scorer.close());
    observeScorer(config, scorer, metrics, log, closers);
    const intake = buildIntake(config, s3, scorer, log);
    const scoreCache = cacheStore && (await scoreCacheFor(cacheStore, scorer));
    const imageDedupe = cacheStore && imageDedupeFor(config, cacheStore, scorer);
    const consuming = () => {
      if (!graceful.aborted) state = 'consuming';
      options.onReady?.({ healthPort });
    };
    if (config.source === 'sqs-shards') {
      // Backfill: shard-job messages instead of pair records (lib/worker/shard-jobs.ts).
      const o = { config, kafka, s3, scorer, policy, intake, scoreCache, imageDedupe, metrics, log };
      return await runShardJobs({ ...o, signal: graceful, abort: hard, ready: consuming });
    }
    const parts = { config, kafka, s3, scorer, policy, intake, scoreCache, imageDedupe, metrics, log, closers, region };
    return await consumePairs(parts, { signal: graceful, abort: hard, consuming, healthPort });
  } finally {
    state = 'draining';
    graceful.removeEventListener('abort', onGraceful);
    metrics.close();
    await closers.run(log);
    s3.destroy();
    await new Promise<void>((r) => (health ? health.close(() => r()) : r()));
  }
}
