/**
 * A second signal exits 130 every time (issue 20), a few runs in the default suite; double-signal.slow.test.ts runs
 * twenty. The exit helper's deadline: a scorer thread that never reaches the end of its call ends the process by the
 * signal, never by an abort.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { doubleSignalRun, scoringInput } from './double-signal.ts';

const input = scoringInput(3000);

for (const [i, gapMs] of [0, 300].entries()) {
  test(`two SIGINTs while the scorer threads score exit 130 (run ${i + 1}, ${gapMs} ms apart)`, async () => {
    await doubleSignalRun(input, gapMs);
  });
}

test('two SIGTERMs exit 130 as well', async () => {
  await doubleSignalRun(input, 50, 'SIGTERM');
});

/** Runs exitAfterScorerThreads(130, deadlineMs) in a child with one tracked thread, busy (`busy`) or idle. */
function exitWithThread(busy: boolean, deadlineMs: number) {
  const threads = new URL('../../lib/model/scorer-threads.ts', import.meta.url).href;
  // A busy thread never returns to its event loop, as one stuck in an inference call; an idle one reads the request.
  const body = busy ? 'for (;;) {}' : "parentPort.on('message', (m) => m.type === 'exit' && process.exit(0));";
  const script = `
    import { Worker } from 'node:worker_threads';
    import { exitAfterScorerThreads, scorerThreads } from ${JSON.stringify(threads)};
    const w = new Worker(${JSON.stringify(`import { parentPort } from 'node:worker_threads'; ${body}`)}, { eval: true });
    scorerThreads.track(w);
    process.on('SIGINT', () => {});
    w.once('online', () => void exitAfterScorerThreads(130, ${deadlineMs}));
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: 'pipe' });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stderr })),
  );
}

test('exit after the scorer threads: an idle thread exits on request, then the process exits with the code', async () => {
  const r = await exitWithThread(false, 20_000);
  assert.deepEqual({ code: r.code, signal: r.signal }, { code: 130, signal: null }, r.stderr);
});

test('exit after the scorer threads: a thread that never returns ends the process by SIGINT at the deadline', async () => {
  const r = await exitWithThread(true, 300);
  assert.deepEqual({ code: r.code, signal: r.signal }, { code: null, signal: 'SIGINT' }, r.stderr);
  assert.match(r.stderr, /still inside one inference call 300 ms after the stop: ending by signal/);
});
