import { setMaxListeners } from 'node:events';
import type { Policy } from '../policy/index.ts';
import type { PairOptions } from '../pair/index.ts';
import type { Outcome, Scorer, Sink, Source, SourceRecord } from '../types.ts';
import { ScoreBatcher } from './batcher.ts';
import { PIPELINE_DEFAULTS } from './defaults.ts';
import { BatchLedger, type BatchEntry } from './ledger.ts';
import { silentLogger, type Logger } from '../support/logger.ts';
import { RecordProcessor, type ImageIntake } from './record-processor.ts';
import type { ScoreCache } from '../cache/score-cache.ts';
import type { ImageDedupe } from '../cache/dedupe.ts';
import { RunFailure } from './run-failure.ts';
import { SinkWriter, type DeadLetterPort } from './sink-writer.ts';

export type { ImageIntake } from './record-processor.ts';
export type { DeadLetterPort } from './sink-writer.ts';
export { PIPELINE_DEFAULTS } from './defaults.ts';

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
  /** Images fetched and decoded at once. Default 32 (PIPELINE_DEFAULTS, as every default below). */
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
  /** Scores stored by earlier pairs and runs (lib/cache): a pair whose key it holds skips the scorer. Default none. */
  readonly scoreCache?: ScoreCache;
  /**
   * The image dedupe policy (lib/cache/dedupe.ts): a pair whose image was already accepted is rejected
   * `duplicate_image` before scoring. Default none. (`dedupe` above is the in-run pair-id memory.)
   */
  readonly imageDedupe?: ImageDedupe;
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
  /**
   * Called once per outcome as soon as it is decided, before it is written or committed (progress displays: a batch
   * whose accepts wait in an open shard is committed late, its rejects are in rejects.jsonl at once).
   */
  readonly onDecided?: (outcome: Outcome) => void;
  /** Called with each record's time in a stage (`intake`: fetch + decode + preprocess, `score`: wait + inference). */
  readonly onStage?: (stage: 'intake' | 'score', ms: number) => void;
  readonly logger?: Logger;
}

/**
 * A pass whose outcomes are known without scoring (a top-fraction run's second pass over its staged pairs): the same
 * ledger, sink retry policy, bounds and stops as runPipeline, no dedupe (the pass that scored did it).
 */
export interface OutcomePassOptions extends Pick<
  PipelineOptions,
  | 'source'
  | 'sinks'
  | 'deadLetter'
  | 'maxPendingRecords'
  | 'maxPendingBytes'
  | 'sinkRetryBaseMs'
  | 'sinkRetryMaxMs'
  | 'signal'
  | 'abort'
  | 'onOutcome'
  | 'logger'
> {
  /** Each record's outcome; a throw fails the pass, and nothing from that record's batch on is committed. */
  readonly outcomeOf: (record: SourceRecord) => Outcome;
}

export interface PipelineStats {
  records: number;
  accepted: number;
  rejected: number;
  batchesAcked: number;
  scorerBatches: number;
  startedAt: number;
  finishedAt?: number;
}

/** What every pass owns: the ledger writes and commits, the first fatal error, the counts. */
interface Pass {
  readonly failure: RunFailure;
  readonly ledger: BatchLedger;
  readonly stats: PipelineStats;
}

/** The parts of one scoring run, each owning its state: records are processed, the ledger writes and commits. */
interface Run extends Pass {
  readonly batcher: ScoreBatcher;
  readonly processor: RecordProcessor;
}

/**
 * Runs source -> pair -> intake -> scorer -> policy -> sinks -> commit until the source ends or `signal` aborts.
 * Every record becomes exactly one outcome; a batch is committed only after all its outcomes are written to every
 * sink, and batches are written and committed in source order (deterministic shards, in-order Kafka commits).
 */
export async function runPipeline(options: PipelineOptions): Promise<PipelineStats> {
  const run = assemble(options);
  await readSource(options, run, (entry) => start(entry, run, options.onDecided));
  // Drain: finish what was admitted, make the sinks durable, commit in order.
  run.batcher.flush();
  await run.ledger.drain();
  run.stats.scorerBatches = run.batcher.batches;
  return ended(run);
}

/**
 * Writes outcomes known without scoring (OutcomePassOptions) through the pipeline's ledger: in source order, to every
 * sink, retried while a sink is down, each batch committed once written; the pass fails rather than drop an outcome.
 */
export async function writeOutcomes(options: OutcomePassOptions): Promise<PipelineStats> {
  const pass = openPass(options, { dedupe: false });
  await readSource(options, pass, (entry) => settleEach(entry, pass, options.outcomeOf));
  await pass.ledger.drain();
  return ended(pass);
}

