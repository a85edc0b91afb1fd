/**
 * The one retry policy (lib/support/retry.ts) as a unit: attempts, time budget, backoff shape, jitter bounds,
 * Retry-After, the retriable decision and the stop. Waits are injected (recorded, not slept): nothing here is timed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FilterError } from '../../lib/types.ts';
import { isRetriable } from '../../lib/errors.ts';
import { retry, RetryPolicy, sleep } from '../../lib/support/retry.ts';

/** A wait that records what it was asked and returns at once. */
function recorder() {
  const waits: number[] = [];
  return { waits, sleep: async (ms: number) => void waits.push(ms) };
}

/** A function failing `n` times with `err` (a fresh one each time when a factory), then returning 'ok'. */
function failing(n: number, err: () => unknown = () => new Error('transient')) {
  let calls = 0;
  const fn = async (attempt: number) => {
    calls++;
    assert.equal(attempt, calls, 'attempts are numbered from 1');
    if (calls <= n) throw err();
    return 'ok';
  };
  return { fn, calls: () => calls };
}

test('backoff: base, then base x factor per failure, capped; no jitter when jitter is 0', () => {
  const p = new RetryPolicy({ baseMs: 100, factor: 2, maxMs: 1000, jitter: 0 });
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((n) => p.delayMs(n)),
    [100, 200, 400, 800, 1000, 1000],
  );
});

test('jitter only takes off, within its fraction, and at the cap too', () => {
  const p = new RetryPolicy({ baseMs: 1000, maxMs: 4000, jitter: 0.5 });
  for (let i = 0; i < 200; i++) {
    const first = p.delayMs(1);
    assert.ok(first >= 500 && first <= 1000, `first wait ${first}`);
    const capped = p.delayMs(10);
    assert.ok(capped >= 2000 && capped <= 4000, `capped wait ${capped}`);
  }
  const spread = new Set(Array.from({ length: 50 }, () => p.delayMs(10)));
  assert.ok(spread.size > 1, 'waits at the cap differ from one another');
});

test('a Retry-After is a floor under the backoff, never above the cap', () => {
  const p = new RetryPolicy({
    baseMs: 100,
    maxMs: 5000,
    jitter: 0,
    retryAfterMs: (e) => (e as { after?: number }).after,
  });
  assert.equal(p.delayMs(1, { after: 3000 }), 3000);
  assert.equal(p.delayMs(1, { after: 60_000 }), 5000);
  assert.equal(p.delayMs(3, { after: 10 }), 400);
  assert.equal(p.delayMs(3, {}), 400);
});

test('run: retries until success, reporting each retry and waiting the policy’s delays', async () => {
  const { waits, sleep } = recorder();
  const retries: { attempt: number; delayMs: number }[] = [];
  const f = failing(3);
  const p = new RetryPolicy({ maxAttempts: 5, baseMs: 10, jitter: 0 });
  const out = await p.run(f.fn, { sleep, onRetry: ({ attempt, delayMs }) => retries.push({ attempt, delayMs }) });
  assert.equal(out, 'ok');
  assert.equal(f.calls(), 4);
  assert.deepEqual(waits, [10, 20, 40]);
  assert.deepEqual(
    retries.map((r) => r.attempt),
    [1, 2, 3],
  );
});

test('run: gives up after maxAttempts with the last error', async () => {
  const { waits, sleep } = recorder();
  let n = 0;
  const f = failing(10, () => new Error(`failure ${++n}`));
  await assert.rejects(new RetryPolicy({ maxAttempts: 3, jitter: 0 }).run(f.fn, { sleep }), /failure 3/);
  assert.equal(f.calls(), 3);
  assert.equal(waits.length, 2);
});

test('run: a non-retriable error is thrown at once; the default decision is isRetriable', async () => {
  const { waits, sleep } = recorder();
  const hopeless = failing(5, () => new FilterError('message_too_large', 'too big'));
  await assert.rejects(new RetryPolicy().run(hopeless.fn, { sleep }), /too big/);
  assert.equal(hopeless.calls(), 1);
  // A retriable catalog code is retried.
  const outage = failing(2, () => new FilterError('kafka_unavailable', 'down'));
  assert.equal(await new RetryPolicy().run(outage.fn, { sleep }), 'ok');
  assert.equal(outage.calls(), 3);
  // A caller's own rule replaces it.
  const all = failing(2, () => new FilterError('message_too_large', 'too big'));
  assert.equal(await new RetryPolicy({ retriable: () => true }).run(all.fn, { sleep }), 'ok');
  assert.deepEqual(waits.length, 4);
});

test('isRetriable: AWS client errors are not retriable; throttling, timeouts, 5xx and network errors are', () => {
  const aws = (status: number, name = 'Error') =>
    Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });
  assert.equal(isRetriable(aws(403, 'AccessDenied')), false);
  assert.equal(isRetriable(aws(404, 'NoSuchKey')), false);
  assert.equal(isRetriable(aws(400, 'InvalidParameterValue')), false);
  assert.equal(isRetriable(new Error('wrapped', { cause: aws(403) })), false);
  assert.equal(isRetriable(aws(429, 'SlowDown')), true);
  assert.equal(isRetriable(aws(408, 'RequestTimeout')), true);
  assert.equal(isRetriable(aws(503, 'ServiceUnavailable')), true);
  assert.equal(isRetriable(Object.assign(new Error('reset'), { code: 'ECONNRESET' })), true);
  assert.equal(isRetriable(Object.assign(new Error('kafkajs'), { retriable: false })), false);
});

test('run: a stop ends the retries with the last error, and cuts a wait short', async () => {
  const ac = new AbortController();
  const f = failing(10, () => new Error('down'));
  // A real wait of an hour: only the stop can end it.
  const p = new RetryPolicy({ baseMs: 3_600_000, maxMs: 3_600_000 });
  const running = p.run(f.fn, { signal: ac.signal, onRetry: () => queueMicrotask(() => ac.abort()) });
  await assert.rejects(running, /down/);
  assert.equal(f.calls(), 1);
  // Already stopped: the first failure is final.
  const g = failing(10, () => new Error('down again'));
  await assert.rejects(p.run(g.fn, { signal: ac.signal }), /down again/);
  assert.equal(g.calls(), 1);
});

test('a time budget: once failures outlast maxElapsedMs no attempt follows, and waits never pass it', async () => {
  const p = new RetryPolicy({ maxElapsedMs: 0, jitter: 0 });
  const f = failing(5);
  await assert.rejects(p.run(f.fn, { sleep: async () => undefined }), /transient/);
  assert.equal(f.calls(), 1);
  const budget = new RetryPolicy({ maxElapsedMs: 60_000, baseMs: 1_000_000, maxMs: 1_000_000, jitter: 0 }).budget();
  assert.equal(budget.failed(new Error('x')), true);
  assert.ok(budget.nextDelayMs() <= 60_000, 'the wait is cut to the time left');
  assert.equal(budget.failures, 1);
  budget.recovered();
  assert.equal(budget.failures, 0);
  assert.equal(budget.leftMs, 60_000);
});

test('retry(): the one-off form of the same policy', async () => {
  const f = failing(1);
  assert.equal(await retry(f.fn, { baseMs: 0 }), 'ok');
  assert.equal(f.calls(), 2);
});

test('sleep rejects with the reason of a signal that fires, or has fired', async () => {
  const ac = new AbortController();
  const reason = new Error('stop');
  const waiting = sleep(3_600_000, ac.signal);
  ac.abort(reason);
  await assert.rejects(waiting, (e) => e === reason);
  await assert.rejects(sleep(1, ac.signal), (e) => e === reason);
  await sleep(0);
});
