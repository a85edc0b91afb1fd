/**
 * The GPU worker's environment contract: every variable the worker reads (lib/worker/config.ts) and the
 * construct sets on its tasks (infra/lib/pipeline.ts). Both sides type their names against this one list, so a
 * variable renamed or misspelt on either side is a compile error instead of a silently ignored setting. The worker's
 * `WorkerConfig` documents each value's meaning and default; docs/DEPLOY.md the operator's view.
 */
import { EXECUTION_PROVIDER_CHOICES } from './model/execution-providers.ts';

export const WORKER_ENV = {
  MLMF_SOURCE: 'kafka | sqs | sqs-shards (shard jobs of mlm-filter enqueue)',
  MLMF_BROKERS: 'comma-separated host:port of the source and audit/accepted/DLQ brokers',
  MLMF_SOURCE_TOPIC: 'the crawler topic',
  MLMF_GROUP_ID: 'Kafka consumer group',
  MLMF_KAFKA_AUTH: 'none | iam | scram-sha-512',
  MLMF_KAFKA_TLS: 'true | false',
  MLMF_KAFKA_SECRET_ARN: 'Secrets Manager secret {username, password} for SCRAM',
  MLMF_SQS_QUEUE_URL: 'the crawler queue',
  MLMF_SQS_ENDPOINT: 'local SQS-protocol server (tests)',
  MLMF_SQS_VISIBILITY_S: 'visibility timeout of messages in work',
  MLMF_SQS_DLQ_URL: 'sqs-shards: dead-letter queue of shard jobs that keep failing (with the reason)',
  MLMF_SHARD_MAX_ATTEMPTS: 'sqs-shards: real attempts at a failing shard job before the dead-letter queue',
  MLMF_SHARD_MAX_RECEIVES: 'sqs-shards: the former name of MLMF_SHARD_MAX_ATTEMPTS (read when that is unset)',
  MLMF_BUCKET: 'the curated bucket',
  MLMF_PREFIX: 'key prefix in the curated bucket',
  MLMF_S3_ENDPOINT: 'local S3-protocol server (tests)',
  MLMF_S3_TIMEOUT_MS: 'per-request timeout of S3 calls',
  MLMF_AUDIT_TOPIC: 'audit topic (rejects)',
  MLMF_ACCEPTED_TOPIC: 'accepted topic (optional)',
  MLMF_DLQ_TOPIC: 'dead-letter topic (optional)',
  MLMF_MODEL_DIR: 'model directory in the task',
  MLMF_MODEL_S3_URI: 'model archive fetched into MLMF_MODEL_DIR',
  MLMF_MODEL_SHA256: 'required digest of the model archive',
  MLMF_THRESHOLDS: 'policy conditions, e.g. itm>=66,odf>=20',
  MLMF_COMBINE: 'and | or',
  MLMF_ALLOW_FRACTION_THRESHOLDS: 'true: accept MLMF_THRESHOLDS values in (0, 1) (the scores are 0..100)',
  MLMF_METRICS: 'all | policy | comma-separated metrics',
  MLMF_EXECUTION_PROVIDER: EXECUTION_PROVIDER_CHOICES,
  MLMF_BATCH_SIZE: 'scorer batch',
  MLMF_HEALTH_PORT: 'GET /healthz port (0 disables)',
  MLMF_METRICS_NAMESPACE: 'CloudWatch EMF namespace',
  MLMF_PIPELINE: 'pipeline name (metric dimension)',
  MLMF_TRANSACTIONAL_ID_PREFIX:
    'first part of the per-input-partition Kafka transactional ids (the same on every worker)',
  MLMF_TRANSACTIONAL_ID: 'retired (ids are per input partition now): refused, see MLMF_TRANSACTIONAL_ID_PREFIX',
  MLMF_EXACTLY_ONCE: 'false turns Kafka transactions off (at-least-once)',
  MLMF_SHARD_SAMPLES: 'accepted samples per curated shard',
  MLMF_MAX_SAMPLE_BYTES: 'sqs-shards: most bytes one input sample keeps (image, .txt, .json)',
  MLMF_MAX_PENDING_BYTES: 'sqs-shards: input sample bytes read and not yet written',
  MLMF_FLUSH_MS: 'idle time before a partial shard is written',
  MLMF_SESSION_TIMEOUT_MS: 'Kafka group session timeout',
  MLMF_KAFKA_RETRY_BUDGET_MS: 'how long a Kafka outage is retried (commits, consumer restarts) before the worker exits',
  MLMF_DRAIN_BUDGET_MS: 'after SIGTERM, the drain may take this long before in-flight work is abandoned (0: no limit)',
  MLMF_BACKLOG_SAMPLE_MS: 'how often consumer lag / queue depth is sampled',
  MLMF_DEDUPE: 'reject a pair id seen earlier in this process',
  MLMF_SCORE_CACHE_TABLE: "the fleet's shared score cache: a DynamoDB table (pk, sk strings); unset: no score cache",
  MLMF_SCORE_CACHE_TTL_DAYS: 'days a score cache entry lives after it is written (the TTL attribute expiresAt)',
  MLMF_DYNAMODB_ENDPOINT: 'local DynamoDB-protocol server (tests)',
  MLMF_DEDUPE_IMAGES: 'off | exact | near[:D] (Hamming distance): image dedupe against the score cache table',
  MLMF_SOURCE_BATCH: 'records per source batch',
  MLMF_INTAKE_CONCURRENCY: 'images fetched at once',
  MLMF_ALLOW_ADDRESSES: 'CIDRs / host:port the image fetcher may open despite the SSRF guard',
  MLMF_JPEG_DECODER: 'auto | native | sharp',
  MLMF_JPEG_DCT_SCALING:
    'true: decode JPEGs at a DCT scale (speed mode); false (default): full decode, PIL-exact tensors',
  MLMF_DEBUG: 'debug logging',
  MLMF_ORT_LOG_LEVEL: "onnxruntime's own log: verbose | info | warning | error | fatal (default: lib/model/ort-log.ts)",
  MLMF_ORT_TELEMETRY: "1 opts in to onnxruntime's built-in telemetry (off by default: lib/model/telemetry.ts)",
  ORT_DISABLE_TELEMETRY:
    'read by onnxruntime itself; the worker sets it from MLMF_ORT_TELEMETRY, the construct and the image too',
  AWS_REGION: 'region of the AWS clients',
  AWS_DEFAULT_REGION: 'region of the AWS clients when AWS_REGION is unset',
} as const;

export type WorkerEnvName = keyof typeof WORKER_ENV;
/** Values the construct sets (strings, as the container environment holds them). */
export type WorkerEnv = Partial<Record<WorkerEnvName, string>>;
