import type { Scorer } from '../types.ts';
import { FilterError, type MetricShort } from '../types.ts';
import type { WorkerEnvName } from '../worker-env.ts';
import type { ImageIntake } from '../pipeline/index.ts';
import { EXECUTION_PROVIDERS, type ExecutionProvider } from '../model/execution-providers.ts';
import { formatThreshold, parseThresholds, Policy } from '../policy/index.ts';
import { fractionThreshold, fractionThresholdMessage } from '../policy/fraction-thresholds.ts';
import {
  parseMetricSelection,
  resolveMetricSelection,
  type MetricSelection,
  type SelectionSource,
} from '../policy/metric-selection.ts';

/** Everything the worker needs; from the environment (configFromEnv) or from the CLI's flags. */
export interface WorkerConfig {
  /**
   * MLMF_SOURCE: `kafka` or `sqs` (pair records), or `sqs-shards`: shard-job messages of `mlm-filter enqueue`, each a
   * whole WebDataset shard in S3 filtered into its job's outputs (lib/worker/shard-jobs.ts).
   */
  readonly source: 'kafka' | 'sqs' | 'sqs-shards';
  /** MLMF_BROKERS (comma-separated host:port): the source brokers and the audit/accepted/DLQ topics' brokers. */
  readonly brokers?: readonly string[];
  /** MLMF_SOURCE_TOPIC */
  readonly sourceTopic?: string;
  /** MLMF_GROUP_ID. Default `mlm-filter`. */
  readonly groupId?: string;
  /** MLMF_KAFKA_AUTH: none | iam | scram-sha-512. Default none. */
  readonly kafkaAuth?: 'none' | 'iam' | 'scram-sha-512';
  /** MLMF_KAFKA_TLS. Default false. */
  readonly kafkaTls?: boolean;
  /** MLMF_KAFKA_SECRET_ARN: Secrets Manager secret {"username","password"} for SCRAM. */
  readonly kafkaSecretArn?: string;
  /** MLMF_SQS_QUEUE_URL */
  readonly sqsQueueUrl?: string;
  /** MLMF_SQS_DLQ_URL: sqs-shards only: where a shard job that keeps failing goes, with the reason. */
  readonly sqsDlqUrl?: string;
  /**
   * MLMF_SHARD_MAX_ATTEMPTS (formerly MLMF_SHARD_MAX_RECEIVES, still read): sqs-shards only: real attempts at a
   * shard job (started, not merely received) before the dead-letter queue. Default 3.
   */
  readonly shardMaxAttempts?: number;
  /** MLMF_BUCKET: the curated bucket. */
  readonly bucket: string;
  /** MLMF_PREFIX: key prefix in the curated bucket. Default ''. */
  readonly prefix?: string;
  /** MLMF_AUDIT_TOPIC */
  readonly auditTopic?: string;
  /** MLMF_ACCEPTED_TOPIC (optional) */
  readonly acceptedTopic?: string;
  /** MLMF_DLQ_TOPIC (optional; without it a poison record is only an audit reject). */
  readonly dlqTopic?: string;
  /** MLMF_MODEL_DIR. Default /opt/mlm-filter/model. */
  readonly modelDir?: string;
  /** MLMF_MODEL_S3_URI: fetched into modelDir when that holds no model (a .tar/.tar.gz archive of the directory). */
  readonly modelS3Uri?: string;
  /** MLMF_MODEL_SHA256: required digest of the object at modelS3Uri. */
  readonly modelSha256?: string;
  /** MLMF_THRESHOLDS, e.g. `itm>=66,odf>=20`. */
  readonly thresholds?: string;
  /** MLMF_COMBINE: and | or. */
  readonly combine?: 'and' | 'or';
  /**
   * MLMF_METRICS: which metrics the scorer scores: `all` (default), `policy` (exactly the ones MLMF_THRESHOLDS
   * reads), or a comma-separated list that includes every one of those. Unscored metrics are null in the outputs.
   */
  readonly metrics?: MetricSelection;
  /** MLMF_EXECUTION_PROVIDER: cuda | webgpu | cpu. */
  readonly executionProvider?: ExecutionProvider;
  /** MLMF_BATCH_SIZE: scorer batch. */
  readonly batchSize?: number;
  /** MLMF_HEALTH_PORT: GET /healthz. Default 8080; 0 disables. */
  readonly healthPort?: number;
  /** MLMF_METRICS_NAMESPACE: CloudWatch EMF namespace. */
  readonly metricsNamespace?: string;
  /** MLMF_PIPELINE: pipeline name (metric dimension). */
  readonly pipeline?: string;
  /** AWS_REGION */
  readonly region?: string;
  /** MLMF_S3_ENDPOINT: local S3-protocol server (path-style addressing). */
  readonly s3Endpoint?: string;
  /** MLMF_SQS_ENDPOINT: local SQS-protocol server. */
  readonly sqsEndpoint?: string;
  /**
   * MLMF_TRANSACTIONAL_ID_PREFIX: first part of the Kafka transactional ids, one per input partition:
   * `<prefix>-<group>-<topic>-<partition>`. Default `mlmf`. It must be the same on every worker of the group: the next
   * owner of a partition fences the previous one through that id. MLMF_EXACTLY_ONCE=false turns transactions off
   * (at-least-once).
   */
  readonly transactionalIdPrefix?: string;
  readonly exactlyOnce?: boolean;
  /** MLMF_SHARD_SAMPLES: accepted samples per curated shard. Default 1000. */
  readonly samplesPerShard?: number;
  /** MLMF_MAX_SAMPLE_BYTES (sqs-shards): most bytes one input sample keeps (image, .txt, .json). Default 32 MiB. */
  readonly maxSampleBytes?: number;
  /** MLMF_MAX_PENDING_BYTES (sqs-shards): input sample bytes read and not yet written. Default 256 MiB. */
  readonly maxPendingBytes?: number;
  /**
   * MLMF_FLUSH_MS: a partial shard is written after this idle time; 0 writes one shard per source batch. Default 0,
   * because the pipeline waits for each batch to be durable before writing the next (holding would add the idle
   * time to every batch); raise MLMF_SOURCE_BATCH for bigger shards.
   */
  readonly idleFlushMs?: number;
  /** MLMF_S3_TIMEOUT_MS: per-request timeout of S3 calls (a timed-out upload is retried). Default 30000. */
  readonly s3RequestTimeoutMs?: number;
  /** MLMF_SESSION_TIMEOUT_MS: Kafka group session timeout (how soon a dead worker's partitions move). Default 30000. */
  readonly sessionTimeoutMs?: number;
  /**
   * MLMF_KAFKA_RETRY_BUDGET_MS: how long a Kafka outage (broker restart, coordinator move) is retried -- transactional
   * commits and consumer restarts -- before the worker exits with kafka_commit_failed / kafka_consumer_crashed.
   * Default 120000.
   */
  readonly kafkaRetryBudgetMs?: number;
  /** MLMF_SQS_VISIBILITY_S: visibility timeout of messages in work (how soon a dead worker's messages return). Default 60. */
  readonly sqsVisibilitySeconds?: number;
  /** MLMF_BACKLOG_SAMPLE_MS: how often consumer lag / queue depth is sampled for metrics. Default 30000. */
  readonly backlogSampleMs?: number;
  /**
   * MLMF_DEDUPE: reject a pair id seen earlier in this process as `duplicate`. Default false: redeliveries after a
   * rebalance would be caught by it (see the pipeline's dedupe); duplicates stay detectable by id downstream.
   */
  readonly dedupe?: boolean;
  /**
   * MLMF_SCORE_CACHE_TABLE: the fleet's shared score cache, a DynamoDB table (lib/cache/dynamo-store.ts) that every
   * worker and shard job reads before scoring and writes after; unset: no cache. The construct creates it.
   */
  readonly scoreCacheTable?: string;
  /** MLMF_SCORE_CACHE_TTL_DAYS: days an entry lives after it is written. Default 30. */
  readonly scoreCacheTtlDays?: number;
  /** MLMF_DYNAMODB_ENDPOINT: local DynamoDB-protocol server. */
  readonly dynamodbEndpoint?: string;
  /**
   * MLMF_DEDUPE_IMAGES: off (default), exact (a pair whose decoded image was accepted before is rejected as
   * duplicate_image), near[:D] (the same within Hamming distance D of the perceptual hash). Needs
   * MLMF_SCORE_CACHE_TABLE (the images are remembered there).
   */
  readonly dedupeImages?: DedupeImagesSetting;
  /** MLMF_SOURCE_BATCH: records per source batch (Kafka), hence at most one curated shard's worth. Default 1000. */
  readonly sourceBatch?: number;
  /** MLMF_INTAKE_CONCURRENCY: images fetched at once. Default 32. */
  readonly intakeConcurrency?: number;
  /** MLMF_ALLOW_ADDRESSES: comma-separated CIDRs / host:port the image fetcher may open despite the SSRF guard. */
  readonly allowAddresses?: readonly string[];
  /**
   * MLMF_JPEG_DECODER: auto (default: the native libjpeg-turbo module when built, as in the worker image), native
   * (fail at start without it) or sharp.
   */
  readonly jpegDecoder?: 'auto' | 'native' | 'sharp';
  /**
   * MLMF_JPEG_DCT_SCALING: true lets the native JPEG path decode at a DCT scale (the speed mode: ~1.4x fewer intake
   * CPU-seconds per pair, tensors ~0.3-0.9/255 off PIL's); default false: full decode, tensors equal the reference's
   * PIL preprocessing bit for bit.
   */
  readonly jpegDctScaling?: boolean;
  /** MLMF_ALLOW_FRACTION_THRESHOLDS: accept MLMF_THRESHOLDS values in (0, 1), refused by default as likely 0..1 habits. */
  readonly allowFractionThresholds?: boolean;
  /** Injected scorer (tests, benchmarks); otherwise the MLM scorer is loaded from modelDir. */
  readonly scorer?: Scorer;
  /** Injected image intake (benchmarks); otherwise lib/intake. */
  readonly intake?: ImageIntake;
}

