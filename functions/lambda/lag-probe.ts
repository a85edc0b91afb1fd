/**
 * The Kafka lag probe: a scheduled Lambda (every minute, infra/lib/lag-probe.ts) that measures the worker consumer
 * group's backlog on the source topic and publishes it as the `KafkaBacklog` CloudWatch metric (an EMF log line),
 * which the service's scaling policies read.
 *
 * Why not MSK's own `SumOffsetLag`: MSK publishes lag only for a group with committed offsets, so a new group (or one
 * whose offsets expired) has no metric at all, and a service scaled to zero never wakes. The probe counts a partition
 * the group never committed on from its low watermark, which is where the worker starts (it subscribes from the
 * beginning), so input waiting for a group that never ran is backlog too.
 *
 * Configuration: the worker's variable names (lib/worker-env.ts) for what both read, see {@link LagProbeEnvName}.
 */
import type { Kafka } from 'kafkajs';
import { createKafka, type KafkaAuth } from '../../lib/kafka/client.ts';
import { groupLag, type OffsetsAdmin } from '../../lib/kafka/lag.ts';
import { readScramSecret } from '../../lib/kafka/scram-secret.ts';
import { emfDocument } from '../../lib/metrics/emf.ts';
import { DEFAULT_METRICS_NAMESPACE, METRIC, PIPELINE_DIMENSION } from '../../lib/metrics/metric-names.ts';
import { FilterError } from '../../lib/types.ts';
import type { LagProbeEnv, LagProbeEnvName } from './lag-probe-env.ts';

export type { LagProbeEnv, LagProbeEnvName } from './lag-probe-env.ts';

export interface LagProbeConfig {
  readonly brokers: readonly string[];
  readonly topic: string;
  readonly groupId: string;
  readonly auth: 'none' | 'iam' | 'scram-sha-512';
  readonly tls: boolean;
  /** Secrets Manager secret `{"username", "password"}` for SCRAM. */
  readonly secretArn?: string;
  readonly region?: string;
  /** `Pipeline` dimension of the metric. */
  readonly pipeline: string;
  readonly namespace: string;
}

function configError(message: string, context: Record<string, unknown> = {}): FilterError {
  return new FilterError('lag_probe_config', message, context);
}

/** Reads and checks the probe's environment; throws `lag_probe_config` naming the variable. */
export function probeConfigFromEnv(env: LagProbeEnv): LagProbeConfig {
  const need = (name: LagProbeEnvName): string => {
    const v = env[name]?.trim();
    if (!v) throw configError(`${name} is required`, { variable: name });
    return v;
  };
  const brokers = need('MLMF_BROKERS')
    .split(',')
    .map((b) => b.trim())
    .filter((b) => b !== '');
  const auth = env.MLMF_KAFKA_AUTH?.trim() || 'none';
  if (auth !== 'none' && auth !== 'iam' && auth !== 'scram-sha-512') {
    throw configError('MLMF_KAFKA_AUTH must be none, iam or scram-sha-512', { value: auth });
  }
  const tlsRaw = env.MLMF_KAFKA_TLS?.trim() || 'false';
  if (tlsRaw !== 'true' && tlsRaw !== 'false') throw configError('MLMF_KAFKA_TLS must be true or false');
  const secretArn = env.MLMF_KAFKA_SECRET_ARN?.trim() || undefined;
  if (auth === 'scram-sha-512' && !secretArn)
    throw configError('MLMF_KAFKA_AUTH scram-sha-512 needs MLMF_KAFKA_SECRET_ARN');
  return {
    brokers,
    topic: need('MLMF_SOURCE_TOPIC'),
    groupId: need('MLMF_GROUP_ID'),
    auth,
    tls: tlsRaw === 'true',
    secretArn,
    region: env.AWS_REGION?.trim() || undefined,
    pipeline: env.MLMF_PIPELINE?.trim() || 'default',
    namespace: env.MLMF_METRICS_NAMESPACE?.trim() || DEFAULT_METRICS_NAMESPACE,
  };
}

/** One partition's share of the backlog. Offsets are kafkajs's int64 strings. */
export interface PartitionBacklog {
  readonly partition: number;
  readonly low: string;
  readonly end: string;
  /** The group's committed offset, or null where it never committed (or its offsets expired). */
  readonly committed: string | null;
  readonly backlog: number;
}

