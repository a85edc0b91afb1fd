/**
 * SqsSource against the local SQS server (ElasticMQ): batches merge several receives, visibility is extended while
 * a batch is in work (more than 10 messages: chunked requests), commit deletes, release makes the messages visible at once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  CreateQueueCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import { SqsSource } from '../../lib/sources/sqs.ts';
import type { SourceBatch } from '../../lib/types.ts';
import { CREDENTIALS, REGION, SQS_ENDPOINT, needServices, uniq } from './helpers.ts';
import { waitFor, holdsFor } from '../helpers/poll.ts';

const skip = await needServices('sqs');

describe('SQS source', { skip }, () => {
  let sqs: SQSClient;
  before(() => {
    sqs = new SQSClient({ region: REGION, credentials: CREDENTIALS, endpoint: SQS_ENDPOINT });
  });
  after(() => sqs?.destroy());

  async function queueWith(n: number): Promise<string> {
    const url = (await sqs.send(new CreateQueueCommand({ QueueName: uniq('src') }))).QueueUrl!;
    for (let i = 0; i < n; i += 10) {
      await sqs.send(
        new SendMessageBatchCommand({
          QueueUrl: url,
          Entries: Array.from({ length: Math.min(10, n - i) }, (_, j) => ({ Id: String(j), MessageBody: `m${i + j}` })),
        }),
      );
    }
    return url;
  }

  async function firstBatch(source: SqsSource, stop: AbortController): Promise<SourceBatch> {
    for await (const b of source.batches(stop.signal)) return b;
    throw new Error('no batch');
  }

  const depth = async (
    url: string,
    attribute: 'ApproximateNumberOfMessages' | 'ApproximateNumberOfMessagesNotVisible' = 'ApproximateNumberOfMessages',
  ) =>
    Number(
      (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: [attribute] }))).Attributes?.[
        attribute
      ],
    );

  const othersSee = async (url: string) =>
    (await sqs.send(new ReceiveMessageCommand({ QueueUrl: url, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }))).Messages
      ?.length ?? 0;

  it('keeps a batch of more than 10 messages invisible while in work, deletes it on commit', async () => {
    const url = await queueWith(25);
    const source = new SqsSource({ client: sqs, queueUrl: url, visibilityTimeoutSeconds: 2, waitTimeSeconds: 1 });
    const stop = new AbortController();
    const batch = await firstBatch(source, stop);
    stop.abort();
    const mine = batch.records.length;
    assert.ok(mine > 10, `a batch merges receives (got ${mine})`);
    assert.equal(batch.records[0]!.origin.kind, 'sqs');
    // Past the 2 s visibility timeout, only the extension keeps them hidden: checked all through the window.
    await holdsFor('the batch stays invisible while in work', async () => (await depth(url)) === 25 - mine, 3500);
    await batch.committer.commit(batch);
    assert.equal(await depth(url, 'ApproximateNumberOfMessagesNotVisible'), 0, 'committed messages are deleted');
    assert.equal(await depth(url), 25 - mine);
  });

  it('extension: nobody else receives the batch past its visibility timeout; release makes it visible at once', async () => {
    const url = await queueWith(12);
    const source = new SqsSource({ client: sqs, queueUrl: url, visibilityTimeoutSeconds: 2, waitTimeSeconds: 1 });
    const stop = new AbortController();
    const batch = await firstBatch(source, stop);
    stop.abort();
    const mine = batch.records.length;
    await holdsFor('the batch stays invisible past its timeout', async () => (await depth(url)) === 12 - mine, 3500);
    assert.equal(await othersSee(url), Math.min(10, 12 - mine), 'only messages outside the batch are visible');
    await batch.committer.release(batch, new Error('sink down'));
    await waitFor('released messages visible again', async () => (await othersSee(url)) > 0, 5000);
  });
});
