/**
 * The fleet's DynamoDB store against the local DynamoDB server (scripts/services.sh `dynamodb`): hit and miss, two
 * writers racing for one key, the TTL attribute, expired items, image entries and their buckets, a missing table.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  BatchWriteItemCommand,
  ConditionalCheckFailedException,
  CreateTableCommand,
  ProvisionedThroughputExceededException,
  PutItemCommand,
  ResourceNotFoundException,
  ThrottlingException,
  TransactionCanceledException,
  waitUntilTableExists,
  type DynamoDBClient,
} from '@aws-sdk/client-dynamodb';
import { test } from 'node:test';
import { DynamoStore, MAX_ENTRY_BYTES, retriable } from '../../lib/cache/dynamo-store.ts';
import { MAX_BUCKET_ENTRIES, type ImageEntry, type ScoreEntry } from '../../lib/cache/store.ts';
import { FilterError } from '../../lib/errors.ts';
import { needServices } from '../stream/helpers.ts';
import { createCacheTable, DYNAMODB_ENDPOINT, dynamoClient, itemsOf, rawItem } from './dynamo-helpers.ts';

const skip = await needServices('dynamodb');

const entry = (id: string, itm: number): ScoreEntry => ({
  result: { scores: { itm, odf: 20 }, expected: { itm: itm + 0.25, odf: 19.5 } },
  first: { id, source: { kind: 'kafka', topic: 't', partition: 1, offset: '42' }, at: '2026-12-07T00:00:00.000Z' },
});

const image = (digest: string, id: string): ImageEntry => ({
  digest,
  phash: '0123456789abcdef',
  first: { id, source: { kind: 'sqs', queueUrl: 'http://q', messageId: 'm' }, at: '2026-12-07T00:00:00.000Z' },
});

const aws = { endpoint: DYNAMODB_ENDPOINT, region: 'us-east-1' };

describe('DynamoStore on the local DynamoDB server', { skip }, () => {
  let client: DynamoDBClient;
  let table: string;
  before(async () => {
    client = dynamoClient();
    table = await createCacheTable(client);
  });
  after(() => client?.destroy());

  it('a miss, then a hit with the entry as stored; the item has expiresAt ttlDays ahead', async () => {
    const store = await DynamoStore.open({ table, aws, ttlDays: 2 });
    try {
      assert.equal(await store.get('k1'), undefined);
      const before = Math.floor(Date.now() / 1000);
      await store.putIfAbsent('k1', entry('a', 70));
      assert.deepEqual(await store.get('k1'), entry('a', 70));
      const item = await rawItem(client, table, 'score#k1', 'score');
      const expiresAt = Number(item?.expiresAt?.N);
      assert.ok(expiresAt >= before + 2 * 86_400 && expiresAt <= Math.ceil(Date.now() / 1000) + 2 * 86_400);
      const bytes = Buffer.byteLength(item!.entry!.S!);
      assert.ok(bytes < 1024, `a score entry is ${bytes} bytes`);
    } finally {
      await store.close();
    }
  });

  it('two writers racing for one key: one entry wins and both handles read it', async () => {
    const [a, b] = await Promise.all([DynamoStore.open({ table, aws }), DynamoStore.open({ table, aws })]);
    try {
      for (let round = 0; round < 10; round++) {
        const key = `race-${round}`;
        await Promise.all([a.putIfAbsent(key, entry('from-a', 10)), b.putIfAbsent(key, entry('from-b', 90))]);
        const seenA = await a.get(key);
        const seenB = await b.get(key);
        assert.deepEqual(seenA, seenB);
        assert.ok(['from-a', 'from-b'].includes(seenA!.first.id));
        // A later writer never replaces it.
        await b.putIfAbsent(key, entry('late', 50));
        assert.deepEqual(await a.get(key), seenA);
      }
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('an expired item not yet deleted by DynamoDB reads as absent and is replaced by the next write', async () => {
    const store = await DynamoStore.open({ table, aws });
    try {
      const old = { N: String(Math.floor(Date.now() / 1000) - 60) };
      const item = { pk: { S: 'score#old' }, sk: { S: 'score' }, entry: { S: JSON.stringify(entry('x', 1)) } };
      await client.send(new PutItemCommand({ TableName: table, Item: { ...item, expiresAt: old } }));
      assert.equal(await store.get('old'), undefined);
      await store.putIfAbsent('old', entry('fresh', 60));
      assert.deepEqual(await store.get('old'), entry('fresh', 60));
    } finally {
      await store.close();
    }
  });

  it('an item that is not a well-formed entry is a miss, never a hit', async () => {
    const store = await DynamoStore.open({ table, aws });
    try {
      const later = { N: String(Math.floor(Date.now() / 1000) + 3600) };
      const bad = ['not json', '{"result":{}}', '{"result":{"scores":{"itm":"90"}},"first":{"id":"x"}}'];
      for (const [i, body] of bad.entries()) {
        const item = { pk: { S: `score#bad${i}` }, sk: { S: 'score' }, entry: { S: body }, expiresAt: later };
        await client.send(new PutItemCommand({ TableName: table, Item: item }));
        assert.equal(await store.get(`bad${i}`), undefined, body);
      }
    } finally {
      await store.close();
    }
  });

  it('image entries: the first holder of a digest stays; a bucket query returns every member', async () => {
    const a = await DynamoStore.open({ table, aws });
    const b = await DynamoStore.open({ table, aws });
    try {
      assert.equal(await a.getImage('d1'), undefined);
      assert.deepEqual(await a.bucket('0:abcd'), []);
      assert.deepEqual(await a.putImageIfAbsent(image('d1', 'p1'), ['0:abcd', '1:ef01']), image('d1', 'p1'));
      // Another writer with the same digest gets the holder back, and its buckets are not written.
      assert.deepEqual(await b.putImageIfAbsent(image('d1', 'p2'), ['0:abcd', '2:9999']), image('d1', 'p1'));
      assert.deepEqual(await b.bucket('2:9999'), []);
      await b.putImageIfAbsent(image('d2', 'p3'), ['0:abcd']);
      const members = (await a.bucket('0:abcd')).map((e) => `${e.digest}/${e.first.id}`).sort();
      assert.deepEqual(members, ['d1/p1', 'd2/p3']);
      assert.deepEqual(await b.bucket('1:ef01'), [image('d1', 'p1')]);
      assert.deepEqual(await b.getImage('d1'), image('d1', 'p1'));
      // Racing writers of one new digest: exactly one holder, seen by both.
      const [x, y] = await Promise.all([
        a.putImageIfAbsent(image('d3', 'x'), ['3:0000']),
        b.putImageIfAbsent(image('d3', 'y'), ['3:0000']),
      ]);
      assert.deepEqual(x, y);
      assert.equal((await a.bucket('3:0000')).length, 1);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('an expired image is absent to reads and queries, and the next writer becomes its holder', async () => {
    const store = await DynamoStore.open({ table, aws });
    try {
      const past = { N: String(Math.floor(Date.now() / 1000) - 60) };
      const old = { S: JSON.stringify(image('dx', 'old')) };
      await client.send(
        new PutItemCommand({
          TableName: table,
          Item: { pk: { S: 'image#dx' }, sk: { S: 'image' }, entry: old, expiresAt: past },
        }),
      );
      await client.send(
        new PutItemCommand({
          TableName: table,
          Item: { pk: { S: 'bucket#x:1' }, sk: { S: 'dx' }, entry: old, expiresAt: past },
        }),
      );
      assert.equal(await store.getImage('dx'), undefined);
      assert.deepEqual(await store.bucket('x:1'), []);
      assert.deepEqual(await store.putImageIfAbsent(image('dx', 'new'), ['x:1']), image('dx', 'new'));
      assert.deepEqual(await store.bucket('x:1'), [image('dx', 'new')]);
    } finally {
      await store.close();
    }
  });

  it('a bucket larger than one Query page (1 MB) is returned whole', async () => {
    const store = await DynamoStore.open({ table, aws });
    try {
      // 450 members of ~2.6 KB, written directly (moto deep-copies the table on every transaction: too slow here).
      const filler = 'x'.repeat(2600);
      const member = (i: number) => ({
        ...image(`big-${i}`, `p${i}`),
        first: { ...image('', `p${i}`).first, id: `p${i}-${filler}` },
      });
      for (let i = 0; i < 450; i += 25) {
        const puts = Array.from({ length: 25 }, (_, j) => ({
          PutRequest: {
            Item: {
              pk: { S: 'bucket#wide' },
              sk: { S: `big-${i + j}` },
              entry: { S: JSON.stringify(member(i + j)) },
              expiresAt: { N: String(Math.floor(Date.now() / 1000) + 3600) },
            },
          },
        }));
        await client.send(new BatchWriteItemCommand({ RequestItems: { [table]: puts } }));
      }
      assert.equal((await itemsOf(client, table, 'bucket#wide')).length, 450);
      const members = await store.bucket('wide');
      assert.equal(members.length, 450);
      assert.equal(new Set(members.map((m) => m.digest)).size, 450);
    } finally {
      await store.close();
    }
  });

  it('a bucket past MAX_BUCKET_ENTRIES is read up to the bound, not whole', async () => {
    const store = await DynamoStore.open({ table, aws });
    try {
      const n = MAX_BUCKET_ENTRIES + 50;
      for (let i = 0; i < n; i += 25) {
        const puts = Array.from({ length: Math.min(25, n - i) }, (_, j) => ({
          PutRequest: {
            Item: {
              pk: { S: 'bucket#flat' },
              sk: { S: `flat-${i + j}` },
              entry: { S: JSON.stringify(image(`flat-${i + j}`, `p${i + j}`)) },
              expiresAt: { N: String(Math.floor(Date.now() / 1000) + 3600) },
            },
          },
        }));
        await client.send(new BatchWriteItemCommand({ RequestItems: { [table]: puts } }));
      }
      assert.equal((await store.bucket('flat')).length, MAX_BUCKET_ENTRIES);
    } finally {
      await store.close();
    }
  });

  it('an entry over the size limit is refused with score_cache_unusable, nothing written', async () => {
    const store = await DynamoStore.open({ table, aws });
    try {
      const huge = entry('h', 5);
      const oversized = { ...huge, first: { ...huge.first, id: 'x'.repeat(MAX_ENTRY_BYTES) } };
      await assert.rejects(
        store.putIfAbsent('huge', oversized),
        (err: unknown) =>
          err instanceof FilterError && err.code === 'score_cache_unusable' && /over the/.test(err.message),
      );
      assert.equal(await store.get('huge'), undefined);
    } finally {
      await store.close();
    }
  });

  it('a missing table is one score_cache_unusable error at open, naming the table', async () => {
    await assert.rejects(
      DynamoStore.open({ table: 'mlmf-no-such-table', aws }),
      (err: unknown) =>
        err instanceof FilterError &&
        err.code === 'score_cache_unusable' &&
        err.message === 'score cache table mlmf-no-such-table does not exist (or is not ACTIVE yet)',
    );
  });

  it('a table with other keys is one score_cache_unusable error at open', async () => {
    const other = `${table}-other`;
    await client.send(
      new CreateTableCommand({
        TableName: other,
        BillingMode: 'PAY_PER_REQUEST',
        AttributeDefinitions: [{ AttributeName: 'id', AttributeType: 'S' }],
        KeySchema: [{ AttributeName: 'id', KeyType: 'HASH' }],
      }),
    );
    await waitUntilTableExists({ client, maxWaitTime: 30 }, { TableName: other });
    await assert.rejects(
      DynamoStore.open({ table: other, aws }),
      (err: unknown) =>
        err instanceof FilterError &&
        err.code === 'score_cache_unusable' &&
        /has keys id:HASH, not pk/.test(err.message),
    );
  });

  it('an unreachable endpoint fails as score_cache_failed (retriable) after the retries', async () => {
    const { RetryPolicy } = await import('../../lib/support/retry.ts');
    const retry = new RetryPolicy({ maxAttempts: 2, baseMs: 10 });
    await assert.rejects(
      DynamoStore.open({ table, aws: { ...aws, endpoint: 'http://127.0.0.1:9', maxAttempts: 1 }, retry }),
      (err: unknown) => err instanceof FilterError && err.code === 'score_cache_failed',
    );
  });
});

test('throttling and transaction conflicts are retried; a refused condition or a missing table is not', () => {
  const meta = { $metadata: { httpStatusCode: 400 }, message: 'x' };
  assert.equal(retriable(new ProvisionedThroughputExceededException(meta)), true);
  assert.equal(retriable(new ThrottlingException(meta)), true);
  const conflict = new TransactionCanceledException({
    ...meta,
    CancellationReasons: [{ Code: 'TransactionConflict' }],
  });
  assert.equal(retriable(conflict), true);
  const refused = new TransactionCanceledException({
    ...meta,
    CancellationReasons: [{ Code: 'ConditionalCheckFailed' }],
  });
  assert.equal(retriable(refused), false);
  assert.equal(retriable(new ConditionalCheckFailedException(meta)), false);
  assert.equal(retriable(new ResourceNotFoundException(meta)), false);
});
