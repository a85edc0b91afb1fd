/**
 * The MLM scorer as the pipeline sees it (the `Scorer` contract): a small pool of worker threads, each owning one
 * inference engine, so that the blocking `session.run` never stalls the main thread's Kafka heartbeats and HTTP.
 */
// First: the workers' onnxruntime reads ORT_DISABLE_TELEMETRY from the process environment this thread sets.
import './telemetry.ts';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import {
  FilterError,
  METRICS,
  type MetricKey,
  type MetricShort,
  type ModelInfo,
  type PreprocessSpec,
} from '../types.ts';
import type { Scorer, ScoreInput, ScoreResult } from '../types.ts';
import { emptyStats, type EngineStats } from './engine.ts';
import { readModelDir, resolveModelDir } from './model-dir.ts';
import type { WireError, WorkerReply, WorkerRequest } from './protocol.ts';
import type { ExecutionProvider, SessionOptions } from './sessions.ts';
import { jsonLogger, type Logger } from '../support/logger.ts';

export interface ScorerOptions extends SessionOptions {
  /** Pairs per inference batch; also the scorer's `maxBatch`. Default 8. */
  readonly batchSize?: number;
  /** Metrics to score, by short or full name. Default: all four. */
  readonly metrics?: readonly (MetricShort | MetricKey)[];
  /** Worker threads, each with its own copy of the model. Default 1 (one accelerator wants one). */
  readonly workers?: number;
  /**
   * Reproduce the reference scorer's numbers: no pad-to-square, its prompt truncation and caption tokenisation,
   * int() of the first line of 2 greedy tokens. Default false (exact expected scores, captions as text, long captions
   * shortened instead of the question).
   */
  readonly referenceMode?: boolean;
  /** Also read answers that start with the whitespace token. Default: mlm_filter.json's `score_whitespace_lead`. */
  readonly whitespaceLead?: boolean;
  /** Where load and fallback messages go. Default: one JSON line on stderr. */
  readonly logger?: Logger;
  /** Environment for hub-id resolution (MLMF_MODEL_CACHE). Default process.env. */
  readonly env?: NodeJS.ProcessEnv;
}

/** The scorer plus what operators and benchmarks want to see. */
export interface MlmScorer extends Scorer {
  /** The provider the workers actually run on (after any fallback). */
  readonly executionProvider: ExecutionProvider;
  readonly modelDir: string;
  /** Work counters summed over the workers. */
  stats(): EngineStats;
}

function metricKeys(metrics: ScorerOptions['metrics']): MetricKey[] {
  if (!metrics || metrics.length === 0) return METRICS.map((m) => m.key);
  return metrics.map((name) => {
    const m = METRICS.find((x) => x.key === name || x.short === name);
    if (!m) throw new FilterError('unknown_metric', `unknown metric '${name}'`, { metric: name, known: METRICS });
    return m.key;
  });
}

/**
 * Starts the worker script. From the TypeScript sources (tsx), loader hooks registered on the main thread do not
 * reach workers, and `--import tsx` in a worker's execArgv races its entry module on Node 20; so a tiny eval'd
 * bootstrap registers tsx in the worker before importing worker.ts.
 */
