/**
 * How the container entry stops: the first SIGTERM/SIGINT drains (no new batches; in-flight work finishes, is written
 * and acked), a second signal abandons in-flight work (it is redelivered), and so does the drain budget running out.
 * ECS sends SIGKILL `stopTimeout` after SIGTERM; the construct passes a budget shorter than that
 * (MLMF_DRAIN_BUDGET_MS), so that a drain stuck on a slow batch still ends with clients closed and a log line saying
 * why, instead of a kill in the middle of a sink write.
 */
import { FilterError } from '../../lib/types.ts';
import type { WorkerEnvName } from '../../lib/worker-env.ts';

type StopLog = (level: 'info' | 'warn', msg: string, ctx?: Record<string, unknown>) => void;

export interface StopSignals {
  /** Aborted by the first signal: drain. */
  readonly graceful: AbortSignal;
  /** Aborted by a second signal or when the drain budget is spent: abandon in-flight work. */
  readonly hard: AbortSignal;
  /** The process signal handler. */
  readonly onSignal: (sig: NodeJS.Signals) => void;
}

/** @param drainBudgetMs how long a drain may run; 0 for no limit */
export function stopSignals(log: StopLog, drainBudgetMs: number): StopSignals {
  const graceful = new AbortController();
  const hard = new AbortController();
  let signals = 0;
  const abandon = (why: string) => {
    if (hard.signal.aborted) return;
    log('warn', `${why}: abandoning in-flight work (it will be redelivered)`, {});
    hard.abort();
  };
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) return abandon(`${sig} again`);
    log('info', `${sig}: graceful drain`, drainBudgetMs > 0 ? { drainBudgetMs } : {});
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
