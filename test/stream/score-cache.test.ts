/**
 * The fleet's score cache through the worker process (real Kafka, the local DynamoDB and S3 servers; FastScorer stands
 * in for the model): a second pass over the same records is all hits and never reaches the scorer, a model revision
 * change is all misses, and a worker killed (kill -9) after it wrote cache entries but before it could commit loses
 * nothing and doubles nothing: its successor replays the uncommitted records as cache hits, each written once. With
 * MLMF_DEDUPE_IMAGES=exact over the same table (every record here carries one image): one pair is kept, every other
 * record is rejected (a later accepted one as duplicate_image naming it), a second pass keeps the same pair (never its
 * own duplicate), and a kill -9 after the image was recorded but before the commit keeps the recorded pair.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Admin, Kafka } from 'kafkajs';
import { createCacheTable, DYNAMODB_ENDPOINT, dynamoClient, itemsOf } from '../cache/dynamo-helpers.ts';
import { waitFor } from '../helpers/poll.ts';
import {
  BROKERS,
  S3_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  curatedIds,
  makeRecords,
  needServices,
  produce,
  readTopicToEnd,
  tally,
  uniq,
  useServiceClients,
} from './helpers.ts';
import { WorkerProcess } from './worker-driver.ts';

const skip = await needServices('kafka', 's3', 'dynamodb');

interface Stopped {
  records: number;
  scorerBatches: number;
  scoreCache?: { hits: number; misses: number };
  imageDedupe?: { exact: number; near: number };
}

/** The reason codes and first occurrence of each audit event, by pair id. */
async function auditById(kafka: Kafka, topic: string) {
  const byId = new Map<string, { codes: string[]; firstIds: unknown[] }[]>();
  for (const m of await readTopicToEnd(kafka, topic)) {
    const reasons = (m.value.reasons ?? []) as { code: string; detail?: { first?: { id?: unknown } } }[];
    const seen = byId.get(m.key) ?? [];
    seen.push({ codes: reasons.map((r) => r.code), firstIds: reasons.map((r) => r.detail?.first?.id) });
    byId.set(m.key, seen);
  }
  return byId;
}

/** The worker's own summary: its `worker stopped` log line. */
function stoppedLine(w: WorkerProcess): Stopped {
  const line = w.lines.find((l) => l.includes('"msg":"worker stopped"'));
  assert.ok(line, `no "worker stopped" line\n${w.tail()}`);
  return JSON.parse(line) as Stopped;
}

