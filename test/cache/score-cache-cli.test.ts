/**
 * --score-cache through the real CLI on the tiny model and sample/pairs.jsonl: a second run on one cache takes every
 * scored pair's scores from it (the scorer scores nothing) with identical scores and decisions; a model-revision
 * change misses every entry; two runs at once on one cache both finish with the right results.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readRun } from '../helpers/cli-output.ts';
import { runCliToEnd, TINY_MODEL } from '../helpers/live-cli.ts';

const input = new URL('../../sample/pairs.jsonl', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'mlmf-score-cache-'));
// A threshold that splits the tiny model's scores, so that decisions of both kinds are compared.
const filterArgs = (out: string, cache: string | undefined, model = TINY_MODEL) => [
  'filter',
  '--input',
  input,
  '--out',
  out,
  '--model',
  model,
  '--threshold',
  'itm>=50',
  '--progress',
  'none',
  ...(cache ? ['--score-cache', cache] : []),
];

async function filter(name: string, cache: string | undefined, model?: string) {
  const out = join(dir, name);
  const run = await runCliToEnd(filterArgs(out, cache, model), 240_000);
  assert.equal(run.code, 0, run.err);
  return readRun(out);
}

/** id -> decision, reasons' codes and scores: what must not change when scores come from the cache. */
function verdicts(run: ReturnType<typeof readRun>) {
  const all = [
    ...run.curated.map((s) => [s.id, { decision: 'accept', codes: [] as string[], scores: s.scores }] as const),
    ...run.rejects.map((e) => [e.id, { decision: e.decision, codes: e.reasons.map((r) => r.code), scores: e.scores }]),
  ];
  return new Map(all.map(([id, v]) => [id, v]));
}

const cachedOf = (run: ReturnType<typeof readRun>) => [
  ...run.curated.filter((s) => s.cached).map((s) => s.id),
  ...run.rejects.filter((e) => e.cached).map((e) => e.id),
];

test('a second run on one cache: every scored pair a hit, the scorer never called, identical outcomes', async () => {
  const cache = join(dir, 'cache-a');
  const first = await filter('first', cache);
  const scored = first.summary.scoreCache.misses;
  assert.ok(scored > 0 && scored === first.summary.scoreCache.scorerPairs, JSON.stringify(first.summary.scoreCache));
  assert.equal(first.summary.scoreCache.hits, 0);
  assert.deepEqual(cachedOf(first), []);

  const second = await filter('second', cache);
  assert.deepEqual(second.summary.scoreCache, { dir: cache, hits: scored, misses: 0, scorerPairs: 0 });
  assert.deepEqual(verdicts(second), verdicts(first));
  assert.ok(first.curated.length > 0 && first.rejects.some((e) => e.reasons[0]?.code === 'below_threshold'));
  // Every scored outcome says where its scores were first computed: the same pair of the first run.
  assert.equal(cachedOf(second).length, scored);
  for (const s of second.curated) {
    assert.equal(s.cached?.first.id, s.id);
    assert.deepEqual(s.cached?.first.source, s.source);
  }
});

test('a model-revision change misses every entry of the old revision', async () => {
  const cache = join(dir, 'cache-b');
  const first = await filter('rev-first', cache);
  const model = join(dir, 'model-rev2');
  cpSync(TINY_MODEL, model, { recursive: true });
  const mlm = JSON.parse(readFileSync(join(model, 'mlm_filter.json'), 'utf8'));
  mlm.model.revision = 'seed0-reexported';
  writeFileSync(join(model, 'mlm_filter.json'), JSON.stringify(mlm));
  const second = await filter('rev-second', cache, model);
  const scored = first.summary.scoreCache.misses;
  assert.deepEqual(second.summary.scoreCache, { dir: cache, hits: 0, misses: scored, scorerPairs: scored });
  assert.deepEqual(cachedOf(second), []);
  // Same weights under another name: the scores the scorer gives again are the same.
  assert.deepEqual(verdicts(second), verdicts(first));
});

test('two runs at once on one cache both finish, with the outcomes of a run without --score-cache', async () => {
  const cache = join(dir, 'cache-c');
  const [a, b] = await Promise.all([filter('both-a', cache), filter('both-b', cache)]);
  const reference = await filter('reference', undefined);
  assert.equal(reference.summary.scoreCache, undefined, 'off by default');
  assert.deepEqual(verdicts(a), verdicts(reference));
  assert.deepEqual(verdicts(b), verdicts(reference));
  const scored =
    reference.curated.length + reference.rejects.filter((e) => e.reasons[0]?.code === 'below_threshold').length;
  for (const run of [a, b]) assert.equal(run.summary.scoreCache.hits + run.summary.scoreCache.misses, scored);
  // Whatever the interleaving, the cache now holds every pair: a third run hits them all.
  const third = await filter('both-third', cache);
  assert.equal(third.summary.scoreCache.hits, scored);
});

test('a pair repeated while its first occurrence is being scored waits for those scores: the scorer runs once', async () => {
  // Every pair twice under a new id, all within the pipeline's window (the second copy arrives before the first is
  // scored): the copies take the first occurrence's scores instead of scoring it again.
  const lines = readFileSync(input, 'utf8').split('\n').filter(Boolean).slice(0, 10);
  const again = lines.map((line) => JSON.stringify({ ...JSON.parse(line), id: `${JSON.parse(line).id}-again` }));
  const repeated = join(dir, 'repeated.jsonl');
  writeFileSync(repeated, [...lines, ...again].join('\n') + '\n');
  const out = join(dir, 'repeated-out');
  const cache = join(dir, 'cache-d');
  const args = filterArgs(out, cache).map((a) => (a === input ? repeated : a));
  const run = await runCliToEnd(args, 240_000);
  assert.equal(run.code, 0, run.err);
  const result = readRun(out);
  const { hits, misses, scorerPairs } = result.summary.scoreCache;
  assert.ok(misses > 0, JSON.stringify(result.summary.scoreCache));
  assert.deepEqual({ hits, scorerPairs }, { hits: misses, scorerPairs: misses });
  const byId = verdicts(result);
  for (const line of lines) {
    const id = JSON.parse(line).id as string;
    assert.deepEqual(byId.get(`${id}-again`), byId.get(id), id);
  }
  for (const s of result.curated.filter((c) => c.id.endsWith('-again'))) {
    assert.equal(s.cached?.first.id, s.id.replace(/-again$/, ''));
  }
});