const bool = (v: string | undefined, name: string): boolean | undefined => {
  if (v === undefined || v === '') return undefined;
  if (/^(1|true|yes)$/i.test(v)) return true;
  if (/^(0|false|no)$/i.test(v)) return false;
  throw new FilterError('worker_config', `${name} must be true or false, got ${JSON.stringify(v)}`, { name });
};

const int = (v: string | undefined, name: string): number | undefined => {
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    throw new FilterError('worker_config', `${name} must be a non-negative integer, got ${JSON.stringify(v)}`, {
      name,
    });
  }
  return n;
};

const list = (v: string | undefined) =>
  v
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);

function oneOf<T extends string>(v: string | undefined, name: string, allowed: readonly T[]): T | undefined {
  if (v === undefined || v === '') return undefined;
  if (!allowed.includes(v as T)) {
    throw new FilterError('worker_config', `${name} must be one of ${allowed.join('|')}, got ${JSON.stringify(v)}`, {
      name,
    });
  }
  return v as T;
}

/**
 * Where the worker's settings come from, by their documented names (lib/worker-env.ts): the environment
 * (configFromEnv), or the CLI's `worker` flags over the environment. `label` names a setting in an error message.
 */
export interface WorkerSettings {
  get(name: WorkerEnvName): string | undefined;
  label(name: WorkerEnvName): string;
}