function spawnWorker(): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./worker.js', import.meta.url));
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./worker.ts', import.meta.url).href;
  const boot = `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(boot, { eval: true });
}

const errorFrom = (e: WireError) => new FilterError(e.code, e.message, e.context);

interface Job {
  readonly inputs: ScoreInput[];
  readonly resolve: (r: ScoreResult[]) => void;
  readonly reject: (e: unknown) => void;
  readonly signal: AbortSignal | undefined;
}

class PoolWorker {
  private pending = new Map<number, Job>();
  private nextId = 0;
  busy = false;
  /** Set once the thread has crashed or exited: it takes no more work. */
  dead = false;
  stats: EngineStats | undefined;

  constructor(
    readonly worker: Worker,
    private readonly onIdle: (w: PoolWorker) => void,
    private readonly log: Logger,
  ) {
    worker.on('message', (msg: WorkerReply) => this.onMessage(msg));
    worker.on('error', (err) => {
      this.dead = true;
      this.failAll(err);
    });
    worker.on('exit', (code) => {
      this.dead = true;
      if (this.pending.size > 0) this.failAll(new Error(`scorer worker exited with code ${code}`));
      this.onIdle(this);
    });
  }

  run(job: Job): void {
    const id = this.nextId++;
    this.pending.set(id, job);
    this.busy = true;
    const msg: WorkerRequest = {
      type: 'score',
      id,
      inputs: job.inputs.map((i) => ({ caption: i.caption, pixelValues: i.pixelValues })),
    };
    this.worker.postMessage(msg);
  }

  private onMessage(msg: WorkerReply): void {
    if (msg.type === 'log') this.log.log(msg.level, msg.message, msg.context);
    if (msg.type !== 'result' && msg.type !== 'error') return;
    const job = this.pending.get(msg.id);
    this.pending.delete(msg.id);
    this.busy = false;
    if (job) {
      if (msg.type === 'result') {
        this.stats = msg.stats;
        job.resolve(
          msg.results.map((r) => ({
            scores: r.scores,
            expected: r.expected,
            ...(r.captionCut ? { captionCut: r.captionCut } : {}),
            ...(r.unscorable ? { unscorable: r.unscorable } : {}),
          })),
        );
      } else {
        job.reject(errorFrom(msg.error));
      }
    }
    this.onIdle(this);
  }

  private failAll(err: Error): void {
    const e = new FilterError('scorer_failed', `scorer worker failed: ${err.message}`, {}, { cause: err });
    for (const job of this.pending.values()) job.reject(e);
    this.pending.clear();
    this.busy = false;
  }
}

async function startWorker(dir: string, init: WorkerRequest & { type: 'init' }, log: Logger) {
  const worker = spawnWorker();
  const ep = await new Promise<ExecutionProvider>((resolve, reject) => {
    const onMessage = (msg: WorkerReply) => {
      if (msg.type === 'log') log.log(msg.level, msg.message, msg.context);
      else if (msg.type === 'ready') {
        worker.off('message', onMessage);
        resolve(msg.executionProvider);
      } else if (msg.type === 'failed') {
        worker.off('message', onMessage);
        void worker.terminate(); // a thread whose model failed to load would otherwise keep the process alive
        reject(errorFrom(msg.error));
      }
    };
    worker.on('message', onMessage);
    worker.once('error', (err) =>
      reject(
        new FilterError('scorer_failed', `scorer worker failed to start: ${err.message}`, { dir }, { cause: err }),
      ),
    );
    worker.postMessage(init);
  });
  return { worker, ep };
}

/**
 * Loads a model directory (or a hub id with a cached export) into a worker pool. Fails with 'model_invalid' /
 * 'model_not_exported' naming what is missing and the export command to run.
 */
export async function loadScorer(model: string, options: ScorerOptions = {}): Promise<MlmScorer> {
  const log = options.logger ?? jsonLogger().child({ component: 'scorer' });
  const dir = resolveModelDir(model, options.env);
  // Checked here too so that a broken directory fails before any thread starts.
  const info = readModelDir(dir, options.dtype ?? 'fp32');
  const metrics = metricKeys(options.metrics);
  const batchSize = Math.max(1, options.batchSize ?? 8);
  const init: WorkerRequest & { type: 'init' } = {
    type: 'init',
    dir,
    options: {
      ...(options.executionProvider ? { executionProvider: options.executionProvider } : {}),
      ...(options.fallbackToCpu !== undefined ? { fallbackToCpu: options.fallbackToCpu } : {}),
      ...(options.intraOpThreads ? { intraOpThreads: options.intraOpThreads } : {}),
      ...(options.interOpThreads ? { interOpThreads: options.interOpThreads } : {}),
      dtype: options.dtype ?? 'fp32',
      metrics,
      referenceMode: options.referenceMode ?? false,
      ...(options.whitespaceLead !== undefined ? { whitespaceLead: options.whitespaceLead } : {}),
    },
  };
  const count = Math.max(1, options.workers ?? 1);
  // Several CPU workers each defaulting to every core would oversubscribe: split the cores between them.
  if (count > 1 && !init.options.intraOpThreads && (init.options.executionProvider ?? 'cpu') === 'cpu') {
    (init.options as { intraOpThreads?: number }).intraOpThreads = Math.max(
      1,
      Math.floor(availableParallelism() / count),
    );
  }
  const started = await Promise.allSettled(Array.from({ length: count }, () => startWorker(dir, init, log)));
  const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await Promise.all(started.map((s) => (s.status === 'fulfilled' ? s.value.worker.terminate() : Promise.resolve(0))));
    throw failed.reason;
  }
  const ok = started.map((s) => (s as PromiseFulfilledResult<{ worker: Worker; ep: ExecutionProvider }>).value);
  const queue: Job[] = [];
  let closed = false;
  const pool: PoolWorker[] = [];
  const dispatch = (w: PoolWorker) => {
    if (pool.every((x) => x.dead)) {
      const err = new FilterError('scorer_failed', 'every scorer worker thread has stopped', { dir });
      for (const job of queue.splice(0)) job.reject(err);
      return;
    }
    while (!w.busy && !w.dead && queue.length > 0) {
      const job = queue.shift() as Job;
      if (job.signal?.aborted) {
        job.reject(job.signal.reason);
        continue;
      }
      w.run(job);
    }
  };
  for (const { worker } of ok) pool.push(new PoolWorker(worker, dispatch, log));
  // Without padding, a CLIP processor's shortest-edge resize + centre crop applies again (it is moot on padded squares).
  const preprocess: PreprocessSpec = options.referenceMode ? info.preprocessNoPad : info.preprocess;
  const modelInfo: ModelInfo = info.model;

  return {
    model: modelInfo,
    preprocess,
    metrics: metrics.map((k) => METRICS.find((m) => m.key === k)?.short as MetricShort),
    maxBatch: batchSize,
    executionProvider: ok[0]?.ep ?? 'cpu',
    modelDir: dir,
    async score(batch, signal) {
      if (closed) throw new FilterError('scorer_closed', 'score() after close()', {});
      signal?.throwIfAborted();
      const chunks: ScoreInput[][] = [];
      for (let i = 0; i < batch.length; i += batchSize) chunks.push(batch.slice(i, i + batchSize));
      const parts = await Promise.all(
        chunks.map(
          (inputs) =>
            new Promise<ScoreResult[]>((resolve, reject) => {
              queue.push({ inputs, resolve, reject, signal });
              for (const w of pool) dispatch(w);
            }),
        ),
      );
      return parts.flat();
    },
    stats() {
      const total = emptyStats();
      for (const w of pool) {
        for (const k of Object.keys(total) as (keyof EngineStats)[]) total[k] += w.stats?.[k] ?? 0;
      }
      return total;
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const job of queue.splice(0)) job.reject(new FilterError('scorer_closed', 'scorer closed', {}));
      await Promise.all(
        pool.map(
          (w) =>
            new Promise<void>((resolve) => {
              const t = setTimeout(() => void w.worker.terminate().then(() => resolve()), 5000);
              w.worker.once('exit', () => {
                clearTimeout(t);
                resolve();
              });
              w.worker.postMessage({ type: 'close' } satisfies WorkerRequest);
            }),
        ),
      );
    },
  };
}
