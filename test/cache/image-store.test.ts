/**
 * The LMDB image store: putImageIfAbsent keeps the first entry of a digest across two processes racing on one store,
 * buckets list each entry once, and the score entries of the same environment are untouched.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { LmdbScoreStore, MAX_BUCKET_ENTRIES, type ImageEntry } from '../../lib/cache/store.ts';

const storeUrl = new URL('../../lib/cache/store.ts', import.meta.url).href;
const entry = (digest: string, id: string): ImageEntry => ({
  digest,
  phash: '0123456789abcdef',
  first: { id, source: { kind: 'file', path: '/in.jsonl', line: 1 }, at: '2026-12-08T00:00:00.000Z' },
});

test('putImageIfAbsent: the first entry of a digest stays first; buckets hold it once', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-images-')), 'cache');
  const store = LmdbScoreStore.open(dir);
  assert.deepEqual(await store.putImageIfAbsent(entry('d1', 'a'), ['x', 'y']), entry('d1', 'a'));
  assert.deepEqual(await store.putImageIfAbsent(entry('d1', 'b'), ['x', 'z']), entry('d1', 'a'));
  await store.putImageIfAbsent(entry('d2', 'c'), ['x']);
  assert.deepEqual((await store.bucket('x')).map((e) => e.first.id).sort(), ['a', 'c']);
  assert.deepEqual(await store.bucket('z'), [], 'a losing writer files nothing');
  assert.deepEqual(await store.getImage('d1'), entry('d1', 'a'));
  assert.equal(await store.get('d1'), undefined, 'images live apart from score entries');
  await store.close();
});

test('a full bucket files no more entries; they are still stored by digest', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-images-')), 'cache');
  const store = LmdbScoreStore.open(dir);
  for (let i = 0; i < MAX_BUCKET_ENTRIES + 5; i++)
    await store.putImageIfAbsent(entry(`flat${i}`, `p${i}`), ['same', `own${i}`]);
  assert.equal((await store.bucket('same')).length, MAX_BUCKET_ENTRIES);
  const last = `flat${MAX_BUCKET_ENTRIES + 4}`;
  assert.deepEqual(await store.getImage(last), entry(last, `p${MAX_BUCKET_ENTRIES + 4}`));
  assert.deepEqual(await store.bucket(`own${MAX_BUCKET_ENTRIES + 4}`), [entry(last, `p${MAX_BUCKET_ENTRIES + 4}`)]);
  await store.close();
});

test('two processes recording the same digests at once agree on one first entry per digest', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-images-')), 'cache');
  const script = join(dir, '..', 'racer.mts');
  writeFileSync(
    script,
    `import { LmdbScoreStore } from ${JSON.stringify(storeUrl)};
const [dir, who] = process.argv.slice(2);
const store = LmdbScoreStore.open(dir);
const held = {};
await Promise.all(Array.from({ length: 300 }, async (_, i) => {
  const e = { digest: 'd' + i, phash: '0123456789abcdef', first: { id: who + i, source: { kind: 'file', path: who, line: i }, at: new Date().toISOString() } };
  held[e.digest] = (await store.putImageIfAbsent(e, ['b' + (i % 7)])).first.id;
}));
await store.close();
process.stdout.write(JSON.stringify(held));
`,
  );
  const run = (who: string) =>
    new Promise<Record<string, string>>((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', script, dir, who], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c));
      child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`racer exited ${code}`))));
    });
  const [a, b] = await Promise.all([run('a'), run('b')]);
  const store = LmdbScoreStore.open(dir);
  for (let i = 0; i < 300; i++) {
    const stored = await store.getImage(`d${i}`);
    assert.ok(stored, `d${i} stored`);
    // Each process was told the entry that is stored: the loser read the winner's back.
    assert.equal(a[`d${i}`], stored.first.id);
    assert.equal(b[`d${i}`], stored.first.id);
  }
  let filed = 0;
  for (let k = 0; k < 7; k++) filed += (await store.bucket(`b${k}`)).length;
  assert.equal(filed, 300, 'each digest filed once, by its winner');
  await store.close();
});
