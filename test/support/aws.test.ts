/**
 * lib/support/aws.ts's clients against the local S3 (moto) and SQS (ElasticMQ) servers, and what the AWS error helpers
 * and the retry policy make of the real SDK's errors: a missing key or a lost conditional write is not retried, a
 * server that never answers times out into a retriable error.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  PutObjectCommand,
} from '@aws-sdk/client-s3';
import { CreateQueueCommand, DeleteQueueCommand, ReceiveMessageCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import { isRetriable } from '../../lib/errors.ts';
import {
  awsRegion,
  isClientError,
  isNotFound,
  isPreconditionFailed,
  s3Client,
  sqsClient,
} from '../../lib/support/aws.ts';
import { RetryPolicy } from '../../lib/support/retry.ts';
import { S3_ENDPOINT, SQS_ENDPOINT, needServices, uniq } from '../stream/helpers.ts';

const skip = await needServices('s3', 'sqs');

describe('AWS clients from lib/support/aws.ts', { skip }, () => {
  const s3 = s3Client({ endpoint: S3_ENDPOINT });
  const sqs = sqsClient({ endpoint: SQS_ENDPOINT });
  const bucket = uniq('aws-support').toLowerCase();

  before(async () => {
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  });
  after(async () => {
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'a b+c.json' })).catch(() => undefined);
    await s3.send(new DeleteBucketCommand({ Bucket: bucket })).catch(() => undefined);
    s3.destroy();
    sqs.destroy();
  });

  test('S3 through a custom endpoint (path-style): a key with a space and a plus round-trips', async () => {
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'a b+c.json', Body: '{"ok":true}' }));
    const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'a b+c.json' }));
    assert.equal(await got.Body!.transformToString(), '{"ok":true}');
  });

  test('a missing key is NotFound, a client error, and not retried by the policy', async () => {
    let attempts = 0;
    const err = await new RetryPolicy({ baseMs: 0, maxAttempts: 5 })
      .run(() => {
        attempts++;
        return s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'no-such-key' }));
      })
      .then(
        () => assert.fail('a missing key was read'),
        (e: unknown) => e,
      );
    assert.equal(attempts, 1);
    assert.ok(isNotFound(err), String(err));
    assert.ok(isClientError(err));
    assert.equal(isRetriable(err), false);
  });

  test('a lost create-only write (If-None-Match: *) is PreconditionFailed and not retriable', async () => {
    const put = () =>
      s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'a b+c.json', Body: 'again', IfNoneMatch: '*' }));
    await put().catch(() => undefined);
    const err = await put().then(
      () => assert.fail('the create-only write replaced the object'),
      (e: unknown) => e,
    );
    assert.ok(isPreconditionFailed(err), String(err));
    assert.equal(isRetriable(err), false);
  });

  test('SQS through a custom endpoint: send and receive', async () => {
    const { QueueUrl } = await sqs.send(new CreateQueueCommand({ QueueName: uniq('aws-support') }));
    try {
      await sqs.send(new SendMessageCommand({ QueueUrl, MessageBody: 'hello' }));
      const got = await sqs.send(new ReceiveMessageCommand({ QueueUrl, WaitTimeSeconds: 5 }));
      assert.equal(got.Messages?.[0]?.Body, 'hello');
    } finally {
      await sqs.send(new DeleteQueueCommand({ QueueUrl }));
    }
  });
});

describe('a request timeout', () => {
  let server: Server;
  const sockets: Socket[] = [];
  before(async () => {
    // Accepts connections and never answers: a hung S3.
    server = createServer((s) => void sockets.push(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  });
  after(() => {
    sockets.forEach((s) => s.destroy());
    server.close();
  });

  test('fails a request to a server that never answers, with an error the policy retries', async () => {
    const { port } = server.address() as { port: number };
    const s3 = s3Client({ endpoint: `http://127.0.0.1:${port}`, requestTimeoutMs: 300, maxAttempts: 1 });
    try {
      const err = await s3.send(new GetObjectCommand({ Bucket: 'b', Key: 'k' })).then(
        () => assert.fail('a server that never answers answered'),
        (e: unknown) => e,
      );
      assert.equal(isRetriable(err), true, String(err));
    } finally {
      s3.destroy();
    }
  });
});

test('awsRegion: the one given, else AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1', () => {
  const saved = { r: process.env.AWS_REGION, d: process.env.AWS_DEFAULT_REGION };
  try {
    assert.equal(awsRegion('eu-west-1'), 'eu-west-1');
    process.env.AWS_REGION = 'ap-south-1';
    assert.equal(awsRegion(), 'ap-south-1');
    delete process.env.AWS_REGION;
    process.env.AWS_DEFAULT_REGION = 'sa-east-1';
    assert.equal(awsRegion(), 'sa-east-1');
    delete process.env.AWS_DEFAULT_REGION;
    assert.equal(awsRegion(), 'us-east-1');
  } finally {
    if (saved.r === undefined) delete process.env.AWS_REGION;
    else process.env.AWS_REGION = saved.r;
    if (saved.d === undefined) delete process.env.AWS_DEFAULT_REGION;
    else process.env.AWS_DEFAULT_REGION = saved.d;
  }
});
