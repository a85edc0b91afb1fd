/**
 * `mlm-filter cache stats|clear` and the places `filter --score-cache` refuses, through the real CLI on the tiny
 * model: a cache inside --out (also behind a symlink), a file, a directory with other files, a data.mdb that is not
 * LMDB, the same --out twice at once on one cache, --dry-run (names the cache, creates nothing), and clearing a
 * cache while a run has it open.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readRun } from '../helpers/cli-output.ts';
import { runCliToEnd, startCli, TINY_MODEL, visibleOutcomes } from '../helpers/live-cli.ts';
import { waitFor } from '../helpers/poll.ts';

const input = new URL('../../sample/pairs.jsonl', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'mlmf-cache-cmd-'));
const filterArgs = (out: string, cache: string, ...more: string[]) => [
  ...['filter', '--input', input, '--out', out, '--model', TINY_MODEL, '--threshold', 'itm>=50'],
  ...['--progress', 'none', '--score-cache', cache, ...more],
];
const cli = (args: string[]) => runCliToEnd(args, 240_000);
const codeOf = (err: string) => /error \[([a-z_]+)\]/.exec(err)?.[1];

test('stats counts the entries a run stored; clear removes the files; both refuse what is not a score cache', async () => {
  const cache = join(dir, 'cache-a');
  const run = await cli(filterArgs(join(dir, 'out-a'), cache));
  assert.equal(run.code, 0, run.err);
  const stored = readRun(join(dir, 'out-a')).summary.scoreCache.misses;
  const stats = await cli(['cache', 'stats', '--score-cache', cache, '--json']);
  assert.equal(stats.code, 0, stats.err);
  const s = JSON.parse(stats.out);
  assert.equal(s.entries, stored);
  assert.equal(s.otherKeys, 0);
  assert.equal(s.openBy, 0);
  assert.ok(s.fileBytes > 0 && s.usedBytes > 0 && s.oldest <= s.newest, stats.out);

  const kept = await cli(['cache', 'clear', '--score-cache', cache, '--older-than', '2000-01-01']);
  assert.match(kept.out, /: 0 entries removed inside the store/);
  const cleared = await cli(['cache', 'clear', '--score-cache', cache]);
  assert.equal(cleared.code, 0, cleared.err);
  assert.match(cleared.out, new RegExp(`cleared ${cache}: ${stored} entries, files removed`));
  assert.equal(existsSync(cache), false);
  assert.match((await cli(['cache', 'clear', '--score-cache', cache])).out, /nothing to clear/);
  const none = await cli(['cache', 'stats', '--score-cache', cache]);
  assert.equal(codeOf(none.err), 'score_cache_unusable');

  // An output directory is not a score cache: refused, nothing removed.
  const refused = await cli(['cache', 'clear', '--score-cache', join(dir, 'out-a')]);
  assert.equal(refused.code, 2);
  assert.equal(codeOf(refused.err), 'score_cache_foreign');
  assert.ok(existsSync(join(dir, 'out-a', 'summary.json')));
});

test('clear --older-than removes only older entries; the next run scores those pairs again', async () => {
  const cache = join(dir, 'cache-b');
  assert.equal((await cli(filterArgs(join(dir, 'out-b1'), cache))).code, 0);
  const stored = readRun(join(dir, 'out-b1')).summary.scoreCache.misses;
  // Every entry is older than a moment from now.
  const future = new Date(Date.now() + 60_000).toISOString();
  const cleared = await cli(['cache', 'clear', '--score-cache', cache, '--older-than', future]);
  assert.match(cleared.out, new RegExp(`: ${stored} entries removed inside the store`));
  const again = await cli(filterArgs(join(dir, 'out-b2'), cache));
  assert.deepEqual(readRun(join(dir, 'out-b2')).summary.scoreCache.misses, stored, again.err);
  const bad = await cli(['cache', 'clear', '--score-cache', cache, '--older-than', 'yesterday-ish']);
  assert.equal(bad.code, 2);
  // An age before any date a clock holds was an uncaught RangeError in the clear, after the store was opened.
  for (const age of ['99999999999999d', '99999999999999999999']) {
    const past = await cli(['cache', 'clear', '--score-cache', cache, '--older-than', age]);
    assert.equal(past.code, 2, past.err);
    assert.match(past.err, /invalid_option/);
  }
});

test('clear while a run has the cache open: entries removed inside the store, the run goes on and misses', async () => {
  const cache = join(dir, 'cache-c');
  const out = join(dir, 'out-c');
  const lines = readFileSync(input, 'utf8').split('\n').filter(Boolean);
  const live = startCli(filterArgs(out, cache).map((a) => (a === input ? '-' : a)));
  live.child.stdin.write(lines[0] + '\n');
  await waitFor('the first pair decided', () => visibleOutcomes(out) >= 1, 120_000);
  const cleared = await cli(['cache', 'clear', '--score-cache', cache]);
  assert.equal(cleared.code, 0, cleared.err);
  assert.match(cleared.out, /1 entries removed inside the store \(open in 1 other process\(es\)/);
  // The same pair again, under a new id: its entry is gone, so the scorer scores it again.
  live.child.stdin.end(JSON.stringify({ ...JSON.parse(lines[0]!), id: 'again' }) + '\n');
  const { code } = await live.exited;
  assert.equal(code, 0, live.stderr());
  assert.deepEqual(readRun(out).summary.scoreCache, { dir: cache, hits: 0, misses: 2, scorerPairs: 2 });
});

test('filter refuses a cache that overlaps --out (also through a symlink), before --out is made', async () => {
  const out = join(dir, 'out-d');
  for (const cache of [join(out, 'cache'), dir]) {
    const r = await cli(filterArgs(out, cache));
    assert.equal(r.code, 2, r.err);
    assert.equal(codeOf(r.err), 'score_cache_in_output');
  }
  mkdirSync(out);
  symlinkSync(out, join(dir, 'link-to-out'));
  const r = await cli(filterArgs(out, join(dir, 'link-to-out', 'cache'), '--overwrite'));
  assert.equal(codeOf(r.err), 'score_cache_in_output', r.err);
  assert.deepEqual(readdirSync(out), []);
  // A symlink to a directory elsewhere is a place like any other.
  mkdirSync(join(dir, 'real-cache'));
  symlinkSync(join(dir, 'real-cache'), join(dir, 'link-to-cache'));
  const ok = await cli(filterArgs(join(dir, 'out-e'), join(dir, 'link-to-cache')));
  assert.equal(ok.code, 0, ok.err);
  assert.ok(existsSync(join(dir, 'real-cache', 'data.mdb')));
});

test('filter refuses a file, a directory with other files and a data.mdb that is not LMDB, with --out untouched', async () => {
  const file = join(dir, 'a-file');
  writeFileSync(file, 'x');
  const foreign = join(dir, 'project');
  mkdirSync(foreign);
  writeFileSync(join(foreign, 'notes.txt'), 'mine');
  const fake = join(dir, 'fake-store');
  mkdirSync(fake);
  writeFileSync(join(fake, 'data.mdb'), Buffer.alloc(64 * 1024, 7));
  const cases: [string, string, number][] = [
    [file, 'score_cache_unusable', 1],
    [foreign, 'score_cache_foreign', 2],
    [fake, 'score_cache_unusable', 1],
  ];
  for (const [cache, code, exit] of cases) {
    const out = join(dir, `out-refused-${code}-${exit}-${cache.length}`);
    const r = await cli(filterArgs(out, cache));
    assert.equal(codeOf(r.err), code, r.err);
    assert.equal(r.code, exit);
    assert.equal(existsSync(join(out, 'summary.json')), false);
  }
  assert.deepEqual(readdirSync(foreign), ['notes.txt'], 'no LMDB files left in a foreign directory');
  assert.equal(
    readFileSync(join(fake, 'data.mdb')).every((b) => b === 7),
    true,
    'the file is not rewritten',
  );
});

test('--dry-run names the cache and creates nothing; the same --out twice at once: one run, one refusal', async () => {
  const cache = join(dir, 'cache-f');
  const dry = await cli(filterArgs(join(dir, 'out-f'), cache, '--dry-run'));
  assert.equal(dry.code, 0, dry.err);
  assert.match(dry.out, new RegExp(`score cache: ${cache} \\(missing: a run creates it\\)`));
  assert.equal(existsSync(cache), false);
  const out = join(dir, 'out-g');
  const [a, b] = await Promise.all([cli(filterArgs(out, cache)), cli(filterArgs(out, cache))]);
  const codes = [a, b].map((r) => r.code).sort();
  assert.deepEqual(codes, [0, 2], a.err + b.err);
  // Refused while the other holds --out's lock, or, when it had already ended, because --out holds its run.
  assert.match(codeOf([a, b].find((r) => r.code === 2)!.err) ?? '', /^(output_locked|output_not_empty)$/);
  const again = await cli(filterArgs(join(dir, 'out-h'), cache, '--dry-run'));
  assert.match(again.out, /\(a store, data\.mdb [\d.]+ MiB; reused\)/);
});

test('--score-cache-max-gb: past the bound new scores are not stored, said once; the run is unaffected', async () => {
  const cache = join(dir, 'cache-bound');
  // 4000 bytes: less than one 4 KiB page, so the bound is reached after the first writes.
  const first = await cli(filterArgs(join(dir, 'out-bound1'), cache, '--score-cache-max-gb', '0.000004'));
  assert.equal(first.code, 0, first.err);
  const a = readRun(join(dir, 'out-bound1')).summary.scoreCache;
  assert.ok(a.notStored > 0 && a.notStored < a.misses, JSON.stringify(a));
  assert.equal(first.err.match(/reached its --score-cache-max-gb bound \(0\.000004 GB\)/g)?.length, 1, first.err);
  const stats = JSON.parse((await cli(['cache', 'stats', '--score-cache', cache, '--json'])).out);
  assert.equal(stats.entries, a.misses - a.notStored);
  // Without the bound the next run hits what was stored and stores the rest.
  const second = await cli(filterArgs(join(dir, 'out-bound2'), cache));
  const b = readRun(join(dir, 'out-bound2')).summary.scoreCache;
  assert.deepEqual([b.hits, b.misses, b.notStored], [stats.entries, a.notStored, undefined], second.err);
  const bad = await cli(filterArgs(join(dir, 'out-bound3'), cache, '--score-cache-max-gb', '0'));
  assert.equal(codeOf(bad.err), 'invalid_option');
  // A bound without a cache, and an empty cache path (which would silently mean no cache), are refused.
  const base = filterArgs(join(dir, 'out-bound4'), '').slice(0, -2);
  assert.equal(codeOf((await cli([...base, '--score-cache-max-gb', '1'])).err), 'bad_usage');
  assert.equal(codeOf((await cli([...base, '--score-cache', ''])).err), 'invalid_option');
});
