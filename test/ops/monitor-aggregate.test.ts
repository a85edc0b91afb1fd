import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MonitorAggregator, parseEvent, type MonitorEvent } from '../../lib/monitor/aggregate.ts';
import { bar, renderSnapshot } from '../../lib/monitor/render.ts';

const T0 = Date.parse('2026-03-01T12:00:00Z');

function audit(
  id: string,
  decision: 'accept' | 'reject',
  scores: Record<string, number | null>,
  reasons: unknown[] = [],
  ts = T0,
) {
  return JSON.stringify({
    v: 1,
    id,
    decision,
    reasons,
    scores: { itm: null, odf: null, ctq: null, su: null, ...scores },
    caption: 'c',
    url: 'https://example.com/x.jpg',
    model: { name: 'm', revision: 'r' },
    source: { kind: 'kafka', topic: 'in', partition: 0, offset: '1' },
    ts: new Date(ts).toISOString(),
  });
}
const ev = (x: ReturnType<typeof parseEvent>) => {
  assert.ok(!('error' in x), JSON.stringify(x));
  return x as MonitorEvent;
};
const belowItm = (score: number) => ({
  code: 'below_threshold',
  message: 'low',
  detail: { metric: 'itm', score, threshold: 66 },
});

test('parseEvent: audit events, accepted-topic events keyed by message key, malformed messages', () => {
  const a = ev(parseEvent('audit', audit('p1', 'reject', { itm: 12 }, [belowItm(12)]), null, T0 + 5));
  assert.equal(a.id, 'p1');
  assert.equal(a.decision, 'reject');
  assert.equal(a.ts, T0 + 5, 'the Kafka message timestamp wins over ts');
  assert.deepEqual(a.scores, { itm: 12 });
  assert.equal(a.reasons[0]!.code, 'below_threshold');
  const b = ev(parseEvent('accepted', JSON.stringify({ scores: { itm: 90 } }), Buffer.from('key-7')));
  assert.equal(b.id, 'key-7');
  assert.equal(b.decision, 'accept');
  assert.deepEqual(parseEvent('audit', 'not json'), { error: 'not JSON' });
  assert.deepEqual(parseEvent('audit', JSON.stringify({ id: 'x', v: 1 })), { error: 'decision is missing' });
  assert.deepEqual(parseEvent('audit', '[1]'), { error: 'not a JSON object' });
  assert.deepEqual(parseEvent('accepted', null), { error: 'empty message' });
});

test('aggregation: accept rate, reasons, dedupe across topics, histograms, window throughput', () => {
  const agg = new MonitorAggregator({ windowSeconds: 10, acceptsVisible: true });
  // 6 accepts: 3 on the audit topic, the same 3 again on the accepted topic (dedupe), plus 3 only on accepted.
  for (let i = 0; i < 3; i++) {
    assert.equal(
      agg.add(ev(parseEvent('audit', audit(`a${i}`, 'accept', { itm: 70 + i, odf: 40 }), null, T0 + i * 1000))),
      true,
    );
    assert.equal(
      agg.add(ev(parseEvent('accepted', audit(`a${i}`, 'accept', { itm: 70 + i }), null, T0 + i * 1000))),
      false,
    );
  }
  for (let i = 3; i < 6; i++)
    agg.add(ev(parseEvent('accepted', audit(`a${i}`, 'accept', { itm: 100, odf: 95 }), null, T0 + 5000)));
  // 4 rejects: 2 below ITM, 1 below ODF and ITM (one record, two reasons of one code), 1 fetch failure; one is old.
  agg.add(ev(parseEvent('audit', audit('r0', 'reject', { itm: 5, odf: 1 }, [belowItm(5)]), null, T0 - 60_000)));
  agg.add(ev(parseEvent('audit', audit('r1', 'reject', { itm: 15, odf: 30 }, [belowItm(15)]), null, T0 + 6000)));
  agg.add(
    ev(
      parseEvent(
        'audit',
        audit('r2', 'reject', { itm: 25, odf: 9 }, [
          belowItm(25),
          { code: 'below_threshold', message: 'odf', detail: { metric: 'odf', score: 9 } },
        ]),
        null,
        T0 + 7000,
      ),
    ),
  );
  agg.add(
    ev(
      parseEvent(
        'audit',
        audit('r3', 'reject', {}, [{ code: 'fetch_failed', message: '404', detail: { status: 404 } }]),
        null,
        T0 + 8000,
      ),
    ),
  );
  agg.addMalformed();

  const s = agg.snapshot(T0 + 9500);
  assert.equal(s.events, 10);
  assert.equal(s.accepted, 6);
  assert.equal(s.rejected, 4);
  assert.equal(s.acceptRate, 0.6);
  assert.equal(s.duplicates, 3);
  assert.equal(s.malformed, 1);
  assert.deepEqual(s.reasons, [
    { code: 'below_threshold', count: 3, share: 0.75 },
    { code: 'fetch_failed', count: 1, share: 0.25 },
  ]);
  assert.deepEqual(s.belowThresholdByMetric, { itm: 3, odf: 1 });
  // itm: 70, 71, 72, 100 x3 (accepted), 5, 15, 25 (rejected): 9 values.
  assert.equal(s.scores.itm.count, 9);
  assert.deepEqual(s.scores.itm.bins, [1, 1, 1, 0, 0, 0, 0, 3, 0, 3]);
  assert.equal(s.scores.itm.p50, 71);
  assert.equal(s.scores.su.count, 0);
  assert.equal(s.scores.su.mean, null);
  // Window = seconds (T0-0.5 s, T0+9.5 s]: everything except r0 (60 s old).
  assert.equal(s.window.events, 9);
  assert.equal(s.window.eventsPerSecond, 0.9);
  assert.equal(s.window.accepted, 6);
  assert.equal(s.window.acceptRate, 6 / 9);
  assert.equal(s.lastEventAt, new Date(T0 + 8000).toISOString());

  // Later, the window has moved past every event.
  const later = agg.snapshot(T0 + 60_000);
  assert.equal(later.window.events, 0);
  assert.equal(later.window.acceptRate, null);
  assert.equal(later.events, 10);
});

