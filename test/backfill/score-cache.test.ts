/**
 * Shard jobs with the fleet's score cache (local SQS, S3 and DynamoDB servers; FastScorer for the model): a job whose
 * first delivery is abandoned mid-shard (hard stop, after cache entries were written) is delivered again and scores
 * only what the first delivery had not (the rest are hits), each pair published once; a second job over the same
 * input shard is all hits and never reaches the scorer, with the same decisions.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { S3Client } from '@aws-sdk/client-s3';
import { SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { jobFolder, readDone } from '../../lib/backfill/outputs.ts';
import { makeShardJob } from '../../lib/backfill/shard-job.ts';
import { Logger } from '../../lib/support/logger.ts';
import { runWorker, type WorkerConfig } from '../../lib/worker/run.ts';
import { createCacheTable, DYNAMODB_ENDPOINT, dynamoClient, itemsOf } from '../cache/dynamo-helpers.ts';
import { waitFor } from '../helpers/poll.ts';
import {
  FastScorer,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  createBucket,
  needServices,
  queueEmpty,
  uniq,
} from '../stream/helpers.ts';
import { counts, inputShard, newQueue, publishedIds, putShard, useQueueClients } from './helpers.ts';

const skip = await needServices('s3', 'sqs', 'dynamodb');

interface Run {
  readonly scorer: FastScorer;
  readonly cache?: { hits: number; misses: number };
  /** The EMF metric PairsFromScoreCache, summed over the run's documents. */
  readonly fromCacheMetric: number;
}

describe('shard jobs with the fleet score cache', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  const dynamo: DynamoDBClient = dynamoClient();
  useQueueClients((c) => ({ s3, sqs } = c));
  after(() => dynamo.destroy());

  /** Runs one in-process worker until `until` holds, then stops it (hard when `hard`); returns its scorer and counts. */
  async function work(config: WorkerConfig, until: () => Promise<boolean>, hard = false): Promise<Run> {
    const scorer = new FastScorer(4, 400);
    const stop = new AbortController();
    const abort = new AbortController();
    let cache: Run['cache'];
    const logger = new Logger(({ msg, ctx }) => {
      if (msg === 'worker stopped') cache = (ctx as { scoreCache?: Run['cache'] }).scoreCache;
    });
    let fromCacheMetric = 0;
    const metricsOut = (line: string) => (fromCacheMetric += Number(JSON.parse(line).PairsFromScoreCache ?? 0));
    const run = runWorker({ ...config, scorer }, { signal: stop.signal, abort: abort.signal, logger, metricsOut });
    try {
      await waitFor('the worker to get there', until, 90_000);
    } finally {
      (hard ? abort : stop).abort();
      stop.abort();
      await run;
    }
    return { scorer, cache, fromCacheMetric };
  }

  it('a redelivered job scores only what its first delivery had not; another job over the shard is all hits', async () => {
    const pool = uniq('pool');
    const out = uniq('out');
    await createBucket(s3, pool);
    await createBucket(s3, out);
    const n = 48;
    const shard = await inputShard('cached', n);
    await putShard(s3, pool, 'in/cached.tar', shard.tar);
    const queue = await newQueue(sqs, 'cache-jobs');
    const table = await createCacheTable(dynamo);
    const config: WorkerConfig = {
      source: 'sqs-shards',
      sqsQueueUrl: queue,
      sqsEndpoint: SQS_ENDPOINT,
      s3Endpoint: S3_ENDPOINT,
      dynamodbEndpoint: DYNAMODB_ENDPOINT,
      scoreCacheTable: table,
      sqsVisibilitySeconds: 30,
      bucket: '',
      healthPort: 0,
      thresholds: 'itm>=50',
      region: REGION,
    };
    const send = (job: string) =>
      sqs.send(
        new SendMessageCommand({
          QueueUrl: queue,
          MessageBody: JSON.stringify(makeShardJob(job, `s3://${pool}/in/cached.tar`, `s3://${out}/${job}/`, 'cached')),
        }),
      );
    const cached = async () => (await itemsOf(dynamo, table, 'score#')).length;

    // First delivery: stopped hard once part of the shard is scored and cached (its message becomes visible again).
    await send('A');
    const first = await work(config, async () => (await cached()) >= 4, true);
    const cachedAtStop = await cached();
    assert.ok(cachedAtStop >= 4 && cachedAtStop < n, `${cachedAtStop} of ${n} cached when stopped`);
    assert.equal(await readDone(s3, jobFolder(`s3://${out}/A/`), 'cached'), undefined, 'not done');
    assert.ok(first.scorer.batches > 0);

    // Second delivery of the same job: what was cached is a hit, the rest is scored; every pair published once.
    const second = await work(config, () => queueEmpty(sqs, queue));
    assert.deepEqual(second.cache, { hits: cachedAtStop, misses: n - cachedAtStop });
    const doneA = await readDone(s3, jobFolder(`s3://${out}/A/`), 'cached');
    assert.ok(doneA);
    assert.equal(doneA.records, n);
    const idsA = await publishedIds(s3, out, doneA);
    assert.deepEqual(
      [...counts(idsA).values()].filter((c) => c !== 1),
      [],
      'no pair twice',
    );
    assert.deepEqual(idsA.sort(), [...shard.accepts].sort());

    // Another job over the same input: all hits, the scorer untouched, the same decisions.
    await send('B');
    const third = await work(config, () => queueEmpty(sqs, queue));
    assert.deepEqual(third.cache, { hits: n, misses: 0 });
    assert.equal(third.scorer.batches, 0, 'the scorer was not called');
    assert.equal(third.fromCacheMetric, n, 'the PairsFromScoreCache metric counts them');
    const doneB = await readDone(s3, jobFolder(`s3://${out}/B/`), 'cached');
    assert.ok(doneB);
    assert.deepEqual([doneB.records, doneB.accepted, doneB.rejected], [doneA.records, doneA.accepted, doneA.rejected]);
    assert.deepEqual((await publishedIds(s3, out, doneB)).sort(), idsA);
  });
});
