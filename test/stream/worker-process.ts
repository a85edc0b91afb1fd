/**
 * The worker as its own process for the crash test: the container entry's behaviour (env config, JSON logs,
 * SIGTERM drain, exit code) with FastScorer injected in place of the MLM model (MLMF_TEST_SCORER_DELAY_MS per batch
 * imitates inference time; MLMF_TEST_SCORER_REVISION stands for another model revision). Run: node --import tsx test/stream/worker-process.ts
 */
import { configFromEnv, runWorker, workerLog } from '../../functions/worker/main.ts';
import { FastScorer } from './helpers.ts';

const graceful = new AbortController();
process.on('SIGTERM', () => graceful.abort());
process.on('SIGINT', () => graceful.abort());
const revision = process.env.MLMF_TEST_SCORER_REVISION || undefined;
const scorer = new FastScorer(8, Number(process.env.MLMF_TEST_SCORER_DELAY_MS ?? 0), revision);
runWorker({ ...configFromEnv(), scorer }, { signal: graceful.signal, logger: workerLog, metricsOut: null }).then(
  () => process.exit(0),
  (err: unknown) => {
    workerLog.error('worker failed', { error: String(err) });
    process.exit(1);
  },
);
