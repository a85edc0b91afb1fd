/**
 * SQS (standard and FIFO) -> worker -> curated bucket + audit topic, against the local services
 * (bash scripts/services.sh up). FastScorer stands in for the model (helpers.ts).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CreateQueueCommand, SendMessageBatchCommand, SQSClient } from '@aws-sdk/client-sqs';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Admin, Kafka } from 'kafkajs';
import { runWorker } from '../../lib/worker/run.ts';
import {
  BROKERS,
  CREDENTIALS,
  FastScorer,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  createBucket,
  createTopics,
  curatedIds,
  makeRecords,
  needServices,
  queueEmpty,
  readTopic,
  tally,
  uniq,
  useServiceClients,
} from './helpers.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = await needServices('kafka', 's3', 'sqs');

describe('SQS source -> S3 curated + audit topic', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  let s3: S3Client;
  let sqs: SQSClient;
  useServiceClients((c) => ({ kafka, admin, s3 } = c));
  before(() => {
    sqs = new SQSClient({ region: REGION, credentials: CREDENTIALS, endpoint: SQS_ENDPOINT });
  });
  after(() => sqs?.destroy());

  for (const fifo of [false, true]) {
    it(`${fifo ? 'FIFO' : 'standard'} queue: accepts in shards, rejects on the audit topic, queue drained`, async () => {
      const name = uniq('pairs');
      const bucket = uniq('curated');
      const audit = `${name}-audit`;
      await createTopics(admin, [{ topic: audit }]);
      await createBucket(s3, bucket);
      const queue = await sqs.send(
        new CreateQueueCommand({
          QueueName: fifo ? `${name}.fifo` : name,
          Attributes: fifo ? { FifoQueue: 'true', ContentBasedDeduplication: 'true' } : {},
        }),
      );
      const url = queue.QueueUrl!;
      const records = await makeRecords(name, 45);
      for (let i = 0; i < records.length; i += 10) {
        await sqs.send(
          new SendMessageBatchCommand({
            QueueUrl: url,
            Entries: records.slice(i, i + 10).map((r, j) => ({
              Id: String(j),
              MessageBody: JSON.stringify(r),
              ...(fifo ? { MessageGroupId: `g${(i + j) % 3}` } : {}),
            })),
          }),
        );
      }
      const stop = new AbortController();
      const run = runWorker(
        {
          source: 'sqs',
          sqsQueueUrl: url,
          sqsEndpoint: SQS_ENDPOINT,
          brokers: [BROKERS],
          bucket,
          auditTopic: audit,
          s3Endpoint: S3_ENDPOINT,
          healthPort: 0,
          thresholds: 'itm>=50',
          scorer: new FastScorer(8),
        },
        { signal: stop.signal, logger: silentLogger, metricsOut: null },
      );
      try {
        await waitFor('queue drained', () => queueEmpty(sqs, url), 60_000);
      } finally {
        stop.abort();
      }
      const result = await run;
      assert.equal(result.stats.records, records.length);
      const { ids, shards } = await curatedIds(s3, bucket);
      const accepts = records.filter((_, i) => i % 2 === 0).map((r) => r.id);
      assert.deepEqual(new Set(ids), new Set(accepts));
      assert.ok([...tally(ids).values()].every((n) => n === 1));
      for (const s of shards) assert.match(s, /^sqs\/[0-9a-f-]{36}-\d{6}\.tar$/);
      const rejects = records.length - accepts.length;
      const events = await readTopic(kafka, audit, (m) => m.length >= rejects, 15_000);
      assert.equal(events.length, rejects);
      assert.ok(events.every((e) => (e.value.source as { kind: string }).kind === 'sqs'));
    });
  }
});
