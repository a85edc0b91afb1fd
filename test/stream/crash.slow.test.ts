/**
 * Crash test (slow: about a minute; runs with MLMF_SLOW=1): the worker process is killed with SIGKILL mid-stream
 * several times and restarted; then
 *  - Kafka: every input id appears EXACTLY once across the curated shards and the audit topic (read_committed):
 *    no loss, no duplicate in the bucket or on the topic;
 *  - SQS: every id at least once, duplicates detectable by id (the same id in two places is reported, not hidden).
 * Needs the services from scripts/services.sh. FastScorer (helpers.ts) stands in for the model.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as pause } from 'node:timers/promises';
import type { S3Client } from '@aws-sdk/client-s3';
import { CreateQueueCommand, SendMessageBatchCommand, SQSClient } from '@aws-sdk/client-sqs';
import type { Admin, Kafka } from 'kafkajs';
import {
  BROKERS,
  CREDENTIALS,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  curatedIds,
  makeRecords,
  needServices,
  produce,
  queueEmpty,
  readTopic,
  tally,
  uniq,
  useServiceClients,
} from './helpers.ts';
import { waitFor } from '../helpers/poll.ts';
import { WorkerProcess } from './worker-driver.ts';

const skip = process.env.MLMF_SLOW === '1' ? await needServices('kafka', 's3', 'sqs') : 'slow suite: set MLMF_SLOW=1';
const KILLS = Number(process.env.MLMF_CRASH_KILLS ?? 4);

describe('worker crash (kill -9) and restart', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  let s3: S3Client;
  useServiceClients((c) => ({ kafka, admin, s3 } = c));

  it('Kafka: every id exactly once across curated shards and the audit topic', async () => {
    const t = uniq('crash');
    const audit = `${t}-audit`;
    const bucket = uniq('curated');
    const groupId = `${t}-group`;
    await createTopics(admin, [{ topic: t, partitions: 3 }, { topic: audit }]);
    await createBucket(s3, bucket);
    const records = await makeRecords(t, 1500);
    await produce(kafka, t, records, 3);
    const env = {
      MLMF_SOURCE: 'kafka',
      MLMF_S3_ENDPOINT: S3_ENDPOINT,
      MLMF_BROKERS: BROKERS,
      MLMF_SOURCE_TOPIC: t,
      MLMF_GROUP_ID: groupId,
      MLMF_BUCKET: bucket,
      MLMF_AUDIT_TOPIC: audit,
      MLMF_TRANSACTIONAL_ID_PREFIX: `${t}-tx`,
      MLMF_SESSION_TIMEOUT_MS: '6000',
      MLMF_SOURCE_BATCH: '25',
      MLMF_FLUSH_MS: '150',
      MLMF_THRESHOLDS: 'itm>=50',
      MLMF_TEST_SCORER_DELAY_MS: '15',
    };
    const progress: number[] = [];
    for (let k = 0; k < KILLS; k++) {
      const w = new WorkerProcess(env);
      await w.waitLog(/joined consumer group/);
      // Mid-stream: once this worker has committed (after taking over its partitions' transactional ids), at a
      // random point of what follows.
      const before = progress[progress.length - 1] ?? 0;
      await waitFor('the worker committing', async () => (await committedTotal(admin, groupId, t)) > before, 60_000);
      await pause(Math.floor(Math.random() * 1200));
      await w.kill9();
      progress.push(await committedTotal(admin, groupId, t));
    }
    const last = new WorkerProcess(env);
    try {
      await waitFor('all committed', async () => (await committedTotal(admin, groupId, t)) === records.length, 120_000);
    } catch (err) {
      await last.kill9();
      throw err;
    }
    assert.equal(await last.stop(), 0, `graceful drain exits 0; ${last.tail(5)}`);
    assert.ok(
      progress[progress.length - 1]! < records.length,
      `the kills hit mid-stream (committed after each: ${progress})`,
    );

    const { ids } = await curatedIds(s3, bucket);
    const dupes = [...tally(ids)].filter(([, n]) => n > 1);
    assert.deepEqual(dupes, [], 'no sample twice in the bucket');
    const accepts = records.filter((r) => /score=90/.test(r.caption)).map((r) => r.id);
    assert.deepEqual(new Set(ids), new Set(accepts), 'every accept in the bucket');
    const rejects = records.length - accepts.length;
    const events = await readTopic(kafka, audit, (m) => m.length >= rejects + 1, 10_000);
    const auditIds = events.map((e) => e.key);
    assert.deepEqual(
      [...tally(auditIds)].filter(([, n]) => n > 1),
      [],
      'no event twice on the audit topic',
    );
    assert.equal(events.length, rejects, 'every reject on the audit topic, once');
    const all = tally([...ids, ...auditIds]);
    assert.equal(all.size, records.length);
    assert.ok(
      [...all.values()].every((n) => n === 1),
      'exactly once across curated + audit',
    );
    console.log(`# kafka crash: ${KILLS} kills, committed after each: ${progress.join(', ')} of ${records.length}`);
  });

  it('SQS: every id at least once, duplicates detectable by id', async () => {
    const name = uniq('crashq');
    const audit = `${name}-audit`;
    const bucket = uniq('curated');
    await createTopics(admin, [{ topic: audit }]);
    await createBucket(s3, bucket);
    const sqs = new SQSClient({ region: REGION, credentials: CREDENTIALS, endpoint: SQS_ENDPOINT });
    const url = (await sqs.send(new CreateQueueCommand({ QueueName: name }))).QueueUrl!;
    const records = await makeRecords(name, 600);
    for (let i = 0; i < records.length; i += 10) {
      await sqs.send(
        new SendMessageBatchCommand({
          QueueUrl: url,
          Entries: records.slice(i, i + 10).map((r, j) => ({ Id: String(j), MessageBody: JSON.stringify(r) })),
        }),
      );
    }
    const env = {
      MLMF_SOURCE: 'sqs',
      MLMF_S3_ENDPOINT: S3_ENDPOINT,
      MLMF_SQS_QUEUE_URL: url,
      MLMF_SQS_ENDPOINT: SQS_ENDPOINT,
      MLMF_BROKERS: BROKERS,
      MLMF_BUCKET: bucket,
      MLMF_AUDIT_TOPIC: audit,
      MLMF_SQS_VISIBILITY_S: '3',
      MLMF_FLUSH_MS: '150',
      MLMF_THRESHOLDS: 'itm>=50',
      MLMF_TEST_SCORER_DELAY_MS: '15',
    };
    for (let k = 0; k < KILLS; k++) {
      const w = new WorkerProcess(env);
      await w.waitLog(/worker consuming/);
      await pause(500 + Math.floor(Math.random() * 1000));
      await w.kill9();
    }
    const last = new WorkerProcess(env);
    try {
      await waitFor('queue drained', () => queueEmpty(sqs, url), 120_000);
    } catch (err) {
      await last.kill9();
      throw err;
    }
    assert.equal(await last.stop(), 0, last.tail(5));
    sqs.destroy();
    const { ids } = await curatedIds(s3, bucket);
    const accepts = records.filter((r) => /score=90/.test(r.caption)).map((r) => r.id);
    const rejects = records.length - accepts.length;
    const events = await readTopic(kafka, audit, (m) => new Set(m.map((e) => e.key)).size >= rejects, 15_000);
    const seen = tally([...ids, ...events.map((e) => e.key)]);
    const missing = records.filter((r) => !seen.has(r.id)).map((r) => r.id);
    assert.deepEqual(missing, [], 'no record lost');
    assert.deepEqual(new Set(ids.filter((id) => accepts.includes(id))), new Set(accepts));
    const duplicates = [...seen].filter(([, n]) => n > 1).length;
    console.log(`# sqs crash: ${KILLS} kills, ${duplicates} ids delivered more than once (detectable by id)`);
  });
});
