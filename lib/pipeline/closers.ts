import type { Logger } from '../support/logger.ts';

/**
 * Close steps of a run's resources, run in list order when the run ends, whatever happened: a failing step is
 * reported and the others still run. Data-bearing sinks are NOT closed here on success: their close can fail (a last
 * shard, an index) and that failure must fail the run, so runs close them themselves and keep this for the rest.
 */
export class Closers {
  private readonly steps: (() => Promise<unknown>)[] = [];

  /** Runs after the steps added so far. */
  last(step: () => Promise<unknown>): void {
    this.steps.push(step);
  }

  /** Runs before the steps added so far (stop reading before closing what the reads use). */
  first(step: () => Promise<unknown>): void {
    this.steps.unshift(step);
  }

  async run(log: Logger): Promise<void> {
    for (const step of this.steps) await step().catch((err) => log.warn('close failed', { error: String(err) }));
  }
}