/** Reads the worker's configuration from environment variables (names: lib/worker-env.ts, shared with infra/). */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  return configFrom({ get: (name) => env[name], label: (name) => name });
}

/** Reads and checks the worker's configuration from `settings`; an empty value counts as unset. */
export function configFrom(settings: WorkerSettings): WorkerConfig {
  const e = (k: WorkerEnvName) => {
    const v = settings.get(k);
    return v === '' ? undefined : v;
  };
  const l = (k: WorkerEnvName) => settings.label(k);
  const config: WorkerConfig = {
    source:
      oneOf(e('MLMF_SOURCE'), l('MLMF_SOURCE'), ['kafka', 'sqs', 'sqs-shards'] as const) ??
      (e('MLMF_SQS_QUEUE_URL') ? 'sqs' : 'kafka'),
    brokers: list(e('MLMF_BROKERS')),
    sourceTopic: e('MLMF_SOURCE_TOPIC'),
    groupId: e('MLMF_GROUP_ID'),
    kafkaAuth: oneOf(e('MLMF_KAFKA_AUTH'), l('MLMF_KAFKA_AUTH'), ['none', 'iam', 'scram-sha-512'] as const),
    kafkaTls: bool(e('MLMF_KAFKA_TLS'), l('MLMF_KAFKA_TLS')),
    kafkaSecretArn: e('MLMF_KAFKA_SECRET_ARN'),
    sqsQueueUrl: e('MLMF_SQS_QUEUE_URL'),
    sqsDlqUrl: e('MLMF_SQS_DLQ_URL'),
    shardMaxAttempts:
      e('MLMF_SHARD_MAX_ATTEMPTS') !== undefined
        ? int(e('MLMF_SHARD_MAX_ATTEMPTS'), l('MLMF_SHARD_MAX_ATTEMPTS'))
        : int(e('MLMF_SHARD_MAX_RECEIVES'), l('MLMF_SHARD_MAX_RECEIVES')),
    bucket: e('MLMF_BUCKET') ?? '',
    prefix: e('MLMF_PREFIX'),
    auditTopic: e('MLMF_AUDIT_TOPIC'),
    acceptedTopic: e('MLMF_ACCEPTED_TOPIC'),
    dlqTopic: e('MLMF_DLQ_TOPIC'),
    modelDir: e('MLMF_MODEL_DIR'),
    modelS3Uri: e('MLMF_MODEL_S3_URI'),
    modelSha256: e('MLMF_MODEL_SHA256'),
    thresholds: e('MLMF_THRESHOLDS'),
    combine: oneOf(e('MLMF_COMBINE'), l('MLMF_COMBINE'), ['and', 'or'] as const),
    metrics: e('MLMF_METRICS') === undefined ? undefined : parseMetricSelection(e('MLMF_METRICS')!, ENV_METRICS),
    executionProvider: oneOf(e('MLMF_EXECUTION_PROVIDER'), l('MLMF_EXECUTION_PROVIDER'), EXECUTION_PROVIDERS),
    batchSize: int(e('MLMF_BATCH_SIZE'), l('MLMF_BATCH_SIZE')),
    healthPort: int(e('MLMF_HEALTH_PORT'), l('MLMF_HEALTH_PORT')),
    metricsNamespace: e('MLMF_METRICS_NAMESPACE'),
    pipeline: e('MLMF_PIPELINE'),
    region: e('AWS_REGION') ?? e('AWS_DEFAULT_REGION'),
    s3Endpoint: e('MLMF_S3_ENDPOINT'),
    sqsEndpoint: e('MLMF_SQS_ENDPOINT'),
    transactionalIdPrefix: transactionalIdPrefix(e('MLMF_TRANSACTIONAL_ID_PREFIX'), e('MLMF_TRANSACTIONAL_ID')),
    exactlyOnce: bool(e('MLMF_EXACTLY_ONCE'), l('MLMF_EXACTLY_ONCE')),
    samplesPerShard: int(e('MLMF_SHARD_SAMPLES'), l('MLMF_SHARD_SAMPLES')),
    maxSampleBytes: int(e('MLMF_MAX_SAMPLE_BYTES'), l('MLMF_MAX_SAMPLE_BYTES')),
    maxPendingBytes: int(e('MLMF_MAX_PENDING_BYTES'), l('MLMF_MAX_PENDING_BYTES')),
    idleFlushMs: int(e('MLMF_FLUSH_MS'), l('MLMF_FLUSH_MS')),
    s3RequestTimeoutMs: int(e('MLMF_S3_TIMEOUT_MS'), l('MLMF_S3_TIMEOUT_MS')),
    sessionTimeoutMs: int(e('MLMF_SESSION_TIMEOUT_MS'), l('MLMF_SESSION_TIMEOUT_MS')),
    kafkaRetryBudgetMs: int(e('MLMF_KAFKA_RETRY_BUDGET_MS'), l('MLMF_KAFKA_RETRY_BUDGET_MS')),
    sqsVisibilitySeconds: int(e('MLMF_SQS_VISIBILITY_S'), l('MLMF_SQS_VISIBILITY_S')),
    backlogSampleMs: int(e('MLMF_BACKLOG_SAMPLE_MS'), l('MLMF_BACKLOG_SAMPLE_MS')),
    dedupe: bool(e('MLMF_DEDUPE'), l('MLMF_DEDUPE')),
    sourceBatch: int(e('MLMF_SOURCE_BATCH'), l('MLMF_SOURCE_BATCH')),
    scoreCacheTable: e('MLMF_SCORE_CACHE_TABLE'),
    scoreCacheTtlDays: positive(e('MLMF_SCORE_CACHE_TTL_DAYS'), l('MLMF_SCORE_CACHE_TTL_DAYS')),
    dynamodbEndpoint: e('MLMF_DYNAMODB_ENDPOINT'),
    dedupeImages: imageDedupe(e('MLMF_DEDUPE_IMAGES'), l('MLMF_DEDUPE_IMAGES')),
    intakeConcurrency: int(e('MLMF_INTAKE_CONCURRENCY'), l('MLMF_INTAKE_CONCURRENCY')),
    allowAddresses: list(e('MLMF_ALLOW_ADDRESSES')),
    jpegDecoder: jpegDecoder(e('MLMF_JPEG_DECODER')),
    jpegDctScaling: bool(e('MLMF_JPEG_DCT_SCALING'), l('MLMF_JPEG_DCT_SCALING')),
    allowFractionThresholds: bool(e('MLMF_ALLOW_FRACTION_THRESHOLDS'), l('MLMF_ALLOW_FRACTION_THRESHOLDS')),
  };
  return config;
}

