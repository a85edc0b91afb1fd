/**
 * CloudWatch metric contract between the worker (which publishes Embedded Metric Format records) and the
 * infrastructure (dashboard, alarms, autoscaling). Both sides import these names so a rename cannot drift.
 *
 * Every metric carries the dimension {@link PIPELINE_DIMENSION} (the pipeline name, passed to the worker in
 * {@link PIPELINE_ENV}); {@link METRIC.RejectsByReason} additionally carries {@link REASON_DIMENSION}.
 */
import type { WorkerEnvName } from '../worker-env.ts';

/** Default EMF namespace (the worker reads MLMF_METRICS_NAMESPACE, the construct passes its own value). */
export const DEFAULT_METRICS_NAMESPACE = 'MlmFilter';

/** Dimension naming the pipeline (one deployment of the construct). */
export const PIPELINE_DIMENSION = 'Pipeline';

/** Dimension naming the reject reason code on {@link METRIC.RejectsByReason}. */
export const REASON_DIMENSION = 'Reason';

/** Environment variable through which the task definition tells the worker its pipeline name. */
export const PIPELINE_ENV = 'MLMF_PIPELINE' satisfies WorkerEnvName;

/** Metric names. Counters are published per batch (statistic Sum); values (scores, latency, lag) use percentiles. */
export const METRIC = {
  /** Counter: records taken from the source. */
  PairsIn: 'PairsIn',
  /** Counter: pairs accepted and written to the curated bucket. */
  PairsAccepted: 'PairsAccepted',
  /** Counter: records rejected (any reason) and written to the audit topic. */
  PairsRejected: 'PairsRejected',
  /** Counter: pairs whose scores came from the score cache (MLMF_SCORE_CACHE_TABLE), not the scorer. */
  PairsFromScoreCache: 'PairsFromScoreCache',
  /** Counter with dimension Reason: rejects by reason code (invalid_record, fetch_failed, below_threshold...). */
  RejectsByReason: 'RejectsByReason',
  /** Value 0..100 per scored pair: image-text matching. */
  ScoreITM: 'ScoreITM',
  /** Value 0..100 per scored pair: object detail fulfillment. */
  ScoreODF: 'ScoreODF',
  /** Value 0..100 per scored pair: caption text quality. */
  ScoreCTQ: 'ScoreCTQ',
  /** Value 0..100 per scored pair: semantic understanding. */
  ScoreSU: 'ScoreSU',
  /** Value, milliseconds: time from batch intake to durable acknowledgement. */
  BatchLatencyMs: 'BatchLatencyMs',
  /** Value, records: the worker's own view of its consumer group lag (sum over its assigned partitions). */
  KafkaConsumerLag: 'KafkaConsumerLag',
  /** Value, records: messages waiting in the source queue as the worker last saw it. */
  QueueDepth: 'QueueDepth',
  /**
   * Value, percent: GPU utilisation sampled by the worker from `nvidia-smi` every ~10 s (lib/metrics/gpu.ts); absent
   * when the execution provider is not cuda or the task has no nvidia-smi.
   */
  GpuUtilization: 'GpuUtilization',
  /** Value, percent: GPU memory in use (used / total), sampled with {@link METRIC.GpuUtilization}. */
  GpuMemoryUtilization: 'GpuMemoryUtilization',
  /**
   * Value, records: the consumer group's backlog over the whole source topic, published every minute by the lag probe
   * (functions/lambda/lag-probe.ts) whether or not any worker runs: sum over partitions of end offset minus committed
   * offset, or minus the low watermark where the group never committed. What Kafka scale-from-zero reads.
   */
  KafkaBacklog: 'KafkaBacklog',
  /** Counter: tool or environment failures (sink retries, scorer crashes), not per-record rejects. */
  Errors: 'Errors',
} as const;

export type MetricName = (typeof METRIC)[keyof typeof METRIC];

/** The score metric for each short metric key of lib/types.ts METRICS. */
export const SCORE_METRIC = {
  itm: METRIC.ScoreITM,
  odf: METRIC.ScoreODF,
  ctq: METRIC.ScoreCTQ,
  su: METRIC.ScoreSU,
} as const;
