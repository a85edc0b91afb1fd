import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { METRIC, REASON_DIMENSION, SCORE_METRIC } from '../../lib/metrics/metric-names.ts';
import { EMF_MAX_VALUES, ValueCounter } from '../../lib/metrics/emf.ts';
import { WorkerMetrics } from '../../lib/metrics/worker-metrics.ts';
import type { Outcome, Reason, Scores } from '../../lib/types.ts';

function outcome(id: string, decision: 'accept' | 'reject', scores: Scores, reasons: Reason[] = []): Outcome {
  return {
    record: { raw: '{}', origin: { kind: 'file', path: 'in.jsonl', line: 1 } },
    id,
    decision,
    reasons,
    scores,
  };
}
const below = (metric: string, score: number): Reason => ({
  code: 'below_threshold',
  message: `${metric} ${score} < 66`,
  detail: { metric, score, threshold: 66 },
});

type Doc = Record<string, unknown> & {
  _aws: {
    Timestamp: number;
    CloudWatchMetrics: { Namespace: string; Dimensions: string[][]; Metrics: { Name: string }[] }[];
  };
};

test('EMF: counters, reasons by dimension, score distributions with Values/Counts', () => {
  const lines: string[] = [];
  const m = new WorkerMetrics({
    pipeline: 'p1',
    namespace: 'NsTest',
    emit: (l) => lines.push(l),
    emfIntervalMs: 0,
    now: () => 1_700_000_000_000,
  });
  m.observe(outcome('a', 'accept', { itm: 80, odf: 30, ctq: 70, su: 50 }));
  m.observe(outcome('b', 'accept', { itm: 80, odf: 40, ctq: 70, su: 50 }));
  m.observe(outcome('c', 'reject', { itm: 10, odf: 5, ctq: 60, su: 20 }, [below('itm', 10), below('odf', 5)]));
  m.observe(outcome('d', 'reject', {}, [{ code: 'fetch_failed', message: 'HTTP 404', detail: { status: 404 } }]));
  m.observeBatchLatency(120.4);
  m.observeBatchLatency(120.4);
  m.observeBatchLatency(950);
  m.countError('sink_retry');
  m.setConsumerLag(42);
  m.setExecutionProvider('cuda', { name: 'mlm-filter-qwen', revision: 'r1' });
  const docs = m.flushEmf() as Doc[];
  assert.equal(lines.length, docs.length);
  assert.deepEqual(JSON.parse(lines[0]!), docs[0]);

  const main = docs[0]!;
  assert.equal(main._aws.Timestamp, 1_700_000_000_000);
  assert.equal(main._aws.CloudWatchMetrics[0]!.Namespace, 'NsTest');
  assert.deepEqual(main._aws.CloudWatchMetrics[0]!.Dimensions, [['Pipeline']]);
  assert.equal(main.Pipeline, 'p1');
  assert.equal(main[METRIC.PairsIn], 4);
  assert.equal(main[METRIC.PairsAccepted], 2);
  assert.equal(main[METRIC.PairsRejected], 2);
  assert.equal(main[METRIC.Errors], 1);
  assert.equal(main[METRIC.KafkaConsumerLag], 42);
  assert.equal(main.ExecutionProvider, 'cuda');
  assert.deepEqual(main[SCORE_METRIC.itm], { Values: [10, 80], Counts: [1, 2], Max: 80, Min: 10, Count: 3, Sum: 170 });
  assert.deepEqual(main[SCORE_METRIC.odf], {
    Values: [5, 30, 40],
    Counts: [1, 1, 1],
    Max: 40,
    Min: 5,
    Count: 3,
    Sum: 75,
  });
  const latency = main[METRIC.BatchLatencyMs] as { Values: number[]; Counts: number[]; Count: number };
  assert.deepEqual(latency.Values, [120, 950]);
  assert.deepEqual(latency.Counts, [2, 1]);
  // Every metric listed in the directive is present as a root member, and vice versa no stray metric.
  for (const { Name } of main._aws.CloudWatchMetrics[0]!.Metrics) assert.ok(Name in main, Name);

  const reasons = docs.slice(1).map((d) => ({
    dims: d._aws.CloudWatchMetrics[0]!.Dimensions[0],
    reason: d[REASON_DIMENSION],
    n: d[METRIC.RejectsByReason],
  }));
  assert.deepEqual(reasons, [
    { dims: ['Pipeline', 'Reason'], reason: 'below_threshold', n: 1 },
    { dims: ['Pipeline', 'Reason'], reason: 'fetch_failed', n: 1 },
  ]);

  // The next interval starts from zero but still reports counters (alarms read 0, not missing data).
  const next = m.flushEmf(false) as Doc[];
  assert.equal(next.length, 1);
  assert.equal(next[0]![METRIC.PairsIn], 0);
  assert.equal(next[0]![SCORE_METRIC.itm], undefined);
  assert.equal(next[0]![METRIC.KafkaConsumerLag], 42);
  m.close();
});