/** An image dedupe policy: off, exact, or near with its Hamming distance (bits of the 64-bit perceptual hash). */
export type DedupeImagesSetting =
  { readonly mode: 'off' | 'exact' } | { readonly mode: 'near'; readonly distance?: number };

function imageDedupe(v: string | undefined, name: string): DedupeImagesSetting | undefined {
  if (v === undefined || v === '') return undefined;
  const m = /^(off|exact|near)(?::(\d{1,2}))?$/.exec(v);
  const distance = m?.[2] === undefined ? undefined : Number(m[2]);
  if (!m || (distance !== undefined && (m[1] !== 'near' || distance > 32))) {
    throw new FilterError(
      'worker_config',
      `${name} must be off, exact or near[:D] with D 0..32, got ${JSON.stringify(v)}`,
      {
        name,
      },
    );
  }
  return m[1] === 'near'
    ? { mode: 'near', ...(distance !== undefined ? { distance } : {}) }
    : { mode: m[1] as 'off' | 'exact' };
}

/** A positive number (fractions allowed: a TTL of half a day), else worker_config. */
function positive(v: string | undefined, name: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) {
    throw new FilterError('worker_config', `${name} must be a positive number, got ${JSON.stringify(v)}`, { name });
  }
  return n;
}

function jpegDecoder(v: string | undefined): WorkerConfig['jpegDecoder'] {
  if (v === undefined || v === '') return undefined;
  if (v === 'auto' || v === 'native' || v === 'sharp') return v;
  throw new FilterError('worker_config', `MLMF_JPEG_DECODER must be auto, native or sharp, got ${v}`, {
    variable: 'MLMF_JPEG_DECODER',
    value: v,
  });
}

