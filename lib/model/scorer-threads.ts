/**
 * The scorer's live worker threads, so that the process can end without aborting.
 *
 * onnxruntime-node runs a session synchronously on the thread that calls it, so a scorer thread spends most of its
 * life inside a native call. `process.exit` (and `worker.terminate()`) stops a worker thread's isolate under such a
 * call; when the call returns, the binding's N-API calls fail in the stopped isolate and the C++ exception it throws
 * ends the whole process (`terminate called after throwing an instance of 'Napi::Error'`, SIGABRT, exit 134). So a
 * forced exit first asks every live thread to end itself between two onnxruntime calls (the thread reads the request
 * as soon as the running call returns: one forward pass), waits for them to be gone, and only then exits.
 */
import { constants } from 'node:os';
import type { Worker } from 'node:worker_threads';
import type { WorkerRequest } from './protocol.ts';

/** How long an exit waits for a thread stuck in one onnxruntime call before the process ends by a signal, ms. */
export const EXIT_DEADLINE_MS = 10_000;

/** The process's scorer threads that have not exited yet: one registry, as the process that threads end is one. */
class ScorerThreads {
  /** Each live thread, with its exit (made when tracked, so that no 'exit' event is missed). */
  private readonly live = new Map<Worker, Promise<void>>();

  track(worker: Worker): void {
    this.live.set(worker, new Promise((resolve) => worker.once('exit', () => resolve())));
    worker.once('exit', () => this.live.delete(worker));
  }

  get count(): number {
    return this.live.size;
  }

  /**
   * Asks a thread to exit (the request waits in its queue until it reads messages, between two onnxruntime calls);
   * settles once it has exited, at once for a thread that has already.
   */
  stop(worker: Worker): Promise<void> {
    const exited = this.live.get(worker);
    if (!exited) return Promise.resolve();
    // A thread that has closed its port drops the request; its exit comes all the same.
    worker.postMessage({ type: 'exit' } satisfies WorkerRequest);
    return exited;
  }

  /** Stops every live thread; settles once all have exited. */
  stopAll(): Promise<void> {
    return Promise.all([...this.live.keys()].map((worker) => this.stop(worker))).then(() => undefined);
  }
}

export const scorerThreads = new ScorerThreads();

/**
 * Ends the process with `code` once every scorer thread is gone. A thread still inside one onnxruntime call after
 * `deadlineMs` cannot be stopped safely: the process then ends by the signal the code stands for (130: SIGINT, whose
 * default action shells report as 130 too; a code that is no 128+signal: SIGKILL), never by an abort.
 */
export async function exitAfterScorerThreads(code: number, deadlineMs = EXIT_DEADLINE_MS): Promise<never> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), deadlineMs)));
  const outcome = await Promise.race([scorerThreads.stopAll().then(() => 'stopped' as const), late]);
  clearTimeout(timer);
  if (outcome === 'late') {
    process.stderr.write(
      `mlm-filter: a scorer thread is still inside one inference call ${deadlineMs} ms after the stop: ending by signal\n`,
    );
    await endBySignal(code);
  }
  process.exit(code);
}

/** The signal whose default action gives `code` (128 + its number), else SIGKILL. */
function signalFor(code: number): NodeJS.Signals {
  const entry = Object.entries(constants.signals).find(([, n]) => n === code - 128);
  return (entry?.[0] as NodeJS.Signals | undefined) ?? 'SIGKILL';
}

async function endBySignal(code: number): Promise<void> {
  const signal = signalFor(code);
  // With no listener left, Node restores the signal's default action (terminate), so the kill ends the process
  // without running JavaScript or joining threads; a signal delivered to another thread may take a moment.
  process.removeAllListeners(signal);
  process.kill(process.pid, signal);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  process.kill(process.pid, 'SIGKILL');
}