test('EMF: more than 100 distinct values spill into further documents, counts preserved', () => {
  const docs: Doc[] = [];
  const m = new WorkerMetrics({ emit: (l) => docs.push(JSON.parse(l)), emfIntervalMs: 0, pipeline: 'p' });
  for (let s = 0; s <= 100; s++) m.observe(outcome(`x${s}`, 'accept', { itm: s }));
  m.observe(outcome('y', 'accept', { itm: 100 }));
  m.close();
  const parts = docs
    .filter((d) => SCORE_METRIC.itm in d)
    .map((d) => d[SCORE_METRIC.itm] as { Values: number[]; Counts: number[]; Count: number });
  assert.equal(parts.length, 2);
  for (const p of parts) assert.ok(p.Values.length <= EMF_MAX_VALUES);
  assert.equal(
    parts.reduce((a, p) => a + p.Count, 0),
    102,
  );
  assert.deepEqual(parts[1]!.Values, [100]);
  assert.deepEqual(parts[1]!.Counts, [2]);
  // The spill document repeats the dimension but not the counters (no double counting).
  const spill = docs.find((d) => d !== docs[0] && SCORE_METRIC.itm in d)!;
  assert.equal(spill[METRIC.PairsIn], undefined);
});

test('ValueCounter rounds continuous values to significant digits', () => {
  const c = new ValueCounter(2);
  c.add(1234);
  c.add(1249);
  c.add(0.0123);
  const [d] = c.distributions();
  assert.deepEqual(d!.Values, [0.012, 1200]);
  assert.deepEqual(d!.Counts, [1, 2]);
  assert.equal(d!.Count, 3);
});

test('Prometheus exposition over HTTP: counters, reasons, score histogram, info gauge', async () => {
  const m = new WorkerMetrics({ emit: null, processMetrics: false });
  m.observe(outcome('a', 'accept', { itm: 80 }));
  m.observe(outcome('b', 'reject', { itm: 12 }, [below('itm', 12)]));
  m.observe(outcome('c', 'reject', {}, [{ code: 'invalid_record', message: 'no caption' }]));
  m.observeStage('fetch', 250);
  m.observeBatchSize('scorer', 16);
  m.setQueueDepth('intake', 7);
  m.setExecutionProvider('webgpu', { name: 'm', revision: 'r' });
  const server = createServer(m.metricsHandler());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const { port } = server.address() as AddressInfo;
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const body = await res.text();
    const value = (line: string) => {
      const hit = body.split('\n').find((l) => l.startsWith(line + ' '));
      assert.ok(hit, `missing ${line}`);
      return Number(hit.slice(line.length + 1));
    };
    assert.equal(value('mlmf_pairs_in_total'), 3);
    assert.equal(value('mlmf_pairs_accepted_total'), 1);
    assert.equal(value('mlmf_pairs_rejected_total'), 2);
    assert.equal(value('mlmf_rejects_by_reason_total{reason="below_threshold"}'), 1);
    assert.equal(value('mlmf_rejects_by_reason_total{reason="invalid_record"}'), 1);
    assert.equal(value('mlmf_score_bucket{le="20",metric="itm",decision="reject"}'), 1);
    assert.equal(value('mlmf_score_bucket{le="70",metric="itm",decision="accept"}'), 0);
    assert.equal(value('mlmf_score_bucket{le="80",metric="itm",decision="accept"}'), 1);
    assert.equal(value('mlmf_stage_duration_seconds_sum{stage="fetch"}'), 0.25);
    assert.equal(value('mlmf_batch_size_count{kind="scorer"}'), 1);
    assert.equal(value('mlmf_queue_depth{queue="intake"}'), 7);
    assert.equal(value('mlmf_execution_provider_info{provider="webgpu",model="m",revision="r"}'), 1);
    const post = await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' });
    assert.equal(post.status, 405);
  } finally {
    server.close();
    m.close();
  }
});
