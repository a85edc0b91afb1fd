import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEDUPE_CAPACITY, ReportCollector, StreamingAxis } from '../../lib/report/collect.ts';

test('streaming timeline axis: exact while the span fits its cells, bounded and conserving counts beyond', () => {
  const exact = new StreamingAxis(64);
  for (let x = 10; x < 60; x++) exact.add(x, x % 3 === 0);
  const b = exact.buckets(5);
  assert.deepEqual(
    b.map((x) => x.accepted + x.rejected),
    [10, 10, 10, 10, 10],
  );
  const direct = [0, 0, 0, 0, 0];
  for (let x = 10; x < 60; x++) if (x % 3 === 0) direct[Math.min(4, Math.floor((x - 10) / (49 / 5)))]!++;
  assert.deepEqual(
    b.map((x) => x.accepted),
    direct,
    'same as bucketing each value',
  );

  const wide = new StreamingAxis(4096);
  let accepted = 0;
  for (let i = 0; i < 100_000; i++) {
    const x = 1_700_000_000_000 + i * 37; // ms timestamps over an hour
    const a = i % 4 === 0;
    accepted += a ? 1 : 0;
    wide.add(x, a);
  }
  assert.ok((wide as unknown as { cells: Map<number, unknown> }).cells.size <= 4096);
  const buckets = wide.buckets(40);
  assert.equal(
    buckets.reduce((s, x) => s + x.accepted + x.rejected, 0),
    100_000,
  );
  assert.equal(
    buckets.reduce((s, x) => s + x.accepted, 0),
    accepted,
  );
  // Evenly spread events: each bucket holds ~100 cells, so it is within ~1% of the even share.
  for (const x of buckets) assert.ok(Math.abs(x.accepted + x.rejected - 2500) < 2500 * 0.03, JSON.stringify(x));
});

test('report dedupe remembers a bounded number of recent ids', () => {
  const c = new ReportCollector();
  const ev = (id: string) => ({
    id,
    decision: 'reject' as const,
    caption: null,
    url: null,
    scores: {},
    reasons: [{ code: 'fetch_failed', message: 'HTTP 404' }],
    ts: 1,
  });
  c.add(ev('x'));
  c.add(ev('x'));
  for (let i = 0; i < DEDUPE_CAPACITY + 10; i++) c.add(ev(`id${i}`));
  const d = c.data('t', 'mem');
  assert.equal(d.totals.duplicates, 1);
  assert.equal(d.totals.rejected, DEDUPE_CAPACITY + 11);
  assert.ok((c as unknown as { seen: { ids: Set<string> } }).seen.ids.size <= DEDUPE_CAPACITY);
});
