/**
 * The worker's shard-job branch (MLMF_SOURCE=sqs-shards), in process, against the local SQS and S3 servers: a good
 * job is done and its message deleted; a message that can never work (not a shard job, a missing input) goes to the
 * dead-letter queue at once with the reason; a job that keeps failing goes there on its MLMF_SHARD_MAX_RECEIVES-th
 * delivery; one delivered more often without ever finishing (workers killed mid-shard) goes there unrun. Failed
 * shards get a failed marker that `job status` reports.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import {
  CreateQueueCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
  type Message,
} from '@aws-sdk/client-sqs';
import { runWorker } from '../../lib/worker/run.ts';
import { enqueue } from '../../lib/backfill/enqueue.ts';
import { makeShardJob } from '../../lib/backfill/shard-job.ts';
import { jobStatus } from '../../lib/backfill/status.ts';
import {
  CREDENTIALS,
  FastScorer,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  createBucket,
  getJson,
  needServices,
  queueEmpty,
  s3Client,
  uniq,
  waitFor,
} from '../stream/helpers.ts';
import { inputShard, putShard } from './helpers.ts';

const skip = await needServices('s3', 'sqs');

describe('shard-job worker', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  before(() => {
    s3 = s3Client();
    sqs = new SQSClient({ region: REGION, credentials: CREDENTIALS, endpoint: SQS_ENDPOINT });
  });
  after(() => {
    s3?.destroy();
    sqs?.destroy();
  });

  const queue = async (name: string) => (await sqs.send(new CreateQueueCommand({ QueueName: uniq(name) }))).QueueUrl!;

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

  it('done, dead-lettered at once, after the max deliveries, and unrun after a crash loop', async () => {
    const pool = uniq('pool');
    const out = uniq('out');
    const missingBucket = uniq('gone');
    await createBucket(s3, pool);
    await createBucket(s3, out);
    await putShard(s3, pool, 'in/good.tar', (await inputShard('good', 6)).tar);
    await putShard(s3, pool, 'in/crash.tar', (await inputShard('crash', 6)).tar);
    const jobs = await queue('jobs');
    const dlq = await queue('jobs-dlq');

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
    // A job delivered 3 times that never finished (its workers were killed): receive it 3 times first.
    const crashQueue = await queue('crash');
    const crash = makeShardJob('C', `s3://${pool}/in/crash.tar`, `s3://${out}/bf/C/`, 'crash');
    await sqs.send(new SendMessageCommand({ QueueUrl: crashQueue, MessageBody: JSON.stringify(crash) }));
    for (let received = 0; received < 3;) {
      const res = await sqs.send(
        new ReceiveMessageCommand({ QueueUrl: crashQueue, WaitTimeSeconds: 1, VisibilityTimeout: 0 }),
      );
      received += res.Messages?.length ?? 0;
    }

    const stop = new AbortController();
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
    const opts = {
      signal: stop.signal,
      log: (_l: string, msg: string, ctx?: Record<string, unknown>) => logs.push({ msg, ctx }),
      metricsOut: null,
    };
    const run = runWorker(config, opts);
    const crashRun = runWorker({ ...config, sqsQueueUrl: crashQueue, scorer: new FastScorer(8) }, { ...opts });
    try {
      await waitFor('the job queue empty', () => queueEmpty(sqs, jobs), 60_000);
      await waitFor('the crash queue empty', () => queueEmpty(sqs, crashQueue), 60_000);
    } finally {
      stop.abort();
    }
    const [result] = await Promise.all([run, crashRun]);
    assert.equal(result.stats.records, 6, 'one shard done by the first worker');

    const dead = (await drain(dlq, 4)).map(
      (m) =>
        JSON.parse(m.Body!) as {
          job?: string;
          shard?: string;
          body?: string;
          failure: { code: string; receives: number; message: string };
        },
    );
    const byCode = Object.fromEntries(dead.map((d) => [d.failure.code, d]));
    assert.deepEqual(Object.keys(byCode).sort(), [
      'backfill_output_failed',
      'shard_input_missing',
      'shard_job_incomplete',
      'shard_job_invalid',
    ]);
    assert.equal(byCode.shard_job_invalid!.body, 'not json', 'the original body goes with the reason');
    assert.equal(byCode.shard_input_missing!.failure.receives, 1, 'a missing input is dead-lettered at once');
    assert.equal(
      byCode.backfill_output_failed!.failure.receives,
      3,
      'a failing job gets MLMF_SHARD_MAX_RECEIVES deliveries',
    );
    assert.match(byCode.backfill_output_failed!.failure.message, new RegExp(missingBucket));
    assert.equal(byCode.shard_job_incomplete!.failure.receives, 4);
    assert.match(byCode.shard_job_incomplete!.failure.message, /delivered 4 times without finishing/);
    assert.ok(
      !logs.some((l) => l.msg === 'shard job started' && l.ctx?.job === 'C'),
      'the crash-looping job is not run again',
    );

    const failed = await getJson(s3, out, 'bf/C/failed/crash.json');
    assert.equal(failed.code, 'shard_job_incomplete');
    const status = await jobStatus({ s3, output: `s3://${out}/bf`, job: 'J', sqs, queueUrl: jobs });
    assert.deepEqual(status.shards, { total: 2, done: 1, failed: 1, pending: 0, inFlight: 0 });
    assert.equal(status.failures[0]?.code, 'shard_input_missing');
    assert.deepEqual([status.records, status.accepted, status.rejected], [6, 3, 3]);
  });
});
