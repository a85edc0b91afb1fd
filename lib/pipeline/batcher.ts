import type { ScoreInput, ScoreResult, Scorer } from '../types.ts';
import { PoisonInputError, ScorerBrokenError } from '../errors.ts';
import { Semaphore } from './semaphore.ts';

interface Pending {
  input: ScoreInput;
  resolve: (r: ScoreResult) => void;
  reject: (e: unknown) => void;
}

/**
 * Collects single score requests into batches of up to `scorer.maxBatch`, waiting at most `maxWaitMs` for a batch
 * to fill, with at most `concurrency` batches in the scorer at once (so the next batch is assembled while one runs).
 *
 * Poison: a failed batch (even of one pair) is retried one pair at a time, once; a pair that fails alone gets
 * PoisonInputError (its caller rejects it as `scoring_failed` and the partition moves on). The scorer itself is
 * taken for broken, and the callers get ScorerBrokenError (the run stops, nothing is acked), when every pair of a
 * batch of several fails alone, or when `brokenAfter` pairs in a row have failed alone with no success in between:
 * one poison pair at low traffic, alone in its batch, must not look like a broken scorer (a scorer that breaks at low
 * traffic may so reject up to `brokenAfter - 1` pairs as scoring_failed before the run stops).
 */
export class ScoreBatcher {
  private queue: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly slots: Semaphore;
  /** Pairs that failed alone since the last pair that scored. */
  private failedInRow = 0;
  batches = 0;
  scoredPairs = 0;
  poisonPairs = 0;

  constructor(
    private readonly scorer: Scorer,
    private readonly maxWaitMs = 50,
    concurrency = 2,
    private readonly brokenAfter = 3,
  ) {
    this.slots = new Semaphore(concurrency);
  }

  score(input: ScoreInput): Promise<ScoreResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ input, resolve, reject });
      if (this.queue.length >= this.scorer.maxBatch) this.dispatch();
      else this.timer ??= setTimeout(() => this.dispatch(), this.maxWaitMs);
    });
  }

  /** Sends whatever is queued now (drain). */
  flush(): void {
    while (this.queue.length > 0) this.dispatch();
  }

  private dispatch(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.queue.splice(0, this.scorer.maxBatch);
    if (this.queue.length > 0) this.timer = setTimeout(() => this.dispatch(), this.maxWaitMs);
    if (batch.length > 0) void this.run(batch);
  }

  private async run(batch: Pending[]): Promise<void> {
    await this.slots.acquire();
    try {
      const results = await this.scorer.score(batch.map((p) => p.input));
      if (results.length !== batch.length)
        throw new Error(`scorer returned ${results.length} results for ${batch.length}`);
      batch.forEach((p, i) => p.resolve(results[i]!));
      this.batches++;
      this.scoredPairs += batch.length;
      this.failedInRow = 0;
    } catch (batchError) {
      // A closed scorer is not the pair's fault: nothing to retry.
      if ((batchError as { code?: string })?.code === 'scorer_closed') {
        for (const p of batch) p.reject(batchError);
        return;
      }
      const alone: { result?: ScoreResult; error?: unknown }[] = [];
      for (const p of batch) alone.push(await this.retryAlone(p));
      // Every pair of a batch failing alone too: the scorer, not the pairs.
      const brokenBatch = batch.length > 1 && alone.every((r) => r.error !== undefined);
      batch.forEach((p, i) => {
        const r = alone[i]!;
        if (r.error === undefined) p.resolve(r.result!);
        else if (brokenBatch || this.failedInRow >= this.brokenAfter)
          p.reject(new ScorerBrokenError(this.failedInRow, r.error));
        else {
          this.poisonPairs++;
          p.reject(new PoisonInputError(p.input.id, r.error));
        }
      });
    } finally {
      this.slots.release();
    }
  }

  private async retryAlone(p: Pending): Promise<{ result?: ScoreResult; error?: unknown }> {
    try {
      const [result] = await this.scorer.score([p.input]);
      if (!result) throw new Error('scorer returned no result for one pair');
      this.failedInRow = 0;
      this.scoredPairs++;
      return { result };
    } catch (error) {
      this.failedInRow++;
      return { error: error ?? new Error('scorer failed') };
    }
  }
}