export interface TopicBacklog {
  readonly topic: string;
  readonly groupId: string;
  /** Records the group has still to consume, over every partition. */
  readonly total: number;
  readonly partitions: readonly PartitionBacklog[];
}

/**
 * Backlog of `groupId` on `topic`: per partition, lib/kafka/lag.ts's partitionLag -- end offset minus the committed
 * offset, or minus the low watermark where the group has no commit or a commit below it (records deleted by
 * retention can no longer be consumed). The worker's ConsumerLag (KafkaSource.lag) is the same measure.
 */
export async function measureBacklog(admin: OffsetsAdmin, topic: string, groupId: string): Promise<TopicBacklog> {
  const lags = await groupLag(admin, topic, groupId);
  const partitions = lags.map((p): PartitionBacklog => ({
    partition: p.partition,
    low: p.low,
    end: p.high,
    committed: p.committed,
    backlog: Number(p.lag),
  }));
  return { topic, groupId, total: Number(lags.reduce((n, p) => n + p.lag, 0n)), partitions };
}

/** The EMF document that publishes a measurement as `KafkaBacklog` with the pipeline's dimension. */
export function backlogEmf(
  backlog: TopicBacklog,
  target: { readonly pipeline: string; readonly namespace: string; readonly timestamp: number },
): Record<string, unknown> {
  return emfDocument({
    namespace: target.namespace,
    timestamp: target.timestamp,
    dimensions: { [PIPELINE_DIMENSION]: target.pipeline },
    metrics: [{ name: METRIC.KafkaBacklog, unit: 'Count', value: backlog.total }],
    properties: {
      Topic: backlog.topic,
      ConsumerGroup: backlog.groupId,
      PartitionsWithoutCommit: backlog.partitions.filter((p) => p.committed === null).length,
    },
  });
}

/** A kafkajs client for the probe's cluster (the worker's TLS/SASL/IAM set-up, lib/kafka/client.ts). */
export async function probeKafka(config: LagProbeConfig): Promise<Kafka> {
  let auth: KafkaAuth = { mechanism: 'none' };
  if (config.auth === 'iam') {
    if (!config.region) throw configError('MSK IAM auth needs AWS_REGION');
    auth = { mechanism: 'iam', region: config.region };
  } else if (config.auth === 'scram-sha-512') {
    auth = await readScramSecret(config.secretArn!, config.region);
  }
  return createKafka({
    brokers: config.brokers,
    clientId: `mlm-filter-lag-probe-${config.pipeline}`,
    auth,
    tls: config.tls,
    connectionTimeoutMs: 10_000,
  });
}

/** Measures once and writes the EMF line; returns the measurement. */
export async function probeOnce(
  config: LagProbeConfig,
  kafka: Kafka,
  emit: (line: string) => void,
  now: () => number = Date.now,
): Promise<TopicBacklog> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const backlog = await measureBacklog(admin, config.topic, config.groupId);
    emit(
      JSON.stringify(backlogEmf(backlog, { pipeline: config.pipeline, namespace: config.namespace, timestamp: now() })),
    );
    return backlog;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

// Kept across warm invocations: a SCRAM deployment would otherwise read its secret every minute. Dropped on any
// failure, so a rotated secret or a replaced broker list is picked up by the next run.
let cached: { key: string; kafka: Promise<Kafka> } | undefined;

/**
 * Lambda entry point (EventBridge schedule). The EMF line goes straight to stdout: the Node.js runtime's console.log
 * prefixes each line with a timestamp and request id, and CloudWatch extracts metrics only from a line that is one
 * JSON object. A failure throws (the invocation fails and no metric is published: the backlog alarm on missing data
 * tells the operator).
 */
export async function handler(): Promise<{ topic: string; groupId: string; backlog: number }> {
  const config = probeConfigFromEnv(process.env as LagProbeEnv);
  const key = JSON.stringify(config);
  if (cached?.key !== key) cached = { key, kafka: probeKafka(config) };
  try {
    const backlog = await probeOnce(config, await cached.kafka, (line) => process.stdout.write(line + '\n'));
    return { topic: backlog.topic, groupId: backlog.groupId, backlog: backlog.total };
  } catch (err) {
    cached = undefined;
    throw err;
  }
}