test('accept rate is null, not 0 %, when accepts are not visible', () => {
  const agg = new MonitorAggregator();
  agg.add(ev(parseEvent('audit', audit('r', 'reject', { itm: 1 }, [belowItm(1)]))));
  const s = agg.snapshot();
  assert.equal(s.acceptRate, null);
  assert.equal(s.acceptsVisible, false);
  assert.match(renderSnapshot(s), /accepts not visible/);
});

test('dedupe memory is bounded', () => {
  const agg = new MonitorAggregator({ dedupeCapacity: 2 });
  for (const id of ['a', 'b', 'c']) agg.add({ id, decision: 'accept', reasons: [], scores: {}, ts: T0 });
  assert.equal(agg.add({ id: 'a', decision: 'accept', reasons: [], scores: {}, ts: T0 }), true, 'a was evicted');
  assert.equal(agg.add({ id: 'c', decision: 'accept', reasons: [], scores: {}, ts: T0 }), false);
});

test('terminal rendering shows the numbers and proportional bars', () => {
  assert.equal(bar(10, 10, 4), '████');
  assert.equal(bar(5, 10, 4), '██');
  assert.equal(bar(1, 16, 2), '▏');
  assert.equal(bar(0, 10, 4), '');
  const agg = new MonitorAggregator({ acceptsVisible: true });
  agg.add({ id: 'a', decision: 'accept', reasons: [], scores: { itm: 95 }, ts: T0 });
  agg.add({ id: 'b', decision: 'reject', reasons: [{ code: 'duplicate' }], scores: { itm: 3 }, ts: T0 });
  const text = renderSnapshot(agg.snapshot(T0), { columns: 160, title: 'TITLE' });
  assert.match(text, /^TITLE/);
  assert.match(text, /accept rate 50\.0%/);
  assert.match(text, /duplicate\s+1\s+100\.0%/);
  assert.match(text, /ITM n=2 mean=49\.0 p50=3/);
  assert.match(text, /90-100 █+\s+1/);
  // Four histograms side by side on a wide terminal, two per row on a narrow one.
  assert.equal(text.split('\n').filter((l) => /ITM n=|SU n=/.test(l)).length, 1);
  const narrow = renderSnapshot(agg.snapshot(T0), { columns: 72 });
  assert.equal(narrow.split('\n').filter((l) => /ITM n=|SU n=/.test(l)).length, 2);
  assert.ok(narrow.split('\n').every((l) => [...l].length <= 72));
});
