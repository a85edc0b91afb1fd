/**
 * The one retry policy (in the style of undici's RetryHandler and kafkajs's retrier): attempts and a time budget,
 * exponential backoff with a cap and jitter, a server's Retry-After as a floor, an AbortSignal that ends the waiting,
 * and `isRetriable` (lib/errors.ts) deciding which errors are worth another try unless the caller says otherwise.
 *
 * `RetryPolicy.run()` is the loop every caller shares; `RetryBudget` is its state (failures so far, time since the
 * first), for the few callers whose retries span calls (a consumer's restarts, an outage clock) or whose waiting is
 * done by someone else (an SQS visibility timeout).
 */
import { isRetriable } from '../errors.ts';

export interface RetryPolicyOptions {
  /** Attempts in all, the first included. Default Infinity: until success, a stop, or `maxElapsedMs`. */
  readonly maxAttempts?: number;
  /** Retrying stops once failures have gone on this long (from the first failure, or `RetryBudget.start()`), ms. */
  readonly maxElapsedMs?: number;
  /** Wait before the first retry, ms. Default 200. */
  readonly baseMs?: number;
  /** Growth of the wait from one retry to the next. Default 2. */
  readonly factor?: number;
  /** Cap on one wait, ms. Default 30 000. */
  readonly maxMs?: number;
  /**
   * Fraction of each wait taken off at random (0.2: between 80% and 100% of it), so callers that failed together do
   * not retry in lockstep, at the cap too. Default 0.2.
   */
  readonly jitter?: number;
  /** Whether an error may be retried. Default `isRetriable` (the error catalog's flag, AWS client errors...). */
  readonly retriable?: (err: unknown) => boolean;
  /** A wait the failure itself asks for (an HTTP Retry-After), ms: a floor under the backoff, still capped. */
  readonly retryAfterMs?: (err: unknown) => number | undefined;
}

export interface RetryInfo {
  readonly error: unknown;
  /** The attempt that failed, from 1. */
  readonly attempt: number;
  /** The wait before the next one, ms. */
  readonly delayMs: number;
}

export interface RetryHooks {
  /** Ends the retries: no attempt starts after it fires, a wait is cut short; the last error is thrown. */
  readonly signal?: AbortSignal;
  /** Told of each failure that will be retried, before the wait. */
  readonly onRetry?: (info: RetryInfo) => void;
  /** How to wait (tests inject a zero or recording wait). Default `sleep`. */
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/** Waits `ms`; rejects with the signal's reason when it fires first (or has already). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export class RetryPolicy {
  readonly maxAttempts: number;
  readonly maxElapsedMs: number;
  private readonly baseMs: number;
  private readonly factor: number;
  private readonly maxMs: number;
  private readonly jitter: number;
  readonly retriable: (err: unknown) => boolean;
  private readonly retryAfterMs?: (err: unknown) => number | undefined;

  constructor(options: RetryPolicyOptions = {}) {
    this.maxAttempts = options.maxAttempts ?? Infinity;
    this.maxElapsedMs = options.maxElapsedMs ?? Infinity;
    this.baseMs = options.baseMs ?? 200;
    this.factor = options.factor ?? 2;
    this.maxMs = options.maxMs ?? 30_000;
    this.jitter = Math.min(1, Math.max(0, options.jitter ?? 0.2));
    this.retriable = options.retriable ?? isRetriable;
    this.retryAfterMs = options.retryAfterMs;
  }

  /** The wait after the `failures`-th failure in a row, ms: base x factor^(failures-1), floored by `err`'s ask. */
  delayMs(failures: number, err?: unknown): number {
    const backoff = Math.min(this.maxMs, this.baseMs * this.factor ** Math.max(0, failures - 1));
    const asked = err === undefined ? undefined : this.retryAfterMs?.(err);
    return Math.round(Math.min(this.maxMs, Math.max(backoff * (1 - this.jitter * Math.random()), asked ?? 0)));
  }

  /** A fresh budget: the state of one operation's (or one outage's) retries under this policy. */
  budget(): RetryBudget {
    return new RetryBudget(this);
  }

  /** Runs `fn` until it succeeds or the policy gives up; then the last error is thrown. */
  async run<T>(fn: (attempt: number) => Promise<T>, hooks: RetryHooks = {}): Promise<T> {
    const { signal, onRetry } = hooks;
    const wait = hooks.sleep ?? sleep;
    const budget = this.budget();
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn(attempt);
      } catch (error) {
        if (signal?.aborted || !budget.failed(error)) throw error;
        const delayMs = budget.nextDelayMs(error);
        onRetry?.({ error, attempt, delayMs });
        await wait(delayMs, signal).catch(() => undefined);
        if (signal?.aborted) throw error;
      }
    }
  }
}

/** The state of retries under a policy: failures in a row and since when; a success resets it. */
export class RetryBudget {
  private since: number | undefined;
  private count = 0;

  constructor(readonly policy: RetryPolicy) {}

  /** Starts the clock before any failure (a time budget for a whole operation rather than from its first failure). */
  start(): void {
    this.since ??= performance.now();
  }

  /** Records a failure; true when another attempt may follow (retriable, attempts and time left). */
  failed(err: unknown): boolean {
    this.start();
    this.count++;
    return this.policy.retriable(err) && this.count < this.policy.maxAttempts && this.leftMs > 0;
  }

  /** Something got through: the failures, if any, are over. */
  recovered(): void {
    this.since = undefined;
    this.count = 0;
  }

  get failures(): number {
    return this.count;
  }

  /** The wait before the next attempt, ms: the policy's backoff, never past the time left. */
  nextDelayMs(err?: unknown): number {
    return Math.max(0, Math.min(this.policy.delayMs(this.count, err), this.leftMs));
  }

  /** Time left before the policy's `maxElapsedMs` is spent, ms (all of it when nothing has failed). */
  get leftMs(): number {
    const budget = this.policy.maxElapsedMs;
    return this.since === undefined ? budget : budget - (performance.now() - this.since);
  }
}

/** Runs `fn` under a policy built from `options` (for one-off callers; hold a RetryPolicy where it is reused). */
export function retry<T>(
  fn: (attempt: number) => Promise<T>,
  options: RetryPolicyOptions = {},
  hooks: RetryHooks = {},
): Promise<T> {
  return new RetryPolicy(options).run(fn, hooks);
}
