/**
 * --dedupe-images through the real CLI on the tiny model, with images made here by sharp: exact (another encoding of
 * an accepted image's pixels is rejected duplicate_image pointing at the first; a rejected first occurrence does not
 * count), near (a resized re-encoded copy is rejected, a different image is not), a re-run of one input on one cache
 * rejects nothing as its own duplicate, two runs at once on one cache agree.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { picture, record, withComment } from './dedupe-images.ts';
import { readRun } from '../helpers/cli-output.ts';
import { runCliToEnd, tinyFilterArgs } from '../helpers/live-cli.ts';

const dir = mkdtempSync(join(tmpdir(), 'mlmf-dedupe-'));

function writeInput(name: string, lines: string[]): string {
  const path = join(dir, `${name}.jsonl`);
  writeFileSync(path, lines.join('\n') + '\n');
  return path;
}

async function filter(input: string, out: string, ...more: string[]) {
  const run = await runCliToEnd(tinyFilterArgs(input, join(dir, out), ...more), 240_000);
  assert.equal(run.code, 0, run.err);
  return readRun(join(dir, out));
}

type Run = ReturnType<typeof readRun>;
const accepted = (run: Run) => run.curated.map((s) => s.id).sort();
const duplicates = (run: Run) =>
  Object.fromEntries(
    run.rejects
      .filter((e) => e.reasons[0]?.code === 'duplicate_image')
      .map((e) => [e.id, e.reasons[0]!.detail as { first: { id: string }; match: string; distance: number }]),
  );

test('exact: other encodings of an accepted image are duplicate_image pointing at the first; others are kept', async () => {
  const png = await (await picture(1)).png({ compressionLevel: 9 }).toBuffer();
  const pngAgain = await (await picture(1)).png({ compressionLevel: 1, palette: false }).toBuffer();
  const jpeg = await (await picture(2)).jpeg({ quality: 90 }).toBuffer();
  const other = await (await picture(3)).png().toBuffer();
  assert.notDeepEqual(png, pngAgain);
  const input = writeInput('exact', [
    record('png-first', png),
    record('jpeg-first', jpeg),
    record('other', other),
    record('png-recompressed', pngAgain, 'another caption for the same pixels'),
    record('jpeg-commented', withComment(jpeg, 'resaved by a CMS'), 'the jpeg again'),
  ]);
  const cache = join(dir, 'cache-exact');
  // One by one (--concurrency 1): the first occurrence is the first line.
  const run = await filter(input, 'exact', '--score-cache', cache, '--dedupe-images', 'exact', '--concurrency', '1');
  assert.deepEqual(accepted(run), ['jpeg-first', 'other', 'png-first']);
  const dups = duplicates(run);
  assert.equal(dups['png-recompressed']?.first.id, 'png-first');
  assert.equal(dups['jpeg-commented']?.first.id, 'jpeg-first');
  assert.equal(dups['jpeg-commented']?.match, 'exact');
  const event = run.rejects.find((e) => e.id === 'jpeg-commented')!;
  assert.deepEqual((event.reasons[0]!.detail as { first: { source: object } }).first.source, {
    kind: 'file',
    path: input,
    line: 2,
  });
  assert.deepEqual(run.summary.imageDedupe, { mode: 'exact', maxDistance: 0, duplicates: { exact: 2, near: 0 } });
  assert.equal(run.summary.reasons.duplicate_image, 2);
  // A later run meets the copies before scoring: no scorer call, not even a score-cache lookup.
  const copies = writeInput('exact-copies', [
    record('png-later', pngAgain),
    record('jpeg-later', withComment(jpeg, 'x')),
  ]);
  const later = await filter(copies, 'exact-later', '--score-cache', cache, '--dedupe-images', 'exact');
  assert.deepEqual(Object.keys(duplicates(later)).sort(), ['jpeg-later', 'png-later']);
  assert.deepEqual(later.summary.scoreCache, { dir: cache, hits: 0, misses: 0, scorerPairs: 0 });
});

test('exact: a first occurrence the policy rejected is not remembered; a later copy is kept', async () => {
  const png = await (await picture(4)).png().toBuffer();
  const cache = join(dir, 'cache-rejected-first');
  const first = await filter(
    writeInput('rejected-first', [record('first', png)]),
    'rejected-first',
    '--threshold',
    'itm>100',
    '--score-cache',
    cache,
    '--dedupe-images',
    'exact',
  );
  assert.deepEqual(
    first.rejects.map((e) => e.reasons[0]?.code),
    ['below_threshold'],
  );
  const again = await (await picture(4)).png({ compressionLevel: 2 }).toBuffer();
  const second = await filter(
    writeInput('later-copy', [record('later', again)]),
    'later-copy',
    '--score-cache',
    cache,
    '--dedupe-images',
    'exact',
  );
  assert.deepEqual(accepted(second), ['later']);
});

test('near: a resized re-encoded copy is a near duplicate, a different image is not', async () => {
  const base = await (await picture(5, 320, 240)).png().toBuffer();
  const copy = await sharp(base).resize(240).jpeg({ quality: 70 }).toBuffer();
  const different = await (await picture(6, 320, 240)).png().toBuffer();
  const input = writeInput('near', [record('base', base), record('copy', copy), record('different', different)]);
  const cache = join(dir, 'cache-near');
  const run = await filter(input, 'near', '--score-cache', cache, '--dedupe-images', 'near', '--concurrency', '1');
  assert.deepEqual(accepted(run), ['base', 'different']);
  const dup = duplicates(run).copy!;
  assert.equal(dup.first.id, 'base');
  assert.equal(dup.match, 'near');
  assert.ok(dup.distance > 0 && dup.distance <= 6, `distance ${dup.distance}`);
  assert.deepEqual(run.summary.imageDedupe.duplicates, { exact: 0, near: 1 });
  // The same input under exact: the copy's pixels differ, so it is kept.
  const exact = await filter(
    input,
    'near-as-exact',
    '--score-cache',
    join(dir, 'cache-near-exact'),
    '--dedupe-images',
    'exact',
  );
  assert.deepEqual(accepted(exact), ['base', 'copy', 'different']);
});

/** Four images, each in two encodings: which of a pair is first may vary, but exactly one of each is kept. */
async function groupsInput(name: string): Promise<{ input: string; groups: string[][] }> {
  const lines: string[] = [];
  const groups: string[][] = [];
  for (let n = 10; n < 14; n++) {
    const png = await (await picture(n)).png().toBuffer();
    const again = await (await picture(n)).png({ compressionLevel: 1 }).toBuffer();
    groups.push([`g${n}-a`, `g${n}-b`]);
    lines.push(record(`g${n}-a`, png), record(`g${n}-b`, again));
  }
  return { input: writeInput(name, lines), groups };
}

