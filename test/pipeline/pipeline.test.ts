import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runPipeline } from '../../lib/pipeline/index.ts';
import { Policy } from '../../lib/policy/index.ts';
import { LocalCuratedSink } from '../../lib/sinks/local-curated.ts';
import { FilterError, type Outcome, type Sink } from '../../lib/types.ts';
import { ArraySource, CaptionScorer, FakeIntake, jsonRecord } from '../helpers/doubles.ts';

const img = { base64: Buffer.from('x').toString('base64') };

class MemorySink implements Sink {
  readonly name = 'memory';
  readonly durability = 'durable' as const;
  outcomes: Outcome[] = [];
  failuresLeft = 0;
  writes = 0;
  async write(outcomes: readonly Outcome[]) {
    this.writes++;
    if (this.failuresLeft-- > 0) throw new Error('sink down');
    this.outcomes.push(...outcomes);
  }
  async flush() {}
  async close() {}
}

test('every record ends as exactly one outcome, acked in order', async () => {
  const records = [
    jsonRecord({ id: 'a', url: 'https://ok.test/a.jpg', caption: 'score=90' }),
    jsonRecord({ id: 'b', url: 'https://ok.test/b.jpg', caption: 'score=10' }),
    jsonRecord('{not json'),
    jsonRecord({ id: 'd', url: 'https://bad.test/d.jpg', caption: 'score=90' }),
    jsonRecord({ id: 'e', image: img, caption: 'score=70' }),
    jsonRecord({ id: 'a', url: 'https://ok.test/a.jpg', caption: 'score=90' }),
    jsonRecord({ id: 'g', url: 'ftp://x/y', caption: 'c' }),
  ];
  const source = new ArraySource(records, 2);
  const sink = new MemorySink();
  const stats = await runPipeline({
    source,
    intake: new FakeIntake(),
    scorer: new CaptionScorer(4),
    policy: new Policy(),
    sinks: [sink],
  });
  assert.equal(stats.records, records.length);
  assert.equal(stats.accepted + stats.rejected, records.length);
  assert.deepEqual(source.acked, [0, 1, 2, 3]);
  const byId = new Map(sink.outcomes.map((o) => [o.id, o]));
  assert.equal(sink.outcomes.length, 7);
  assert.equal(byId.get('b')?.reasons[0]?.code, 'below_threshold');
  assert.deepEqual(
    byId.get('b')?.reasons.map((r) => r.detail?.metric),
    ['itm', 'odf'],
  );
  assert.equal(byId.get('d')?.reasons[0]?.code, 'fetch_failed');
  assert.equal(byId.get('g')?.reasons[0]?.code, 'invalid_record');
  assert.equal(
    sink.outcomes
      .filter((o) => o.id === 'a')
      .map((o) => o.decision)
      .join(),
    'accept,reject',
  );
  assert.equal(sink.outcomes.filter((o) => o.reasons[0]?.code === 'duplicate').length, 1);
  assert.equal(sink.outcomes[2]?.reasons[0]?.code, 'invalid_record');
  assert.equal(byId.get('e')?.decision, 'accept');
  assert.equal(byId.get('e')?.image?.ext, 'jpg');
});

test('scorer batches fill up to maxBatch', async () => {
  const records = Array.from({ length: 20 }, (_, i) => jsonRecord({ id: `r${i}`, image: img, caption: `score=${i}` }));
  const scorer = new CaptionScorer(8);
  await runPipeline({
    source: new ArraySource(records, 20),
    intake: new FakeIntake(),
    scorer,
    policy: new Policy(),
    sinks: [],
  });
  assert.deepEqual(
    scorer.calls.reduce((a, b) => a + b, 0),
    20,
  );
  assert.ok(Math.max(...scorer.calls) === 8, `batches were ${scorer.calls}`);
});

test('a poison pair is rejected alone; its batch-mates are scored', async () => {
  const records = [
    jsonRecord({ id: 'p', image: img, caption: 'fail me' }),
    jsonRecord({ id: 'q', image: img, caption: 'score=80' }),
  ];
  const sink = new MemorySink();
  await runPipeline({
    source: new ArraySource(records, 2),
    intake: new FakeIntake(),
    scorer: new CaptionScorer(2),
    policy: new Policy(),
    sinks: [sink],
  });
  const byId = new Map(sink.outcomes.map((o) => [o.id, o]));
  assert.equal(byId.get('p')?.reasons[0]?.code, 'scoring_failed');
  assert.equal(byId.get('q')?.decision, 'accept');
});

