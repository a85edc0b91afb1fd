/**
 * Attempts of one shard job that overlap or die, through the real commands (bin/mlm-filter.js enqueue, job status,
 * job outputs) and worker processes (test/stream/worker-process.ts: the container entry with the fast stand-in
 * scorer) on the local SQS and S3 servers:
 * - a job delivered twice at once to workers cutting curated shards differently (MLMF_SHARD_SAMPLES 5 and 7): one
 *   attempt publishes, the other removes only its own outputs; every pair once, nothing missing;
 * - a worker paused (SIGSTOP) past its visibility timeout while another finishes the job, then resumed: it loses its
 *   lease, stops, and neither publishes nor deletes anything of the other's;
 * - workers killed mid-shard spend real attempts: after MLMF_SHARD_MAX_ATTEMPTS of them the job is dead-lettered
 *   unrun, with the count.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { ReceiveMessageCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import type { ShardDone } from '../../lib/backfill/outputs.ts';
import { createBucket, getJson, listAll, needServices, queueEmpty, uniq } from '../stream/helpers.ts';
import {
  counts,
  inputShard,
  kill9,
  newQueue,
  publishedIds,
  putShard,
  rejectEventsUnder,
  runCli,
  startWorker,
  stopWorkers,
  useQueueClients,
  type Worker,
} from './helpers.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = await needServices('s3', 'sqs');

describe('overlapping and dying attempts of a shard job', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  useQueueClients((c) => ({ s3, sqs } = c));

  /** A pool bucket with one 40-sample shard, an output bucket, a job queue and its dead-letter queue. */
  async function setup(n = 40) {
    const pool = uniq('pool');
    const out = uniq('out');
    await createBucket(s3, pool);
    await createBucket(s3, out);
    const shard = await inputShard('s0', n);
    await putShard(s3, pool, 'ds/s0.tar', shard.tar);
    return { pool, out, shard, queueUrl: await newQueue(sqs, 'jobs'), dlqUrl: await newQueue(sqs, 'jobs-dlq') };
  }

  const env = (queueUrl: string, dlqUrl: string, extra: Record<string, string>) => ({
    MLMF_SOURCE: 'sqs-shards',
    MLMF_SQS_QUEUE_URL: queueUrl,
    MLMF_SQS_DLQ_URL: dlqUrl,
    MLMF_THRESHOLDS: 'itm>=50',
    MLMF_HEALTH_PORT: '0',
    ...extra,
  });

  /** Shard s0's done marker, its outputs checked: every pair exactly once, no other attempt's object left. */
  async function checkOutputs(out: string, prefix: string, shard: Awaited<ReturnType<typeof setup>>['shard']) {
    const done = (await getJson(s3, out, `${prefix}done/s0.json`)) as unknown as ShardDone;
    const accepted = await publishedIds(s3, out, done);
    const rejected = (await rejectEventsUnder(s3, out, done.rejects.key)).map((e) => e.id);
    assert.deepEqual(
      [...counts([...accepted, ...rejected])].filter(([, n]) => n !== 1),
      [],
      'no pair twice',
    );
    assert.deepEqual(new Set(accepted), new Set(shard.accepts), 'exactly the accepts');
    assert.deepEqual(new Set([...accepted, ...rejected]), new Set(shard.ids), 'every pair');
    const published = done.curated.flatMap((c) => [c.key, c.key.replace(/\.tar$/, '.index.json')]);
    assert.deepEqual(
      (await listAll(s3, out, `${prefix}curated/s0~`)).map((o) => o.Key!).sort(),
      published.sort(),
      "no other attempt's curated shard left",
    );
    assert.deepEqual(
      (await listAll(s3, out, `${prefix}rejects/s0~`)).map((o) => o.Key!),
      [done.rejects.key],
      "no other attempt's rejects left",
    );
    return done;
  }

  it('a job delivered twice at once to workers with different MLMF_SHARD_SAMPLES: one publishes, once', async () => {
    const { pool, out, shard, queueUrl, dlqUrl } = await setup(60);
    const args = ['--input', `s3://${pool}/ds/`, '--queue', queueUrl, '--output', `s3://${out}/bf/`, '--job', 'two'];
    const enq = await runCli(['enqueue', ...args]);
    assert.equal(enq.code, 0, enq.stderr);
    // The same message once more: the job is delivered twice (as when enqueue re-sends a shard still queued).
    const peek = await sqs.send(
      new ReceiveMessageCommand({ QueueUrl: queueUrl, WaitTimeSeconds: 1, VisibilityTimeout: 0 }),
    );
    const body = peek.Messages?.[0]?.Body;
    assert.ok(body, 'the enqueued message');
    await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: body }));
    // Slow enough (8 batches of 300 ms) that the second worker takes its copy while the first is still at work.
    const slow = { MLMF_TEST_SCORER_DELAY_MS: '300', MLMF_SQS_VISIBILITY_S: '30' };
    const a = startWorker(env(queueUrl, dlqUrl, { ...slow, MLMF_SHARD_SAMPLES: '5' }));
    const b = startWorker(env(queueUrl, dlqUrl, { ...slow, MLMF_SHARD_SAMPLES: '7' }));
    const workers = [a, b];
    const ends = ['shard job done', 'shard job done by another attempt first: message deleted'];
    try {
      await waitFor(
        'both attempts to end',
        async () => workers.every((w) => w.lines.some((l) => ends.includes(l.msg ?? ''))),
        90_000,
      );
      await waitFor('the queue empty', () => queueEmpty(sqs, queueUrl), 30_000);
    } finally {
      assert.deepEqual(await stopWorkers(workers), [0, 0]);
    }
    const winners = workers.filter((w) => w.lines.some((l) => l.msg === 'shard job done'));
    assert.equal(winners.length, 1, 'exactly one attempt published');
    const done = await checkOutputs(out, 'bf/two/', shard);
    const cut = done.curated.map((c) => c.samples);
    assert.ok(
      cut.every((n) => n <= 5) || cut.every((n) => n <= 7),
      `the winner's own cut of curated shards: ${cut.join(',')}`,
    );
    assert.ok(await queueEmpty(sqs, dlqUrl), 'nothing dead-lettered');

    const outputs = await runCli(['job', 'outputs', '--job', 'two', '--output', `s3://${out}/bf/`]);
    assert.equal(outputs.code, 0, outputs.stderr);
    assert.deepEqual(
      outputs.stdout.trim().split('\n'),
      done.curated.map((c) => `s3://${out}/${c.key}`),
      'job outputs lists what the done marker published',
    );
    const status = await runCli(['job', 'status', '--job', 'two', '--output', `s3://${out}/bf/`, '--json']);
    const s = JSON.parse(status.stdout) as { shards: Record<string, unknown>; records: number };
    assert.deepEqual([s.shards.done, s.shards.pending, s.records], [1, 0, 60]);
  });

  it('a worker paused past its visibility timeout stops when resumed and touches nothing of the winner', async () => {
    const { pool, out, shard, queueUrl, dlqUrl } = await setup(40);
    const common = { MLMF_TEST_SCORER_DELAY_MS: '150', MLMF_SQS_VISIBILITY_S: '2' };
    const a = startWorker(env(queueUrl, dlqUrl, { ...common, MLMF_SHARD_SAMPLES: '5' }));
    const workers: Worker[] = [a];
    try {
      await a.ready;
      const args = ['--input', `s3://${pool}/ds/`, '--queue', queueUrl, '--output', `s3://${out}/bf/`, '--job', 'zz'];
      assert.equal((await runCli(['enqueue', ...args])).code, 0);
      await a.next('curated shard written');
      a.child.kill('SIGSTOP');
      // A second worker, cutting differently, takes the job once A's lease has run out, and finishes it.
      const b = startWorker(env(queueUrl, dlqUrl, { ...common, MLMF_SHARD_SAMPLES: '7' }));
      workers.push(b);
      await b.next('shard job done', 60_000);
      const published = (await getJson(s3, out, 'bf/zz/done/s0.json')) as unknown as ShardDone;
      a.child.kill('SIGCONT');
      const stopped = await a.next('shard job stopped: its visibility lease was lost', 30_000);
      assert.match(String(stopped.why), /ReceiptHandleIsInvalid/);
      await waitFor('the queue empty', () => queueEmpty(sqs, queueUrl), 30_000);
      // A goes on taking jobs after the lost lease.
      await putShard(s3, pool, 'ds/s1.tar', (await inputShard('s1', 4)).tar);
      assert.equal((await runCli(['enqueue', ...args])).code, 0);
      await waitFor('s1 done', async () => (await listAll(s3, out, 'bf/zz/done/s1.json')).length === 1, 60_000);
      const after = (await getJson(s3, out, 'bf/zz/done/s0.json')) as unknown as ShardDone;
      assert.deepEqual(after, published, "the winner's done marker is untouched");
    } finally {
      assert.deepEqual(await stopWorkers(workers), [0, 0]);
    }
    for (const msg of ['shard job done', 'shard job dead-lettered', 'shard job failed; it will be retried']) {
      assert.ok(!a.lines.some((l) => l.msg === msg && l.shard === 's0'), `the paused worker did not log "${msg}"`);
    }
    const done = await checkOutputs(out, 'bf/zz/', { ...shard });
    assert.ok(done.curated.every((c) => c.samples <= 7) && done.curated.some((c) => c.samples > 5), "B's cut");
    assert.ok(await queueEmpty(sqs, dlqUrl), 'nothing dead-lettered');
  });

  it('workers killed mid-shard spend real attempts; at MLMF_SHARD_MAX_ATTEMPTS the job is dead-lettered unrun', async () => {
    const { pool, out, queueUrl, dlqUrl } = await setup(40);
    const e = env(queueUrl, dlqUrl, {
      MLMF_TEST_SCORER_DELAY_MS: '200',
      MLMF_SQS_VISIBILITY_S: '2',
      MLMF_SHARD_MAX_ATTEMPTS: '2',
    });
    const args = ['--input', `s3://${pool}/ds/`, '--queue', queueUrl, '--output', `s3://${out}/bf/`, '--job', 'kk'];
    assert.equal((await runCli(['enqueue', ...args])).code, 0);
    for (let k = 0; k < 2; k++) {
      const w = startWorker(e);
      try {
        const started = await w.next('shard job started');
        assert.equal(started.attempt, k + 1, 'the attempt number counts started attempts');
      } finally {
        await kill9(w);
      }
    }
    const last = startWorker(e);
    try {
      const dead = await last.next('shard job dead-lettered', 60_000);
      assert.equal(dead.code, 'shard_job_incomplete');
      assert.equal(dead.attempts, 2);
      assert.match(String(dead.message), /started 2 times without finishing/);
    } finally {
      assert.deepEqual(await stopWorkers([last]), [0]);
    }
    assert.ok(!last.lines.some((l) => l.msg === 'shard job started'), 'not run a third time');
    const status = await runCli(['job', 'status', '--job', 'kk', '--output', `s3://${out}/bf/`]);
    assert.match(status.stdout, /: 0\/1 shards done, 0 pending, 1 failed$/m);
    assert.match(status.stdout, /^failed s0 after 2 attempts: \[shard_job_incomplete\] started 2 times/m);
  });
});
