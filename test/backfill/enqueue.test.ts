/**
 * `mlm-filter enqueue` and `mlm-filter job status` against the local SQS and S3 servers, through the real CLI where
 * the output is what is checked: a prefix listed page by page (nested folders, non-shards ignored), one message per
 * shard, the manifest; re-running after a partial run sends only the shards without a done marker, after a complete
 * run nothing; --dry-run sends and writes nothing; bad inputs are one-line coded errors with exit 2.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import { CreateQueueCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { enqueue, type JobManifest } from '../../lib/backfill/enqueue.ts';
import { runShardJob } from '../../lib/backfill/runner.ts';
import { parseShardJob, type ShardJob } from '../../lib/backfill/shard-job.ts';
import { Intake } from '../../lib/intake/index.ts';
import { Policy, parseThresholds } from '../../lib/policy/index.ts';
import {
  CREDENTIALS,
  FastScorer,
  REGION,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  createBucket,
  getJson,
  listAll,
  needServices,
  s3Client,
  uniq,
} from '../stream/helpers.ts';
import { inputShard, putShard } from './helpers.ts';

const skip = await needServices('s3', 'sqs');
const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;

/** Runs the CLI; resolves with its exit code and output (a non-zero exit is not an exception here). */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env, MLMF_S3_ENDPOINT: S3_ENDPOINT, MLMF_SQS_ENDPOINT: SQS_ENDPOINT };
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin, ...args], { env, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('enqueue and job status', { skip }, () => {
  let s3: S3Client;
  let sqs: SQSClient;
  let pool: string;
  let out: string;
  const names = ['a/s0', 'a/s1', 'a/s2', 'b/s0', 'b/s1', 'b/s2', 'b/s3', 'top0', 'top1'];
  before(async () => {
    s3 = s3Client();
    sqs = new SQSClient({ region: REGION, credentials: CREDENTIALS, endpoint: SQS_ENDPOINT });
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
  after(() => {
    s3?.destroy();
    sqs?.destroy();
  });

  const newQueue = async () => (await sqs.send(new CreateQueueCommand({ QueueName: uniq('jobs') }))).QueueUrl!;

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
    const queueUrl = await newQueue();
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
    assert.deepEqual(j, {
      v: 1,
      kind: 'shard-job',
      job: 'paged',
      input: `s3://${pool}/ds/b/s3.tar`,
      output: `s3://${out}/runs/paged/`,
      shard: 'b/s3',
    });
    const manifest = (await getJson(s3, out, 'runs/paged/manifest.json')) as unknown as JobManifest;
    assert.deepEqual(manifest.counts, { shards: 9, done: 0, sent: 9 });
    assert.deepEqual(
      manifest.shards.map((s) => s.shard),
      names,
    );
    assert.ok(manifest.shards.every((s) => (s.bytes ?? 0) > 0));
  });

  it('after a partial run sends only the unfinished shards; after a complete run nothing; status counts them', async () => {
    const queueUrl = await newQueue();
    const args = ['--input', `s3://${pool}/ds/`, '--queue', queueUrl, '--output', `s3://${out}/cli`, '--job', 'resume'];
    const first = await cli(['enqueue', ...args]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /job resume: 9 shards, 0 already done, sent 9 to /);
    const jobs = await receiveAll(queueUrl);
    // A partial run: four shards finished.
    for (const j of jobs.filter((x) => ['a/s0', 'a/s2', 'b/s1', 'top1'].includes(x.shard))) await runJob(j);
    const second = await cli(['enqueue', ...args]);
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
    const partial = await cli([
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
    const third = await cli(['enqueue', ...args]);
    assert.match(third.stdout, /job resume: 9 shards, 9 already done, sent 0 to /);
    assert.deepEqual(await receiveAll(queueUrl), [], 'nothing sent after completion');
    const done = await cli(['job', 'status', '--job', 'resume', '--output', `s3://${out}/cli/`, '--json']);
    const status = JSON.parse(done.stdout) as {
      shards: Record<string, number | null>;
      records: number;
      etaSeconds: number;
    };
    assert.deepEqual(status.shards, { total: 9, done: 9, failed: 0, pending: 0, inFlight: null });
    assert.equal(status.records, 36);
    assert.equal(status.etaSeconds, 0);
    const manifest = (await getJson(s3, out, 'cli/resume/manifest.json')) as unknown as JobManifest;
    assert.deepEqual(manifest.counts, { shards: 9, done: 9, sent: 0 });
  });

  it('--dry-run sends and writes nothing; bad input is a coded error with exit 2', async () => {
    const queueUrl = await newQueue();
    const dry = await cli([
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

    const empty = await cli([
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
    const badOut = await cli(['enqueue', '--input', `s3://${pool}/ds/`, '--queue', queueUrl, '--output', '/tmp/out']);
    assert.equal(badOut.code, 2);
    assert.match(badOut.stderr, /\[invalid_s3_uri\]: --output "\/tmp\/out" is not s3:\/\/bucket\/key/);
    const noJob = await cli(['job', 'status', '--job', 'never', '--output', `s3://${out}/x`]);
    assert.equal(noJob.code, 2);
    assert.match(noJob.stderr, /\[job_not_found\]: no job never under s3:\/\/\S+\/x/);
    const noQueue = await cli(['enqueue', '--input', `s3://${pool}/ds/`, '--output', `s3://${out}/x`]);
    assert.equal(noQueue.code, 2);
    assert.match(noQueue.stderr, /\[missing_option\].*--queue/);
  });
});
