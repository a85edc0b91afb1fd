import { setMaxListeners } from 'node:events';
import type { Policy } from '../policy/index.ts';
import type { PairOptions } from '../pair/index.ts';
import type { Outcome, Scorer, Sink, Source } from '../types.ts';
import { ScoreBatcher } from './batcher.ts';
import { BatchLedger, DEFAULT_MAX_PENDING_BYTES, type BatchEntry } from './ledger.ts';
import { silentLogger, type Logger } from '../support/logger.ts';
import { RecordProcessor, type ImageIntake } from './record-processor.ts';
import { RunFailure } from './run-failure.ts';
import { SinkWriter, type DeadLetterPort } from './sink-writer.ts';

export type { ImageIntake } from './record-processor.ts';
export type { DeadLetterPort } from './sink-writer.ts';

/** Options of one pipeline run. Every queue between stages is bounded by one of these. */
export interface PipelineOptions {
  readonly source: Source;
  readonly intake: ImageIntake;
  readonly scorer: Scorer;
  readonly policy: Policy;
  /** Every outcome goes to every sink; each sink picks the decisions it stores. */
  readonly sinks: readonly Sink[];
  /** Record parsing limits. */
  readonly pair?: PairOptions;
  /** Images fetched and decoded at once. Default 32: enough to hide network latency behind scoring. */
  readonly intakeConcurrency?: number;
  /** Decoded images (pixel tensors) held at once, waiting for or in the scorer. Default 4 x scorer.maxBatch. */
  readonly maxPreparedImages?: number;
  /** Records admitted but not yet committed: the bound on memory under any backlog. Default 4096. */
  readonly maxPendingRecords?: number;
  /**
   * Record bytes read and not yet committed, for sources that reserve them (WebDataset samples): the bound on memory
   * when records are large. Default 256 MiB (PIPELINE_DEFAULTS); keep it at least the source's per-record limit.
   */
  readonly maxPendingBytes?: number;
  /** Longest wait for a scorer batch to fill, ms. Default 50. */
  readonly batchWaitMs?: number;
  /** Scorer batches in flight at once. Default 2 (one assembles while one runs). */
  readonly scoreConcurrency?: number;
  /** Reject repeated pair ids seen in this run with `duplicate`. Default true; remembers the last 1M ids. */
  readonly dedupe?: boolean;
  /** Attempts for an image whose intake failed with a non-reject (unexpected) error. Default 3. */
  readonly intakeAttempts?: number;
  /** Backoff for sink writes that fail (a sink down): base and cap, ms. The pipeline retries until it succeeds. */
  readonly sinkRetryBaseMs?: number;
  readonly sinkRetryMaxMs?: number;
  /**
   * Where an outcome goes that a sink refuses for good (a non-retriable error for that outcome alone, e.g. a message
   * over the topic's limit): the partition moves on. Without one, such an error stops the run, nothing committed.
   */
  readonly deadLetter?: DeadLetterPort;
  /** Graceful stop: no new batches are read; everything in flight finishes, is flushed and committed. */
  readonly signal?: AbortSignal;
  /** Hard stop: in-flight work is abandoned uncommitted (it will be redelivered). */
  readonly abort?: AbortSignal;
  /** Called once per outcome, in source order, after its batch is committed. */
  readonly onOutcome?: (outcome: Outcome) => void;
  /** Called with each record's time in a stage (`intake`: fetch + decode + preprocess, `score`: wait + inference). */
  readonly onStage?: (stage: 'intake' | 'score', ms: number) => void;
  readonly logger?: Logger;
}

export const PIPELINE_DEFAULTS = {
  maxPendingRecords: 4096,
  maxPendingBytes: DEFAULT_MAX_PENDING_BYTES,
} as const;

export interface PipelineStats {
  records: number;
  accepted: number;
  rejected: number;
  batchesAcked: number;
  scorerBatches: number;
  startedAt: number;
  finishedAt?: number;
}

/** The parts of one run, each owning its state: records are processed, the ledger writes and commits. */
interface Run {
  readonly failure: RunFailure;
  readonly batcher: ScoreBatcher;
  readonly processor: RecordProcessor;
  readonly ledger: BatchLedger;
  readonly stats: PipelineStats;
}

