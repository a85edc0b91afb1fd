import { codeOf, isRetriable } from '../errors.ts';
import { RetryPolicy } from '../support/retry.ts';
import type { Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';
import type { Logger } from '../support/logger.ts';

/** Where an outcome goes that a sink can never take (lib/sinks/dead-letter.ts's DeadLetterSink). */
export interface DeadLetterPort {
  send(outcome: Outcome, code: string, message: string): Promise<void>;
}

export interface SinkWriterOptions {
  readonly sinks: readonly Sink[];
  /** Backoff for retriable sink errors, ms: first wait and cap. Retried until the write succeeds or stops. */
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  /** Without one, a non-retriable sink error is fatal for the run (nothing is committed past it). */
  readonly deadLetter?: DeadLetterPort;
  /** Outcomes failing alone in a row, with no success in between, after which the sink is taken for broken. */
  readonly brokenAfter?: number;
  readonly logger: Logger;
}

/**
 * The pipeline's retry policy for sink writes (the batch ledger is its only user). A retriable error (the error
 * catalog's flag: a broker or bucket down) is retried with capped backoff until the write lands or the batch is
 * dropped. A non-retriable one (message_too_large...) cannot succeed on retry: the batch is written one outcome at a
 * time to find the outcome(s) it belongs to, and those go to the dead-letter port so the partition moves on. A sink
 * that refuses every outcome of a batch of several, or `brokenAfter` outcomes in a row, is broken: that is fatal.
 */
export class SinkWriter {
  /** True when every sink takes overlapping writes: the next batch is handed over before this one is durable. */
  readonly overlapping: boolean;
  private readonly failedAlone = new Map<Sink, number>();
  private readonly policy: RetryPolicy;

  constructor(private readonly options: SinkWriterOptions) {
    const { sinks } = options;
    this.policy = new RetryPolicy({ baseMs: options.retryBaseMs, maxMs: options.retryMaxMs });
    this.overlapping = sinks.length > 0 && sinks.every((s) => s.overlappingWrites === true);
  }

  /** Writes to every sink; `handedOver` runs once every sink has had its first call for these outcomes. */
  async write(outcomes: readonly Outcome[], stop: AbortSignal, handedOver?: () => void): Promise<void> {
    const sinks = this.options.sinks;
    let calls = 0;
    const called = () => {
      if (++calls === sinks.length) handedOver?.();
    };
    await Promise.all(sinks.map((sink) => this.writeTo(sink, outcomes, stop, called)));
  }

  async flush(): Promise<void> {
    await Promise.all(this.options.sinks.map((s) => s.flush()));
  }

  private async writeTo(sink: Sink, outcomes: readonly Outcome[], stop: AbortSignal, called: () => void) {
    let first = true;
    try {
      await this.retrying(sink.name, outcomes.length, stop, () => {
        const write = sink.write(outcomes);
        if (first) called();
        first = false;
        return write;
      });
      this.failedAlone.delete(sink);
    } catch (err) {
      if (stop.aborted || isRetriable(err)) throw err;
      await this.isolate(sink, outcomes, err, stop);
    }
  }

  /** Runs `attempt` until it succeeds; retriable errors back off, others (and a stop) are thrown. */
  private async retrying(what: string, records: number, stop: AbortSignal, attempt: () => Promise<void>) {
    const { logger } = this.options;
    await this.policy.run(attempt, {
      signal: stop,
      onRetry: ({ error, attempt: n, delayMs: retryInMs }) => {
        const ctx = { sink: what, attempt: n, records, retryInMs, error: String(error) };
        logger.error('sink write failed, retrying (nothing is committed meanwhile)', ctx);
      },
    });
  }

  /** A non-retriable error: find the outcomes the sink refuses, dead-letter them, or fail the run. */
  private async isolate(sink: Sink, outcomes: readonly Outcome[], cause: unknown, stop: AbortSignal) {
    const { deadLetter, logger } = this.options;
    const context = { sink: sink.name, records: outcomes.length, error: String(cause) };
    if (!deadLetter || (deadLetter as unknown) === sink) {
      logger.error('sink write failed and cannot succeed on retry; stopping (nothing is committed)', context);
      throw cause;
    }
    const refused: { outcome: Outcome; error: unknown }[] = [];
    for (const outcome of outcomes) {
      try {
        await this.retrying(sink.name, 1, stop, () => sink.write([outcome]));
        this.failedAlone.delete(sink);
      } catch (error) {
        if (stop.aborted || isRetriable(error)) throw error;
        refused.push({ outcome, error });
        this.countRefusal(sink, cause);
      }
    }
    if (outcomes.length > 1 && refused.length === outcomes.length) throw this.broken(sink, cause, refused.length);
    for (const { outcome, error } of refused) {
      const code = codeOf(error, 'sink_refused');
      const message = `${sink.name} cannot take this outcome: ${(error as Error).message ?? error}`;
      logger.warn('outcome refused by a sink for good: dead-lettered, the partition moves on', {
        sink: sink.name,
        id: outcome.id,
        code,
      });
      await this.retrying('dead-letter', 1, stop, () => deadLetter.send(outcome, code, message));
    }
  }

  /** One more outcome refused alone; `brokenAfter` in a row with no success between means the sink is broken. */
  private countRefusal(sink: Sink, cause: unknown): void {
    const inRow = (this.failedAlone.get(sink) ?? 0) + 1;
    this.failedAlone.set(sink, inRow);
    if (inRow >= (this.options.brokenAfter ?? 3)) throw this.broken(sink, cause, inRow);
  }

  private broken(sink: Sink, cause: unknown, refused: number): FilterError {
    return new FilterError(
      'sink_broken',
      `${sink.name} refused ${refused} outcomes in a row, each alone, for good: ${String(cause)}`,
      { sink: sink.name },
      { cause },
    );
  }
}
