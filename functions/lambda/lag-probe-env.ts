/**
 * The lag probe's environment, the contract between the construct (infra/lib/lag-probe.ts, which sets it) and the
 * function (lag-probe.ts, which reads it). Apart from the handler so that the construct package compiles this without
 * the handler's Kafka client and AWS SDK imports.
 */
import type { WorkerEnvName } from '../../lib/worker-env.ts';

/** The environment the probe reads: the same names, and meanings, as the worker's. */
export type LagProbeEnvName = Extract<
  WorkerEnvName,
  | 'MLMF_BROKERS'
  | 'MLMF_SOURCE_TOPIC'
  | 'MLMF_GROUP_ID'
  | 'MLMF_KAFKA_AUTH'
  | 'MLMF_KAFKA_TLS'
  | 'MLMF_KAFKA_SECRET_ARN'
  | 'MLMF_PIPELINE'
  | 'MLMF_METRICS_NAMESPACE'
  | 'AWS_REGION'
>;
export type LagProbeEnv = Partial<Record<LagProbeEnvName, string>>;
