/**
 * The fleet's shared store (issue 24): one DynamoDB table, on demand, that every worker and every backfill shard job
 * reads and writes. It holds both the score cache's entries (ScoreStore) and the image dedupe's (ImageStore).
 *
 * Table: partition key `pk` (S), sort key `sk` (S); every item has `entry` (S, the entry as JSON) and `expiresAt`
 * (N, epoch seconds: the table's TTL attribute).
 *   score entry     pk `score#<key>`      sk `score`      entry: ScoreEntry (scores, expected, first occurrence)
 *   image entry     pk `image#<digest>`   sk `image`      entry: ImageEntry
 *   bucket member   pk `bucket#<key>`     sk `<digest>`   entry: ImageEntry (a Query on pk returns the bucket)
 * A score entry is 300-700 bytes (four metrics' scores and expected scores, the first pair's id and source): one
 * write unit to store, half a read unit to read eventually consistent. An entry over MAX_ENTRY_BYTES (far under
 * DynamoDB's 400 KB item limit; only an absurd source name could get there) is refused with score_cache_unusable.
 *
 * Writes are conditional (attribute_not_exists, or the item's TTL passed: DynamoDB deletes expired items lazily, up
 * to days late), so the first occurrence stays the first across workers; a reader treats an expired item as absent.
 * Score reads are eventually consistent (a stale miss only costs one more scoring); image reads and bucket queries
 * are strongly consistent (a dedupe decision must see the latest accepted image). Requests go through the one retry
 * policy, throttling included (DynamoDB answers it with a 400 the generic client-error rule would not retry).
 */
import {
  ConditionalCheckFailedException,
  DescribeTableCommand,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  TransactWriteItemsCommand,
  type AttributeValue,
  type DynamoDBClient,
} from '@aws-sdk/client-dynamodb';
import { FilterError, isRetriable } from '../errors.ts';
import { dynamoDbClient, type AwsClientOptions } from '../support/aws.ts';
import { RetryPolicy } from '../support/retry.ts';
import { MAX_BUCKET_ENTRIES } from './near-index.ts';
import type { ImageEntry, ImageStore, ScoreEntry, ScoreStore } from './store.ts';

export interface DynamoStoreOptions {
  /** The table (MLMF_SCORE_CACHE_TABLE). */
  readonly table: string;
  /** Days an entry lives after it is written (MLMF_SCORE_CACHE_TTL_DAYS). Default 30. */
  readonly ttlDays?: number;
  /** The client; default one from lib/support/aws.ts with `aws` (region, MLMF_DYNAMODB_ENDPOINT). */
  readonly client?: DynamoDBClient;
  readonly aws?: AwsClientOptions;
  /** Retries of one request (throttling, 5xx, network). Default: 6 attempts within 20 s. */
  readonly retry?: RetryPolicy;
}

export const DEFAULT_TTL_DAYS = 30;
/** The largest entry stored, bytes of JSON: DynamoDB's item limit is 400 KB, keys and attributes included. */
export const MAX_ENTRY_BYTES = 64 * 1024;

/** DynamoDB's throttling answers: HTTP 400, yet retrying later is exactly what they ask for. */
const THROTTLING = new Set([
  'ProvisionedThroughputExceededException',
  'ThrottlingException',
  'RequestLimitExceeded',
  'LimitExceededException',
]);

/** Whether a DynamoDB request's error is worth another try: throttling and conflicts yes, a refused condition no. */
export const retriable = (err: unknown): boolean => {
  const e = err as { name?: string; code?: string } | undefined;
  if (THROTTLING.has(e?.name ?? '')) return true;
  if (e?.name === 'TransactionCanceledException') return isThrottledTransaction(err);
  return isRetriable(err);
};

const isThrottledTransaction = (err: unknown): boolean =>
  ((err as { CancellationReasons?: { Code?: string }[] }).CancellationReasons ?? []).some(
    (r) => r.Code === 'ThrottlingError' || r.Code === 'TransactionConflict',
  );

const DEFAULT_RETRY = new RetryPolicy({ maxAttempts: 6, maxElapsedMs: 20_000, baseMs: 100, maxMs: 5000, retriable });

const S = (value: string): AttributeValue => ({ S: value });

export class DynamoStore implements ScoreStore, ImageStore {
  private readonly ttlSeconds: number;
  private readonly retry: RetryPolicy;

  private constructor(
    private readonly client: DynamoDBClient,
    private readonly table: string,
    options: DynamoStoreOptions,
    private readonly ownsClient: boolean,
  ) {
    this.ttlSeconds = Math.round((options.ttlDays ?? DEFAULT_TTL_DAYS) * 86_400);
    this.retry = options.retry ?? DEFAULT_RETRY;
  }