test('a broken scorer stops the run without acking anything', async () => {
  const records = Array.from({ length: 6 }, (_, i) => jsonRecord({ id: `r${i}`, image: img, caption: `x${i}` }));
  const scorer = new CaptionScorer(3);
  scorer.broken = true;
  const source = new ArraySource(records, 3);
  await assert.rejects(
    runPipeline({ source, intake: new FakeIntake(), scorer, policy: new Policy(), sinks: [] }),
    /device lost/,
  );
  assert.deepEqual(source.acked, []);
});

test('a failing sink is retried; nothing is acked until it succeeds', async () => {
  const records = Array.from({ length: 4 }, (_, i) => jsonRecord({ id: `r${i}`, image: img, caption: `score=90` }));
  const sink = new MemorySink();
  sink.failuresLeft = 3;
  const source = new ArraySource(records, 2);
  const stats = await runPipeline({
    source,
    intake: new FakeIntake(),
    scorer: new CaptionScorer(2),
    policy: new Policy(),
    sinks: [sink],
    sinkRetryBaseMs: 1,
  });
  assert.equal(stats.records, 4);
  assert.equal(sink.outcomes.length, 4);
  assert.deepEqual(source.acked, [0, 1]);
  assert.ok(sink.writes >= 5);
});

test('a revoked batch is dropped without ack', async () => {
  const records = Array.from({ length: 6 }, (_, i) => jsonRecord({ id: `r${i}`, image: img, caption: `score=90` }));
  const ac = new AbortController();
  const source = new ArraySource(records, 2, (b) => (b === 1 ? ac.signal : undefined));
  const scorer = new CaptionScorer(2, 30);
  const score = scorer.score.bind(scorer);
  // Revoked while its records are being scored, whatever the timing.
  scorer.score = async (b) => {
    if (b.some((x) => x.id === 'r2')) ac.abort();
    return score(b);
  };
  const sink = new MemorySink();
  await runPipeline({ source, intake: new FakeIntake(), scorer, policy: new Policy(), sinks: [sink] });
  assert.ok(!source.acked.includes(1));
  assert.ok(!sink.outcomes.some((o) => o.id === 'r2' || o.id === 'r3'));
});

test('pending records stay bounded behind a slow scorer', async () => {
  const n = 200;
  const records = Array.from({ length: n }, (_, i) => jsonRecord({ id: `r${i}`, image: img, caption: `score=50` }));
  const intake = new FakeIntake();
  let maxAhead = 0;
  const sink = new MemorySink();
  const scorer = new CaptionScorer(4, 2);
  const orig = scorer.score.bind(scorer);
  scorer.score = async (b) => {
    maxAhead = Math.max(maxAhead, intake.prepared - sink.outcomes.length);
    return orig(b);
  };
  const stats = await runPipeline({
    source: new ArraySource(records, 8),
    intake,
    scorer,
    policy: new Policy(),
    sinks: [sink],
    maxPendingRecords: 32,
    maxPreparedImages: 8,
  });
  assert.equal(stats.records, n);
  assert.ok(maxAhead <= 40, `prepared ran ${maxAhead} ahead of the sinks`);
});

test('graceful stop finishes and acks what was admitted', async () => {
  const records = Array.from({ length: 100 }, (_, i) => jsonRecord({ id: `r${i}`, image: img, caption: `score=90` }));
  const ac = new AbortController();
  const source = new ArraySource(records, 5);
  const sink = new MemorySink();
  // Stopped once the first outcomes are written, with most records not yet read.
  const write = sink.write.bind(sink);
  sink.write = async (outcomes) => {
    await write(outcomes);
    ac.abort();
  };
  const stats = await runPipeline({
    source,
    intake: new FakeIntake(),
    scorer: new CaptionScorer(5, 5),
    policy: new Policy(),
    sinks: [sink],
    signal: ac.signal,
    maxPendingRecords: 10,
  });
  assert.ok(stats.records < 100);
  assert.equal(sink.outcomes.length, stats.records);
  assert.equal(source.acked.length * 5, stats.records);
});