/**
 * Runs source -> pair -> intake -> scorer -> policy -> sinks -> commit until the source ends or `signal` aborts.
 * Every record becomes exactly one outcome; a batch is committed only after all its outcomes are written to every
 * sink, and batches are written and committed in source order (deterministic shards, in-order Kafka commits).
 */
export async function runPipeline(options: PipelineOptions): Promise<PipelineStats> {
  const run = assemble(options);
  await readSource(options, run);
  // Drain: finish what was admitted, make the sinks durable, commit in order.
  run.batcher.flush();
  await run.ledger.drain();
  run.stats.scorerBatches = run.batcher.batches;
  run.stats.finishedAt = Date.now();
  run.failure.throwIfFailed();
  return run.stats;
}

function assemble(options: PipelineOptions): Run {
  const logger = options.logger ?? silentLogger;
  const hard = options.abort ?? new AbortController().signal;
  setMaxListeners(0, hard);
  const { scorer } = options;
  const stats: PipelineStats = {
    records: 0,
    accepted: 0,
    rejected: 0,
    batchesAcked: 0,
    scorerBatches: 0,
    startedAt: Date.now(),
  };
  const failure = new RunFailure();
  const batcher = new ScoreBatcher(scorer, options.batchWaitMs ?? 50, options.scoreConcurrency ?? 2);
  const processor = new RecordProcessor({
    intake: options.intake,
    batcher,
    policy: options.policy,
    pair: options.pair,
    intakeConcurrency: options.intakeConcurrency ?? 32,
    maxPreparedImages: options.maxPreparedImages ?? Math.max(8, 4 * scorer.maxBatch),
    intakeAttempts: options.intakeAttempts ?? 3,
    onStage: options.onStage,
    logger,
  });
  const writer = new SinkWriter({
    sinks: options.sinks,
    retryBaseMs: options.sinkRetryBaseMs ?? 200,
    retryMaxMs: options.sinkRetryMaxMs ?? 30_000,
    deadLetter: options.deadLetter,
    logger,
  });
  const ledger = new BatchLedger({
    writer,
    maxPendingRecords: options.maxPendingRecords ?? PIPELINE_DEFAULTS.maxPendingRecords,
    maxPendingBytes: options.maxPendingBytes ?? PIPELINE_DEFAULTS.maxPendingBytes,
    dedupe: options.dedupe !== false,
    hard,
    failure,
    logger,
    onCommitted: (outcomes) => count(stats, outcomes, options.onOutcome),
    onIdle: () => batcher.flush(),
  });
  return { failure, batcher, processor, ledger, stats };
}

/** Admits the source's batches until it ends, a stop, or a fatal error (which ends the read at once). */
async function readSource(options: PipelineOptions, run: Run): Promise<void> {
  const stops = [options.signal, options.abort, run.failure.signal].filter((s): s is AbortSignal => !!s);
  const readSignal = AbortSignal.any(stops);
  try {
    for await (const batch of options.source.batches(readSignal, run.ledger.admission)) {
      if (run.failure.failed) break;
      start(await run.ledger.admit(batch), run);
    }
  } catch (err) {
    if (!readSignal.aborted) run.failure.fail(err);
  }
}

/** Processes the batch's records concurrently; each settles its slot in the entry or loses it. */
function start(entry: BatchEntry, run: Run): void {
  entry.batch.records.forEach((record, i) => {
    run.processor
      .process(record, (id) => entry.claim(id), entry.signal)
      .then(
        (outcome) => entry.settle(i, outcome),
        (err: unknown) => {
          if (!entry.signal.aborted) run.failure.fail(err);
          entry.lose();
        },
      );
  });
}

function count(stats: PipelineStats, outcomes: readonly Outcome[], onOutcome?: (o: Outcome) => void): void {
  stats.batchesAcked++;
  for (const o of outcomes) {
    stats.records++;
    if (o.decision === 'accept') stats.accepted++;
    else stats.rejected++;
    onOutcome?.(o);
  }
}