  /** Opens the table, checking that it exists with the pk/sk string keys: a missing table is one clear error. */
  static async open(options: DynamoStoreOptions): Promise<DynamoStore> {
    const ttl = options.ttlDays ?? DEFAULT_TTL_DAYS;
    if (!(ttl > 0) || !Number.isFinite(ttl)) {
      throw new FilterError('score_cache_unusable', `score cache TTL must be a positive number of days, got ${ttl}`);
    }
    const client = options.client ?? dynamoDbClient(options.aws);
    const store = new DynamoStore(client, options.table, options, !options.client);
    try {
      await store.checkTable();
    } catch (err) {
      await store.close();
      throw err;
    }
    return store;
  }

  private async checkTable(): Promise<void> {
    const table = this.table;
    const described = await this.send('describe', () =>
      this.client.send(new DescribeTableCommand({ TableName: table })),
    );
    const keys = (described.Table?.KeySchema ?? []).map((k) => `${k.AttributeName}:${k.KeyType}`).sort();
    if (keys.join(',') !== 'pk:HASH,sk:RANGE') {
      const message = `score cache table ${table} has keys ${keys.join(',') || 'none'}, not pk (HASH) and sk (RANGE)`;
      throw new FilterError('score_cache_unusable', message, { table });
    }
  }

  /** The stored entry; an item that is not a well-formed entry (written by hand?) is a miss, never a wrong hit. */
  async get(key: string): Promise<ScoreEntry | undefined> {
    const entry = await this.getEntry<ScoreEntry>(`score#${key}`, 'score', false);
    return entry && isScoreEntry(entry) ? entry : undefined;
  }

  async putIfAbsent(key: string, entry: ScoreEntry): Promise<void> {
    await this.putEntryIfAbsent(`score#${key}`, 'score', entry);
  }

  async getImage(digest: string): Promise<ImageEntry | undefined> {
    return this.getEntry<ImageEntry>(`image#${digest}`, 'image', true);
  }

