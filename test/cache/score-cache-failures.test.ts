/**
 * A score store that fails past its retries (score_cache_failed, as the fleet's DynamoDB store reports throttling or
 * an outage) degrades the cache to misses: the pair is scored and decided as without a cache, and the failures are
 * counted. A store that is unusable (not retriable) still fails loudly.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ScoreCache } from '../../lib/cache/score-cache.ts';
import type { ScoreEntry, ScoreStore } from '../../lib/cache/store.ts';
import { FilterError } from '../../lib/errors.ts';

/** A store whose every request fails with `code`: what DynamoStore throws once its retries are spent. */
class FailingStore implements ScoreStore {
  constructor(private readonly code: 'score_cache_failed' | 'score_cache_unusable') {}
  async get(): Promise<ScoreEntry | undefined> {
    throw new FilterError(this.code, 'the table is not answering');
  }
  async putIfAbsent(): Promise<void> {
    throw new FilterError(this.code, 'the table is not answering');
  }
  async close(): Promise<void> {}
}

const scope = { model: { name: 'm', revision: 'r' }, prompt: 'p', metrics: ['itm'] as const };
const result = { scores: { itm: 80 } };
const first = { id: 'p1', source: { kind: 'file', path: '/x.jsonl', line: 1 } as const };

test('a store failing past its retries: lookups are misses, writes are skipped, both counted', async () => {
  const cache = new ScoreCache(new FailingStore('score_cache_failed'), scope);
  const key = cache.key(Buffer.from('image'), 'caption');
  assert.equal(await cache.lookup(key), undefined);
  await cache.remember(key, result, first);
  cache.settle(key);
  assert.deepEqual(cache.counts, { hits: 0, misses: 1 });
  assert.equal(cache.storeFailures, 2);
});

test('an unusable store still throws', async () => {
  const cache = new ScoreCache(new FailingStore('score_cache_unusable'), scope);
  const key = cache.key(Buffer.from('image'), 'caption');
  await assert.rejects(cache.lookup(key), (e: unknown) => (e as FilterError).code === 'score_cache_unusable');
  await assert.rejects(
    cache.remember(key, result, first),
    (e: unknown) => (e as FilterError).code === 'score_cache_unusable',
  );
});
