/**
 * `mlm-filter publish` fed what a careless crawler writes, against the local Kafka and ElasticMQ: records SQS cannot
 * carry (too large, U+FFFF, an id no FIFO group can be) refused by line before anything is sent, a pair id given
 * twice, CRLF and gzip files, an empty file, a queue that does not exist or goes away mid-publish (the error says
 * up to which line records are published), and a record's terminal controls never reaching the terminal raw.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { CreateQueueCommand, DeleteQueueCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { kafkaTarget, publish, sqsTarget, type PublishTarget, type RefusedRecord } from '../../lib/publish/index.ts';
import { parseRecord } from '../../lib/pair/index.ts';
import { FilterError } from '../../lib/types.ts';
import type { Kafka } from 'kafkajs';
import {
  CREDENTIALS,
  REGION,
  SQS_ENDPOINT,
  createTopics,
  kafkaClient,
  makeRecords,
  needServices,
  readTopicToEnd,
  uniq,
} from '../stream/helpers.ts';

const skip = await needServices('kafka', 'sqs');
const dir = mkdtempSync(join(tmpdir(), 'mlmf-publish-hostile-'));
const fileOf = (name: string, body: string | Buffer) => {
  const path = join(dir, name);
  writeFileSync(path, body);
  return path;
};
const jsonl = (records: object[]) => records.map((r) => JSON.stringify(r)).join('\n') + '\n';

async function refusedBy(input: string, target: PublishTarget, invalid: 'fail' | 'skip' = 'fail') {
  const refused: RefusedRecord[] = [];
  const result = await publish({ input, invalid, onRefused: (r) => refused.push(r) }, target).catch(
    (err: FilterError) => err,
  );
  return { refused, result };
}

describe('publish to SQS, hostile records', { skip }, () => {
  const sqs = () => new SQSClient({ endpoint: SQS_ENDPOINT, region: REGION, credentials: CREDENTIALS });
  const admin = sqs();
  after(() => admin.destroy());
  const queue = async (fifo = false) =>
    (
      await admin.send(
        new CreateQueueCommand({
          QueueName: `${uniq('pub-hostile')}${fifo ? '.fifo' : ''}`,
          ...(fifo ? { Attributes: { FifoQueue: 'true' } } : {}),
        }),
      )
    ).QueueUrl!;
  const waiting = async (url: string) =>
    (await admin.send(new ReceiveMessageCommand({ QueueUrl: url, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 })))
      .Messages ?? [];

  it('a message over 256 KiB or holding U+FFFF is refused by line and nothing of the file is sent', async () => {
    const [a, b, c] = await makeRecords(uniq('big'), 3);
    const big = { ...b!, image: { base64: Buffer.alloc(200_000, 7).toString('base64') } };
    const input = fileOf('sqs-big.jsonl', jsonl([a!, big, { ...c!, caption: 'ok \uffff' }]));
    const url = await queue();
    const target = await sqsTarget(sqs(), url);
    const { refused, result } = await refusedBy(input, target);
    await target.close();
    assert.ok(result instanceof FilterError && result.code === 'publish_invalid_records', String(result));
    assert.deepEqual(
      refused.map((r) => r.line),
      [2, 3],
    );
    assert.match(refused[0]!.message, /record is 26\d{4} bytes, over the 262144 bytes SQS queue/);
    assert.match(refused[1]!.message, /U\+FFFE or U\+FFFF/);
    assert.equal((await waiting(url)).length, 0, 'a record was sent');
  });

  it('a file with a UTF-8 byte order mark: its first message parses as the worker reads SQS (a string)', async () => {
    const records = await makeRecords(uniq('bom'), 2);
    const input = fileOf('bom.jsonl', '\ufeff' + jsonl(records));
    const url = await queue();
    const target = await sqsTarget(sqs(), url);
    assert.deepEqual(await publish({ input }, target), { records: 2, published: 2, refused: 0 });
    await target.close();
    const bodies: string[] = [];
    for (let i = 0; i < 10 && bodies.length < 2; i++) bodies.push(...(await waiting(url)).map((m) => m.Body!));
    assert.deepEqual(bodies.sort(), records.map((r) => JSON.stringify(r)).sort());
    for (const raw of bodies) parseRecord({ raw, origin: { kind: 'sqs', queueUrl: url, messageId: 'm' } });
  });

  it('a FIFO queue refuses, by line, a pair id that cannot be a message group', async () => {
    const [a] = await makeRecords(uniq('fifo'), 1);
    const input = fileOf('fifo.jsonl', jsonl([a!, { ...a!, id: 'has space' }]));
    const target = await sqsTarget(sqs(), await queue(true));
    const { refused } = await refusedBy(input, target);
    await target.close();
    assert.deepEqual(refused, [
      { line: 2, message: 'pair id "has space" cannot be a FIFO message group (1-128 printable ASCII characters)' },
    ]);
  });

  it('a queue that does not exist is one coded error before anything is read', async () => {
    const url = (await queue()).replace(/[^/]+$/, uniq('absent'));
    await assert.rejects(sqsTarget(sqs(), url), (err: FilterError) => {
      assert.equal(err.code, 'sqs_queue_unavailable');
      assert.match(err.message, /does not exist/);
      return true;
    });
  });

  it('a queue deleted mid-publish: the error says which lines are published', async () => {
    const records = await makeRecords(uniq('gone'), 520);
    const input = fileOf('gone.jsonl', jsonl(records));
    const url = await queue();
    const real = await sqsTarget(sqs(), url);
    let batches = 0;
    // The first batch (500 records) lands; then the queue is deleted under the publish, as an operator might.
    const target: PublishTarget = {
      ...real,
      send: async (batch) => {
        if (batches++ === 1) await admin.send(new DeleteQueueCommand({ QueueUrl: url }));
        await real.send(batch);
      },
    };
    const { result } = await refusedBy(input, target);
    await real.close();
    assert.ok(result instanceof FilterError, String(result));
    assert.equal(result.code, 'publish_incomplete');
    assert.match(result.message, /failed at line 501: .*the 500 record\(s\) before line 501 are published/);
    assert.deepEqual(result.context, { published: 500, line: 501 });
  });
});

describe('publish to Kafka, careless files', { skip }, () => {
  const kafka = kafkaClient();

  it('a pair id given twice is refused (fail: nothing sent; skip: the first kept)', async () => {
    const topic = uniq('pub-dup');
    const admin = kafka.admin();
    await admin.connect();
    await createTopics(admin, [{ topic }]);
    await admin.disconnect();
    const [a, b] = await makeRecords(uniq('dup'), 2);
    const input = fileOf('dup.jsonl', jsonl([a!, b!, { ...b!, caption: 'another caption, same id' }]));
    const target = await kafkaTarget(kafka, topic);
    try {
      const failed = await refusedBy(input, target);
      assert.equal((failed.result as FilterError).code, 'publish_invalid_records');
      assert.deepEqual(failed.refused, [
        {
          line: 3,
          message: `pair id "${b!.id}" is also on line 2: the worker keys its outputs by id, one would be lost`,
        },
      ]);
      assert.equal((await readTopicToEnd(kafka, topic)).length, 0);
      const skipped = await refusedBy(input, target, 'skip');
      assert.deepEqual(skipped.result, { records: 3, published: 2, refused: 1 });
      const got = await readTopicToEnd(kafka, topic);
      assert.deepEqual(got.map((m) => (m.value as { caption: string }).caption).sort(), [a!.caption, b!.caption]);
    } finally {
      await target.close();
    }
  });

  it('CRLF and gzip files publish the records without their line ends; an empty file publishes nothing', async () => {
    const topic = uniq('pub-crlf');
    const admin = kafka.admin();
    await admin.connect();
    await createTopics(admin, [{ topic }]);
    await admin.disconnect();
    const records = await makeRecords(uniq('crlf'), 4);
    const crlf = fileOf(
      'crlf.jsonl',
      records
        .slice(0, 2)
        .map((r) => JSON.stringify(r) + '\r\n')
        .join(''),
    );
    const gz = fileOf('pairs.jsonl.gz', gzipSync(jsonl(records.slice(2))));
    const target = await kafkaTarget(kafka, topic);
    try {
      assert.deepEqual(await publish({ input: crlf }, target), { records: 2, published: 2, refused: 0 });
      assert.deepEqual(await publish({ input: gz }, target), { records: 2, published: 2, refused: 0 });
      assert.deepEqual(await publish({ input: fileOf('empty.jsonl', '') }, target), {
        records: 0,
        published: 0,
        refused: 0,
      });
    } finally {
      await target.close();
    }
    const raw = await rawValues(kafka, topic, records.length);
    assert.deepEqual(raw.sort(), records.map((r) => JSON.stringify(r)).sort());
  });

  it('a gzip file cut short, read in one pass (--invalid skip), says how many records went out first', async () => {
    const topic = uniq('pub-cutgz');
    const admin = kafka.admin();
    await admin.connect();
    await createTopics(admin, [{ topic }]);
    await admin.disconnect();
    const whole = gzipSync(jsonl(await makeRecords(uniq('cut'), 600)));
    const input = fileOf('cut.jsonl.gz', whole.subarray(0, whole.length - 64));
    const target = await kafkaTarget(kafka, topic);
    const { result } = await refusedBy(input, target, 'skip');
    await target.close();
    assert.ok(result instanceof FilterError, String(result));
    assert.equal(result.code, 'input_unreadable');
    assert.match(result.message, /unexpected end of file; 500 record\(s\) before it were published$/);
    assert.equal((await readTopicToEnd(kafka, topic)).length, 500);
  });
});

describe('publish --check on the command line', () => {
  it('ids with control characters, line separators or bidi overrides are refused by line, never echoed', async () => {
    const ok = { url: 'https://example.com/a.jpg', caption: 'c' };
    const ids = ['a\u001b[2Jb', 'line\nbreak', 'sep\u2028x', 'rtl\u202eevil'];
    const input = fileOf('ids.jsonl', jsonl(ids.map((id) => ({ ...ok, id }))));
    const refused: RefusedRecord[] = [];
    await assert.rejects(
      publish({ input, check: true, onRefused: (r) => refused.push(r) }),
      /publish_invalid_records|refused/,
    );
    assert.deepEqual(
      refused.map((r) => r.line),
      [1, 2, 3, 4],
    );
    for (const r of refused) {
      assert.match(r.message, /field "id" must be .*no control characters/);
      assert.ok(![...r.message].some((c) => c < ' ' || c === '\u2028' || c === '\u202e'), r.message);
    }
  });

  it('a FIFO or a directory as --input is refused by name, not waited on', async () => {
    const fifo = join(dir, 'pipe.jsonl');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    for (const input of [fifo, dir]) {
      await assert.rejects(publish({ input, check: true }), (err: FilterError) => {
        assert.equal(err.code, 'input_unreadable');
        assert.match(err.message, /not a regular file/);
        return true;
      });
    }
  });

  it('prints a record quoted in a refusal with its terminal controls escaped', () => {
    const input = fileOf('esc.jsonl', '{"id":1,"x":tru\x1b[2J}\n');
    const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
    const r = spawnSync(process.execPath, [bin, 'publish', '--input', input, '--check'], { encoding: 'utf8' });
    assert.equal(r.status, 2, r.stderr);
    assert.ok(!r.stderr.includes('\x1b'), 'a raw escape reached stderr');
    assert.match(r.stderr, /esc\.jsonl:1: invalid: record is not valid JSON: .*\\u\{001b\}\[2J/);
  });
});

/** The topic's first `n` message values as the bytes they are (a `\r` left in one would show). */
async function rawValues(kafka: Kafka, topic: string, n: number): Promise<string[]> {
  const consumer = kafka.consumer({ groupId: uniq('raw-reader') });
  const out: string[] = [];
  let done!: () => void;
  const all = new Promise<void>((r) => (done = r));
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ message }) => {
      out.push(message.value!.toString('utf8'));
      if (out.length >= n) done();
    },
  });
  const timer = setTimeout(done, 20_000);
  await all;
  clearTimeout(timer);
  await consumer.disconnect();
  return out;
}
