/**
 * `cache stats` and `cache clear` on a store the image dedupe also wrote (named sub-databases in the same LMDB file):
 * its sub-database names are not foreign keys, images are counted, and clearing by age drops old images from the
 * image table and from their buckets.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cacheStats, clearCache } from '../../lib/cache/admin.ts';
import { LmdbScoreStore, type ImageEntry } from '../../lib/cache/store.ts';
import type { ScoreResult } from '../../lib/types.ts';

const origin = { kind: 'file', path: '/data/pairs.jsonl', line: 1 } as const;
const first = (at: string) => ({ id: `p-${at}`, source: origin, at });
const image = (digest: string, at: string): ImageEntry => ({ digest, phash: '0123456789abcdef', first: first(at) });

async function storeWithImages(): Promise<string> {
  const dir = join(await mkdtemp(join(tmpdir(), 'mlmf-admin-')), 'cache');
  const store = LmdbScoreStore.open(dir);
  const result = { scores: {} } as unknown as ScoreResult;
  await store.putIfAbsent('a'.repeat(64), { result, first: first('2020-01-01T00:00:00.000Z') });
  await store.putIfAbsent('b'.repeat(64), { result, first: first('2030-01-01T00:00:00.000Z') });
  await store.putImageIfAbsent(image('old', '2020-01-01T00:00:00.000Z'), ['k1', 'k2']);
  await store.putImageIfAbsent(image('new', '2030-01-01T00:00:00.000Z'), ['k2']);
  await store.close();
  return dir;
}

test('stats count score entries and accepted images, with no foreign keys', async (t) => {
  const dir = await storeWithImages();
  t.after(() => rm(join(dir, '..'), { recursive: true, force: true }));
  const stats = await cacheStats(dir);
  assert.equal(stats.entries, 2);
  assert.equal(stats.otherKeys, 0);
  assert.equal(stats.images, 2);
});

test('clear --older-than drops old scores and old images, from the image table and every bucket', async (t) => {
  const dir = await storeWithImages();
  t.after(() => rm(join(dir, '..'), { recursive: true, force: true }));
  const cleared = await clearCache(dir, { olderThan: Date.parse('2025-01-01T00:00:00Z') });
  assert.deepEqual(cleared, { removed: 1, mode: 'emptied', openBy: 0 });
  const store = LmdbScoreStore.open(dir);
  try {
    assert.equal(await store.get('a'.repeat(64)), undefined);
    assert.ok(await store.get('b'.repeat(64)));
    assert.equal(await store.getImage('old'), undefined);
    assert.ok(await store.getImage('new'));
    assert.deepEqual(await store.bucket('k1'), []);
    assert.deepEqual(
      (await store.bucket('k2')).map((e) => e.digest),
      ['new'],
    );
  } finally {
    await store.close();
  }
});

test('clear removes the whole store and counts only score entries', async (t) => {
  const dir = await storeWithImages();
  t.after(() => rm(join(dir, '..'), { recursive: true, force: true }));
  assert.deepEqual(await clearCache(dir), { removed: 2, openBy: 0, mode: 'deleted' });
});