describe('the worker with the fleet score cache (DynamoDB)', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  let s3: S3Client;
  let dynamo: DynamoDBClient;
  useServiceClients((c) => {
    ({ kafka, admin, s3 } = c);
    dynamo ??= dynamoClient();
  });
  after(() => dynamo?.destroy());

  const baseEnv = (topic: string, table: string) => ({
    MLMF_SOURCE: 'kafka',
    MLMF_BROKERS: BROKERS,
    MLMF_SOURCE_TOPIC: topic,
    MLMF_AUDIT_TOPIC: `${topic}-audit`,
    MLMF_S3_ENDPOINT: S3_ENDPOINT,
    MLMF_DYNAMODB_ENDPOINT: DYNAMODB_ENDPOINT,
    MLMF_SCORE_CACHE_TABLE: table,
    MLMF_TRANSACTIONAL_ID_PREFIX: `${topic}-tx`,
    MLMF_SOURCE_BATCH: '10',
    // The killed worker's partitions move to its successor once its session times out.
    MLMF_SESSION_TIMEOUT_MS: '6000',
    MLMF_THRESHOLDS: 'itm>=50',
  });

  /** Waits until `w` has committed all `n` records of `topic`, then stops it (exit 0); killed on any failure. */
  async function runToEnd(w: WorkerProcess, groupId: string, topic: string, n: number): Promise<WorkerProcess> {
    try {
      await waitFor(
        `${w.name} committing every record`,
        async () => {
          w.assertRunning();
          return (await committedTotal(admin, groupId, topic)) === n;
        },
        120_000,
      );
      assert.equal(await w.stop(), 0, w.tail());
    } finally {
      await w.kill9();
    }
    return w;
  }

  /** Runs one worker over the whole topic in a fresh group and bucket; returns its summary and the curated ids. */
  async function pass(topic: string, table: string, n: number, extra: Record<string, string> = {}) {
    const groupId = uniq(`${topic}-g`);
    const bucket = uniq('cache-curated');
    await createBucket(s3, bucket);
    const env = { ...baseEnv(topic, table), MLMF_GROUP_ID: groupId, MLMF_BUCKET: bucket, ...extra };
    const w = await runToEnd(new WorkerProcess(env), groupId, topic, n);
    return { stopped: stoppedLine(w), curated: (await curatedIds(s3, bucket)).ids.sort(), bucket };
  }

  it('a second pass is all hits with the scorer untouched; a model revision change is all misses', async () => {
    const topic = uniq('cache-pass');
    await createTopics(admin, [{ topic }, { topic: `${topic}-audit` }]);
    const table = await createCacheTable(dynamo);
    const n = 30;
    await produce(kafka, topic, await makeRecords(topic, n));

    const first = await pass(topic, table, n);
    assert.deepEqual(first.stopped.scoreCache, { hits: 0, misses: n });
    assert.ok(first.stopped.scorerBatches > 0);
    assert.equal((await itemsOf(dynamo, table, 'score#')).length, n);
    const accepted = Array.from({ length: n / 2 }, (_, i) => `${topic}-${2 * i}`).sort();
    assert.deepEqual(first.curated, accepted);

    const second = await pass(topic, table, n);
    assert.deepEqual(second.stopped.scoreCache, { hits: n, misses: 0 });
    assert.equal(second.stopped.scorerBatches, 0, 'the scorer was not called');
    assert.deepEqual(second.curated, accepted, 'the cached scores decide as the scorer did');

    const revised = await pass(topic, table, n, { MLMF_TEST_SCORER_REVISION: 'another-revision' });
    assert.deepEqual(revised.stopped.scoreCache, { hits: 0, misses: n });
    assert.ok(revised.stopped.scorerBatches > 0);
    assert.equal((await itemsOf(dynamo, table, 'score#')).length, 2 * n, 'new keys beside the old ones');
  });

  it('kill -9 after cache writes and before the commit: replayed as hits, every record exactly once', async (t) => {
    const topic = uniq('cache-crash');
    const audit = `${topic}-audit`;
    await createTopics(admin, [{ topic }, { topic: audit }]);
    const table = await createCacheTable(dynamo);
    const n = 40;
    await produce(kafka, topic, await makeRecords(topic, n));
    const groupId = `${topic}-g`;
    // The curated bucket does not exist yet: the sink retries its upload, so no batch can commit.
    const bucket = uniq('cache-late');
    const env = { ...baseEnv(topic, table), MLMF_GROUP_ID: groupId, MLMF_BUCKET: bucket };

    const doomed = new WorkerProcess(env, { name: 'doomed' });
    try {
      await waitFor(
        'cache entries written',
        async () => {
          doomed.assertRunning();
          return (await itemsOf(dynamo, table, 'score#')).length >= 10;
        },
        120_000,
      );
    } finally {
      await doomed.kill9();
    }
    assert.equal(await committedTotal(admin, groupId, topic), 0, 'nothing was committed');
    const cachedAtKill = (await itemsOf(dynamo, table, 'score#')).length;
    assert.ok(cachedAtKill >= 10 && cachedAtKill <= n);
    t.diagnostic(`${cachedAtKill} of ${n} pairs cached, none committed, when the worker was killed`);

    await createBucket(s3, bucket);
    const next = await runToEnd(new WorkerProcess(env, { name: 'next' }), groupId, topic, n);
    const stopped = stoppedLine(next);
    assert.deepEqual(stopped.scoreCache, { hits: cachedAtKill, misses: n - cachedAtKill });
    assert.equal(stopped.records, n);

    // Exactly once: each accepted id in one curated shard once, each rejected id on the audit topic once.
    const curated = tally((await curatedIds(s3, bucket)).ids);
    const rejected = tally((await readTopicToEnd(kafka, audit)).map((m) => m.key));
    for (let i = 0; i < n; i++) {
      const id = `${topic}-${i}`;
      const [inBucket, onTopic] = [curated.get(id) ?? 0, rejected.get(id) ?? 0];
      assert.deepEqual(
        [inBucket, onTopic],
        i % 2 === 0 ? [1, 0] : [0, 1],
        `${id}: bucket ${inBucket}, audit ${onTopic}`,
      );
    }
    assert.equal(curated.size + rejected.size, n);
  });

  it('MLMF_DEDUPE_IMAGES=exact: one pair kept per image across passes; the kept pair is never its own duplicate', async () => {
    const topic = uniq('dedupe-pass');
    const audit = `${topic}-audit`;
    await createTopics(admin, [{ topic }, { topic: audit }]);
    const table = await createCacheTable(dynamo);
    const n = 20;
    await produce(kafka, topic, await makeRecords(topic, n));
    const dedupe = { MLMF_DEDUPE_IMAGES: 'exact' };

    const first = await pass(topic, table, n, dedupe);
    assert.equal(first.curated.length, 1, 'one pair kept for the one image');
    const kept = first.curated[0]!;
    assert.equal(Number(kept.slice(topic.length + 1)) % 2, 0, 'the kept pair is one the policy accepts');
    const images = await itemsOf(dynamo, table, 'image#');
    assert.equal(images.length, 1);
    assert.equal(JSON.parse(images[0]!.entry!.S!).first.id, kept, 'the table names the kept pair first');
    const rejected = await auditById(kafka, audit);
    assert.equal(rejected.size, n - 1, 'every other record on the audit topic');
    for (const [id, events] of rejected) {
      assert.equal(events.length, 1, `${id} once`);
      const { codes, firstIds } = events[0]!;
      // An accepted caption can only lose as a duplicate; a rejected one may be caught before it is scored too.
      if (Number(id.slice(topic.length + 1)) % 2 === 0) assert.deepEqual(codes, ['duplicate_image'], id);
      if (codes.includes('duplicate_image')) assert.deepEqual(firstIds, [kept], id);
    }
    assert.ok((first.stopped.imageDedupe?.exact ?? 0) >= n / 2 - 1);

    const second = await pass(topic, table, n, dedupe);
    assert.deepEqual(second.curated, [kept], 'the same pair kept again: a replay is not its own duplicate');
  });

  it('MLMF_DEDUPE_IMAGES=exact: kill -9 after the image was recorded and before the commit keeps that pair', async () => {
    const topic = uniq('dedupe-crash');
    const audit = `${topic}-audit`;
    await createTopics(admin, [{ topic }, { topic: audit }]);
    const table = await createCacheTable(dynamo);
    const n = 20;
    await produce(kafka, topic, await makeRecords(topic, n));
    const groupId = `${topic}-g`;
    // No curated bucket yet: the accepted pair's upload is retried, so nothing commits before the kill.
    const bucket = uniq('dedupe-late');
    const env = { ...baseEnv(topic, table), MLMF_GROUP_ID: groupId, MLMF_BUCKET: bucket, MLMF_DEDUPE_IMAGES: 'exact' };
    const doomed = new WorkerProcess(env, { name: 'doomed' });
    try {
      await waitFor(
        'the image recorded',
        async () => {
          doomed.assertRunning();
          return (await itemsOf(dynamo, table, 'image#')).length === 1;
        },
        120_000,
      );
    } finally {
      await doomed.kill9();
    }
    assert.equal(await committedTotal(admin, groupId, topic), 0, 'nothing was committed');
    const recorded = JSON.parse((await itemsOf(dynamo, table, 'image#'))[0]!.entry!.S!).first.id as string;

    await createBucket(s3, bucket);
    await runToEnd(new WorkerProcess(env, { name: 'next' }), groupId, topic, n);
    const curated = tally((await curatedIds(s3, bucket)).ids);
    assert.deepEqual(
      [...curated],
      [[recorded, 1]],
      'the recorded pair is kept, once, not dropped as its own duplicate',
    );
    const rejected = await auditById(kafka, audit);
    assert.equal(rejected.size, n - 1);
    for (const [id, events] of rejected) assert.equal(events.length, 1, `${id} once on the audit topic`);
    assert.ok(!rejected.has(recorded));
  });
});
