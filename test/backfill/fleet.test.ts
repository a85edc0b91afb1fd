/**
 * Issue 15's acceptance test, against the local SQS and S3 servers: `mlm-filter enqueue` sends 20 shards (one cut
 * off, one with a corrupt header, one with an undecodable image), two worker processes (MLMF_SOURCE=sqs-shards, the
 * fast stand-in scorer of test/stream/worker-process.ts) take them, and one worker is killed with SIGKILL twice in
 * the middle of a shard and restarted. Then every input pair is exactly once in the job's outputs (accepted in a
 * curated shard or rejected in the rejects), the damaged parts are rejects, the killed shards were redone by a later
 * delivery, `mlm-filter job status` reports 20/20 done with the right counts, and enqueue run again sends nothing.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import { createBucket, listAll, needServices, queueEmpty, uniq } from '../stream/helpers.ts';
import {
  cliStdout,
  counts,
  curatedIdsUnder,
  doneMarkersUnder,
  inputShard,
  kill9,
  newQueue,
  putShard,
  rejectEventsUnder,
  startWorker,
  useQueueClients,
  type Damage,
  type InputShard,
} from './helpers.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = await needServices('s3', 'sqs');

describe('backfill with the worker fleet (kill -9 mid-shard)', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  useQueueClients((c) => ({ s3, sqs } = c));

  it('20 shards, 2 workers, one killed twice: every pair exactly once, status 20/20, re-enqueue sends nothing', async () => {
    const pool = uniq('pool');
    const out = uniq('out');
    await createBucket(s3, pool);
    await createBucket(s3, out);
    const damage: Record<number, Damage> = { 7: 'truncated-tail', 11: 'corrupt-header', 13: 'undecodable-image' };
    const shards: InputShard[] = [];
    for (let i = 0; i < 20; i++) {
      const name = `s${String(i).padStart(2, '0')}`;
      const shard = await inputShard(name, 40, damage[i] ?? 'none');
      shards.push(shard);
      await putShard(s3, pool, `datacomp/${name}.tar`, shard.tar);
    }
    const queueUrl = await newQueue(sqs, 'jobs');
    const dlqUrl = await newQueue(sqs, 'jobs-dlq');
    const enqueueArgs = ['enqueue', '--input', `s3://${pool}/datacomp/`, '--queue', queueUrl];
    const args = [...enqueueArgs, '--output', `s3://${out}/backfill/`, '--job', 'dc'];
    assert.match(await cliStdout(args), /job dc: 20 shards, 0 already done, sent 20 to /);

    const env = {
      MLMF_SOURCE: 'sqs-shards',
      MLMF_SQS_QUEUE_URL: queueUrl,
      MLMF_SQS_DLQ_URL: dlqUrl,
      MLMF_SQS_VISIBILITY_S: '3',
      MLMF_SHARD_SAMPLES: '5',
      MLMF_THRESHOLDS: 'itm>=50',
      MLMF_TEST_SCORER_DELAY_MS: '50',
      MLMF_HEALTH_PORT: '0',
    };
    const a = startWorker(env);
    let b = startWorker(env);
    const killed: string[] = [];
    const finishedByKilled: string[] = [];
    try {
      for (let k = 0; k < 2; k++) {
        const started = await b.next('shard job started');
        await b.next('curated shard written');
        await kill9(b);
        killed.push(started.shard!);
        finishedByKilled.push(...b.lines.filter((l) => l.msg === 'shard job done').map((l) => l.shard!));
        b = startWorker(env);
      }
      const done = async () => (await listAll(s3, out, 'backfill/dc/done/')).length === 20;
      await waitFor('20 done markers', done, 120_000);
      await waitFor('the queue empty', () => queueEmpty(sqs, queueUrl), 30_000);
    } finally {
      // A worker stopped before it installed its handlers would die of the signal instead of draining.
      await Promise.all([a.ready, b.ready]);
      a.child.kill('SIGTERM');
      b.child.kill('SIGTERM');
    }
    const exits = await Promise.all(
      [a, b].map(async (w) => (w.child.exitCode ?? (await once(w.child, 'exit'))[0]) as number),
    );
    assert.deepEqual(exits, [0, 0], 'both workers drain and exit 0');

    // The killed shards were mid-shard: the killed worker never finished them, a later delivery did.
    assert.equal(killed.length, 2);
    const markers = await doneMarkersUnder(s3, out, 'backfill/dc/done/');
    for (const shard of killed) {
      assert.ok(!finishedByKilled.includes(shard), `${shard} was not finished by the worker that was killed`);
      const marker = markers.find((m) => m.shard === shard)!;
      assert.ok(marker.attempt >= 2, `${shard} was redone by delivery ${marker.attempt}`);
    }

    // Every input pair exactly once: accepted in a curated shard or rejected in the rejects.
    const curated = await curatedIdsUnder(s3, out, 'backfill/dc/curated/');
    // What the done markers published is all there is: the killed attempts' shards were removed by the winners.
    assert.deepEqual(
      (await listAll(s3, out, 'backfill/dc/curated/'))
        .map((o) => o.Key!)
        .filter((k) => k.endsWith('.tar'))
        .sort(),
      markers.flatMap((m) => m.curated.map((c) => c.key)).sort(),
    );
    const events = await rejectEventsUnder(s3, out, 'backfill/dc/rejects/');
    const readable = shards.flatMap((s) => s.ids);
    const unreadable = events.filter((e) => e.reasons.some((r) => r.detail?.field === 'shard'));
    const seen = [...curated, ...events.filter((e) => !unreadable.includes(e)).map((e) => e.id)];
    assert.deepEqual(
      [...counts(seen)].filter(([, n]) => n !== 1),
      [],
      'no pair twice',
    );
    assert.deepEqual(new Set(seen), new Set(readable), 'every readable pair');
    assert.equal(seen.length, readable.length);
    assert.deepEqual(new Set(curated), new Set(shards.flatMap((s) => s.accepts)), 'accepted exactly the accepts');
    assert.deepEqual(
      unreadable.map((e) => e.reasons[0]!.detail!.kind).sort(),
      ['corrupt_shard', 'truncated_shard'],
      'each unreadable part is one reject',
    );
    assert.ok(events.some((e) => e.reasons.some((r) => r.code === 'undecodable_image')));

    const records = readable.length + unreadable.length;
    const accepted = shards.reduce((n, s) => n + s.accepts.length, 0);
    const status = JSON.parse(
      await cliStdout([
        'job',
        'status',
        '--job',
        'dc',
        '--output',
        `s3://${out}/backfill/`,
        '--queue',
        queueUrl,
        '--json',
      ]),
    ) as { shards: Record<string, number>; records: number; accepted: number; rejected: number; acceptRate: number };
    assert.deepEqual(status.shards, { total: 20, done: 20, failed: 0, pending: 0, inFlight: 0 });
    assert.deepEqual([status.records, status.accepted, status.rejected], [records, accepted, records - accepted]);
    const text = await cliStdout(['job', 'status', '--job', 'dc', '--output', `s3://${out}/backfill/`]);
    assert.match(text, /: 20\/20 shards done, 0 pending, 0 failed$/m);
    assert.ok(await queueEmpty(sqs, dlqUrl), 'nothing dead-lettered');

    assert.match(await cliStdout(args), /job dc: 20 shards, 20 already done, sent 0 to /);
    assert.ok(await queueEmpty(sqs, queueUrl), 're-running enqueue after completion sends nothing');
  });
});
