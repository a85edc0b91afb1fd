/**
 * `mlm-filter enqueue` and `mlm-filter job status` against the local SQS and S3 servers, through the real CLI where
 * the output is what is checked: a prefix listed page by page (nested folders, non-shards ignored), one message per
 * shard, the manifest; re-running after a partial run sends only the shards without a done marker, after a complete
 * run nothing; --dry-run sends and writes nothing; bad inputs are one-line coded errors with exit 2.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import { ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { enqueue, type JobManifest } from '../../lib/backfill/enqueue.ts';
import { runShardJob } from '../../lib/backfill/runner.ts';
import { parseShardJob, type ShardJob } from '../../lib/backfill/shard-job.ts';
import { Intake } from '../../lib/intake/index.ts';
import { Policy, parseThresholds } from '../../lib/policy/index.ts';
import { FastScorer, createBucket, getJson, listAll, needServices, uniq } from '../stream/helpers.ts';
import { BIN, ENDPOINTS, inputShard, newQueue, putShard, runCli, useQueueClients } from './helpers.ts';

const skip = await needServices('s3', 'sqs');

describe('enqueue and job status', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  let pool: string;
  let out: string;
  const names = ['a/s0', 'a/s1', 'a/s2', 'b/s0', 'b/s1', 'b/s2', 'b/s3', 'top0', 'top1'];
  useQueueClients((c) => ({ s3, sqs } = c));
  before(async () => {
    pool = uniq('pool');
    out = uniq('out');
    await createBucket(s3, pool);
    await createBucket(s3, out);
    for (const [i, name] of names.entries()) {
      await putShard(s3, pool, `ds/${name}.tar`, (await inputShard(`x${i}`, 4)).tar);
    }
    await putShard(s3, pool, 'ds/README.txt', Buffer.from('not a shard'));
    await putShard(s3, pool, 'elsewhere/z.tar', (await inputShard('z', 2)).tar);
  });

  async function receiveAll(url: string): Promise<ShardJob[]> {
    const jobs: ShardJob[] = [];
    for (;;) {
      const res = await sqs.send(
        new ReceiveMessageCommand({
          QueueUrl: url,
          MaxNumberOfMessages: 10,
          WaitTimeSeconds: 1,
          VisibilityTimeout: 60,
        }),
      );
      if (!res.Messages?.length) return jobs;
      jobs.push(...res.Messages.map((m) => parseShardJob(m.Body!)));
    }
  }

  async function runJob(job: ShardJob): Promise<void> {
    const scorer = new FastScorer(8);
    const policy = new Policy({ thresholds: parseThresholds('itm>=50') });
    await runShardJob(job, { s3, scorer, policy, intake: new Intake({}, scorer.preprocess) });
  }

  it('lists a prefix page by page, names shards relative to it, sends each once and writes the manifest', async () => {
    const queueUrl = await newQueue(sqs, 'jobs');
    const r = await enqueue({
      s3,
      sqs,
      input: `s3://${pool}/ds`,
      queueUrl,
      output: `s3://${out}/runs/`,
      job: 'paged',
      pageSize: 4,
    });
    assert.deepEqual(
      r.sent.map((s) => s.shard),
      names,
    );
    const jobs = await receiveAll(queueUrl);
    assert.deepEqual(jobs.map((j) => j.shard).sort(), names);
    const j = jobs.find((x) => x.shard === 'b/s3')!;
    assert.deepEqual(
      { ...j, etag: undefined },
      {
        v: 1,
        kind: 'shard-job',
        job: 'paged',
        input: `s3://${pool}/ds/b/s3.tar`,
        output: `s3://${out}/runs/paged/`,
        shard: 'b/s3',
        size: (await inputShard('x6', 4)).tar.length,
        etag: undefined,
      },
    );
    assert.match(j.etag!, /^"[0-9a-f]{32}"$/, "the input's identity as listed");
    const manifest = (await getJson(s3, out, 'runs/paged/manifest.json')) as unknown as JobManifest;
    assert.deepEqual(manifest.counts, { shards: 9, done: 0, sent: 9, skipped: 0 });
    assert.deepEqual(
      manifest.shards.map((s) => s.shard),
      names,
    );
    assert.ok(manifest.shards.every((s) => (s.bytes ?? 0) > 0));
  });

  it('after a partial run sends only the unfinished shards; after a complete run nothing; status counts them', async () => {
    const queueUrl = await newQueue(sqs, 'jobs');
    const args = ['--input', `s3://${pool}/ds/`, '--queue', queueUrl, '--output', `s3://${out}/cli`, '--job', 'resume'];
    const first = await runCli(['enqueue', ...args]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /job resume: 9 shards, 0 already done, sent 9 to /);
    const jobs = await receiveAll(queueUrl);
    // A partial run: four shards finished.
    for (const j of jobs.filter((x) => ['a/s0', 'a/s2', 'b/s1', 'top1'].includes(x.shard))) await runJob(j);
    const second = await runCli(['enqueue', ...args]);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /job resume: 9 shards, 4 already done, sent 5 to /);
    const resent = (await receiveAll(queueUrl)).map((j) => j.shard).sort();
    assert.deepEqual(resent, ['a/s1', 'b/s0', 'b/s2', 'b/s3', 'top0']);
    assert.deepEqual(
      second.stdout
        .split('\n')
        .filter((l) => l.startsWith('sent '))
        .map((l) => l.split(' ')[1]),
      resent,
      'it prints what it sent',
    );
    const partial = await runCli([
      'job',
      'status',
      '--job',
      'resume',
      '--output',
      `s3://${out}/cli/`,
      '--queue',
      queueUrl,
    ]);
    assert.equal(partial.code, 0, partial.stderr);
    assert.match(
      partial.stdout,
      /^job resume \(s3:\/\/\S+\/cli\/resume\/\): 4\/9 shards done, 5 in flight, 5 pending, 0 failed$/m,
    );
    assert.match(partial.stdout, /^pairs 16: accepted 8, rejected 8 \(accept rate 50\.0%\)$/m);

    for (const j of jobs.filter((x) => resent.includes(x.shard))) await runJob(j);
    const third = await runCli(['enqueue', ...args]);
    assert.match(third.stdout, /job resume: 9 shards, 9 already done, sent 0 to /);
    assert.deepEqual(await receiveAll(queueUrl), [], 'nothing sent after completion');
    const done = await runCli(['job', 'status', '--job', 'resume', '--output', `s3://${out}/cli/`, '--json']);
    const status = JSON.parse(done.stdout) as {
      shards: Record<string, number | null>;
      records: number;
      etaSeconds: number;
    };
    assert.deepEqual(status.shards, { total: 9, done: 9, failed: 0, pending: 0, inFlight: null });
    assert.equal(status.records, 36);
    assert.equal(status.etaSeconds, 0);
    const manifest = (await getJson(s3, out, 'cli/resume/manifest.json')) as unknown as JobManifest;
    assert.deepEqual(manifest.counts, { shards: 9, done: 9, sent: 0, skipped: 0 });
  });

  it('--dry-run sends and writes nothing; bad input is a coded error with exit 2', async () => {
    const queueUrl = await newQueue(sqs, 'jobs');
    const dry = await runCli([
      'enqueue',
      '--input',
      `s3://${pool}/ds/a/`,
      '--queue',
      queueUrl,
      '--output',
      `s3://${out}/dry`,
      '--dry-run',
    ]);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /^would send s0 s3:\/\/\S+\/ds\/a\/s0\.tar$/m);
    assert.match(dry.stdout, /job a-[0-9a-f]{8}: 3 shards, 0 already done, would send 3 to /);
    assert.deepEqual(await receiveAll(queueUrl), []);
    assert.deepEqual(await listAll(s3, out, 'dry/'), []);

    const empty = await runCli([
      'enqueue',
      '--input',
      `s3://${pool}/nothing/`,
      '--queue',
      queueUrl,
      '--output',
      `s3://${out}/x`,
    ]);
    assert.equal(empty.code, 2);
    assert.match(empty.stderr, /^mlm-filter: error \[shard_list_empty\]: no \.tar shards in s3:\/\/\S+\/nothing\/$/m);
    const badOut = await runCli([
      'enqueue',
      '--input',
      `s3://${pool}/ds/`,
      '--queue',
      queueUrl,
      '--output',
      '/tmp/out',
    ]);
    assert.equal(badOut.code, 2);
    assert.match(badOut.stderr, /\[invalid_s3_uri\]: --output "\/tmp\/out" is not s3:\/\/bucket\/key/);
    const noJob = await runCli(['job', 'status', '--job', 'never', '--output', `s3://${out}/x`]);
    assert.equal(noJob.code, 2);
    assert.match(noJob.stderr, /\[job_not_found\]: no job never under s3:\/\/\S+\/x/);
    const noQueue = await runCli(['enqueue', '--input', `s3://${pool}/ds/`, '--output', `s3://${out}/x`]);
    assert.equal(noQueue.code, 2);
    assert.match(noQueue.stderr, /\[missing_option\].*--queue/);
  });

  it('bad keys are listed escaped and skipped, the rest sent; re-runs converge to all done', async () => {
    const queueUrl = await newQueue(sqs, 'jobs');
    const good = Array.from({ length: 17 }, (_, i) => `g${String(i).padStart(2, '0')}`);
    for (const name of good) await putShard(s3, pool, `bad/${name}.tar`, (await inputShard(name, 2)).tar);
    const bad = ['bad/x\ry.tar', 'bad/x\u2028y.tar', 'bad/x\u2029y.tar', 'bad/.tar', `bad/${'n'.repeat(600)}.tar`];
    bad.push('bad/e\x1b[31mred\x1b[0m.tar');
    for (const key of bad) await putShard(s3, pool, key, (await inputShard('bad', 2)).tar);
    const args = ['--input', `s3://${pool}/bad/`, '--queue', queueUrl, '--output', `s3://${out}/bk`, '--job', 'bad'];
    const first = await runCli(['enqueue', ...args]);
    assert.equal(first.code, 2, first.stderr);
    for (const text of [first.stdout, first.stderr]) {
      // eslint-disable-next-line no-control-regex -- what must not reach the terminal
      assert.doesNotMatch(text, /[\u0000-\u0009\u000b-\u001f\u007f\u2028\u2029]/, 'no raw control characters printed');
    }
    const skipped = first.stderr.split('\n').filter((l) => l.startsWith('mlm-filter: skipped '));
    assert.equal(skipped.length, 6, first.stderr);
    assert.ok(skipped.some((l) => l.includes('bad/x\\u{000d}y.tar: the key holds a line terminator')));
    assert.ok(skipped.some((l) => l.includes('bad/x\\u{2028}y.tar')));
    assert.ok(skipped.some((l) => l.includes('bad/e\\u{001b}[31mred\\u{001b}[0m.tar')));
    assert.ok(skipped.some((l) => l.includes('bad/.tar: the key names no shard')));
    assert.ok(skipped.some((l) => /: its output name is 600 characters, over 512$/.test(l)));
    assert.match(first.stderr, /^mlm-filter: error \[input_keys_skipped\]: 6 input keys cannot be shard jobs/m);
    assert.doesNotMatch(first.stderr, /^\s+at /m, 'no stack');
    assert.match(first.stdout, /job bad: 17 shards, 0 already done, sent 17 to \S+, skipped 6 unusable keys/);
    const jobs = await receiveAll(queueUrl);
    assert.deepEqual(jobs.map((j) => j.shard).sort(), good);
    const manifest = (await getJson(s3, out, 'bk/bad/manifest.json')) as unknown as JobManifest;
    assert.equal(manifest.shards.length, 17);
    assert.equal(manifest.skipped?.length, 6);

    for (const j of jobs) await runJob(j);
    const again = await runCli(['enqueue', ...args]);
    assert.equal(again.code, 2);
    assert.match(again.stdout, /job bad: 17 shards, 17 already done, sent 0 to /);
    assert.deepEqual(await receiveAll(queueUrl), []);
    const status = await runCli(['job', 'status', '--job', 'bad', '--output', `s3://${out}/bk`]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /: 17\/17 shards done, 0 pending, 0 failed$/m);
    assert.match(status.stdout, /^skipped by enqueue: 6 input keys that cannot be shard jobs/m);
  });

  it('a job name reused for other inputs, or for inputs changed in place, is refused', async () => {
    const queueUrl = await newQueue(sqs, 'jobs');
    for (const name of ['s0', 's1']) {
      await putShard(s3, pool, `reuse/a/${name}.tar`, (await inputShard(`a${name}`, 2)).tar);
      await putShard(s3, pool, `reuse/b/${name}.tar`, (await inputShard(`b${name}`, 3)).tar);
    }
    const base = ['--queue', queueUrl, '--output', `s3://${out}/ru`, '--job', 'one'];
    const first = await runCli(['enqueue', '--input', `s3://${pool}/reuse/a/`, ...base]);
    assert.equal(first.code, 0, first.stderr);
    const jobs = await receiveAll(queueUrl);
    await runJob(jobs.find((j) => j.shard === 's0')!);

    const other = await runCli(['enqueue', '--input', `s3://${pool}/reuse/b/`, ...base]);
    assert.equal(other.code, 2, other.stdout);
    assert.match(
      other.stderr,
      new RegExp(
        `^mlm-filter: error \\[job_input_mismatch\\]: job one at s3://${out}/ru/one/ holds other inputs: ` +
          `shard s0 is of s3://${pool}/reuse/a/s0\\.tar \\(size \\d+, ETag "[0-9a-f]+"\\), ` +
          `not s3://${pool}/reuse/b/s0\\.tar \\(size \\d+, ETag "[0-9a-f]+"\\) \\(and 1 more\\); give these inputs another --job$`,
        'm',
      ),
    );
    assert.deepEqual(await receiveAll(queueUrl), [], 'nothing sent');

    // The same keys, rewritten: the job's shards were of the old objects.
    await putShard(s3, pool, 'reuse/a/s1.tar', (await inputShard('changed', 5)).tar);
    const changed = await runCli(['enqueue', '--input', `s3://${pool}/reuse/a/`, ...base]);
    assert.equal(changed.code, 2);
    assert.match(
      changed.stderr,
      /\[job_input_mismatch\]: .*shard s1 is of s3:\/\/\S+\/reuse\/a\/s1\.tar \(size \d+, ETag .*\(the object changed\)/,
    );
    // The queued message of the old s1 names the old object: the worker refuses to read the new one.
    await assert.rejects(
      runJob(jobs.find((j) => j.shard === 's1')!),
      (e: unknown) => (e as { code?: string }).code === 'shard_input_changed',
    );
    const status = await runCli(['job', 'status', '--job', 'one', '--output', `s3://${out}/ru`, '--json']);
    assert.deepEqual((JSON.parse(status.stdout) as { shards: { done: number } }).shards.done, 1);
  });

  it('a corrupt manifest is a coded error, not a stack', async () => {
    const queueUrl = await newQueue(sqs, 'jobs');
    for (const [job, body] of [
      ['broken', '{"v":1,"kind":"backfill-manifest","shards":[{"shard":'],
      ['alien', '{"kind":"something-else"}'],
    ]) {
      await putShard(s3, out, `cm/${job}/manifest.json`, Buffer.from(body!));
      const args = ['--input', `s3://${pool}/ds/a/`, '--queue', queueUrl, '--output', `s3://${out}/cm`, '--job', job!];
      for (const run of [
        await runCli(['enqueue', ...args]),
        await runCli(['job', 'status', '--job', job!, '--output', `s3://${out}/cm`]),
      ]) {
        assert.equal(run.code, 2, run.stderr);
        assert.match(
          run.stderr,
          new RegExp(`^mlm-filter: error \\[job_object_invalid\\]: s3://${out}/cm/${job}/manifest\\.json is not`, 'm'),
        );
        assert.doesNotMatch(run.stderr, /^\s+at /m, 'no stack');
      }
    }
    assert.deepEqual(await receiveAll(queueUrl), [], 'nothing sent');
  });

  it('enqueue | head -n 1 ends quietly on EPIPE, and every shard is still sent', async () => {
    const queueUrl = await newQueue(sqs, 'jobs');
    for (let i = 0; i < 25; i++) await putShard(s3, pool, `many/m${i}.tar`, (await inputShard(`m${i}`, 1)).tar);
    const args = ['--input', `s3://${pool}/many/`, '--queue', queueUrl, '--output', `s3://${out}/ep`, '--job', 'ep'];
    const quoted = [process.execPath, BIN, 'enqueue', ...args].map((a) => `'${a}'`).join(' ');
    const env = { ...process.env, ...ENDPOINTS };
    const { stdout, stderr } = await promisify(execFile)(
      'bash',
      ['-c', `${quoted} | head -n 1; echo "enqueue exit \${PIPESTATUS[0]}" >&2`],
      { env, timeout: 120_000 },
    );
    assert.match(stdout, /^sent m0 s3:\/\/\S+\/many\/m0\.tar\n$/);
    assert.match(stderr, /enqueue exit 0$/m, stderr);
    assert.doesNotMatch(stderr, /EPIPE|Error|^\s+at /m);
    assert.equal((await receiveAll(queueUrl)).length, 25, 'the work went on to the end');
  });
});
