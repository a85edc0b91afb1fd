/**
 * The image dedupe over the fleet's DynamoDB store (the local server), on real images through the real intake: a
 * near copy (resized, re-encoded as JPEG) of an accepted image is found through the store's hash buckets, a different
 * picture is not, an exact copy with other metadata is an exact match, and the pair first recorded is never its own
 * duplicate (a replay). Two dedupes (two workers) on one table agree on who was first.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { ImageDedupe } from '../../lib/cache/dedupe.ts';
import { DynamoStore } from '../../lib/cache/dynamo-store.ts';
import { Intake } from '../../lib/intake/index.ts';
import type { PreprocessSpec, SourceOrigin } from '../../lib/types.ts';
import { CaptionScorer } from '../helpers/doubles.ts';
import { needServices } from '../stream/helpers.ts';
import { picture, withComment } from './dedupe-images.ts';
import { createCacheTable, DYNAMODB_ENDPOINT, dynamoClient } from './dynamo-helpers.ts';

const skip = await needServices('dynamodb');
const SPEC: PreprocessSpec = { ...new CaptionScorer().preprocess, size: 64 };
const aws = { endpoint: DYNAMODB_ENDPOINT, region: 'us-east-1' };
const at = (offset: number): SourceOrigin => ({ kind: 'kafka', topic: 'crawl', partition: 0, offset: String(offset) });

describe('ImageDedupe on the DynamoDB store', { skip }, () => {
  let client: DynamoDBClient;
  const intake = new Intake({ perceptualHash: true }, SPEC);
  before(() => {
    client = dynamoClient();
  });
  after(async () => {
    client?.destroy();
    await intake.close();
  });
  const prepared = (bytes: Buffer) => intake.prepare({ kind: 'bytes', data: bytes });

  it('near: a resized JPEG copy is a duplicate of the accepted PNG, another picture is not, a replay is not', async () => {
    const table = await createCacheTable(client);
    const store = await DynamoStore.open({ table, aws });
    try {
      const dedupe = new ImageDedupe(store, { mode: 'near', spec: SPEC });
      const original = await prepared(await (await picture(7)).png().toBuffer());
      const first = { id: 'p1', origin: at(1) };
      assert.equal(await dedupe.check(original, first), undefined, 'nothing accepted yet');
      assert.equal(await dedupe.recordAccepted(original, first), undefined, 'recorded as the first');

      const png = await (await picture(7)).png().toBuffer();
      const copy = await prepared(await sharp(png).resize(300).jpeg({ quality: 70 }).toBuffer());
      const dup = await dedupe.check(copy, { id: 'p2', origin: at(2) });
      assert.equal(dup?.code, 'duplicate_image');
      const detail = dup!.detail as { first: { id: string }; match: string; distance: number };
      assert.equal(detail.first.id, 'p1');
      assert.equal(detail.match, 'near');
      assert.ok(detail.distance <= 6, `distance ${detail.distance}`);

      const other = await prepared(await (await picture(8)).png().toBuffer());
      assert.equal(await dedupe.check(other, { id: 'p3', origin: at(3) }), undefined, 'another picture');
      assert.equal(await dedupe.check(original, first), undefined, 'the first pair replayed is not its own duplicate');
    } finally {
      await store.close();
    }
  });

  it('exact: two workers on one table; the first recorded wins, the other accepted copy is its duplicate', async () => {
    const table = await createCacheTable(client);
    const [a, b] = await Promise.all([DynamoStore.open({ table, aws }), DynamoStore.open({ table, aws })]);
    try {
      const jpeg = await (await picture(9)).jpeg({ quality: 90 }).toBuffer();
      const [one, two] = [await prepared(jpeg), await prepared(withComment(jpeg, 'crawled again'))];
      const [ra, rb] = await Promise.all([
        new ImageDedupe(a, { mode: 'exact', spec: SPEC }).recordAccepted(one, { id: 'w1', origin: at(10) }),
        new ImageDedupe(b, { mode: 'exact', spec: SPEC }).recordAccepted(two, { id: 'w2', origin: at(11) }),
      ]);
      const losers = [ra, rb].filter((r) => r !== undefined);
      assert.equal(losers.length, 1, 'exactly one of the two is a duplicate');
      assert.equal(losers[0]!.code, 'duplicate_image');
      const winner = ra === undefined ? 'w1' : 'w2';
      assert.equal((losers[0]!.detail as { first: { id: string } }).first.id, winner);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});
