/**
 * The GPU worker's container entry point: configuration from the environment, signals, exit code. The worker itself
 * is composed in lib/worker/run.ts (which `mlm-filter worker` runs too). SIGTERM/SIGINT: stop fetching, finish and
 * commit what is in flight, flush sinks, exit 0; a second signal abandons in-flight work (it is redelivered) and exits 1
 * at once; MLMF_DRAIN_BUDGET_MS spent abandons it too and exits 1 (10 s later at the latest, whatever is still open).
 * A failure exits with the error catalog's code for it (lib/errors.ts exitCodeOf: 2 configuration, 1 runtime).
 */
import { pathToFileURL } from 'node:url';
import { codeOf, exitCodeOf, type FilterError } from '../../lib/errors.ts';
import { exitAfterScorerThreads } from '../../lib/model/scorer-threads.ts';
import { configFromEnv } from '../../lib/worker/config.ts';
import { runWorker, workerLog } from '../../lib/worker/run.ts';
import { drainBudgetFromEnv, stopSignals } from '../../lib/worker/stop-signals.ts';

export * from '../../lib/worker/run.ts';

/** Container entry: env config, signals, exit code. */
export async function main(): Promise<number> {
  try {
    // Drain on the first signal; abandon on a second one or when MLMF_DRAIN_BUDGET_MS (< ECS's stopTimeout) is spent.
    const stop = stopSignals(workerLog, drainBudgetFromEnv(), {
      exit: (code) => void exitAfterScorerThreads(code),
      code: 1,
    });
    process.on('SIGTERM', stop.onSignal);
    process.on('SIGINT', stop.onSignal);
    await runWorker(configFromEnv(), { signal: stop.graceful, abort: stop.hard });
    return stop.hard.aborted ? 1 : 0;
  } catch (err) {
    const e = err as Partial<FilterError>;
    const code = codeOf(err);
    workerLog.error('worker failed', { code, error: e.message ?? String(err), context: e.context });
    // The catalog's exit class, as the CLI's: 2 for a configuration the worker cannot run with, 1 for a runtime failure.
    return exitCodeOf(code);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  // Scorer threads end first: exiting under an inference call aborts the process (lib/model/scorer-threads.ts).
  void main().then((code) => exitAfterScorerThreads(code));
}