const ENV_METRICS: SelectionSource = { name: 'MLMF_METRICS', code: 'worker_config' };

/** The worker's policy, from MLMF_THRESHOLDS and MLMF_COMBINE (defaults: the paper's itm>=66 AND odf>=20). */
export function policyFromConfig(c: WorkerConfig): Policy {
  const thresholds = c.thresholds ? parseThresholds(c.thresholds) : undefined;
  const fraction = fractionThreshold(thresholds ?? []);
  if (fraction && !c.allowFractionThresholds) {
    const message = fractionThresholdMessage(fraction, 'MLMF_ALLOW_FRACTION_THRESHOLDS=true');
    throw new FilterError('worker_config', `MLMF_THRESHOLDS: ${message}`, { name: 'MLMF_THRESHOLDS' });
  }
  return new Policy({ ...(thresholds ? { thresholds } : {}), ...(c.combine ? { combine: c.combine } : {}) });
}

/**
 * The metrics the scorer scores (MLMF_METRICS against what the policy reads). Throws FilterError('worker_config')
 * naming a metric the policy reads that an explicit list leaves out.
 */
export function scoredMetrics(c: WorkerConfig, policy: Policy = policyFromConfig(c)): MetricShort[] {
  const requiredBy = `the policy reads (MLMF_THRESHOLDS ${policy.thresholds.map(formatThreshold).join(',')})`;
  return resolveMetricSelection(c.metrics ?? 'all', policy.metrics, ENV_METRICS, requiredBy);
}

