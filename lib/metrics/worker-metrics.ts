import type { IncomingMessage, ServerResponse } from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import {
  DEFAULT_METRICS_NAMESPACE,
  METRIC,
  PIPELINE_DIMENSION,
  PIPELINE_ENV,
  REASON_DIMENSION,
  SCORE_METRIC,
} from './metric-names.ts';
import type { MetricShort, ModelInfo, Outcome } from '../types.ts';
import { METRICS } from '../types.ts';
import type { Logger } from '../support/logger.ts';
import { emfDocument, ValueCounter, type EmfMetric } from './emf.ts';

/** What the metrics read of an outcome: small enough to hold until the outcome is final (a shard job's end). */
export type ObservedOutcome = Pick<Outcome, 'decision' | 'scores'> & {
  readonly reasons: readonly { code: string }[];
  /** The scores came from the score cache (Outcome.cached, kept as a flag). */
  readonly cached?: unknown;
};

/** The part of an outcome the metrics keep, without its record (the record's bytes must not live on here). */
export const observed = (o: ObservedOutcome): ObservedOutcome => ({
  decision: o.decision,
  reasons: o.reasons.map(({ code }) => ({ code })),
  scores: o.scores,
  ...(o.cached ? { cached: true } : {}),
});

/** Options of {@link WorkerMetrics}. */
export interface WorkerMetricsOptions {
  /** Value of the `Pipeline` dimension. Default: `$MLMF_PIPELINE`, else `default`. */
  readonly pipeline?: string;
  /** CloudWatch namespace of the EMF records. Default: `$MLMF_METRICS_NAMESPACE`, else `MlmFilter`. */
  readonly namespace?: string;
  /**
   * EMF aggregation interval, ms: one set of EMF records per interval. Default 60000 (CloudWatch's standard
   * resolution). 0 disables the timer; call {@link WorkerMetrics.flushEmf} yourself.
   */
  readonly emfIntervalMs?: number;
  /** Where EMF lines go. Default: stdout (the container's log driver ships it to CloudWatch Logs). Null: no EMF. */
  readonly emit?: ((line: string) => void) | null;
  /** Prometheus registry. Default: a private one (so two instances never clash on names). */
  readonly registry?: Registry;
  /** Also export Node's process metrics (CPU, heap, event-loop lag) on /metrics. Default true. */
  readonly processMetrics?: boolean;
  /** Clock, for tests. */
  readonly now?: () => number;
}

/** Prometheus metric names (prefix `mlmf_`); see docs/OPERATIONS.md for what each one means. */
export const PROM = {
  pairsIn: 'mlmf_pairs_in_total',
  accepted: 'mlmf_pairs_accepted_total',
  rejected: 'mlmf_pairs_rejected_total',
  fromScoreCache: 'mlmf_pairs_from_score_cache_total',
  rejectsByReason: 'mlmf_rejects_by_reason_total',
  score: 'mlmf_score',
  stageSeconds: 'mlmf_stage_duration_seconds',
  batchSize: 'mlmf_batch_size',
  batchLatency: 'mlmf_batch_latency_seconds',
  queueDepth: 'mlmf_queue_depth',
  sourceQueueDepth: 'mlmf_source_queue_depth',
  consumerLag: 'mlmf_kafka_consumer_lag',
  gpuUtilization: 'mlmf_gpu_utilization_percent',
  gpuMemoryUsed: 'mlmf_gpu_memory_used_bytes',
  gpuMemoryTotal: 'mlmf_gpu_memory_total_bytes',
  errors: 'mlmf_errors_total',
  executionProvider: 'mlmf_execution_provider_info',
} as const;

const SCORE_BUCKETS = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
const STAGE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const MIB = 1024 * 1024;
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/**
 * The worker's metrics, for two readers at once: a Prometheus registry (scraped from the worker's health server at
 * /metrics, cumulative) and CloudWatch EMF log lines (aggregated per interval, the names the dashboard and alarms use,
 * from lib/metrics/metric-names.ts). Callers report what happened; nothing here blocks or throws on bad input.
 */
export class WorkerMetrics {
  readonly registry: Registry;
  readonly pipeline: string;
  readonly namespace: string;
  private readonly emit: ((line: string) => void) | null;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;

