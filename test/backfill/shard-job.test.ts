/**
 * The shard-job message and the streamed tar reader, without services: a message is checked field by field (every
 * problem a `shard_job_invalid` naming it), and a shard read from a stream in chunks of any size gives exactly the
 * events the file reader gives, hostile shards included (cut off, corrupt header, a member over the limit).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { defaultJobName } from '../../lib/backfill/enqueue.ts';
import {
  hasControlChars,
  jobOutput,
  makeShardJob,
  parseS3Uri,
  parseShardJob,
  printable,
} from '../../lib/backfill/shard-job.ts';
import { readTar, streamTarBytes, type TarEvent } from '../../lib/formats/tar-reader.ts';
import { configFromEnv } from '../../lib/worker/config.ts';
import { FilterError } from '../../lib/types.ts';
import { ustarHeader } from '../sources/ustar.ts';
import { inputShard } from './helpers.ts';

const good = {
  v: 1,
  kind: 'shard-job',
  job: 'datacomp-1',
  input: 's3://pool/shards/00001.tar',
  output: 's3://out/backfill/datacomp-1/',
  shard: '00001',
};

function rejects(body: string, pattern: RegExp) {
  assert.throws(
    () => parseShardJob(body),
    (err: unknown) => err instanceof FilterError && err.code === 'shard_job_invalid' && pattern.test(err.message),
  );
}

test('a shard-job message round-trips; each malformed field is a shard_job_invalid naming it', () => {
  assert.deepEqual(parseShardJob(JSON.stringify(good)), good);
  assert.deepEqual(makeShardJob(good.job, good.input, good.output, good.shard), good);
  assert.deepEqual(parseShardJob(JSON.stringify({ ...good, shard: 'a/b/00001' })).shard, 'a/b/00001');
  rejects('not json', /not JSON/);
  rejects('[1]', /not a JSON object/);
  rejects(JSON.stringify({ ...good, kind: 'pair' }), /kind is "pair"/);
  rejects(JSON.stringify({ ...good, v: 2 }), /version 2/);
  rejects(JSON.stringify({ ...good, job: 7 }), /job must be a string/);
  rejects(JSON.stringify({ ...good, job: '../x' }), /not a valid job name/);
  rejects(JSON.stringify({ ...good, shard: '../etc' }), /not a valid shard name/);
  rejects(JSON.stringify({ ...good, shard: 'a//b' }), /not a valid shard name/);
  rejects(JSON.stringify({ ...good, input: 'https://x/y.tar' }), /input .* is not s3:\/\/bucket\/key\.tar/);
  rejects(JSON.stringify({ ...good, input: 's3://pool/shards/00001.zip' }), /not s3:\/\/bucket\/key\.tar/);
  rejects(
    JSON.stringify({ ...good, output: 's3://out/backfill/other/' }),
    /output .* is not s3:\/\/bucket\/\[prefix\/\]datacomp-1\//,
  );
  // The input's identity as enqueue listed it: both or neither, of the right types.
  const pinned = { ...good, size: 10240, etag: '"abc"' };
  assert.deepEqual(parseShardJob(JSON.stringify(pinned)), pinned);
  assert.deepEqual(makeShardJob(good.job, good.input, good.output, good.shard, { size: 10240, etag: '"abc"' }), pinned);
  rejects(JSON.stringify({ ...good, size: 1 }), /size and etag go together/);
  rejects(JSON.stringify({ ...pinned, size: -1 }), /size must be a non-negative integer/);
  rejects(JSON.stringify({ ...pinned, etag: '' }), /etag must be a non-empty string/);
});

test('MLMF_SHARD_MAX_ATTEMPTS, and its former name MLMF_SHARD_MAX_RECEIVES where it is unset', () => {
  const base = { MLMF_SOURCE: 'sqs-shards', MLMF_SQS_QUEUE_URL: 'http://127.0.0.1:1/q' };
  assert.equal(configFromEnv({ ...base, MLMF_SHARD_MAX_ATTEMPTS: '5' }).shardMaxAttempts, 5);
  assert.equal(configFromEnv({ ...base, MLMF_SHARD_MAX_RECEIVES: '4' }).shardMaxAttempts, 4);
  const both = { ...base, MLMF_SHARD_MAX_RECEIVES: '4', MLMF_SHARD_MAX_ATTEMPTS: '2' };
  assert.equal(configFromEnv(both).shardMaxAttempts, 2);
  assert.equal(configFromEnv(base).shardMaxAttempts, undefined, 'the worker defaults it (3)');
});

test('printable escapes what a terminal or a line reader would act on, and nothing else', () => {
  assert.equal(printable('s3://b/ok-key_1.tar'), 's3://b/ok-key_1.tar');
  assert.equal(printable('a\rb\nc\u2028d\u2029e'), 'a\\u{000d}b\\u{000a}c\\u{2028}d\\u{2029}e');
  assert.equal(printable('\x1b[31mred\x1b[0m'), '\\u{001b}[31mred\\u{001b}[0m');
  assert.equal(printable('x\u202ey\u0085z\u007f'), 'x\\u{202e}y\\u{0085}z\\u{007f}');
  assert.equal(printable('é ü 日本'), 'é ü 日本');
  assert.ok(hasControlChars('a\u2028b') && hasControlChars('a\rb') && !hasControlChars('a b'));
});

test('output roots, S3 URIs and default job names', () => {
  assert.equal(jobOutput('s3://out', 'j'), 's3://out/j/');
  assert.equal(jobOutput('s3://out/', 'j'), 's3://out/j/');
  assert.equal(jobOutput('s3://out/runs', 'j'), 's3://out/runs/j/');
  assert.throws(
    () => jobOutput('s3://out/', 'bad name'),
    (e: unknown) => (e as FilterError).code === 'invalid_job_name',
  );
  assert.throws(
    () => parseS3Uri('/local/path'),
    (e: unknown) => (e as FilterError).code === 'invalid_s3_uri',
  );
  assert.deepEqual(parseS3Uri('s3://bkt/k/x.tar'), { bucket: 'bkt', key: 'k/x.tar' });
  const name = defaultJobName('s3://pool/datacomp/medium/');
  assert.match(name, /^medium-[0-9a-f]{8}$/);
  assert.equal(defaultJobName('s3://pool/datacomp/medium/'), name, 'the same input, the same job');
  assert.notEqual(defaultJobName('s3://pool/other/medium/'), name);
  assert.match(defaultJobName('/tmp/my list.txt'), /^my_list-[0-9a-f]{8}$/);
});

/** A stream of `data` in chunks of random sizes between 1 and `max` bytes. */
function chunked(data: Buffer, max: number, seed: number): Readable {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2 ** 31), s);
  const parts: Buffer[] = [];
  for (let i = 0; i < data.length;) {
    const n = 1 + (rand() % max);
    parts.push(data.subarray(i, i + n));
    i += n;
  }
  return Readable.from(parts);
}

