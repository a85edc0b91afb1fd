/**
 * A second worker joins the group mid-stream: the first one's in-flight batches are revoked (never committed
 * half-done), partitions move, and every id still ends exactly once across curated shards and the audit topic.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runWorker, type WorkerConfig } from '../../lib/worker/run.ts';
import {
  BROKERS,
  FastScorer,
  S3_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  curatedIds,
  makeRecords,
  needServices,
  produce,
  readTopic,
  s3Client,
  tally,
  uniq,
  openServiceClients,
  closeServiceClients,
} from './helpers.ts';
import { Logger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = await needServices('kafka', 's3');

describe('consumer group rebalance', { skip }, () => {
  it('revokes in-flight work on rebalance and still stores every id exactly once', async () => {
    const clients = await openServiceClients();
    const { kafka, admin, s3 } = clients;
    const t = uniq('rebal');
    const audit = `${t}-audit`;
    const bucket = uniq('curated');
    const groupId = `${t}-group`;
    await createTopics(admin, [{ topic: t, partitions: 4 }, { topic: audit }]);
    await createBucket(s3, bucket);
    const records = await makeRecords(t, 800);
    await produce(kafka, t, records, 4);
    const base: WorkerConfig = {
      source: 'kafka',
      brokers: [BROKERS],
      sourceTopic: t,
      groupId,
      bucket,
      auditTopic: audit,
      s3Endpoint: S3_ENDPOINT,
      healthPort: 0,
      sourceBatch: 20,
      sessionTimeoutMs: 6000,
      thresholds: 'itm>=50',
    };
    const warnings: string[] = [];
    const opts = (stop: AbortController) => ({
      signal: stop.signal,
      logger: new Logger(({ level, msg }) => (level === 'warn' ? warnings.push(msg) : undefined)),
      metricsOut: null,
    });
    const stopA = new AbortController();
    const stopB = new AbortController();
    const a = runWorker({ ...base, scorer: new FastScorer(8, 200) }, opts(stopA));
    let b: ReturnType<typeof runWorker> | undefined;
    try {
      await waitFor('first worker committing', async () => (await committedTotal(admin, groupId, t)) >= 60, 30_000);
      b = runWorker({ ...base, scorer: new FastScorer(8, 200) }, opts(stopB));
      await waitFor('all committed', async () => (await committedTotal(admin, groupId, t)) === records.length, 90_000);
    } finally {
      stopA.abort();
      stopB.abort();
    }
    const [ra, rb] = await Promise.all([a, b!]);
    await closeServiceClients(clients);
    assert.ok(rb.stats.records > 0, 'the second worker took over partitions');
    assert.ok(
      warnings.some((w) => /revoked/.test(w)),
      `the rebalance revoked in-flight batches of the first worker: ${JSON.stringify(warnings)} a=${ra.stats.records} b=${rb.stats.records}`,
    );
    const check = s3Client();
    const { ids } = await curatedIds(check, bucket);
    check.destroy();
    const events = await readTopic(
      kafka,
      audit,
      (m) => new Set([...ids, ...m.map((e) => e.key)]).size >= records.length,
      8000,
    );
    const all = tally([...ids, ...events.map((e) => e.key)]);
    assert.deepEqual(
      [...all].filter(([, n]) => n > 1),
      [],
      'no id twice',
    );
    assert.equal(all.size, records.length, 'no id lost');
    assert.ok(ra.stats.records + rb.stats.records >= records.length);
  });
});