function oneKeptPerGroup(run: Run, groups: string[][]): Record<string, string> {
  const kept = new Set(accepted(run));
  const dups = duplicates(run);
  const winners: Record<string, string> = {};
  for (const group of groups) {
    const k = group.filter((id) => kept.has(id));
    assert.equal(k.length, 1, `one of ${group} kept, got ${k}`);
    for (const id of group) if (id !== k[0]) assert.equal(dups[id]?.first.id, k[0], `${id} points at ${k[0]}`);
    winners[group[0]!] = k[0]!;
  }
  // Never a pair its own duplicate.
  for (const [id, d] of Object.entries(dups)) assert.notEqual(d.first.id, id);
  return winners;
}

test('a re-run of the same input on the same cache decides every pair as the first run did', async () => {
  const { input, groups } = await groupsInput('rerun');
  const cache = join(dir, 'cache-rerun');
  const first = await filter(input, 'rerun-1', '--score-cache', cache, '--dedupe-images', 'exact');
  const winners = oneKeptPerGroup(first, groups);
  // The input named through a symlink: the same records, so still never their own duplicates.
  const link = join(dir, 'rerun-link.jsonl');
  symlinkSync(input, link);
  const second = await filter(link, 'rerun-2', '--score-cache', cache, '--dedupe-images', 'exact');
  assert.deepEqual(oneKeptPerGroup(second, groups), winners);
  assert.deepEqual(accepted(second), accepted(first));
});

test('two runs at once on one cache: both finish and agree on one first occurrence per image', async () => {
  const { input, groups } = await groupsInput('concurrent');
  const cache = join(dir, 'cache-concurrent');
  const args = ['--score-cache', cache, '--dedupe-images', 'near'];
  const [a, b] = await Promise.all([filter(input, 'both-a', ...args), filter(input, 'both-b', ...args)]);
  assert.deepEqual(oneKeptPerGroup(a, groups), oneKeptPerGroup(b, groups));
});

test('--dedupe-images is refused without --score-cache, and outside near:0..32, before anything is written', async () => {
  const input = writeInput('refused', [record('x', await (await picture(1)).png().toBuffer())]);
  const noCache = await runCliToEnd(tinyFilterArgs(input, join(dir, 'refused-1'), '--dedupe-images', 'exact'), 60_000);
  assert.equal(noCache.code, 2);
  assert.match(noCache.err, /\[missing_option\].*--score-cache/);
  const top = await runCliToEnd(
    tinyFilterArgs(
      input,
      join(dir, 'refused-3'),
      '--score-cache',
      join(dir, 'c'),
      '--dedupe-images',
      'near',
      '--top-fraction',
      '0.5',
    ),
    60_000,
  );
  assert.equal(top.code, 2);
  assert.match(top.err, /\[bad_usage\].*--top-fraction/);
  for (const bad of ['near:33', 'near:-1', 'near:07', 'near:', 'exact:3', 'fuzzy']) {
    const r = await runCliToEnd(
      tinyFilterArgs(input, join(dir, 'refused-2'), '--score-cache', join(dir, 'c'), '--dedupe-images', bad),
      60_000,
    );
    assert.equal(r.code, 2, bad);
    assert.match(r.err, /\[bad_config\].*--dedupe-images/, bad);
  }
  for (const out of ['refused-1', 'refused-2', 'refused-3', 'c'])
    assert.ok(!existsSync(join(dir, out)), `${out} untouched`);
  const plan = await runCliToEnd(
    tinyFilterArgs(input, join(dir, 'plan'), '--score-cache', join(dir, 'c'), '--dedupe-images', 'near:5', '--dry-run'),
    60_000,
  );
  assert.equal(plan.code, 0, plan.err);
  assert.match(plan.out, /image dedupe: near \(perceptual hashes within 5 bits\)/);
  const printed = await runCliToEnd(
    tinyFilterArgs(
      input,
      join(dir, 'plan'),
      '--score-cache',
      join(dir, 'c'),
      '--dedupe-images',
      'near',
      '--print-config',
    ),
    60_000,
  );
  assert.equal(JSON.parse(printed.out).dedupeImages, 'near');
});
