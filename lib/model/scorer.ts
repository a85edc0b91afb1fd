/**
 * The MLM scorer as the pipeline sees it (the `Scorer` contract): a small pool of worker threads, each owning one
 * inference engine, so that the blocking `session.run` never stalls the main thread's Kafka heartbeats and HTTP.
 */
// First: the workers' onnxruntime reads ORT_DISABLE_TELEMETRY from the process environment this thread sets.
import './telemetry.ts';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { FilterError, METRICS, type MetricKey, type MetricShort } from '../types.ts';
import type { Scorer, ScoreInput, ScoreResult } from '../types.ts';
import { emptyStats, type EngineStats } from './engine.ts';
import { readModelDir, resolveModelDir } from './model-dir.ts';
import type { WireError, WorkerInit, WorkerReply, WorkerRequest } from './protocol.ts';
import type { ExecutionProvider, SessionOptions } from './sessions.ts';
import { jsonLogger, type Logger } from '../support/logger.ts';
import { scorerThreads } from './scorer-threads.ts';
import { ortLogLevelFromEnv } from './ort-log.ts';

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
  /** Environment for hub-id resolution (MLMF_MODEL_CACHE) and MLMF_ORT_LOG_LEVEL. Default process.env. */
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
  const worker = import.meta.url.endsWith('.ts')
    ? spawnFromSources()
    : new Worker(new URL('./worker.js', import.meta.url));
  // Registered from its start: a forced exit waits for every scorer thread, even one still loading its model.
  scorerThreads.track(worker);
  return worker;
}

function spawnFromSources(): Worker {
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

/** One thread of the pool: the jobs it has in flight (one at a time), and the engine's counters it last reported. */
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

  /**
   * Asks the thread to close its engine; tells it to exit if it has not 5 s later (never terminate(): a thread
   * terminated inside an onnxruntime call aborts the process, lib/model/scorer-threads.ts).
   */
  close(): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => void scorerThreads.stop(this.worker), 5000);
      this.worker.once('exit', () => {
        clearTimeout(t);
        resolve();
      });
      this.worker.postMessage({ type: 'close' } satisfies WorkerRequest);
    });
  }

  private failAll(err: Error): void {
    const e = new FilterError('scorer_failed', `scorer worker failed: ${err.message}`, {}, { cause: err });
    for (const job of this.pending.values()) job.reject(e);
    this.pending.clear();
    this.busy = false;
  }
}

/** Starts one worker thread and waits for its engine: the provider it runs on, or the error it failed to load with. */
async function startWorker(init: WorkerInit, log: Logger): Promise<{ worker: Worker; ep: ExecutionProvider }> {
  const worker = spawnWorker();
  const ep = await new Promise<ExecutionProvider>((resolve, reject) => {
    const onMessage = (msg: WorkerReply) => {
      if (msg.type === 'log') log.log(msg.level, msg.message, msg.context);
      else if (msg.type === 'ready') {
        worker.off('message', onMessage);
        resolve(msg.executionProvider);
      } else if (msg.type === 'failed') {
        worker.off('message', onMessage);
        void scorerThreads.stop(worker); // a thread whose model failed to load would otherwise keep the process alive
        reject(errorFrom(msg.error));
      }
    };
    worker.on('message', onMessage);
    worker.once('error', (err) =>
      reject(
        new FilterError(
          'scorer_failed',
          `scorer worker failed to start: ${err.message}`,
          { dir: init.dir },
          { cause: err },
        ),
      ),
    );
    worker.postMessage(init);
  });
  return { worker, ep };
}

/**
 * The worker threads of one scorer and the chunks waiting for a free one. The pool owns the queue: a chunk goes to
 * the first idle live thread; once every thread has stopped, whatever waits fails with scorer_failed.
 */
class WorkerPool {
  private readonly queue: Job[] = [];
  private readonly workers: PoolWorker[];
  private closed = false;

  private constructor(
    threads: readonly Worker[],
    private readonly dir: string,
    /** Pairs per chunk sent to one thread (the engine's batch). */
    private readonly chunk: number,
    log: Logger,
  ) {
    this.workers = threads.map((worker) => new PoolWorker(worker, (w) => this.dispatch(w), log));
  }

