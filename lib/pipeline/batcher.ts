import type { ScoreInput, ScoreResult, Scorer } from '../types.ts';
import { Semaphore } from './semaphore.ts';

interface Pending {
  input: ScoreInput;
  resolve: (r: ScoreResult) => void;
  reject: (e: unknown) => void;
}

/** Raised for one record when the scorer fails on it alone while its batch-mates score fine: a poison input. */
export class PoisonInputError extends Error {
  constructor(
    readonly id: string,
    cause: unknown,
  ) {
    super(`scorer failed on pair ${id}: ${(cause as Error)?.message ?? cause}`, { cause });
  }
}

/**
 * Collects single score requests into batches of up to `scorer.maxBatch`, waiting at most `maxWaitMs` for a batch
 * to fill, with at most `concurrency` batches in the scorer at once (so the next batch is assembled while one runs).
 * A failed batch is retried one pair at a time: pairs that fail alone get PoisonInputError; if every pair fails
 * alone the scorer itself is broken and each caller gets the original error (the run stops, nothing is acked).
 */
export class ScoreBatcher {
  private queue: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly slots: Semaphore;
  batches = 0;
  scoredPairs = 0;

  constructor(
    private readonly scorer: Scorer,
    private readonly maxWaitMs = 50,
    concurrency = 2,
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
    } catch (batchError) {
      if (batch.length === 1) {
        batch[0]!.reject(batchError);
        return;
      }
      const single = await Promise.allSettled(batch.map((p) => this.scorer.score([p.input])));
      const allFailed = single.every((s) => s.status === 'rejected');
      single.forEach((s, i) => {
        const p = batch[i]!;
        if (s.status === 'fulfilled' && s.value[0]) p.resolve(s.value[0]);
        else p.reject(allFailed ? batchError : new PoisonInputError(p.input.id, (s as PromiseRejectedResult).reason));
      });
    } finally {
      this.slots.release();
    }
  }
}
