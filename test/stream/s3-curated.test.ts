/**
 * The curated S3 sink against the local S3 server: Kafka shard names by offset range, recovery of the position from
 * the bucket after a restart (a replay adds nothing twice, an orphan tar without index is removed), multipart
 * upload of a large shard, and unordered (SQS) shards.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { S3CuratedSink } from '../../lib/sinks/s3-curated.ts';
import type { Outcome } from '../../lib/types.ts';
import { createBucket, curatedIds, getJson, listAll, needServices, s3Client, tally, uniq } from './helpers.ts';

const skip = await needServices('s3');
const model = { name: 'm', revision: 'r' };

function outcome(topic: string, offset: number, image = Buffer.from('jpegbytes')): Outcome {
  const id = `${topic}-${offset}`;
  return {
    record: { raw: '{}', origin: { kind: 'kafka', topic, partition: 3, offset: String(offset) } },
    id,
    pair: { id, caption: `c${offset}`, image: { kind: 'url', url: `http://x.test/${offset}.jpg` }, metadata: {} },
    decision: offset % 2 === 0 ? 'accept' : 'reject',
    reasons: [],
    scores: { itm: 80 },
    image: { encoded: image, ext: 'jpg', width: 10, height: 10 },
  };
}

describe('S3 curated sink', { skip }, () => {
  let s3: S3Client;
  before(() => {
    s3 = s3Client();
  });
  after(() => s3?.destroy());

  it('names shards by offset range and recovers its position after a restart', async () => {
    const bucket = uniq('curated');
    const topic = uniq('t');
    await createBucket(s3, bucket);
    const open = () => new S3CuratedSink({ s3, bucket, model, prefix: 'p/', samplesPerShard: 3, idleFlushMs: 0 });
    const first = open();
    const batch1 = Array.from({ length: 10 }, (_, i) => outcome(topic, i));
    await first.write(batch1);
    const loc = await first.location(batch1[4]!);
    assert.equal(loc?.bucket, bucket);
    assert.match(loc!.shard, new RegExp(`^p/${topic}/partition=3/${topic}\\+3\\+0{20}-0{19}4\\.tar$`));
    assert.equal(loc!.sample, `${topic}-4`);
    const keys = (await listAll(s3, bucket)).map((o) => o.Key!);
    const index = await getJson(s3, bucket, loc!.shard.replace(/\.tar$/, '.index.json'));
    assert.deepEqual(index.source, { kind: 'kafka', topic, partition: 3, first_offset: '0', last_offset: '4' });

    // A crash between the tar and its index leaves an orphan tar with records past the position: removed on recovery.
    const orphan = `p/${topic}/partition=3/${topic}+3+${'10'.padStart(20, '0')}-${'12'.padStart(20, '0')}.tar`;
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: orphan, Body: 'partial' }));

    const second = open(); // a restarted worker: replays from an older committed offset
    const batch2 = Array.from({ length: 10 }, (_, i) => outcome(topic, 5 + i));
    await second.write(batch2);
    assert.equal(second.skippedReplayed, 2, 'offsets 6 and 8 were already in the bucket');
    const replayed = await second.location(batch2[1]!); // offset 6
    assert.match(replayed!.shard, /\+0{19}5-0{19}9\.tar$/);
    const after = (await listAll(s3, bucket)).map((o) => o.Key!);
    assert.ok(!after.includes(orphan), 'orphan tar removed');
    assert.ok(keys.every((k) => after.includes(k)));
    const { ids } = await curatedIds(s3, bucket);
    assert.deepEqual(
      [...tally(ids).values()].filter((n) => n > 1),
      [],
    );
    assert.deepEqual(
      ids.sort(),
      Array.from({ length: 15 }, (_, i) => i)
        .filter((i) => i % 2 === 0)
        .map((i) => `${topic}-${i}`)
        .sort(),
    );
  });

  it('uploads a large shard in parts and writes unordered (SQS) shards per worker', async () => {
    const bucket = uniq('curated');
    await createBucket(s3, bucket);
    const sink = new S3CuratedSink({
      s3,
      bucket,
      model,
      workerId: 'w1',
      idleFlushMs: 0,
      partSizeBytes: 5 * 1024 * 1024,
    });
    const big = randomBytes(3 * 1024 * 1024);
    const outcomes: Outcome[] = Array.from({ length: 4 }, (_, i) => ({
      ...outcome('q', i * 2, big),
      record: { raw: '{}', origin: { kind: 'sqs', queueUrl: 'http://q', messageId: `m${i}` } },
      id: `sqs-${i}`,
    }));
    await sink.write(outcomes);
    const objects = await listAll(s3, bucket);
    const tar = objects.find((o) => o.Key!.endsWith('.tar'))!;
    assert.equal(tar.Key, 'sqs/w1-000000.tar');
    assert.ok(tar.Size! > 12 * 1024 * 1024);
    const { ids } = await curatedIds(s3, bucket);
    assert.deepEqual(ids, ['sqs-0', 'sqs-1', 'sqs-2', 'sqs-3']);
  });
});
