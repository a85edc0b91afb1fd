/**
 * The worker's shard-job branch (MLMF_SOURCE=sqs-shards), in process, against the local SQS and S3 servers: a good
 * job is done and its message deleted; a message that can never work (not a shard job, a missing input) goes to the
 * dead-letter queue at once with the reason; a job that keeps failing goes there after MLMF_SHARD_MAX_ATTEMPTS real
 * attempts; one received many times by consumers that never ran it is still run (receives are not attempts); a
 * message naming another input than its shard's done marker, or a done marker that is not one, is dead-lettered,
 * not taken for done. Failed shards get a failed marker that `job status` reports. (Workers killed mid-shard:
 * test/backfill/attempts.test.ts.)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { ReceiveMessageCommand, SendMessageCommand, SQSClient, type Message } from '@aws-sdk/client-sqs';
import { runWorker } from '../../lib/worker/run.ts';
import { enqueue } from '../../lib/backfill/enqueue.ts';
import type { ShardDone } from '../../lib/backfill/outputs.ts';
import { makeShardJob } from '../../lib/backfill/shard-job.ts';
import { jobStatus } from '../../lib/backfill/status.ts';
import {
  FastScorer,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  createBucket,
  getJson,
  needServices,
  queueEmpty,
  uniq,
} from '../stream/helpers.ts';
import { Logger } from '../../lib/support/logger.ts';
import { inputShard, newQueue, putShard, useQueueClients } from './helpers.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = await needServices('s3', 'sqs');

describe('shard-job worker', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  useQueueClients((c) => ({ s3, sqs } = c));

  async function drain(url: string, n: number): Promise<Message[]> {
    const out: Message[] = [];
    await waitFor(`${n} messages in ${url}`, async () => {
      const res = await sqs.send(
        new ReceiveMessageCommand({
          QueueUrl: url,
          MaxNumberOfMessages: 10,
          WaitTimeSeconds: 1,
          VisibilityTimeout: 60,
        }),
      );
      out.push(...(res.Messages ?? []));
      return out.length >= n;
    });
    return out;
  }

  it('done, dead-lettered at once, after the max real attempts; receives that never ran cost nothing', async () => {
    const pool = uniq('pool');
    const out = uniq('out');
    const missingBucket = uniq('gone');
    await createBucket(s3, pool);
    await createBucket(s3, out);
    await putShard(s3, pool, 'in/good.tar', (await inputShard('good', 6)).tar);
    await putShard(s3, pool, 'in/polled.tar', (await inputShard('polled', 6)).tar);
    const jobs = await newQueue(sqs, 'jobs');
    const dlq = await newQueue(sqs, 'jobs-dlq');

    // Job J: a good shard and a missing one, through enqueue (manifest included).
    const list = join(mkdtempSync(join(tmpdir(), 'mlmf-bf-')), 'shards.txt');
    writeFileSync(list, `s3://${pool}/in/good.tar\ns3://${pool}/in/missing.tar\n`);
    const sent = await enqueue({ s3, sqs, input: list, queueUrl: jobs, output: `s3://${out}/bf`, job: 'J' });
    assert.deepEqual(
      sent.sent.map((s) => s.shard),
      ['good', 'missing'],
    );
    // Not a shard job at all; and a job whose outputs cannot be written (its bucket does not exist).
    await sqs.send(new SendMessageCommand({ QueueUrl: jobs, MessageBody: 'not json' }));
    const unwritable = makeShardJob('W', `s3://${pool}/in/good.tar`, `s3://${missingBucket}/W/`, 'good');
    await sqs.send(new SendMessageCommand({ QueueUrl: jobs, MessageBody: JSON.stringify(unwritable) }));
    // A job received 5 times by consumers that never ran it (workers killed right after their long poll).
    const polledQueue = await newQueue(sqs, 'polled');
    const polled = makeShardJob('P', `s3://${pool}/in/polled.tar`, `s3://${out}/bf/P/`, 'polled');
    await sqs.send(new SendMessageCommand({ QueueUrl: polledQueue, MessageBody: JSON.stringify(polled) }));
    for (let received = 0; received < 5;) {
      const res = await sqs.send(
        new ReceiveMessageCommand({ QueueUrl: polledQueue, WaitTimeSeconds: 1, VisibilityTimeout: 0 }),
      );
      received += res.Messages?.length ?? 0;
    }

    const config = {
      source: 'sqs-shards' as const,
      sqsQueueUrl: jobs,
      sqsDlqUrl: dlq,
      sqsEndpoint: SQS_ENDPOINT,
      s3Endpoint: S3_ENDPOINT,
      sqsVisibilitySeconds: 2,
      bucket: '',
      healthPort: 0,
      thresholds: 'itm>=50',
      region: REGION,
      scorer: new FastScorer(8),
    };
    const logs: { msg: string; ctx?: Record<string, unknown> }[] = [];
    /** Runs one worker on `queueUrl` until the queue is empty. */
    async function work(queueUrl: string) {
      const stop = new AbortController();
      const logger = new Logger(({ msg, ctx }) => logs.push({ msg, ctx }));
      const run = runWorker(
        { ...config, sqsQueueUrl: queueUrl, scorer: new FastScorer(8) },
        { signal: stop.signal, logger, metricsOut: null },
      );
      try {
        await waitFor(`${queueUrl} empty`, () => queueEmpty(sqs, queueUrl), 60_000);
      } finally {
        stop.abort();
      }
      return run;
    }
    const [result, polledResult] = await Promise.all([work(jobs), work(polledQueue)]);
    assert.equal(result.stats.records, 6, 'one shard done by the first worker');
    assert.equal(polledResult.stats.records, 6, 'the job received 5 times without running was run');
    const polledDone = (await getJson(s3, out, 'bf/P/done/polled.json')) as unknown as ShardDone;
    assert.equal(polledDone.attempt, 1, 'its first real attempt');

    // A message for a done shard that names another input: not "done", dead-lettered with the difference.
    const other = makeShardJob('J', `s3://${pool}/in/polled.tar`, `s3://${out}/bf/J/`, 'good');
    await sqs.send(new SendMessageCommand({ QueueUrl: jobs, MessageBody: JSON.stringify(other) }));
    // A done marker that is not one (cut short): dead-lettered with the reason, never taken for done or overwritten.
    await putShard(s3, out, 'bf/K/done/polled.json', Buffer.from('{"v":1,"kind":"shard-do'));
    const broken = makeShardJob('K', `s3://${pool}/in/polled.tar`, `s3://${out}/bf/K/`, 'polled');
    await sqs.send(new SendMessageCommand({ QueueUrl: jobs, MessageBody: JSON.stringify(broken) }));
    await work(jobs);

    const dead = (await drain(dlq, 5)).map(
      (m) =>
        JSON.parse(m.Body!) as {
          job?: string;
          shard?: string;
          body?: string;
          failure: { code: string; receives: number; attempts: number; message: string };
        },
    );
    const byCode = Object.fromEntries(dead.map((d) => [d.failure.code, d]));
    assert.deepEqual(Object.keys(byCode).sort(), [
      'backfill_output_failed',
      'job_object_invalid',
      'shard_input_mismatch',
      'shard_input_missing',
      'shard_job_invalid',
    ]);
    assert.equal(byCode.shard_job_invalid!.body, 'not json', 'the original body goes with the reason');
    assert.equal(byCode.shard_input_missing!.failure.attempts, 1, 'a missing input is dead-lettered at once');
    assert.equal(
      byCode.backfill_output_failed!.failure.attempts,
      3,
      'a failing job gets MLMF_SHARD_MAX_ATTEMPTS real attempts',
    );
    assert.match(byCode.backfill_output_failed!.failure.message, new RegExp(missingBucket));
    assert.match(
      byCode.shard_input_mismatch!.failure.message,
      new RegExp(
        `shard good of job J is done for s3://${pool}/in/good\\.tar \\(size \\d+, ETag .+\\), not s3://${pool}/in/polled\\.tar`,
      ),
    );
    assert.ok(
      !logs.some((l) => l.msg === 'shard job started' && l.ctx?.job === 'J' && l.ctx?.input === other.input),
      'the mismatched job is not run',
    );
    assert.match(byCode.job_object_invalid!.failure.message, /bf\/K\/done\/polled\.json is not JSON/);
    const goodDone = (await getJson(s3, out, 'bf/J/done/good.json')) as unknown as ShardDone;
    assert.equal(goodDone.input, `s3://${pool}/in/good.tar`, "the done marker still describes good's input");

    const status = await jobStatus({ s3, output: `s3://${out}/bf`, job: 'J', sqs, queueUrl: jobs });
    assert.deepEqual(status.shards, { total: 2, done: 1, failed: 1, pending: 0, inFlight: 0 });
    assert.equal(status.failures[0]?.code, 'shard_input_missing');
    assert.deepEqual([status.records, status.accepted, status.rejected], [6, 3, 3]);
  });
});
