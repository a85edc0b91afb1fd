/**
 * One shard job against the local S3 server (moto), with the real intake and the fast stand-in scorer: outputs named
 * from the input shard and the attempt, every record exactly once across curated shards and rejects, the done marker
 * last and create-only; a later attempt (cut differently) publishes nothing and removes its own outputs; a damaged
 * shard finishes with rejects for what cannot be read; a missing input is `shard_input_missing`, a changed one
 * `shard_input_changed`; a stopped job marks nothing done and leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { doneKey, jobFolder, type ShardDone } from '../../lib/backfill/outputs.ts';
import { runShardJob, type ShardJobOptions } from '../../lib/backfill/runner.ts';
import { makeShardJob } from '../../lib/backfill/shard-job.ts';
import { Intake } from '../../lib/intake/index.ts';
import { Policy, parseThresholds } from '../../lib/policy/index.ts';
import { FilterError } from '../../lib/types.ts';
import { FastScorer, createBucket, getJson, listAll, needServices, s3Client, uniq } from '../stream/helpers.ts';
import { counts, curatedIdsUnder, inputShard, putShard, rejectEventsUnder, type Damage } from './helpers.ts';
import { Logger } from '../../lib/support/logger.ts';

const skip = await needServices('s3');

describe('shard job runner', { skip }, () => {
  let s3: S3Client;
  let input: string;
  let output: string;
  before(async () => {
    s3 = s3Client();
    input = uniq('pool');
    output = uniq('out');
    await createBucket(s3, input);
    await createBucket(s3, output);
  });
  after(() => s3?.destroy());

  function options(extra: Partial<ShardJobOptions> = {}): ShardJobOptions {
    const scorer = new FastScorer(8);
    return {
      s3,
      scorer,
      intake: new Intake({}, scorer.preprocess),
      policy: new Policy({ thresholds: parseThresholds('itm>=50') }),
      // Small ranges: the shard comes in many ranged GETs, one prefetched ahead.
      rangeBytes: 1000,
      retry: { attempts: 2, baseMs: 10 },
      ...extra,
    };
  }

  async function shardJob(job: string, name: string, n: number, damage: Damage = 'none') {
    const shard = await inputShard(name, n, damage);
    await putShard(s3, input, `shards/${name}.tar`, shard.tar);
    return { shard, job: makeShardJob(job, `s3://${input}/shards/${name}.tar`, `s3://${output}/runs/${job}/`, name) };
  }

  it('writes attempt-scoped outputs and the done marker last; a later attempt publishes nothing and removes its own', async () => {
    const { shard, job } = await shardJob('j1', 'alpha', 25);
    const first = await runShardJob(job, options({ samplesPerShard: 5, attemptId: 'a1-00000001' }));
    assert.equal(first.published, true);
    assert.deepEqual(
      first.done.curated.map((c) => [c.key, c.samples]),
      [
        ['runs/j1/curated/alpha~a1-00000001-00000.tar', 5],
        ['runs/j1/curated/alpha~a1-00000001-00001.tar', 5],
        ['runs/j1/curated/alpha~a1-00000001-00002.tar', 3],
      ],
    );
    assert.deepEqual([first.done.records, first.done.accepted, first.done.rejected], [25, 13, 12]);
    assert.deepEqual(first.done.reasons, { below_threshold: 12 });
    assert.deepEqual(first.done.rejects, { key: 'runs/j1/rejects/alpha~a1-00000001.jsonl', events: 12 });
    const marker = (await getJson(s3, output, doneKey(jobFolder(job.output), 'alpha'))) as unknown as ShardDone;
    assert.equal(marker.records, 25);
    assert.equal(marker.attemptId, 'a1-00000001');
    assert.deepEqual(
      { ...marker.identity, etag: undefined },
      { bucket: input, key: 'shards/alpha.tar', size: shard.tar.length, etag: undefined },
    );
    assert.match(marker.identity!.etag, /^"[0-9a-f]+"$/);
    const keysAfterFirst = (await listAll(s3, output, 'runs/j1/')).map((o) => o.Key!).sort();

    // The same job again, cut differently (another samples-per-shard): it finds the done marker at the end, keeps
    // the first attempt's outputs and removes its own.
    const second = await runShardJob(job, options({ samplesPerShard: 20, attempt: 2 }));
    assert.equal(second.published, false);
    assert.equal(second.done.attemptId, 'a1-00000001', "the first attempt's marker");
    assert.deepEqual((await listAll(s3, output, 'runs/j1/')).map((o) => o.Key!).sort(), keysAfterFirst);
    const ids = await curatedIdsUnder(s3, output, 'runs/j1/');
    const rejected = (await rejectEventsUnder(s3, output, 'runs/j1/')).map((e) => e.id);
    assert.deepEqual(
      [...counts([...ids, ...rejected]).values()].filter((n) => n !== 1),
      [],
      'no id twice',
    );
    assert.deepEqual(new Set(ids), new Set(shard.accepts));
    assert.deepEqual(new Set([...ids, ...rejected]), new Set(shard.ids));
  });

  it('a job naming another size or ETag than the object has is shard_input_changed, and writes nothing', async () => {
    const { job } = await shardJob('j6', 'moved', 4);
    const stale = makeShardJob(job.job, job.input, job.output, job.shard, { size: 10, etag: '"0123"' });
    await assert.rejects(
      runShardJob(stale, options()),
      (e: unknown) => (e as FilterError).code === 'shard_input_changed',
    );
    assert.deepEqual(await listAll(s3, output, 'runs/j6/'), []);
  });

  for (const [damage, kind] of [
    ['truncated-tail', 'truncated_shard'],
    ['corrupt-header', 'corrupt_shard'],
    ['undecodable-image', undefined],
  ] as const) {
    it(`a shard with ${damage} finishes with rejects for what cannot be read`, async () => {
      const name = `d-${damage}`;
      const { shard, job } = await shardJob('j2', name, 12, damage);
      const { done } = await runShardJob(job, options());
      const events = await rejectEventsUnder(s3, output, `runs/j2/rejects/${name}~`);
      const ids = await curatedIdsUnder(s3, output, `runs/j2/curated/${name}~`);
      assert.deepEqual(new Set(ids), new Set(shard.accepts));
      assert.equal(
        done.records,
        shard.ids.length + shard.unreadable.length,
        'each readable sample + one per unreadable part',
      );
      assert.equal(done.accepted + done.rejected, done.records);
      assert.equal(ids.length + events.length, done.records, 'every record once in the outputs');
      const unreadable = events.filter((e) => kind && e.reasons.some((r) => r.detail?.kind === kind));
      assert.equal(unreadable.length, kind ? 1 : 0);
      if (kind) {
        assert.equal(unreadable[0]!.reasons[0]!.code, 'invalid_record');
        assert.match(
          unreadable[0]!.reasons[0]!.message,
          new RegExp(`s3://${input}/shards/${name}\\.tar is unreadable from byte \\d+`),
        );
        assert.equal((unreadable[0]!.source as { path?: string }).path, job.input, 'the reject names the input shard');
      } else {
        assert.equal(done.reasons.undecodable_image, 1);
      }
    });
  }

  it('a shard with nothing rejected still gets its (empty) rejects file', async () => {
    const { job } = await shardJob('j5', 'lucky', 1);
    const { done } = await runShardJob(job, options());
    assert.deepEqual([done.records, done.accepted, done.rejects.events], [1, 1, 0]);
    const keys = (await listAll(s3, output, 'runs/j5/')).map((o) => [o.Key!, o.Size]);
    assert.deepEqual(
      keys.find(([k]) => k === done.rejects.key),
      [done.rejects.key, 0],
    );
  });

  it('a missing input shard is shard_input_missing, and nothing is written', async () => {
    const job = makeShardJob('j3', `s3://${input}/shards/nope.tar`, `s3://${output}/runs/j3/`, 'nope');
    await assert.rejects(
      runShardJob(job, options()),
      (e: unknown) => (e as FilterError).code === 'shard_input_missing',
    );
    assert.deepEqual(await listAll(s3, output, 'runs/j3/'), []);
  });

  it('a job stopped mid-shard marks nothing done and leaves no rejects object', async () => {
    const { job } = await shardJob('j4', 'slow', 40);
    const abort = new AbortController();
    let written = 0;
    const scorer = new FastScorer(8, 40);
    const run = runShardJob(
      job,
      options({
        scorer,
        intake: new Intake({}, scorer.preprocess),
        samplesPerShard: 4,
        batchSize: 4,
        abort: abort.signal,
        logger: new Logger(({ msg }) => {
          if (msg === 'curated shard written' && ++written > 0) abort.abort();
        }),
      }),
    );
    await assert.rejects(run, (e: unknown) => e instanceof FilterError && e.code === 'shard_job_incomplete');
    assert.ok(written > 0, 'a curated shard was written before the stop');
    assert.deepEqual(
      (await listAll(s3, output, 'runs/j4/')).map((o) => o.Key!),
      [],
      'the stopped attempt removed its own outputs: no curated shard, no rejects object, no done marker',
    );
  });
});
