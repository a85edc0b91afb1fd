/**
 * `mlm-filter publish`, `topics create` and `bucket create` through the real CLI against the local Kafka, ElasticMQ
 * and moto: records land keyed by the id the worker gives them, invalid ones are refused by line, nothing is sent
 * from a file that holds one unless --invalid skip says so.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HeadBucketCommand } from '@aws-sdk/client-s3';
import { CreateQueueCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { parseRecord } from '../../lib/pair/index.ts';
import {
  BROKERS,
  CREDENTIALS,
  kafkaClient,
  makeRecords,
  needServices,
  readTopicToEnd,
  REGION,
  s3Client,
  S3_ENDPOINT,
  SQS_ENDPOINT,
  uniq,
} from '../stream/helpers.ts';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const cli = (args: string[], input?: string) => {
  const r = spawnSync(process.execPath, [bin, ...args], {
    encoding: 'utf8',
    input,
    timeout: 60_000,
    env: { ...process.env, NO_COLOR: '1' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
const idOf = (line: string) => parseRecord({ raw: Buffer.from(line), origin: { kind: 'file', path: '-', line: 0 } }).id;

const skip = await needServices('kafka', 'sqs', 's3');

describe('mlm-filter publish', { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-publish-'));
  let lines: string[];
  let valid: string;
  let mixed: string;
  before(async () => {
    const records = await makeRecords(uniq('pub'), 4);
    lines = [
      ...records.map((r) => JSON.stringify(r)),
      // No id: the worker derives one from the image and caption; publish keys the message with that same id.
      JSON.stringify({ caption: 'no id here', image: records[0]!.image }),
    ];
    valid = join(dir, 'valid.jsonl');
    writeFileSync(valid, lines.join('\n') + '\n');
    mixed = join(dir, 'mixed.jsonl');
    writeFileSync(
      mixed,
      [lines[0], '{"id": "broken', lines[1], '{"id":"x","url":"ftp://a/b","caption":"c"}', ''].join('\n'),
    );
  });

  it('topics create makes the missing topics with --partitions and leaves existing ones', () => {
    const t = uniq('pub-topics');
    const first = cli([
      'topics',
      'create',
      '--brokers',
      BROKERS,
      '--source-topic',
      `${t}.pairs`,
      '--audit-topic',
      `${t}.audit`,
      '--partitions',
      '2',
    ]);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(first.stdout, `created ${t}.pairs (2 partitions)\ncreated ${t}.audit (2 partitions)\n`);
    const again = cli([
      'topics',
      'create',
      '--brokers',
      BROKERS,
      '--source-topic',
      `${t}.pairs`,
      '--audit-topic',
      `${t}.audit`,
      '--accepted-topic',
      `${t}.acc`,
    ]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(
      again.stdout,
      `exists ${t}.pairs (2 partitions)\nexists ${t}.audit (2 partitions)\ncreated ${t}.acc (3 partitions)\n`,
    );
    const bad = cli(['topics', 'create', '--brokers', BROKERS, '--source-topic', 'a b', '--audit-topic', 'x']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /invalid_option.*topic name "a b"/);
  });

  it('publishes to Kafka keyed by the pair id, record bytes unchanged', async () => {
    const topic = uniq('pub-kafka');
    assert.equal(
      cli(['topics', 'create', '--brokers', BROKERS, '--source-topic', topic, '--audit-topic', `${topic}.a`]).code,
      0,
    );
    const r = cli(['publish', '--input', valid, '--kafka', BROKERS, '--topic', topic]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `5 records published to Kafka topic ${topic}\n`);
    const got = await readTopicToEnd(kafkaClient(), topic);
    const want = lines.map((l) => ({ key: idOf(l), value: JSON.parse(l) }));
    const byKey = (a: { key: string }, b: { key: string }) => a.key.localeCompare(b.key);
    assert.deepEqual(got.sort(byKey), want.sort(byKey));
  });

  it('a file with an invalid record publishes nothing and names each line; --invalid skip leaves them out', async () => {
    const topic = uniq('pub-invalid');
    cli(['topics', 'create', '--brokers', BROKERS, '--source-topic', topic, '--audit-topic', `${topic}.a`]);
    const r = cli(['publish', '--input', mixed, '--kafka', BROKERS, '--topic', topic]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`${mixed}:2: invalid: record is not valid JSON`));
    assert.match(r.stderr, new RegExp(`${mixed}:4: invalid: field "url" must use http or https`));
    assert.match(r.stderr, /error \[publish_invalid_records\]: 2 record\(s\) refused.*first: line 2.*0 published/);
    assert.equal((await readTopicToEnd(kafkaClient(), topic)).length, 0);

    const s = cli(['publish', '--input', mixed, '--kafka', BROKERS, '--topic', topic, '--invalid', 'skip']);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.stdout, `2 records published to Kafka topic ${topic}, 2 invalid skipped\n`);
    assert.match(s.stderr, /:2: skipped: /);
    const got = await readTopicToEnd(kafkaClient(), topic);
    assert.deepEqual(got.map((m) => m.key).sort(), [idOf(lines[0]!), idOf(lines[1]!)].sort());
  });

  it('on stdin an invalid record stops the publish there: what came before it is published', async () => {
    const topic = uniq('pub-stdin');
    cli(['topics', 'create', '--brokers', BROKERS, '--source-topic', topic, '--audit-topic', `${topic}.a`]);
    const input = [lines[0], lines[1], '[1,2]', lines[2]].join('\n') + '\n';
    const r = cli(['publish', '--input', '-', '--kafka', BROKERS, '--topic', topic], input);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /-:3: invalid: record must be a JSON object, got array/);
    assert.match(r.stderr, /first: line 3.*2 published before it/);
    const got = await readTopicToEnd(kafkaClient(), topic);
    assert.deepEqual(got.map((m) => m.key).sort(), [idOf(lines[0]!), idOf(lines[1]!)].sort());
  });

  it('--check publishes nothing and fails on an invalid record', () => {
    const ok = cli(['publish', '--input', valid, '--check']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, '5 records checked, 5 valid\n');
    const bad = cli(['publish', '--input', mixed, '--check']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /:2: invalid: .*\n.*:4: invalid: /);
  });

  it('refuses a missing topic, a missing or doubled target and a missing file with one coded line', () => {
    const missing = cli(['publish', '--input', valid, '--kafka', BROKERS, '--topic', uniq('nope')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /kafka_topic_unavailable.*does not exist \(create it: mlm-filter topics create/);
    const none = cli(['publish', '--input', valid]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /bad_usage.*--kafka BROKERS --topic TOPIC, or --sqs QUEUE_URL/);
    const both = cli(['publish', '--input', valid, '--kafka', BROKERS, '--topic', 't', '--sqs', 'http://x/q']);
    assert.equal(both.code, 2);
    const noFile = cli(['publish', '--input', join(dir, 'absent.jsonl'), '--check']);
    assert.equal(noFile.code, 2);
    assert.match(noFile.stderr, /input_unreadable/);
  });

  describe('SQS', () => {
    const sqs = new SQSClient({ endpoint: SQS_ENDPOINT, region: REGION, credentials: CREDENTIALS });
    after(() => sqs.destroy());
    const receiveAll = async (url: string, n: number) => {
      const got: { body: string; group?: string }[] = [];
      for (let i = 0; i < 20 && got.length < n; i++) {
        const r = await sqs.send(
          new ReceiveMessageCommand({
            QueueUrl: url,
            MaxNumberOfMessages: 10,
            WaitTimeSeconds: 1,
            MessageSystemAttributeNames: ['MessageGroupId'],
          }),
        );
        for (const m of r.Messages ?? []) got.push({ body: m.Body!, group: m.Attributes?.MessageGroupId });
      }
      return got;
    };

    it('publishes each record as one message body, unchanged', async () => {
      const url = (await sqs.send(new CreateQueueCommand({ QueueName: uniq('pub-sqs') }))).QueueUrl!;
      const r = cli(['publish', '--input', valid, '--sqs', url, '--sqs-endpoint', SQS_ENDPOINT]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `5 records published to SQS queue ${url}\n`);
      const got = await receiveAll(url, 5);
      assert.deepEqual(got.map((m) => m.body).sort(), [...lines].sort());
    });

    it('a FIFO queue gets the pair id as the message group', async () => {
      const url = (
        await sqs.send(
          new CreateQueueCommand({ QueueName: `${uniq('pub-sqs')}.fifo`, Attributes: { FifoQueue: 'true' } }),
        )
      ).QueueUrl!;
      const r = cli(['publish', '--input', valid, '--sqs', url, '--sqs-endpoint', SQS_ENDPOINT]);
      assert.equal(r.code, 0, r.stderr);
      const got = await receiveAll(url, 5);
      assert.deepEqual(got.map((m) => m.group).sort(), lines.map(idOf).sort());
    });
  });

  it('bucket create makes the bucket once', async () => {
    const bucket = uniq('pub-bucket');
    const a = cli(['bucket', 'create', '--bucket', bucket, '--s3-endpoint', S3_ENDPOINT]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, `created s3://${bucket}\n`);
    assert.equal(
      cli(['bucket', 'create', '--bucket', bucket, '--s3-endpoint', S3_ENDPOINT]).stdout,
      `exists s3://${bucket}\n`,
    );
    const s3 = s3Client();
    await s3.send(new HeadBucketCommand({ Bucket: bucket }));
    s3.destroy();
    assert.equal(cli(['bucket', 'create', '--bucket', 'Bad_Name', '--s3-endpoint', S3_ENDPOINT]).code, 2);
  });
});
