/**
 * ScoreCache over the real LMDB store: a key looked up while another pair of the process is being scored for it
 * waits for those scores; when that pair is not scored after all, the waiter becomes the key's scorer.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ScoreCache } from '../../lib/cache/score-cache.ts';
import { LmdbScoreStore } from '../../lib/cache/store.ts';
import type { ScoreResult } from '../../lib/types.ts';

const scope = { model: { name: 'm', revision: 'r' }, prompt: 'p', metrics: ['itm'] as const };
const origin = (line: number) => ({ kind: 'file' as const, path: '/in.jsonl', line });
const open = () => new ScoreCache(LmdbScoreStore.open(join(mkdtempSync(join(tmpdir(), 'mlmf-sc-')), 'c')), scope);
const result: ScoreResult = { scores: { itm: 42 } };

test('a lookup of a key being scored waits for its scores: one miss, one hit, one entry', async () => {
  const cache = open();
  const key = cache.key(Buffer.from('image'), 'caption');
  assert.equal(await cache.lookup(key), undefined);
  let waited: unknown = 'pending';
  const waiter = cache.lookup(key).then((hit) => (waited = hit));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(waited, 'pending', 'the second lookup waits while the first pair is scored');
  await cache.remember(key, result, { id: 'first', source: origin(1) });
  cache.settle(key);
  const hit = (await waiter) as Awaited<ReturnType<ScoreCache['lookup']>>;
  assert.deepEqual(hit?.result, result);
  assert.equal(hit?.first.id, 'first');
  assert.deepEqual(cache.counts, { hits: 1, misses: 1 });
  await cache.close();
});

test('a key whose scorer gave up (nothing remembered) is scored by the pair that waited', async () => {
  const cache = open();
  const key = cache.key(Buffer.from('image'), 'caption');
  assert.equal(await cache.lookup(key), undefined);
  const waiter = cache.lookup(key);
  cache.settle(key);
  assert.equal(await waiter, undefined, 'a miss: the waiter now scores it');
  const third = cache.lookup(key);
  await cache.remember(key, result, { id: 'second', source: origin(2) });
  cache.settle(key);
  assert.equal((await third)?.first.id, 'second');
  assert.deepEqual(cache.counts, { hits: 1, misses: 2 });
  // Settling a key twice, or one never looked up, is harmless.
  cache.settle(key);
  cache.settle('absent');
  await cache.close();
});
