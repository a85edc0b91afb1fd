import { isRetriable } from '../errors.ts';
import { setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseRecord, rawRecordId, type PairOptions } from '../pair/index.ts';
import type { Policy } from '../policy/index.ts';
import type {
  ImageRef,
  Outcome,
  Pair,
  PreparedImage,
  Reason,
  Scorer,
  Sink,
  Source,
  SourceBatch,
  SourceRecord,
} from '../types.ts';
import { RejectError } from '../types.ts';
import { PoisonInputError, ScoreBatcher } from './batcher.ts';
import { Semaphore } from './semaphore.ts';

/** The image stage as the pipeline sees it (lib/intake's Intake implements it). */
export interface ImageIntake {
  /** Throws RejectError for a bad image; any other error is treated as transient for that record. */
  prepare(image: ImageRef, signal?: AbortSignal): Promise<PreparedImage>;
  /** Takes back an image's pixel tensor once the scorer is done with it (reuse spares V8 full GCs). Optional. */
  release?(image: PreparedImage): void;
}

export interface PipelineLogger {
  info(msg: string, ctx?: Record<string, unknown>): void;
  warn(msg: string, ctx?: Record<string, unknown>): void;
  error(msg: string, ctx?: Record<string, unknown>): void;
}

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
  /** Records admitted but not yet acked: the bound on memory under any backlog. Default 4096. */
  readonly maxPendingRecords?: number;
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
  /** Graceful stop: no new batches are read; everything in flight finishes, is flushed and acked. */
  readonly signal?: AbortSignal;
  /** Hard stop: in-flight work is abandoned without acks (it will be redelivered). */
  readonly abort?: AbortSignal;
  /** Called once per outcome, in source order, after the outcome is durable and acked. */
  readonly onOutcome?: (outcome: Outcome) => void;
  /** Called with each record's time in a stage (`intake`: fetch + decode + preprocess, `score`: wait + inference). */
  readonly onStage?: (stage: 'intake' | 'score', ms: number) => void;
  readonly logger?: PipelineLogger;
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