/** Checks that the configuration names everything its source needs; throws FilterError('worker_config') if not. */
export function validateConfig(c: WorkerConfig): void {
  const missing: string[] = [];
  // A shard job names its own output bucket, and its rejects land beside it: the audit topic is optional there.
  const shardJobs = c.source === 'sqs-shards';
  if (!c.bucket && !shardJobs) missing.push('MLMF_BUCKET (--bucket)');
  if (c.source === 'kafka') {
    if (!c.brokers?.length) missing.push('MLMF_BROKERS (--brokers)');
    if (!c.sourceTopic) missing.push('MLMF_SOURCE_TOPIC (--source-topic)');
  } else if (!c.sqsQueueUrl) missing.push('MLMF_SQS_QUEUE_URL (--sqs-queue-url)');
  if (!c.auditTopic && !shardJobs) missing.push('MLMF_AUDIT_TOPIC (--audit-topic)');
  if ((c.auditTopic || c.acceptedTopic || c.dlqTopic) && !c.brokers?.length)
    missing.push('MLMF_BROKERS (for the topics)');
  if (c.kafkaAuth === 'scram-sha-512' && !c.kafkaSecretArn) missing.push('MLMF_KAFKA_SECRET_ARN (SCRAM credentials)');
  if (c.modelS3Uri && !c.modelSha256) missing.push('MLMF_MODEL_SHA256 (digest of MLMF_MODEL_S3_URI)');
  if (c.dedupeImages && c.dedupeImages.mode !== 'off' && !c.scoreCacheTable)
    missing.push('MLMF_SCORE_CACHE_TABLE (MLMF_DEDUPE_IMAGES remembers images there)');
  if (missing.length > 0) {
    throw new FilterError('worker_config', `worker configuration incomplete: ${[...new Set(missing)].join(', ')}`, {
      missing,
    });
  }
  scoredMetrics(c);
}

/**
 * MLMF_TRANSACTIONAL_ID_PREFIX, checked. The retired MLMF_TRANSACTIONAL_ID (one id per worker slot) is refused rather
 * than ignored: a per-slot value on each worker would, read as a prefix, give every worker its own ids, and nothing
 * would fence a partition's previous owner.
 */
function transactionalIdPrefix(prefix: string | undefined, retired: string | undefined): string | undefined {
  if (retired !== undefined) {
    throw new FilterError(
      'worker_config',
      'MLMF_TRANSACTIONAL_ID is retired: transactional ids are per input partition (<prefix>-<group>-<topic>-<partition>); set MLMF_TRANSACTIONAL_ID_PREFIX, the same on every worker, or nothing (default mlmf)',
      { name: 'MLMF_TRANSACTIONAL_ID' },
    );
  }
  if (prefix !== undefined && !/^[A-Za-z0-9._-]{1,100}$/.test(prefix)) {
    throw new FilterError(
      'worker_config',
      `MLMF_TRANSACTIONAL_ID_PREFIX must be 1-100 of [A-Za-z0-9._-], got ${JSON.stringify(prefix)}`,
      {
        name: 'MLMF_TRANSACTIONAL_ID_PREFIX',
      },
    );
  }
  return prefix;
}
