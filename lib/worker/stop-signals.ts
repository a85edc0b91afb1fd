/**
 * How the worker stops (the container entry and `mlm-filter worker`): the first SIGTERM/SIGINT drains (no new
 * batches; in-flight work finishes, is written and acked), a second signal abandons in-flight work (it is
 * redelivered) and exits at once, and the drain budget running out abandons it too, then exits `graceMs` later
 * whatever is still open. ECS sends SIGKILL `stopTimeout` after SIGTERM; the construct passes a budget shorter than
 * that (MLMF_DRAIN_BUDGET_MS), so that a drain stuck on a slow batch still ends with clients closed and a log line
 * saying why, instead of a kill in the middle of a sink write. The forced exit is there because a client can keep the
 * process alive after its close (kafkajs leaves a heartbeat socket open when it disconnects after a broker restart).
 */
import { FilterError } from '../types.ts';
import type { WorkerEnvName } from '../worker-env.ts';
import type { Logger } from '../support/logger.ts';

export interface StopSignals {
  /** Aborted by the first signal: drain. */
  readonly graceful: AbortSignal;
  /** Aborted by a second signal or when the drain budget is spent: abandon in-flight work. */
  readonly hard: AbortSignal;
  /** The process signal handler. */
  readonly onSignal: (sig: NodeJS.Signals) => void;
}

/** How a stop ends the process (the entry points pass process.exit; tests leave it out). */
export interface StopExit {
  readonly exit: (code: number) => void;
  /** Exit code of an abandoned drain. */
  readonly code: number;
  /** After an abandon, how long the run may take to close its clients before the process exits anyway, ms. Default 10000. */
  readonly graceMs?: number;
}

/**
 * @param drainBudgetMs how long a drain may run; 0 for no limit
 * @param exit how to end the process on a second signal (at once) and after an abandon (after its grace); none: never
 */
export function stopSignals(log: Logger, drainBudgetMs: number, exit?: StopExit): StopSignals {
  const graceful = new AbortController();
  const hard = new AbortController();
  let signals = 0;
  const abandon = (why: string) => {
    if (hard.signal.aborted) return;
    log.warn(`${why}: abandoning in-flight work (it will be redelivered)`);
    hard.abort();
    if (!exit) return;
    const graceMs = exit.graceMs ?? 10_000;
    setTimeout(() => {
      log.warn(`still running ${graceMs} ms after the abandon: exiting`);
      exit.exit(exit.code);
    }, graceMs).unref();
  };
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      abandon(`${sig} again`);
      // At once: whatever is in flight is redelivered, and nothing here may hold the exit up.
      exit?.exit(exit.code);
      return;
    }
    log.info(`${sig}: graceful drain`, drainBudgetMs > 0 ? { drainBudgetMs } : {});
    graceful.abort();
    if (drainBudgetMs > 0) {
      setTimeout(() => abandon(`drain budget of ${drainBudgetMs} ms spent`), drainBudgetMs).unref();
    }
  };
  return { graceful: graceful.signal, hard: hard.signal, onSignal };
}

const DRAIN_BUDGET: WorkerEnvName = 'MLMF_DRAIN_BUDGET_MS';

/** MLMF_DRAIN_BUDGET_MS as milliseconds; unset or empty is 0 (no limit). */
export function drainBudgetFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const v = env[DRAIN_BUDGET];
  if (v === undefined || v === '') return 0;
  if (!/^\d+$/.test(v)) {
    throw new FilterError('worker_config', `${DRAIN_BUDGET} must be a non-negative integer, got ${JSON.stringify(v)}`, {
      name: DRAIN_BUDGET,
    });
  }
  return Number(v);
}