interface BatchState {
  readonly batch: SourceBatch;
  /** Pair ids this batch registered with the duplicate memory. */
  readonly ids: string[];
  readonly outcomes: (Outcome | undefined)[];
  remaining: number;
  written?: Promise<void>;
  readonly done: { promise: Promise<void>; resolve: () => void };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const silent: PipelineLogger = { info() {}, warn() {}, error() {} };

/** An id memory of bounded size (insertion-ordered Set, oldest evicted). */
class RecentIds {
  private readonly ids = new Set<string>();
  constructor(private readonly max: number) {}
  /** True if `id` was seen before; remembers it either way. */
  seen(id: string): boolean {
    if (this.ids.has(id)) return true;
    this.ids.add(id);
    if (this.ids.size > this.max) this.ids.delete(this.ids.values().next().value!);
    return false;
  }
  /** A dropped batch will be redelivered: its ids must not count as seen then. */
  forget(id: string): void {
    this.ids.delete(id);
  }
}

/**
 * Runs source -> pair -> intake -> scorer -> policy -> sinks -> ack until the source ends or `signal` aborts.
 * Every record becomes exactly one outcome; a batch is acked only after all its outcomes are durable in every sink,
 * and batches are written and acked in source order (deterministic shards, in-order Kafka commits).
 */
export async function runPipeline(options: PipelineOptions): Promise<PipelineStats> {
  const log = options.logger ?? silent;
  const scorer = options.scorer;
  const hard = options.abort ?? new AbortController().signal;
  // Every waiting record listens on the stop signals; hundreds at once are expected, not a leak.
  setMaxListeners(0, hard);
  const stats: PipelineStats = {
    records: 0,
    accepted: 0,
    rejected: 0,
    batchesAcked: 0,
    scorerBatches: 0,
    startedAt: Date.now(),
  };
  const intakeSlots = new Semaphore(options.intakeConcurrency ?? 32);
  const preparedSlots = new Semaphore(options.maxPreparedImages ?? Math.max(8, 4 * scorer.maxBatch));
  const pending = new Semaphore(options.maxPendingRecords ?? 4096);
  const batcher = new ScoreBatcher(scorer, options.batchWaitMs ?? 50, options.scoreConcurrency ?? 2);
  const recent = options.dedupe === false ? undefined : new RecentIds(1_000_000);
  const intakeAttempts = options.intakeAttempts ?? 3;
  const order: BatchState[] = [];
  let fatal: unknown;
  // Set once a batch is dropped unacked for a reason other than revocation: acking a later batch would then commit
  // past it (Kafka offsets are cumulative), so no later batch is acked in this run.
  let hole = false;
  let processing = 0; // records not yet holding an outcome
  let writeChain: Promise<void> = Promise.resolve();
  const overlapping = options.sinks.length > 0 && options.sinks.every((s) => s.overlappingWrites === true);
  let ackChain: Promise<void> = Promise.resolve();

  // A fatal error also ends the source read at once: waiting for the next source batch to notice it would keep an
  // idle worker alive (and /healthz green) while it commits nothing.
  const failed = new AbortController();
  const fail = (err: unknown) => {
    fatal ??= err;
    if (!failed.signal.aborted) failed.abort(err);
  };

  const reject = (record: SourceRecord, id: string, reasons: Reason[], pair?: Pair): Outcome => ({
    record,
    id,
    pair,
    decision: 'reject',
    reasons,
    scores: {},
  });

  async function prepare(pair: Pair, signal: AbortSignal): Promise<PreparedImage> {
    for (let attempt = 1; ; attempt++) {
      await intakeSlots.acquire(1, signal);
      try {
        return await options.intake.prepare(pair.image, signal);
      } catch (err) {
        if (err instanceof RejectError || signal.aborted || attempt >= intakeAttempts) throw err;
        log.warn('intake error, retrying', { id: pair.id, attempt, error: String(err) });
      } finally {
        intakeSlots.release();
      }
      await sleep(100 * 2 ** attempt, undefined, { signal });
    }
  }

  async function processRecord(record: SourceRecord, signal: AbortSignal, ids: string[]): Promise<Outcome> {
    let pair: Pair;
    try {
      pair = parseRecord(record, options.pair);
    } catch (err) {
      if (err instanceof RejectError) return reject(record, rawRecordId(record), [err.reason]);
      throw err;
    }
    if (recent?.seen(pair.id)) {
      return reject(
        record,
        pair.id,
        [{ code: 'duplicate', message: `pair id ${pair.id} was already seen in this run` }],
        pair,
      );
    }
    ids.push(pair.id);
    await preparedSlots.acquire(1, signal);
    try {
      let image: PreparedImage;
      const intakeStart = performance.now();
      try {
        image = await prepare(pair, signal);
        options.onStage?.('intake', performance.now() - intakeStart);
      } catch (err) {
        if (err instanceof RejectError) return reject(record, pair.id, [err.reason], pair);
        if (signal.aborted) throw err;
        return reject(
          record,
          pair.id,
          [{ code: 'fetch_failed', message: `intake failed: ${String(err)}`, detail: { kind: 'error' } }],
          pair,
        );
      }
      let result;
      const scoreStart = performance.now();
      try {
        result = await batcher.score({ id: pair.id, caption: pair.caption, pixelValues: image.pixelValues });
      } catch (err) {
        // Only a settled poison verdict frees the tensor: after other errors a batch may still hold it.
        if (!(err instanceof PoisonInputError)) throw err;
        options.intake.release?.(image);
        return reject(record, pair.id, [{ code: 'scoring_failed', message: err.message }], pair);
      }
      // The scorer copied the tensor when it posted it to its worker: it can be reused now.
      options.intake.release?.(image);
      options.onStage?.('score', performance.now() - scoreStart);
      if (result.unscorable) {
        return reject(record, pair.id, [{ ...result.unscorable, detail: { field: 'caption' } }], pair);
      }
      const verdict = options.policy.decide(result.scores);
      const stored = { encoded: image.encoded, ext: image.ext, width: image.width, height: image.height };
      return {
        record,
        id: pair.id,
        pair,
        decision: verdict.decision,
        reasons: verdict.reasons,
        scores: result.scores,
        ...(result.expected ? { expected: result.expected } : {}),
        ...(result.captionCut ? { captionCut: result.captionCut } : {}),
        image: stored,
      };
    } finally {
      preparedSlots.release();
    }
  }

  /**
   * Writes to every sink, retrying retriable errors until durable (lib/errors.ts); `handedOver` runs once every sink
   * has had its first call.
   */
  async function writeDurably(outcomes: Outcome[], revoked?: AbortSignal, handedOver?: () => void): Promise<void> {
    const stop = revoked ? AbortSignal.any([hard, revoked]) : hard;
    let calls = 0;
    await Promise.all(
      options.sinks.map(async (sink) => {
        for (let attempt = 1; ; attempt++) {
          try {
            const write = sink.write(outcomes);
            if (++calls === options.sinks.length) handedOver?.();
            await write;
            return;
          } catch (err) {
            // A revoked batch belongs to another consumer now: stop retrying, it will never be acked here.
            if (hard.aborted || revoked?.aborted) throw err;
            // The error catalog says a retry cannot succeed (message_too_large...): retrying forever would stall the
            // partition with the worker looking healthy. Stop the run instead; nothing of this batch is acked.
            if (!isRetriable(err)) {
              log.error('sink write failed and cannot succeed on retry; stopping (nothing is acked)', {
                sink: sink.name,
                records: outcomes.length,
                error: String(err),
              });
              fail(err);
              throw err;
            }
            const delay = Math.min(options.sinkRetryMaxMs ?? 30_000, (options.sinkRetryBaseMs ?? 200) * 2 ** attempt);
            log.error('sink write failed, retrying (nothing is acked meanwhile)', {
              sink: sink.name,
              attempt,
              records: outcomes.length,
              retryInMs: delay,
              error: String(err),
            });
            await sleep(delay, undefined, { signal: stop });
          }
        }
      }),
    );
  }

  /**
   * Chains a batch's write behind the previous batch's write and its ack behind the previous ack, at admission, so
   * sinks see outcomes and the source sees acks in source order whatever order the records finish in.
   * `ready` resolves true once every outcome is in, false if the batch was dropped (hard stop, revoked, fatal error).
   */
  function chain(state: BatchState, ready: Promise<boolean>): void {
    const outcomes = state.outcomes as Outcome[];
    const revoked = state.batch.revoked;
    let handedOver!: () => void;
    const issued = new Promise<void>((resolve) => (handedOver = resolve));
    const written = writeChain.then(async () => {
      if (!(await ready) || revoked?.aborted) return false;
      try {
        await writeDurably(outcomes, revoked, handedOver);
      } catch (err) {
        if (revoked?.aborted) return false;
        throw err;
      }
      return true;
    });
    void written.finally(handedOver).catch(() => undefined);
    // Overlapping sinks get the next batch once this one is handed over; others once it is durable.
    writeChain = overlapping
      ? issued
      : written.then(
          () => undefined,
          () => undefined,
        );
    ackChain = Promise.all([ackChain, written])
      .then(async ([, wrote]) => {
        if (!wrote || revoked?.aborted) {
          // Dropped: it will be redelivered, so its ids must not count as duplicates then.
          for (const id of state.ids) recent?.forget(id);
          if (revoked?.aborted)
            log.info('batch revoked before ack: dropped for redelivery', { records: outcomes.length });
          else hole = true;
          return;
        }
        if (hole || fatal) return;
        await state.batch.ack();
        stats.batchesAcked++;
        for (const o of outcomes) {
          stats.records++;
          if (o.decision === 'accept') stats.accepted++;
          else stats.rejected++;
          options.onOutcome?.(o);
        }
      })
      .catch((err) => {
        fail(err);
        hole = true;
        void state.batch.nack?.(err instanceof Error ? err : new Error(String(err)));
      })
      .finally(() => {
        pending.release(outcomes.length);
        order.splice(order.indexOf(state), 1);
        state.done.resolve();
      });
  }

  function admit(batch: SourceBatch): BatchState {
    const n = batch.records.length;
    const state: BatchState = {
      batch,
      outcomes: new Array(n),
      remaining: n,
      ids: [],
      done: deferred(),
    };
    order.push(state);
    // A revoked batch is redelivered, maybe to this very worker: its ids must stop counting as seen at once, not
    // when its turn in the ack chain comes.
    batch.revoked?.addEventListener('abort', () => state.ids.forEach((id) => recent?.forget(id)), { once: true });
    let markReady!: (ok: boolean) => void;
    chain(state, new Promise<boolean>((r) => (markReady = r)));
    if (n === 0) {
      markReady(true);
      return state;
    }
    const signal = batch.revoked ? AbortSignal.any([hard, batch.revoked]) : hard;
    setMaxListeners(0, signal);
    batch.records.forEach((record, i) => {
      processing++;
      processRecord(record, signal, state.ids)
        .then(
          (o) => {
            state.outcomes[i] = o;
          },
          (err) => {
            if (!signal.aborted) fail(err);
          },
        )
        .finally(() => {
          processing--;
          if (--state.remaining === 0) markReady(state.outcomes.every((o) => o !== undefined) && !fatal);
        });
    });
    return state;
  }

  /** Waits for room for `n` more records; if only sink buffering holds the room, asks the sinks to flush. */
  async function waitForRoom(n: number, signal: AbortSignal): Promise<void> {
    const acquired = pending.acquire(n, signal);
    let settled = false;
    void acquired.finally(() => (settled = true)).catch(() => undefined);
    while (!settled) {
      await Promise.race([acquired.catch(() => undefined), sleep(100)]);
      if (!settled && processing === 0) {
        batcher.flush();
        await Promise.race([
          acquired.catch(() => undefined),
          Promise.all(options.sinks.map((s) => s.flush())).catch(fail),
        ]);
      }
      if (fatal) throw fatal;
    }
    await acquired;
  }

  const readSignal = AbortSignal.any([options.signal ?? new AbortController().signal, hard, failed.signal]);
  try {
    for await (const batch of options.source.batches(readSignal)) {
      if (fatal) break;
      await waitForRoom(batch.records.length, hard);
      admit(batch);
      if (fatal) break;
    }
  } catch (err) {
    if (!readSignal.aborted) fail(err);
  }

  // Drain: finish what was admitted, make the sinks durable, ack in order.
  batcher.flush();
  while (order.length > 0) {
    const states = [...order];
    await Promise.race([Promise.all(states.map((s) => s.done.promise)), sleep(200)]);
    if (processing === 0 && order.length > 0 && !hard.aborted) {
      batcher.flush();
      await Promise.all(options.sinks.map((s) => s.flush())).catch(fail);
    }
    if (hard.aborted) break;
  }
  await ackChain;
  stats.scorerBatches = batcher.batches;
  stats.finishedAt = Date.now();
  if (fatal) throw fatal;
  return stats;
}
