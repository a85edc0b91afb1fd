/**
 * Kafka -> worker -> curated bucket + audit/accepted/DLQ topics, against the local services
 * (bash scripts/services.sh up). Scores come from FastScorer (see helpers.ts); images go through the real intake.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Admin, Kafka } from 'kafkajs';
import type { S3Client } from '@aws-sdk/client-s3';
import { runWorker } from '../../lib/worker/run.ts';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import {
  BROKERS,
  FastScorer,
  S3_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  curatedIds,
  getJson,
  listAll,
  makeRecords,
  needServices,
  produce,
  readTopic,
  tally,
  uniq,
  useServiceClients,
} from './helpers.ts';
import { Logger, silentLogger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = await needServices('kafka', 's3');

/** The worker settings every test here shares: topic `t` in, curated bucket, audit topic `${t}-audit`, FastScorer. */
const workerConfig = (t: string, bucket: string, extra: Partial<Parameters<typeof runWorker>[0]> = {}) => ({
  source: 'kafka' as const,
  brokers: [BROKERS],
  sourceTopic: t,
  groupId: `${t}-group`,
  bucket,
  prefix: 'curated/',
  auditTopic: `${t}-audit`,
  s3Endpoint: S3_ENDPOINT,
  healthPort: 0,
  transactionalIdPrefix: `${t}-tx`,
  sourceBatch: 20,
  idleFlushMs: 200,
  thresholds: 'itm>=50',
  scorer: new FastScorer(8),
  ...extra,
});