  /** Starts `count` threads on `init`; when one fails to load, the others are stopped and its error is thrown. */
  static async start(init: WorkerInit, count: number, chunk: number, log: Logger) {
    const started = await Promise.allSettled(Array.from({ length: count }, () => startWorker(init, log)));
    const ok = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) {
      await Promise.all(ok.map((s) => scorerThreads.stop(s.worker)));
      throw failed.reason;
    }
    const pool = new WorkerPool(
      ok.map((s) => s.worker),
      init.dir,
      chunk,
      log,
    );
    return { pool, executionProvider: ok[0]?.ep ?? 'cpu' };
  }

  /** Scores `batch` in chunks of at most `chunk` pairs, each on the next free thread; results in input order. */
  async score(batch: readonly ScoreInput[], signal?: AbortSignal): Promise<ScoreResult[]> {
    if (this.closed) throw new FilterError('scorer_closed', 'score() after close()', {});
    signal?.throwIfAborted();
    const parts: Promise<ScoreResult[]>[] = [];
    for (let i = 0; i < batch.length; i += this.chunk) parts.push(this.enqueue(batch.slice(i, i + this.chunk), signal));
    return (await Promise.all(parts)).flat();
  }

  /** Work counters summed over the threads. */
  stats(): EngineStats {
    const total = emptyStats();
    for (const w of this.workers) {
      for (const k of Object.keys(total) as (keyof EngineStats)[]) total[k] += w.stats?.[k] ?? 0;
    }
    return total;
  }

  /** Fails what still waits, then closes every thread (each has 5 s to close its engine before it is told to exit). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new FilterError('scorer_closed', 'scorer closed', {}));
    await Promise.all(this.workers.map((w) => w.close()));
  }

  private enqueue(inputs: ScoreInput[], signal: AbortSignal | undefined): Promise<ScoreResult[]> {
    return new Promise((resolve, reject) => {
      this.queue.push({ inputs, resolve, reject, signal });
      for (const w of this.workers) this.dispatch(w);
    });
  }

  /** Hands queued chunks to `w` while it is idle (a thread calls this whenever it finishes one or stops). */
  private dispatch(w: PoolWorker): void {
    if (this.workers.every((x) => x.dead)) {
      const err = new FilterError('scorer_failed', 'every scorer worker thread has stopped', { dir: this.dir });
      for (const job of this.queue.splice(0)) job.reject(err);
      return;
    }
    while (!w.busy && !w.dead && this.queue.length > 0) {
      const job = this.queue.shift() as Job;
      if (job.signal?.aborted) job.reject(job.signal.reason);
      else w.run(job);
    }
  }
}

/** What every thread loads: the session options, with the cores split between several CPU threads. */
function initRequest(dir: string, options: ScorerOptions, metrics: MetricKey[], count: number): WorkerInit {
  const cpu = (options.executionProvider ?? 'cpu') === 'cpu';
  // Several CPU workers each defaulting to every core would oversubscribe.
  const split = count > 1 && cpu ? Math.max(1, Math.floor(availableParallelism() / count)) : undefined;
  const intraOpThreads = options.intraOpThreads || split;
  return {
    type: 'init',
    dir,
    options: {
      ...(options.executionProvider ? { executionProvider: options.executionProvider } : {}),
      ...(options.fallbackToCpu !== undefined ? { fallbackToCpu: options.fallbackToCpu } : {}),
      ...(intraOpThreads ? { intraOpThreads } : {}),
      ...(options.interOpThreads ? { interOpThreads: options.interOpThreads } : {}),
      ortLogLevel: options.ortLogLevel ?? ortLogLevelFromEnv(options.env),
      dtype: options.dtype ?? 'fp32',
      metrics,
      referenceMode: options.referenceMode ?? false,
      ...(options.whitespaceLead !== undefined ? { whitespaceLead: options.whitespaceLead } : {}),
    },
  };
}

/**
 * Loads a model directory (or a hub id with a cached export) into a worker pool. Fails with 'model_invalid' /
 * 'model_not_exported' naming what is missing and the export command to run.
 */
export async function loadScorer(model: string, options: ScorerOptions = {}): Promise<MlmScorer> {
  const dir = resolveModelDir(model, options.env);
  // Checked here too so that a broken directory fails before any thread starts.
  const info = readModelDir(dir, options.dtype ?? 'fp32');
  const metrics = metricKeys(options.metrics);
  const batchSize = Math.max(1, options.batchSize ?? 8);
  const count = Math.max(1, options.workers ?? 1);
  const init = initRequest(dir, options, metrics, count);
  const { pool, executionProvider } = await WorkerPool.start(
    init,
    count,
    batchSize,
    options.logger ?? jsonLogger().child({ component: 'scorer' }),
  );
  return {
    model: info.model,
    // Without padding, a CLIP processor's shortest-edge resize + centre crop applies again (moot on padded squares).
    preprocess: options.referenceMode ? info.preprocessNoPad : info.preprocess,
    metrics: metrics.map((k) => METRICS.find((m) => m.key === k)?.short as MetricShort),
    maxBatch: batchSize,
    executionProvider,
    modelDir: dir,
    score: (batch, signal) => pool.score(batch, signal),
    stats: () => pool.stats(),
    close: () => pool.close(),
  };
}
