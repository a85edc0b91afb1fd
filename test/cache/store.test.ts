/** The LMDB score store: an entry survives reopening, and the first occurrence of a key stays the first. */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { LmdbScoreStore, type ScoreEntry } from '../../lib/cache/store.ts';
import { FilterError } from '../../lib/errors.ts';

const entry = (id: string, itm: number): ScoreEntry => ({
  result: { scores: { itm }, expected: { itm: itm + 0.25 }, captionCut: { originalChars: 9, keptChars: 4 } },
  first: { id, source: { kind: 'file', path: '/in.jsonl', line: 3 }, at: '2026-12-07T00:00:00.000Z' },
});

test('putIfAbsent keeps the first entry of a key; entries survive closing and reopening', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-store-')), 'cache');
  const a = LmdbScoreStore.open(dir);
  const b = LmdbScoreStore.open(dir);
  assert.equal(await a.get('k'), undefined);
  await a.putIfAbsent('k', entry('first', 40));
  await b.putIfAbsent('k', entry('second', 90));
  assert.deepEqual(await b.get('k'), entry('first', 40));
  await Promise.all([a.close(), b.close()]);
  const c = LmdbScoreStore.open(dir);
  assert.deepEqual(await c.get('k'), entry('first', 40));
  await c.close();
});

test('a path that cannot hold a store is a score_cache_unusable error', () => {
  const file = join(mkdtempSync(join(tmpdir(), 'mlmf-store-')), 'file');
  writeFileSync(file, 'not a directory');
  assert.throws(
    () => LmdbScoreStore.open(file),
    (err: unknown) => err instanceof FilterError && err.code === 'score_cache_unusable',
  );
});

test(
  'a read-only directory is a score_cache_unusable error',
  { skip: process.getuid?.() === 0 && 'root writes anyway' },
  () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-store-')), 'ro');
    mkdirSync(dir, { mode: 0o555 });
    assert.throws(
      () => LmdbScoreStore.open(dir),
      (err: unknown) => err instanceof FilterError && err.code === 'score_cache_unusable',
    );
  },
);

test('a data.mdb that is not an LMDB store is refused before LMDB opens it (LMDB would crash the process)', async () => {
  const root = mkdtempSync(join(tmpdir(), 'mlmf-store-'));
  const foreign = join(root, 'foreign');
  mkdirSync(foreign);
  writeFileSync(join(foreign, 'data.mdb'), Buffer.alloc(64 * 1024, 7));
  // A real store cut to its first page: its second meta page is gone.
  const cut = join(root, 'cut');
  const store = LmdbScoreStore.open(cut);
  await store.putIfAbsent('k', entry('first', 40));
  await store.close();
  truncateSync(join(cut, 'data.mdb'), 4096);
  for (const dir of [foreign, cut]) {
    assert.throws(
      () => LmdbScoreStore.open(dir),
      (err: unknown) =>
        err instanceof FilterError && err.code === 'score_cache_unusable' && /not an LMDB/.test(err.message),
    );
  }
});