describe('Kafka source -> S3 curated + audit topic', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  let s3: S3Client;
  useServiceClients((c) => ({ kafka, admin, s3 } = c));

  it('stores every accept once in shards, every reject once on the audit topic, poison to the DLQ, commits all', async () => {
    const t = uniq('in');
    const audit = `${t}-audit`;
    const accepted = `${t}-accepted`;
    const dlq = `${t}-dlq`;
    const bucket = uniq('curated');
    const groupId = `${t}-group`;
    await createTopics(admin, [{ topic: t, partitions: 2 }, { topic: audit }, { topic: accepted }, { topic: dlq }]);
    await createBucket(s3, bucket);
    const records: (string | object)[] = await makeRecords(t, 120);
    // A poison pair (the scorer throws on it), an invalid record and a non-JSON one, mid-stream.
    records.splice(30, 0, { ...(records[0] as object), id: `${t}-poison`, caption: 'poison pill' });
    records.splice(61, 0, '{"caption": 42}');
    records.splice(90, 0, 'not json at all');
    await produce(kafka, t, records, 2);

    const stop = new AbortController();
    const logs: { level: string; msg: string }[] = [];
    const run = runWorker(workerConfig(t, bucket, { acceptedTopic: accepted, dlqTopic: dlq }), {
      signal: stop.signal,
      logger: new Logger(({ level, msg }) => logs.push({ level, msg })),
      metricsOut: null,
    });
    try {
      await waitFor(
        'all offsets committed',
        async () => (await committedTotal(admin, groupId, t)) === records.length,
        60_000,
      );
    } finally {
      stop.abort();
    }
    const result = await run;
    assert.equal(result.stats.records, records.length);

    const { ids, shards } = await curatedIds(s3, bucket);
    const want = (records as { id?: string }[]).filter(
      (r, i) =>
        typeof r === 'object' && r.id && /-(\d+)$/.test(r.id) && Number(/-(\d+)$/.exec(r.id)![1]) % 2 === 0 && i >= 0,
    );
    assert.deepEqual(
      [...tally(ids).values()].filter((n) => n > 1),
      [],
      'no sample twice in the bucket',
    );
    assert.deepEqual(new Set(ids), new Set(want.map((r) => r.id)));
    for (const key of shards) {
      assert.match(key, new RegExp(`^curated/${t}/partition=[01]/${t}\\+[01]\\+\\d{20}-\\d{20}\\.tar$`));
      const index = await getJson(s3, bucket, key.replace(/\.tar$/, '.index.json'));
      assert.equal((index.samples as unknown[]).length, index.count);
    }

    const expectRejects = records.length - want.length; // odd ids + poison + 2 invalid
    const events = await readTopic(kafka, audit, (m) => m.length >= expectRejects, 15_000);
    assert.equal(events.length, expectRejects, 'every reject once on the audit topic');
    assert.equal(new Set(events.map((e) => e.key)).size, expectRejects);
    for (const e of events) {
      assert.equal(e.value.decision, 'reject');
      assert.equal((e.value.source as { kind: string }).kind, 'kafka');
      assert.equal(e.key, e.value.id);
    }
    const poison = events.find((e) => e.key === `${t}-poison`);
    assert.equal((poison?.value.reasons as { code: string }[])[0]?.code, 'scoring_failed');

    const letters = await readTopic(kafka, dlq, (m) => m.length >= 1, 10_000);
    assert.equal(letters.length, 1);
    assert.equal(letters[0]!.key, `${t}-poison`);
    assert.equal(letters[0]!.value.code, 'scoring_failed');
    assert.match(String(letters[0]!.value.raw), /poison pill/);

    const acc = await readTopic(kafka, accepted, (m) => m.length >= want.length, 15_000);
    assert.equal(acc.length, want.length);
    for (const a of acc) {
      const loc = a.value.location as { bucket: string; shard: string; sample: string };
      assert.equal(loc.bucket, bucket);
      assert.ok(shards.includes(loc.shard), `accepted location ${loc.shard} is a shard in the bucket`);
    }
    assert.ok((await listAll(s3, bucket)).every((o) => o.Key!.startsWith('curated/')));
  });

  it("an audit event over the topic's max.message.bytes is trimmed, not stalled: committed, nothing lost", async () => {
    const t = uniq('big');
    const audit = `${t}-audit`;
    const bucket = uniq('curated');
    const groupId = `${t}-group`;
    await createTopics(admin, [{ topic: t, partitions: 1 }]);
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        {
          topic: audit,
          numPartitions: 1,
          replicationFactor: 1,
          configEntries: [{ name: 'max.message.bytes', value: '2000' }],
        },
      ],
    });
    await createBucket(s3, bucket);
    const [base] = await makeRecords(t, 1);
    const long = `score=10 ${'a long caption '.repeat(180)}`; // ~2.7 KB: the event cannot fit 2000 bytes whole
    const records = [{ ...(base as object), id: `${t}-long`, caption: long }, ...(await makeRecords(`${t}-after`, 2))];
    await produce(kafka, t, records, 1);
    const stop = new AbortController();
    const run = runWorker(workerConfig(t, bucket), { signal: stop.signal, logger: silentLogger, metricsOut: null });
    try {
      await waitFor('all offsets committed', async () => (await committedTotal(admin, groupId, t)) === 3, 30_000);
    } finally {
      stop.abort();
    }
    await run;
    const events = await readTopic(kafka, audit, (m) => m.length >= 2, 15_000);
    const big = events.find((e) => e.key === `${t}-long`);
    assert.ok(big, 'the long reject is on the audit topic');
    assert.deepEqual(big.value.trimmed, { caption_chars: long.length });
    assert.ok(long.startsWith(String(big.value.caption)) && String(big.value.caption).length < long.length);
    assert.equal((big.value.reasons as { code: string }[])[0]?.code, 'below_threshold');
  });

  it('the running worker emits the metrics the dashboard reads (its own EMF output, not a test calling setters)', async () => {
    const t = uniq('emf');
    const bucket = uniq('curated');
    await createTopics(admin, [{ topic: t, partitions: 1 }, { topic: `${t}-audit` }]);
    await createBucket(s3, bucket);
    await produce(kafka, t, await makeRecords(t, 6), 1);
    const lines: string[] = [];
    const stop = new AbortController();
    const run = runWorker(
      workerConfig(t, bucket, { pipeline: 'emf-check', metricsNamespace: 'MlmFilterCheck', backlogSampleMs: 200 }),
      { signal: stop.signal, logger: silentLogger, metricsOut: (l) => lines.push(l) },
    );
    const names = () => {
      const out = new Set<string>();
      for (const line of lines) {
        const doc = JSON.parse(line) as {
          _aws?: { CloudWatchMetrics: { Namespace: string; Metrics: { Name: string }[] }[] };
        };
        for (const d of doc._aws?.CloudWatchMetrics ?? []) {
          assert.equal(d.Namespace, 'MlmFilterCheck');
          for (const x of d.Metrics) out.add(x.Name);
        }
      }
      return out;
    };
    // What any healthy run on a Kafka source must report (GPU utilisation needs a GPU; error counts need errors).
    const wanted = [
      METRIC.PairsIn,
      METRIC.PairsAccepted,
      METRIC.PairsRejected,
      METRIC.ScoreITM,
      METRIC.BatchLatencyMs,
      METRIC.KafkaConsumerLag,
    ];
    try {
      await waitFor('all offsets committed', async () => (await committedTotal(admin, `${t}-group`, t)) === 6, 30_000);
      await waitFor('the metrics emitted', async () => wanted.every((n) => names().has(n)), 15_000).catch(
        () => undefined,
      );
    } finally {
      stop.abort();
    }
    await run;
    const emitted = names();
    assert.deepEqual(
      wanted.filter((n) => !emitted.has(n)),
      [],
      `emitted: ${[...emitted].join(', ')}`,
    );
    const known = new Set<string>(Object.values(METRIC));
    assert.deepEqual(
      [...emitted].filter((n) => !known.has(n)),
      [],
      'every emitted name is in the contract',
    );
  });

  it('a poison pair alone at low traffic ends as scoring_failed and the records after it flow', async () => {
    const t = uniq('lone');
    const audit = `${t}-audit`;
    const bucket = uniq('curated');
    const groupId = `${t}-group`;
    await createTopics(admin, [{ topic: t, partitions: 1 }, { topic: audit }]);
    await createBucket(s3, bucket);
    const [good] = await makeRecords(t, 1);
    await produce(kafka, t, [{ ...(good as object), id: `${t}-poison`, caption: 'poison pill' }], 1);
    const stop = new AbortController();
    const run = runWorker(workerConfig(t, bucket), { signal: stop.signal, logger: silentLogger, metricsOut: null });
    try {
      // Alone in its scorer batch: once it was taken for a broken scorer and the worker crash-looped on it.
      await waitFor('the poison record committed', async () => (await committedTotal(admin, groupId, t)) === 1, 30_000);
      const later = await makeRecords(`${t}-later`, 3);
      await produce(kafka, t, later, 1);
      await waitFor('the later records committed', async () => (await committedTotal(admin, groupId, t)) === 4, 30_000);
    } finally {
      stop.abort();
    }
    const result = await run;
    assert.equal(result.stats.records, 4);
    const events = await readTopic(kafka, audit, (m) => m.length >= 2, 15_000);
    const poison = events.find((e) => e.key === `${t}-poison`);
    assert.equal((poison?.value.reasons as { code: string }[])[0]?.code, 'scoring_failed');
  });
});
