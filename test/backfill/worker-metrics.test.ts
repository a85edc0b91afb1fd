/**
 * The worker's metrics count final outcomes only (issue 21: RejectsByReason counted 32 against 26 records). A shard
 * job whose first attempt fails after every record was scored (its output bucket does not exist yet) and whose
 * retry succeeds counts each record once: the outcomes of an attempt are counted when its done marker is written.
 * Against the local SQS and S3 servers, the worker in process with its real EMF output.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { makeShardJob } from '../../lib/backfill/shard-job.ts';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import { runWorker } from '../../lib/worker/run.ts';
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

describe('shard-job worker metrics', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  useQueueClients((c) => ({ s3, sqs } = c));

  it('a job that fails once and then succeeds counts each record once', async () => {
    const pool = uniq('pool');
    const out = uniq('late');
    await createBucket(s3, pool);
    const shard = await inputShard('m', 10);
    await putShard(s3, pool, 'in/m.tar', shard.tar);
    const jobs = await newQueue(sqs, 'jobs');
    const job = makeShardJob('M', `s3://${pool}/in/m.tar`, `s3://${out}/M/`, 'm');
    await sqs.send(new SendMessageCommand({ QueueUrl: jobs, MessageBody: JSON.stringify(job) }));

    const stop = new AbortController();
    const emf: Record<string, unknown>[] = [];
    let failures = 0;
    const run = runWorker(
      {
        source: 'sqs-shards',
        sqsQueueUrl: jobs,
        sqsEndpoint: SQS_ENDPOINT,
        s3Endpoint: S3_ENDPOINT,
        sqsVisibilitySeconds: 2,
        bucket: '',
        healthPort: 0,
        thresholds: 'itm>=50',
        region: REGION,
        scorer: new FastScorer(4),
      },
      {
        signal: stop.signal,
        metricsOut: (line) => emf.push(JSON.parse(line) as Record<string, unknown>),
        metricsIntervalMs: 0,
        logger: new Logger(({ msg }) => {
          // The first attempt scored every record and then could not write its outputs: the bucket comes now.
          if (msg === 'shard job failed; it will be retried' && failures++ === 0) void createBucket(s3, out);
        }),
      },
    );
    try {
      await waitFor('the job queue empty', () => queueEmpty(sqs, jobs), 60_000);
    } finally {
      stop.abort();
    }
    const result = await run;
    assert.equal(failures, 1, 'one failed attempt, then one that succeeded');
    const done = await getJson(s3, out, 'M/done/m.json');
    assert.equal(done.records, 10);
    assert.equal(result.stats.records, 10);

    const sum = (name: string, filter: (d: Record<string, unknown>) => boolean = () => true) =>
      emf.filter(filter).reduce((n, d) => n + (typeof d[name] === 'number' ? (d[name] as number) : 0), 0);
    assert.equal(sum(METRIC.PairsIn), 10);
    assert.equal(sum(METRIC.PairsAccepted), done.accepted);
    assert.equal(sum(METRIC.PairsRejected), done.rejected);
    const rejectsByReason = sum(METRIC.RejectsByReason);
    assert.equal(
      rejectsByReason,
      Object.values(done.reasons as Record<string, number>).reduce((a, b) => a + b, 0),
    );
    assert.ok(rejectsByReason > 0, 'some records were rejected');
  });
});