  private readonly prom: {
    pairsIn: Counter;
    accepted: Counter;
    rejected: Counter;
    fromScoreCache: Counter;
    reasons: Counter<'reason'>;
    score: Histogram<'metric' | 'decision'>;
    stage: Histogram<'stage'>;
    batchSize: Histogram<'kind'>;
    batchLatency: Histogram;
    queueDepth: Gauge<'queue'>;
    sourceQueueDepth: Gauge;
    consumerLag: Gauge;
    gpu: Gauge;
    gpuMemoryUsed: Gauge;
    gpuMemoryTotal: Gauge;
    errors: Counter<'kind'>;
    ep: Gauge<'provider' | 'model' | 'revision'>;
  };

  // The EMF interval's aggregates; reset on each flush.
  private interval = { pairsIn: 0, accepted: 0, rejected: 0, fromScoreCache: 0, errors: 0 };
  private readonly intervalReasons = new Map<string, number>();
  private readonly intervalScores = new Map<MetricShort, ValueCounter>(
    METRICS.map((m) => [m.short, new ValueCounter(3)]),
  );
  private readonly intervalLatency = new ValueCounter(3);
  private readonly intervalGpu = new ValueCounter(3);
  private readonly intervalGpuMemory = new ValueCounter(3);
  // Gauges report their last value every interval, so a dashboard sees a flat line rather than gaps.
  private lastSourceQueueDepth: number | undefined;
  private lastConsumerLag: number | undefined;
  private executionProvider: string | undefined;
  private model: ModelInfo | undefined;

