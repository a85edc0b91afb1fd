/**
 * The worker's stop handling (lib/worker/stop-signals.ts: the container entry and `mlm-filter worker`): a first signal
 * drains, a second one or the drain budget (MLMF_DRAIN_BUDGET_MS, which the construct sets below ECS's stopTimeout)
 * abandons in-flight work, and then the process exits. The handler is driven directly; the budget is awaited by
 * polling, not by a fixed sleep.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { drainBudgetFromEnv, stopSignals } from '../../functions/worker/stop-signals.ts';
import { FilterError } from '../../lib/types.ts';
import { Logger, silentLogger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

type Line = { level: string; msg: string; ctx?: Record<string, unknown> };

test('first SIGTERM drains; the spent drain budget abandons in-flight work, once', async () => {
  const lines: Line[] = [];
  const stop = stopSignals(new Logger((e) => lines.push(e)), 40);
  stop.onSignal('SIGTERM');
  assert.equal(stop.graceful.aborted, true);
  assert.equal(stop.hard.aborted, false, 'the drain gets its budget first');
  assert.deepEqual(lines[0], { level: 'info', msg: 'SIGTERM: graceful drain', ctx: { drainBudgetMs: 40 } });
  await waitFor('the budget to run out', () => stop.hard.aborted, 5_000, 5);
  assert.match(lines[1]!.msg, /^drain budget of 40 ms spent: abandoning in-flight work/);
  stop.onSignal('SIGTERM');
  assert.equal(lines.length, 2, 'a signal after the abandon logs nothing more');
});

test('a second signal abandons at once, whatever the budget', () => {
  const lines: Line[] = [];
  const stop = stopSignals(new Logger((e) => lines.push(e)), 60_000);
  stop.onSignal('SIGINT');
  stop.onSignal('SIGTERM');
  assert.equal(stop.hard.aborted, true);
  assert.equal(lines[1]!.level, 'warn');
  assert.match(lines[1]!.msg, /^SIGTERM again: abandoning in-flight work/);
});

test('no budget: the drain is not cut short', async () => {
  const stop = stopSignals(silentLogger, 0);
  stop.onSignal('SIGTERM');
  // A 0 budget arms no timer: give any (wrongly armed) zero-delay timer its chance to fire.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(stop.hard.aborted, false);
});

test('MLMF_DRAIN_BUDGET_MS: unset is no limit, digits are milliseconds, anything else is a worker_config error', () => {
  assert.equal(drainBudgetFromEnv({}), 0);
  assert.equal(drainBudgetFromEnv({ MLMF_DRAIN_BUDGET_MS: '' }), 0);
  assert.equal(drainBudgetFromEnv({ MLMF_DRAIN_BUDGET_MS: '105000' }), 105_000);
  for (const bad of ['-1', '1.5', '2m']) {
    assert.throws(
      () => drainBudgetFromEnv({ MLMF_DRAIN_BUDGET_MS: bad }),
      (e: unknown) => e instanceof FilterError && e.code === 'worker_config',
      bad,
    );
  }
});

test('with an exit: a second signal exits at once; a spent budget exits after its grace, whatever is still open', async () => {
  const exits: number[] = [];
  const exit = { exit: (code: number) => exits.push(code), code: 1, graceMs: 30 };
  const twice = stopSignals(silentLogger, 60_000, exit);
  twice.onSignal('SIGTERM');
  assert.deepEqual(exits, [], 'the first signal only drains');
  twice.onSignal('SIGTERM');
  assert.deepEqual(exits, [1], 'the second one exits, synchronously');
  exits.length = 0;
  const spent = stopSignals(silentLogger, 20, exit);
  // Read at the abandon itself (its abort event), not by polling: a loaded machine may poll past the grace.
  const atAbandon = new Promise<number[]>((resolve) =>
    spent.hard.addEventListener('abort', () => resolve([...exits]), { once: true }),
  );
  // The budget's timers are unref'd (they must not hold a worker open): this one keeps the test's loop alive.
  const alive = setTimeout(() => undefined, 10_000);
  spent.onSignal('SIGTERM');
  assert.deepEqual(await atAbandon, [], 'the abandon leaves the run its grace to close its clients');
  await waitFor('the grace to run out', () => exits.length > 0, 5_000, 5);
  assert.deepEqual(exits, [1]);
  clearTimeout(alive);
});