async function events(input: Parameters<typeof readTar>[0], max: number): Promise<TarEvent[]> {
  const out: TarEvent[] = [];
  for await (const e of readTar(input, max)) out.push(e);
  return out;
}

test('a shard streamed in chunks of any size reads exactly as the same bytes from a file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-tarstream-'));
  const shards = [
    (await inputShard('whole', 5)).tar,
    (await inputShard('cut', 5, 'truncated-tail')).tar,
    (await inputShard('bad', 6, 'corrupt-header')).tar,
    // A member whose header claims 8 GiB, then the file ends: reported without data, then the shard as truncated.
    Buffer.concat([(await inputShard('big', 2)).tar.subarray(0, -1024), ustarHeader('big-2.png', 8 * 1024 ** 3)]),
    Buffer.alloc(0),
    Buffer.alloc(300),
  ];
  for (const [i, tar] of shards.entries()) {
    const path = join(dir, `${i}.tar`);
    writeFileSync(path, tar);
    const fromFile = await events(path, 64 * 1024 * 1024);
    for (const max of [1, 7, 512, 513, 4096]) {
      const fromStream = await events(streamTarBytes(chunked(tar, max, i + max)), 64 * 1024 * 1024);
      assert.deepEqual(fromStream, fromFile, `shard ${i}, chunks up to ${max} bytes`);
    }
  }
  const kinds = (await Promise.all(shards.map((_, i) => events(join(dir, `${i}.tar`), 1 << 26)))).map((es) =>
    es.filter((e) => e.type === 'unreadable').map((e) => (e as { kind: string }).kind),
  );
  assert.deepEqual(kinds, [[], ['truncated_shard'], ['corrupt_shard'], ['truncated_shard'], [], ['truncated_shard']]);
});

test('a transport error while streaming is thrown, not taken for a damaged shard', async () => {
  const tar = (await inputShard('net', 3)).tar;
  async function* failing() {
    yield tar.subarray(0, 1500);
    throw new FilterError('shard_read_failed', 'connection reset');
  }
  await assert.rejects(
    events(streamTarBytes(failing()), 1 << 26),
    (e: unknown) => (e as FilterError).code === 'shard_read_failed',
  );
  async function* broken() {
    yield tar.subarray(0, 1500);
    throw new Error('EIO');
  }
  const es = await events(streamTarBytes(broken()), 1 << 26);
  assert.equal(es.at(-1)?.type, 'unreadable', 'an uncoded read error is the shard unreadable from there');
});