test('a sink that makes writes durable per shard fills whole shards (writes overlap, still in order)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mlmf-shards-'));
  try {
    const records = Array.from({ length: 1000 }, (_, i) =>
      jsonRecord({ id: `r${i}`, image: img, caption: `score=90 #${i}` }),
    );
    const curated = await LocalCuratedSink.open({
      dir,
      model: { name: 'test', revision: 'r' },
      samplesPerShard: 100,
      idleFlushMs: 60_000,
    });
    const source = new ArraySource(records, 10);
    const stats = await runPipeline({
      source,
      intake: new FakeIntake(),
      scorer: new CaptionScorer(8),
      policy: new Policy(),
      sinks: [curated],
      maxPendingRecords: 400,
    });
    await curated.close();
    assert.equal(stats.accepted, 1000);
    assert.deepEqual(
      source.acked,
      Array.from({ length: 100 }, (_, i) => i),
    );
    const shards = (await readdir(dir)).filter((n) => n.endsWith('.index.json')).sort();
    const sizes = await Promise.all(
      shards.map(
        async (n) => (JSON.parse(await readFile(join(dir, n), 'utf8')) as { samples: unknown[] }).samples.length,
      ),
    );
    assert.deepEqual(sizes, Array(10).fill(100), 'ten full shards, not one per source batch');
    const keys = (
      await Promise.all(
        shards.map(
          async (n) => (JSON.parse(await readFile(join(dir, n), 'utf8')) as { samples: { id: string }[] }).samples,
        ),
      )
    )
      .flat()
      .map((s) => s.id);
    assert.equal(new Set(keys).size, 1000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a sink without overlappingWrites never has two writes in flight', async () => {
  let inFlight = 0;
  let most = 0;
  const order: string[] = [];
  const sink: Sink = {
    name: 'serial',
    durability: 'durable',
    async write(outcomes) {
      most = Math.max(most, ++inFlight);
      await new Promise((r) => setTimeout(r, 2));
      order.push(...outcomes.map((o) => o.id));
      inFlight--;
    },
    async flush() {},
    async close() {},
  };
  const records = Array.from({ length: 60 }, (_, i) => jsonRecord({ id: `s${i}`, image: img, caption: 'score=90' }));
  await runPipeline({
    source: new ArraySource(records, 4),
    intake: new FakeIntake(),
    scorer: new CaptionScorer(8),
    policy: new Policy(),
    sinks: [sink],
  });
  assert.equal(most, 1);
  assert.equal(order.length, 60);
});

/** A source that yields its records once and then stays open, as a quiet Kafka partition does. */
class IdleSource extends ArraySource {
  override async *batches(signal: AbortSignal) {
    yield* super.batches(signal);
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }
}

test('a fatal error ends the run at once, with no further traffic (a quiet source)', async () => {
  const scorer = new CaptionScorer(4);
  scorer.broken = true;
  const records = ['x1', 'x2', 'x3'].map((id) => jsonRecord({ id, image: img, caption: 'score=90' }));
  const started = Date.now();
  await assert.rejects(
    runPipeline({
      source: new IdleSource(records, 3),
      intake: new FakeIntake(),
      scorer,
      policy: new Policy(),
      sinks: [],
    }),
    /device lost/,
  );
  // Before: the run only noticed the error when the next source batch arrived, i.e. never on a quiet source.
  assert.ok(Date.now() - started < 10_000);
});

test('a sink error that cannot succeed on retry stops the run instead of retrying forever; nothing is acked', async () => {
  const records = ['n1', 'n2'].map((id) => jsonRecord({ id, image: img, caption: 'score=90' }));
  const source = new ArraySource(records, 2);
  let writes = 0;
  const sink: Sink = {
    name: 'too-small-topic',
    durability: 'durable',
    async write() {
      writes++;
      throw new FilterError('message_too_large', 'message for audit is over 1000 bytes');
    },
    async flush() {},
    async close() {},
  };
  await assert.rejects(
    runPipeline({
      source,
      intake: new FakeIntake(),
      scorer: new CaptionScorer(4),
      policy: new Policy(),
      sinks: [sink],
    }),
    { code: 'message_too_large' },
  );
  assert.equal(writes, 1, 'not retried');
  assert.deepEqual(source.acked, []);
});