function ended(pass: Pass): PipelineStats {
  pass.stats.finishedAt = Date.now();
  pass.failure.throwIfFailed();
  return pass.stats;
}

function assemble(options: PipelineOptions): Run {
  const logger = options.logger ?? silentLogger;
  const { scorer } = options;
  const batcher = new ScoreBatcher(
    scorer,
    options.batchWaitMs ?? PIPELINE_DEFAULTS.batchWaitMs,
    options.scoreConcurrency ?? PIPELINE_DEFAULTS.scoreConcurrency,
  );
  const processor = new RecordProcessor({
    intake: options.intake,
    batcher,
    policy: options.policy,
    pair: options.pair,
    intakeConcurrency: options.intakeConcurrency ?? PIPELINE_DEFAULTS.intakeConcurrency,
    maxPreparedImages: options.maxPreparedImages ?? Math.max(8, 4 * scorer.maxBatch),
    intakeAttempts: options.intakeAttempts ?? PIPELINE_DEFAULTS.intakeAttempts,
    onStage: options.onStage,
    scoreCache: options.scoreCache,
    imageDedupe: options.imageDedupe,
    logger,
  });
  const pass = openPass(options, { dedupe: options.dedupe !== false, onIdle: () => batcher.flush() });
  return { ...pass, batcher, processor };
}

/** The sinks behind their retry policy, and the ledger that writes and commits every batch of the pass. */
function openPass(options: OutcomePassOptions | PipelineOptions, how: { dedupe: boolean; onIdle?: () => void }): Pass {
  const logger = options.logger ?? silentLogger;
  const hard = options.abort ?? new AbortController().signal;
  setMaxListeners(0, hard);
  const stats: PipelineStats = {
    records: 0,
    accepted: 0,
    rejected: 0,
    batchesAcked: 0,
    scorerBatches: 0,
    startedAt: Date.now(),
  };
  const failure = new RunFailure();
  const writer = new SinkWriter({
    sinks: options.sinks,
    retryBaseMs: options.sinkRetryBaseMs ?? PIPELINE_DEFAULTS.sinkRetryBaseMs,
    retryMaxMs: options.sinkRetryMaxMs ?? PIPELINE_DEFAULTS.sinkRetryMaxMs,
    deadLetter: options.deadLetter,
    logger,
  });
  const ledger = new BatchLedger({
    writer,
    maxPendingRecords: options.maxPendingRecords ?? PIPELINE_DEFAULTS.maxPendingRecords,
    maxPendingBytes: options.maxPendingBytes ?? PIPELINE_DEFAULTS.maxPendingBytes,
    dedupe: how.dedupe,
    hard,
    failure,
    logger,
    onCommitted: (outcomes) => count(stats, outcomes, options.onOutcome),
    onIdle: how.onIdle,
  });
  for (const sink of options.sinks) if (sink.revoked) ledger.onRevoked((partitions) => sink.revoked!(partitions));
  return { failure, ledger, stats };
}

/** Admits the source's batches until it ends, a stop, or a fatal error (which ends the read at once). */
async function readSource(
  options: OutcomePassOptions | PipelineOptions,
  pass: Pass,
  begin: (entry: BatchEntry) => void,
): Promise<void> {
  const stops = [options.signal, options.abort, pass.failure.signal].filter((s): s is AbortSignal => !!s);
  const readSignal = AbortSignal.any(stops);
  try {
    for await (const batch of options.source.batches(readSignal, pass.ledger.admission)) {
      if (pass.failure.failed) break;
      begin(await pass.ledger.admit(batch));
    }
  } catch (err) {
    if (!readSignal.aborted) pass.failure.fail(err);
  }
}

/** Settles each record of the batch with its known outcome; one that has none fails the pass. */
function settleEach(entry: BatchEntry, pass: Pass, outcomeOf: (record: SourceRecord) => Outcome): void {
  entry.batch.records.forEach((record, i) => {
    let outcome: Outcome;
    try {
      outcome = outcomeOf(record);
    } catch (err) {
      pass.failure.fail(err);
      entry.lose();
      return;
    }
    entry.settle(i, outcome);
  });
}

/** Processes the batch's records concurrently; each settles its slot in the entry or loses it. */
function start(entry: BatchEntry, run: Run, onDecided?: (outcome: Outcome) => void): void {
  entry.batch.records.forEach((record, i) => {
    run.processor
      .process(record, (id) => entry.claim(id), entry.signal)
      .then(
        (outcome) => {
          onDecided?.(outcome);
          entry.settle(i, outcome);
        },
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
