/**
 * Worker-thread side of the scorer: owns one engine (its onnxruntime sessions block the thread while they run).
 * Protocol: init -> ready | failed; score -> result | error; close -> closed.
 */
import { parentPort } from 'node:worker_threads';
import { FilterError } from '../types.ts';
import { Logger } from '../support/logger.ts';
import type { ScoringEngine } from './engine.ts';
import { loadEngine } from './sessions.ts';
import type { WireError, WorkerInit, WorkerReply, WorkerRequest } from './protocol.ts';

if (!parentPort) throw new Error('lib/model/worker.ts must run in a worker thread');
const port = parentPort;

let engine: ScoringEngine | undefined;

function errorOf(err: unknown): WireError {
  if (err instanceof FilterError) return { code: err.code, message: err.message, context: err.context };
  const e = err as Error;
  return { code: 'scorer_failed', message: e?.message ?? String(err), context: { stack: e?.stack } };
}

const reply = (msg: WorkerReply, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer);

port.on('message', (msg: WorkerRequest) => {
  // Read only between two onnxruntime calls (a call blocks this thread), so the thread never ends inside one.
  if (msg.type === 'exit') process.exit(0);
  void handle(msg);
});

async function handle(msg: WorkerRequest): Promise<void> {
  if (msg.type === 'init') {
    const init: WorkerInit = msg;
    try {
      // Lines cross to the pool's logger in the main thread (a thread has no logger of its own).
      const log = new Logger(({ level, msg, ctx }) => reply({ type: 'log', level, message: msg, context: ctx }));
      const loaded = await loadEngine(init.dir, init.options, log);
      engine = loaded.engine;
      reply({ type: 'ready', executionProvider: loaded.executionProvider });
    } catch (err) {
      reply({ type: 'failed', error: errorOf(err) });
    }
  } else if (msg.type === 'score') {
    try {
      if (!engine) throw new FilterError('scorer_closed', 'worker has no model loaded', {});
      const results = await engine.score(msg.inputs);
      reply({ type: 'result', id: msg.id, results, stats: { ...engine.stats } });
    } catch (err) {
      reply({ type: 'error', id: msg.id, error: errorOf(err) });
    }
  } else if (msg.type === 'close') {
    await engine?.release().catch(() => undefined);
    engine = undefined;
    reply({ type: 'closed' });
    port.close();
  }
}