  constructor(options: WorkerMetricsOptions = {}) {
    this.pipeline = options.pipeline ?? process.env[PIPELINE_ENV] ?? 'default';
    this.namespace = options.namespace ?? process.env.MLMF_METRICS_NAMESPACE ?? DEFAULT_METRICS_NAMESPACE;
    this.emit = options.emit === undefined ? (line) => process.stdout.write(line + '\n') : options.emit;
    this.now = options.now ?? Date.now;
    this.registry = options.registry ?? new Registry();
    const registers = [this.registry];
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'mlmf_' });
    this.prom = {
      pairsIn: new Counter({ name: PROM.pairsIn, help: 'Records taken from the source', registers }),
      accepted: new Counter({ name: PROM.accepted, help: 'Pairs accepted (curated sink)', registers }),
      rejected: new Counter({ name: PROM.rejected, help: 'Records rejected (audit sink), any reason', registers }),
      fromScoreCache: new Counter({
        name: PROM.fromScoreCache,
        help: 'Pairs whose scores came from the score cache, not the scorer',
        registers,
      }),
      reasons: new Counter({
        name: PROM.rejectsByReason,
        help: 'Rejected records by reason code (a record with several codes counts once per code)',
        labelNames: ['reason'],
        registers,
      }),
      score: new Histogram({
        name: PROM.score,
        help: 'MLM filter scores 0..100 per scored pair',
        labelNames: ['metric', 'decision'],
        buckets: SCORE_BUCKETS,
        registers,
      }),
      stage: new Histogram({
        name: PROM.stageSeconds,
        help: 'Time spent per pipeline stage (fetch, decode, score, sink...), seconds',
        labelNames: ['stage'],
        buckets: STAGE_BUCKETS,
        registers,
      }),
      batchSize: new Histogram({
        name: PROM.batchSize,
        help: 'Batch sizes (kind: source, scorer, sink)',
        labelNames: ['kind'],
        buckets: BATCH_BUCKETS,
        registers,
      }),
      batchLatency: new Histogram({
        name: PROM.batchLatency,
        help: 'Time from batch intake to durable acknowledgement, seconds',
        buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
        registers,
      }),
      queueDepth: new Gauge({
        name: PROM.queueDepth,
        help: "Items waiting in the worker's internal bounded queues",
        labelNames: ['queue'],
        registers,
      }),
      sourceQueueDepth: new Gauge({
        name: PROM.sourceQueueDepth,
        help: 'Messages waiting in the source queue (SQS) as last seen',
        registers,
      }),
      consumerLag: new Gauge({
        name: PROM.consumerLag,
        help: "Consumer-group lag over the worker's assigned partitions, records",
        registers,
      }),
      gpu: new Gauge({ name: PROM.gpuUtilization, help: 'GPU utilisation sampled by the worker, %', registers }),
      gpuMemoryUsed: new Gauge({ name: PROM.gpuMemoryUsed, help: 'GPU memory in use, bytes', registers }),
      gpuMemoryTotal: new Gauge({ name: PROM.gpuMemoryTotal, help: 'GPU memory installed, bytes', registers }),
      errors: new Counter({
        name: PROM.errors,
        help: 'Tool or environment failures (sink retries, scorer crashes), not per-record rejects',
        labelNames: ['kind'],
        registers,
      }),
      ep: new Gauge({
        name: PROM.executionProvider,
        help: 'Execution provider and model in use (value 1)',
        labelNames: ['provider', 'model', 'revision'],
        registers,
      }),
    };
    const interval = options.emfIntervalMs ?? 60_000;
    if (interval > 0 && this.emit) {
      this.timer = setInterval(() => this.flushEmf(), interval);
      this.timer.unref();
    }
  }

  /**
   * Counts one record's final outcome: in, accepted or rejected (by each distinct reason code), and its scores. Call
   * it once per record, when the outcome is committed (a batch committed, a shard job done), never for an attempt
   * that may be retried.
   */
  observe(outcome: Outcome | ObservedOutcome): void {
    this.prom.pairsIn.inc();
    this.interval.pairsIn++;
    if (outcome.cached) {
      this.prom.fromScoreCache.inc();
      this.interval.fromScoreCache++;
    }
    if (outcome.decision === 'accept') {
      this.prom.accepted.inc();
      this.interval.accepted++;
    } else {
      this.prom.rejected.inc();
      this.interval.rejected++;
      for (const code of new Set(outcome.reasons.map((r) => r.code))) {
        this.prom.reasons.inc({ reason: code });
        this.intervalReasons.set(code, (this.intervalReasons.get(code) ?? 0) + 1);
      }
    }
    for (const { short } of METRICS) {
      const score = outcome.scores[short];
      if (typeof score !== 'number' || !Number.isFinite(score)) continue;
      this.prom.score.observe({ metric: short, decision: outcome.decision }, score);
      this.intervalScores.get(short)!.add(score);
    }
  }

  observeAll(outcomes: Iterable<Outcome | ObservedOutcome>): void {
    for (const o of outcomes) this.observe(o);
  }

  /** Time one stage took for one item or batch (`fetch`, `decode`, `score`, `sink:<name>`...), ms. */
  observeStage(stage: string, ms: number): void {
    if (Number.isFinite(ms) && ms >= 0) this.prom.stage.observe({ stage }, ms / 1000);
  }

  /** Size of a batch as formed by `kind` (`source`, `scorer`, `sink`). */
  observeBatchSize(kind: string, size: number): void {
    if (Number.isFinite(size) && size >= 0) this.prom.batchSize.observe({ kind }, size);
  }

  /** Time from a source batch's intake to its durable acknowledgement, ms (EMF `BatchLatencyMs`). */
  observeBatchLatency(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    this.prom.batchLatency.observe(ms / 1000);
    this.intervalLatency.add(ms);
  }

  /** Depth of one of the worker's internal queues (Prometheus only: operators debug with it, no alarm needs it). */
  setQueueDepth(queue: string, depth: number): void {
    if (Number.isFinite(depth)) this.prom.queueDepth.set({ queue }, depth);
  }

  /** Messages waiting in the source queue (SQS ApproximateNumberOfMessages), EMF `QueueDepth`. */
  setSourceQueueDepth(depth: number): void {
    if (!Number.isFinite(depth)) return;
    this.prom.sourceQueueDepth.set(depth);
    this.lastSourceQueueDepth = depth;
  }

  /** Consumer-group lag summed over the partitions this worker owns, EMF `KafkaConsumerLag`. */
  setConsumerLag(lag: number): void {
    if (!Number.isFinite(lag)) return;
    this.prom.consumerLag.set(lag);
    this.lastConsumerLag = lag;
  }

  /** A GPU utilisation sample, percent (EMF `GpuUtilization`, averaged by the dashboard). */
  setGpuUtilization(percent: number): void {
    if (!Number.isFinite(percent)) return;
    this.prom.gpu.set(percent);
    this.intervalGpu.add(percent);
  }

  /** A GPU memory sample, MiB as nvidia-smi reports it (EMF `GpuMemoryUtilization` = used / total, percent). */
  setGpuMemory(usedMiB: number, totalMiB: number): void {
    if (!Number.isFinite(usedMiB) || !Number.isFinite(totalMiB) || totalMiB <= 0 || usedMiB < 0) return;
    this.prom.gpuMemoryUsed.set(usedMiB * MIB);
    this.prom.gpuMemoryTotal.set(totalMiB * MIB);
    this.intervalGpuMemory.add((100 * usedMiB) / totalMiB);
  }

  /** The execution provider actually in use (after any fallback) and the model, as an info gauge. */
  setExecutionProvider(provider: string, model?: ModelInfo): void {
    this.prom.ep.reset();
    this.prom.ep.set({ provider, model: model?.name ?? '', revision: model?.revision ?? '' }, 1);
    this.executionProvider = provider;
    this.model = model;
  }

  /** A tool or environment failure (`sink_retry`, `scorer_crash`...), EMF `Errors`. */
  countError(kind: string, n = 1): void {
    this.prom.errors.inc({ kind }, n);
    this.interval.errors += n;
  }

  /** `log`, counting every error it logs as an `Errors` of `kind` (the pipeline logs its sink retries as errors). */
  countingErrors(log: Logger, kind: string): Logger {
    return log.tap((e) => (e.level === 'error' ? this.countError(kind) : undefined));
  }

  /** Prometheus text exposition of every metric. */
  prometheusText(): Promise<string> {
    return this.registry.metrics();
  }

  /** A `node:http` request handler serving the Prometheus exposition (mount it at GET /metrics). */
  metricsHandler(): (req: IncomingMessage, res: ServerResponse) => void {
    return (req, res) => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      this.registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'content-type': this.registry.contentType });
          res.end(req.method === 'HEAD' ? undefined : body);
        },
        (err: Error) => {
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`);
        },
      );
    };
  }

  /**
   * Builds the EMF documents for the interval that ends now, resets the interval and returns them (also written to
   * `emit` unless `write` is false). Counters are always written, zero included, so alarms see "no progress" as 0
   * rather than missing data.
   */
  flushEmf(write = true): Record<string, unknown>[] {
    const timestamp = this.now();
    const dims = { [PIPELINE_DIMENSION]: this.pipeline };
    const properties: Record<string, string> = {};
    if (this.executionProvider) properties.ExecutionProvider = this.executionProvider;
    if (this.model) properties.Model = `${this.model.name}@${this.model.revision}`;
    const main: EmfMetric[] = [
      { name: METRIC.PairsIn, unit: 'Count', value: this.interval.pairsIn },
      { name: METRIC.PairsAccepted, unit: 'Count', value: this.interval.accepted },
      { name: METRIC.PairsRejected, unit: 'Count', value: this.interval.rejected },
      { name: METRIC.PairsFromScoreCache, unit: 'Count', value: this.interval.fromScoreCache },
      { name: METRIC.Errors, unit: 'Count', value: this.interval.errors },
    ];
    if (this.lastSourceQueueDepth !== undefined) {
      main.push({ name: METRIC.QueueDepth, unit: 'Count', value: this.lastSourceQueueDepth });
    }
    if (this.lastConsumerLag !== undefined) {
      main.push({ name: METRIC.KafkaConsumerLag, unit: 'Count', value: this.lastConsumerLag });
    }
    // Distributions beyond 100 distinct values spill into further documents (same metric, same dimensions).
    const spill: EmfMetric[][] = [];
    const addDistribution = (name: string, unit: EmfMetric['unit'], counter: ValueCounter) => {
      counter.distributions().forEach((value, i) => {
        if (i === 0) main.push({ name, unit, value });
        else (spill[i - 1] ??= []).push({ name, unit, value });
      });
    };
    for (const { short } of METRICS) addDistribution(SCORE_METRIC[short], 'None', this.intervalScores.get(short)!);
    addDistribution(METRIC.BatchLatencyMs, 'Milliseconds', this.intervalLatency);
    addDistribution(METRIC.GpuUtilization, 'Percent', this.intervalGpu);
    addDistribution(METRIC.GpuMemoryUtilization, 'Percent', this.intervalGpuMemory);

    const docs = [main, ...spill].map((metrics) =>
      emfDocument({ namespace: this.namespace, timestamp, dimensions: dims, metrics, properties }),
    );
    for (const [reason, count] of [...this.intervalReasons].sort()) {
      docs.push(
        emfDocument({
          namespace: this.namespace,
          timestamp,
          dimensions: { ...dims, [REASON_DIMENSION]: reason },
          metrics: [{ name: METRIC.RejectsByReason, unit: 'Count', value: count }],
        }),
      );
    }

    this.interval = { pairsIn: 0, accepted: 0, rejected: 0, fromScoreCache: 0, errors: 0 };
    this.intervalReasons.clear();
    for (const c of this.intervalScores.values()) c.reset();
    this.intervalLatency.reset();
    this.intervalGpu.reset();
    this.intervalGpuMemory.reset();
    if (write && this.emit) for (const d of docs) this.emit(JSON.stringify(d));
    return docs;
  }

  /** Stops the EMF timer and writes the last interval. */
  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.emit) this.flushEmf();
  }
}
