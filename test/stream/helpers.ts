/**
 * Shared pieces of the streaming tests: service detection, a deterministic fast scorer, record generators, and
 * readers for the curated bucket and the audit topic. The fast scorer stands in for the MLM model (its own tests
 * live with lib/model): streaming correctness does not depend on what the scores are, only that they are stable.
 */
import { createHash, randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { after, before } from 'node:test';
import {
  CreateBucketCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  S3Client,
  type _Object,
} from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { Kafka, logLevel, type Admin } from 'kafkajs';
import sharp from 'sharp';
import tarStream from 'tar-stream';
import type { ScoreInput, ScoreResult, Scorer } from '../../lib/types.ts';

export const BROKERS = process.env.MLMF_BROKERS ?? '127.0.0.1:9092';
export const S3_ENDPOINT = process.env.MLMF_S3_ENDPOINT ?? 'http://127.0.0.1:9000';
export const SQS_ENDPOINT = process.env.MLMF_SQS_ENDPOINT ?? 'http://127.0.0.1:9324';
export const DYNAMODB_ENDPOINT = process.env.MLMF_DYNAMODB_ENDPOINT ?? 'http://127.0.0.1:8000';
export const REGION = 'us-east-1';
export const CREDENTIALS = { accessKeyId: 'test', secretAccessKey: 'test' };
// The SDK clients in the worker read these; the local servers accept any.
process.env.AWS_ACCESS_KEY_ID ??= CREDENTIALS.accessKeyId;
process.env.AWS_SECRET_ACCESS_KEY ??= CREDENTIALS.secretAccessKey;
process.env.AWS_REGION ??= REGION;
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
process.env.AWS_SDK_JS_SUPPRESS_NODE_DEPRECATION_WARNING = '1';

function portOpen(hostPort: string): Promise<boolean> {
  const [host, port] = hostPort.replace(/^https?:\/\//, '').split(':');
  return new Promise((resolve) => {
    const s = connect({ host, port: Number(port) });
    s.setTimeout(1000);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('timeout', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * `skip` option for a suite that needs the local services: a reason string when they are down (start them with
 * `bash scripts/services.sh up`), false when up. Under CI=true a missing service is a failure, not a skip.
 */
export async function needServices(...names: ('kafka' | 's3' | 'sqs' | 'dynamodb')[]): Promise<string | false> {
  const where = { kafka: BROKERS, s3: S3_ENDPOINT, sqs: SQS_ENDPOINT, dynamodb: DYNAMODB_ENDPOINT };
  const down: string[] = [];
  for (const n of names) if (!(await portOpen(where[n]))) down.push(`${n} (${where[n]})`);
  if (down.length === 0) return false;
  const msg = `local services down: ${down.join(', ')}; run: bash scripts/services.sh up`;
  if (process.env.CI === 'true') throw new Error(`CI: ${msg}`);
  return msg;
}

/**
 * Deterministic stand-in scorer for streaming tests: `score=NN` in the caption gives NN on every metric, else a
 * hash of the caption; a caption containing `poison` makes scoring throw (the pipeline bisects it out as a poison
 * input). Optional per-batch delay imitates inference time.
 */
export class FastScorer implements Scorer {
  readonly model: { name: string; revision: string };
  readonly preprocess = {
    size: 16,
    mean: [0.5, 0.5, 0.5],
    std: [0.5, 0.5, 0.5],
    rescale: 1 / 255,
    padToSquare: true,
    centerCrop: false,
    resample: 'bilinear',
  } as const;
  readonly metrics = ['itm', 'odf', 'ctq', 'su'] as const;
  batches = 0;
  constructor(
    readonly maxBatch = 16,
    readonly delayMs = 0,
    revision = 'stream-tests',
  ) {
    this.model = { name: 'fast-test-scorer', revision };
  }
  async score(batch: readonly ScoreInput[]): Promise<ScoreResult[]> {
    this.batches++;
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    if (batch.some((b) => b.caption.includes('poison'))) throw new Error('poison input');
    return batch.map((b) => {
      const m = /score=(\d+)/.exec(b.caption);
      const s = m ? Number(m[1]) : createHash('sha256').update(b.caption).digest()[0]! % 101;
      return { scores: { itm: s, odf: s, ctq: s, su: s } };
    });
  }
  async close(): Promise<void> {}
}

let pngCache: Buffer | undefined;
/** A small real PNG (decoded by the real intake). */
export async function testPng(): Promise<Buffer> {
  pngCache ??= await sharp({ create: { width: 48, height: 40, channels: 3, background: { r: 200, g: 80, b: 30 } } })
    .png()
    .toBuffer();
  return pngCache;
}

/** Records with inline images: id `<prefix>-<i>`; even i accepted (score=90), odd rejected (score=10). */
export async function makeRecords(prefix: string, n: number, extra?: (i: number) => Record<string, unknown>) {
  const b64 = (await testPng()).toString('base64');
  return Array.from({ length: n }, (_, i) => ({
    id: `${prefix}-${i}`,
    caption: `pair ${i} score=${i % 2 === 0 ? 90 : 10}`,
    image: { base64: b64 },
    ...(extra ? extra(i) : {}),
  }));
}

export const uniq = (name: string) => `${name}-${randomUUID().slice(0, 8)}`;

export function kafkaClient(): Kafka {
  return new Kafka({ clientId: 'stream-tests', brokers: [BROKERS], logLevel: logLevel.NOTHING });
}

export async function createTopics(admin: Admin, topics: { topic: string; partitions?: number }[]): Promise<void> {
  await admin.createTopics({
    waitForLeaders: true,
    topics: topics.map((t) => ({ topic: t.topic, numPartitions: t.partitions ?? 1, replicationFactor: 1 })),
  });
}

export async function produce(kafka: Kafka, topic: string, values: (string | object)[], partitions = 1): Promise<void> {
  // Idempotent: a send retried after a timeout on a loaded machine must not write its records twice.
  const p = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await p.connect();
  for (let i = 0; i < values.length; i += 200) {
    await p.send({
      topic,
      acks: -1,
      messages: values.slice(i, i + 200).map((v, j) => ({
        partition: (i + j) % partitions,
        value: typeof v === 'string' ? v : JSON.stringify(v),
      })),
    });
  }
  await p.disconnect();
}

/** Reads a whole topic with read_committed until `done(messages)` or the timeout. */
export async function readTopic(
  kafka: Kafka,
  topic: string,
  done: (msgs: { key: string; value: Record<string, unknown> }[]) => boolean,
  timeoutMs = 20_000,
): Promise<{ key: string; value: Record<string, unknown> }[]> {
  const consumer = kafka.consumer({ groupId: uniq('reader'), readUncommitted: false });
  const out: { key: string; value: Record<string, unknown> }[] = [];
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  await consumer.run({
    eachMessage: async ({ message }) => {
      out.push({ key: message.key?.toString() ?? '', value: JSON.parse(message.value!.toString()) });
      if (done(out)) finish();
    },
  });
  const timer = setTimeout(finish, timeoutMs);
  if (done(out)) finish();
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  return out;
}

export async function committedTotal(admin: Admin, groupId: string, topic: string): Promise<number> {
  const offsets = await admin.fetchOffsets({ groupId, topics: [topic] });
  return offsets[0]!.partitions.reduce((n, p) => n + Math.max(0, Number(p.offset)), 0);
}

export function s3Client(): S3Client {
  return new S3Client({ region: REGION, credentials: CREDENTIALS, endpoint: S3_ENDPOINT, forcePathStyle: true });
}

/** A Kafka client with a connected admin and an S3 client, as most stream tests need them. */
export interface ServiceClients {
  readonly kafka: Kafka;
  readonly admin: Admin;
  readonly s3: S3Client;
}

export async function openServiceClients(): Promise<ServiceClients> {
  const kafka = kafkaClient();
  const admin = kafka.admin();
  await admin.connect();
  return { kafka, admin, s3: s3Client() };
}

export async function closeServiceClients(c: ServiceClients | undefined): Promise<void> {
  await c?.admin.disconnect();
  c?.s3.destroy();
}

/** Opens the clients before the enclosing describe's tests (handing them to `receive`) and closes them after. */
export function useServiceClients(receive: (c: ServiceClients) => void): void {
  let clients: ServiceClients | undefined;
  before(async () => {
    clients = await openServiceClients();
    receive(clients);
  });
  after(() => closeServiceClients(clients));
}

export async function createBucket(s3: S3Client, bucket: string): Promise<void> {
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
}

export async function listAll(s3: S3Client, bucket: string, prefix = ''): Promise<_Object[]> {
  const out: _Object[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    out.push(...(page.Contents ?? []));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out;
}

export async function getBytes(s3: S3Client, bucket: string, key: string): Promise<Buffer> {
  const res = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

/** Every sample id in every tar shard of the bucket under `prefix` (read from the tars' `.json` members, not the
 * indexes). */
export async function curatedIds(
  s3: S3Client,
  bucket: string,
  prefix = '',
): Promise<{ ids: string[]; shards: string[] }> {
  const shards = (await listAll(s3, bucket, prefix)).map((o) => o.Key!).filter((k) => k.endsWith('.tar'));
  const ids: string[] = [];
  for (const key of shards) {
    const tar = await getBytes(s3, bucket, key);
    const extract = tarStream.extract();
    const done = new Promise<void>((resolve, reject) => {
      extract.on('entry', (header, stream, next) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: unknown) => chunks.push(c as Buffer));
        stream.on('end', () => {
          if (header.name.endsWith('.json'))
            ids.push((JSON.parse(Buffer.concat(chunks).toString()) as { id: string }).id);
          next();
        });
      });
      extract.on('finish', resolve);
      extract.on('error', reject);
    });
    extract.end(tar);
    await done;
  }
  return { ids, shards };
}

export async function getJson(s3: S3Client, bucket: string, key: string): Promise<Record<string, unknown>> {
  return JSON.parse((await getBytes(s3, bucket, key)).toString()) as Record<string, unknown>;
}

/** Counts of each id in a list. */
export function tally(ids: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const id of ids) m.set(id, (m.get(id) ?? 0) + 1);
  return m;
}

/** True when the queue has no message, visible or in flight. */
export async function queueEmpty(sqs: SQSClient, url: string): Promise<boolean> {
  const a = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: url,
      AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
    }),
  );
  return (
    Number(a.Attributes?.ApproximateNumberOfMessages) === 0 &&
    Number(a.Attributes?.ApproximateNumberOfMessagesNotVisible) === 0
  );
}

/**
 * Every message of a topic as a read_committed reader sees it, read up to the end the topic has when the call starts
 * (its last stable offsets, which stop at a transaction still open). Unlike readTopic with a count, it also shows
 * messages that should not be there: it returns only once every partition is read to that end, and fails if it is
 * not reached within `timeoutMs`.
 */
export async function readTopicToEnd(
  kafka: Kafka,
  topic: string,
  timeoutMs = 20_000,
): Promise<{ key: string; value: Record<string, unknown> }[]> {
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(topic).finally(() => admin.disconnect());
  const unread = new Map(ends.filter((p) => BigInt(p.high) > BigInt(p.low)).map((p) => [p.partition, BigInt(p.high)]));
  const out: { key: string; value: Record<string, unknown> }[] = [];
  if (unread.size === 0) return out;
  const consumer = kafka.consumer({ groupId: uniq('reader'), readUncommitted: false });
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  // A batch's last offset counts the transaction markers after its messages, which readers never see as messages.
  consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
    const end = unread.get(payload.partition);
    if (end !== undefined && BigInt(payload.lastOffset) + 1n >= end) unread.delete(payload.partition);
    if (unread.size === 0) finish();
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ message }) => {
      out.push({ key: message.key?.toString() ?? '', value: JSON.parse(message.value!.toString()) });
    },
  });
  const timer = setTimeout(finish, timeoutMs);
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  if (unread.size > 0) {
    throw new Error(`${topic}: not read to its end in ${timeoutMs} ms (partitions ${[...unread.keys()]} short)`);
  }
  return out;
}