  async putImageIfAbsent(entry: ImageEntry, buckets: readonly string[]): Promise<ImageEntry> {
    const body = this.encode(entry);
    const expiresAt = { N: String(this.expiresAt()) };
    const now = { N: String(Math.floor(Date.now() / 1000)) };
    // The image and its bucket memberships in one transaction: a crash never leaves an image that no bucket finds.
    const items = [
      {
        Put: {
          TableName: this.table,
          Item: { pk: S(`image#${entry.digest}`), sk: S('image'), entry: S(body), expiresAt },
          ConditionExpression: 'attribute_not_exists(pk) OR expiresAt < :now',
          ExpressionAttributeValues: { ':now': now },
        },
      },
      ...[...new Set(buckets)].map((bucket) => ({
        Put: {
          TableName: this.table,
          Item: { pk: S(`bucket#${bucket}`), sk: S(entry.digest), entry: S(body), expiresAt },
        },
      })),
    ];
    if (items.length > 100) {
      const message = `an image may join at most 99 buckets in one write, got ${items.length - 1}`;
      throw new FilterError('score_cache_unusable', message, { table: this.table });
    }
    // The holder can vanish between the refused write and the read (expired, the table cleared): then try again.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.send('transact', () => this.client.send(new TransactWriteItemsCommand({ TransactItems: items })));
        return entry;
      } catch (err) {
        if (!conditionRefused(err)) throw err;
      }
      const holder = await this.getImage(entry.digest);
      if (holder) return holder;
      if (attempt === 3) {
        const message = `image ${entry.digest} is refused as taken, yet no entry holds it (3 tries)`;
        throw new FilterError('score_cache_failed', message, { table: this.table });
      }
    }
  }

  async bucket(key: string): Promise<ImageEntry[]> {
    const entries: ImageEntry[] = [];
    const now = Date.now() / 1000;
    let start: Record<string, AttributeValue> | undefined;
    do {
      const page = await this.send('query', () =>
        this.client.send(
          new QueryCommand({
            TableName: this.table,
            KeyConditionExpression: 'pk = :pk',
            ExpressionAttributeValues: { ':pk': S(`bucket#${key}`) },
            ConsistentRead: true,
            ExclusiveStartKey: start,
          }),
        ),
      );
      for (const item of page.Items ?? []) {
        const entry = expired(item, now) ? undefined : parseEntry<ImageEntry>(item);
        if (entry) entries.push(entry);
      }
      start = page.LastEvaluatedKey;
      // Bounded as the LMDB store bounds a bucket (MAX_BUCKET_ENTRIES): a bucket one hash fills (flat images at many
      // sizes) would otherwise cost every near check a read of all of it. Past the bound a near copy may be missed,
      // never a wrong one found; exact copies are still found by digest (ImageDedupe).
    } while (start && entries.length < MAX_BUCKET_ENTRIES);
    return entries.slice(0, MAX_BUCKET_ENTRIES);
  }

  async close(): Promise<void> {
    if (this.ownsClient) this.client.destroy();
  }

  private async getEntry<T>(pk: string, sk: string, consistent: boolean): Promise<T | undefined> {
    const res = await this.send('get', () =>
      this.client.send(
        new GetItemCommand({ TableName: this.table, Key: { pk: S(pk), sk: S(sk) }, ConsistentRead: consistent }),
      ),
    );
    if (!res.Item || expired(res.Item, Date.now() / 1000)) return undefined;
    return parseEntry<T>(res.Item);
  }

  private async putEntryIfAbsent(pk: string, sk: string, entry: object): Promise<void> {
    const item = { pk: S(pk), sk: S(sk), entry: S(this.encode(entry)), expiresAt: { N: String(this.expiresAt()) } };
    try {
      await this.send('put', () =>
        this.client.send(
          new PutItemCommand({
            TableName: this.table,
            Item: item,
            ConditionExpression: 'attribute_not_exists(pk) OR expiresAt < :now',
            ExpressionAttributeValues: { ':now': { N: String(Math.floor(Date.now() / 1000)) } },
          }),
        ),
      );
    } catch (err) {
      // Another writer stored the key first: its entry stays, as the first occurrence.
      if (!(err instanceof ConditionalCheckFailedException)) throw err;
    }
  }

  private encode(entry: object): string {
    const body = JSON.stringify(entry);
    const bytes = Buffer.byteLength(body);
    if (bytes > MAX_ENTRY_BYTES) {
      const message = `a score cache entry of ${bytes} bytes is over the ${MAX_ENTRY_BYTES}-byte limit of table ${this.table}`;
      throw new FilterError('score_cache_unusable', message, { table: this.table, bytes });
    }
    return body;
  }

  private expiresAt(): number {
    return Math.floor(Date.now() / 1000) + this.ttlSeconds;
  }

  /** One request under the retry policy; what is left failing is score_cache_failed (or the request's own verdict). */
  private async send<T>(what: string, request: () => Promise<T>): Promise<T> {
    try {
      return await this.retry.run(request);
    } catch (err) {
      const name = (err as { name?: string }).name ?? '';
      if (err instanceof FilterError) throw err;
      if (name === 'ResourceNotFoundException') {
        const message = `score cache table ${this.table} does not exist (or is not ACTIVE yet)`;
        throw new FilterError('score_cache_unusable', message, { table: this.table }, { cause: err });
      }
      // A refused condition is an answer, not a failure: the caller reads it.
      if (err instanceof ConditionalCheckFailedException || conditionRefused(err)) throw err;
      const message = `score cache table ${this.table}: ${what} failed: ${name ? `${name}: ` : ''}${(err as Error).message}`;
      const code = retriable(err) ? 'score_cache_failed' : 'score_cache_unusable';
      throw new FilterError(code, message, { table: this.table, request: what }, { cause: err });
    }
  }
}

/** A transaction cancelled because its image item's condition (the first item) was refused: the digest is taken. */
function conditionRefused(err: unknown): boolean {
  const reasons = (err as { name?: string; CancellationReasons?: { Code?: string }[] }).CancellationReasons;
  return (
    (err as { name?: string }).name === 'TransactionCanceledException' &&
    reasons?.[0]?.Code === 'ConditionalCheckFailed'
  );
}

function parseEntry<T>(item: Record<string, AttributeValue>): T | undefined {
  try {
    return item.entry?.S === undefined ? undefined : (JSON.parse(item.entry.S) as T);
  } catch {
    return undefined;
  }
}

function isScoreEntry(e: ScoreEntry): boolean {
  const scores = (e as Partial<ScoreEntry>).result?.scores;
  const values = scores && typeof scores === 'object' ? Object.values(scores) : [];
  return values.every((v) => v === null || typeof v === 'number') && typeof e.first?.id === 'string' && !!scores;
}

function expired(item: Record<string, AttributeValue>, nowSeconds: number): boolean {
  const at = Number(item.expiresAt?.N);
  return Number.isFinite(at) && at < nowSeconds;
}
