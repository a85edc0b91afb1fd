/**
 * The worker's own lag (KafkaSource.lag, the ConsumerLag metric) after retention deleted records below the group's
 * commit: the deleted records can no longer be consumed, so they are no backlog. Counting them would make the
 * service scale out for records nobody can read.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Admin, Kafka } from 'kafkajs';
import { partitionLag } from '../../lib/kafka/lag.ts';
import { KafkaSource } from '../../lib/sources/kafka.ts';
import { createTopics, kafkaClient, needServices, produce, uniq } from './helpers.ts';

const skip = await needServices('kafka');

describe('partitionLag', () => {
  test('from the commit while it is at or above the low watermark', () => {
    assert.equal(partitionLag(10n, 0n, 7n), 3n);
    assert.equal(partitionLag(10n, 4n, 4n), 6n);
    assert.equal(partitionLag(10n, 4n, 10n), 0n);
  });

  test('a commit below the low watermark counts from the low watermark (retention deleted the rest)', () => {
    assert.equal(partitionLag(10n, 8n, 2n), 2n);
    assert.equal(partitionLag(10n, 10n, 2n), 0n, 'everything it pointed at is deleted and nothing new came');
  });

  test('no commit counts from the low watermark; never negative', () => {
    assert.equal(partitionLag(10n, 4n, null), 6n);
    assert.equal(partitionLag(0n, 0n, null), 0n);
    assert.equal(partitionLag(5n, 0n, 9n), 0n, 'a commit past the end (a truncated log) is no backlog');
  });
});

describe('KafkaSource.lag on a real topic', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  before(async () => {
    kafka = kafkaClient();
    admin = kafka.admin();
    await admin.connect();
  });
  after(async () => {
    await admin?.disconnect();
  });

  test('a commit below the low watermark counts from the low watermark', async () => {
    const topic = uniq('lag-retained');
    const groupId = `${topic}-group`;
    await createTopics(admin, [{ topic, partitions: 1 }]);
    await produce(
      kafka,
      topic,
      Array.from({ length: 10 }, (_, i) => ({ i })),
      1,
    );
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 0, offset: '2' }] });
    const source = new KafkaSource({ kafka, topic, groupId, sessionTimeoutMs: 6000, heartbeatIntervalMs: 1000 });
    const stop = new AbortController();
    try {
      // The member joined, owns partition 0 and fetched offsets 2..9; nothing is acked, so the commit stays at 2.
      const first = await source.batches(stop.signal)[Symbol.asyncIterator]().next();
      assert.equal(first.done, false);
      const offsets = first.value.records.map((r) => (r.origin.kind === 'kafka' ? r.origin.offset : ''));
      assert.deepEqual([offsets[0], offsets.at(-1)], ['2', '9']);
      assert.equal(await source.lag(), 8, 'high 10 - commit 2');
      // Retention (here deleteRecords) removes offsets 0..7 while the batch is in work: the commit is below low now.
      await admin.fetchTopicMetadata({ topics: [topic] });
      await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '8' }] });
      const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
      assert.equal(committed!.partitions[0]!.offset, '2', 'the group still has its commit below the low watermark');
      assert.equal(await source.lag(), 2, 'high 10 - low 8: records 2..7 are gone, not backlog');
    } finally {
      stop.abort();
      await source.close();
    }
  });
});
