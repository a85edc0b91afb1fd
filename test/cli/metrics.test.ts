/**
 * `mlm-filter filter --metrics`: which metrics the scorer scores. Runs the real CLI on the committed tiny model over
 * sample/pairs.jsonl (10 scorable pairs, 4 records rejected before scoring) and reads what it wrote: unscored metrics
 * are null (never absent) in the curated `.json` and in rejects.jsonl, and a list that leaves out a metric the policy
 * reads is a usage error before any model loads.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { AuditEvent } from '../../lib/formats/audit-event.ts';
import { readRun } from '../helpers/cli-output.ts';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const model = 'test/fixtures/models/tiny-llava-qwen';
const input = 'sample/pairs.jsonl';
/** sample/pairs.jsonl: records whose image reaches the scorer. */
const SCORABLE = 10;

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function filter(out: string, ...flags: string[]) {
  return cli(['filter', '--input', input, '--out', out, '--model', model, '--progress', 'none', ...flags]);
}

/** The four keys are always there; `scored` hold integers 0..100, the others null. */
function assertScores(scores: Record<string, unknown> | null, scored: string[], what: string) {
  assert.ok(scores, `${what}: no scores`);
  assert.deepEqual(Object.keys(scores).sort(), ['ctq', 'itm', 'odf', 'su'], what);
  for (const [metric, value] of Object.entries(scores)) {
    if (scored.includes(metric)) {
      assert.ok(typeof value === 'number' && value >= 0 && value <= 100, `${what}: ${metric} = ${value}`);
    } else {
      assert.equal(value, null, `${what}: ${metric} should be null`);
    }
  }
}

const scoredRejects = (rejects: AuditEvent[]) =>
  rejects.filter((e) => e.reasons.some((r) => r.code === 'below_threshold' || r.code === 'scoring_failed'));

test('--metrics policy scores itm and odf only: ctq and su are null in the curated .json and rejects.jsonl', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-metrics-'));
  const all = filter(join(dir, 'all'));
  assert.equal(all.code, 0, all.err);
  const policy = filter(join(dir, 'policy'), '--metrics', 'policy');
  assert.equal(policy.code, 0, policy.err);
  const a = readRun(join(dir, 'all'));
  const p = readRun(join(dir, 'policy'));

  // The default policy (itm>=66 AND odf>=20) on the tiny model keeps some scored pairs and rejects others.
  assert.ok(p.curated.length > 0, 'no pair accepted');
  assert.ok(scoredRejects(p.rejects).length > 0, 'no scored pair rejected');
  assert.equal(p.curated.length + scoredRejects(p.rejects).length, SCORABLE);
  for (const meta of p.curated) {
    assertScores(meta.scores, ['itm', 'odf'], `curated ${meta.id} scores`);
    if (meta.expected_scores) assertScores(meta.expected_scores, ['itm', 'odf'], `curated ${meta.id} expected_scores`);
  }
  for (const e of scoredRejects(p.rejects)) assertScores(e.scores, ['itm', 'odf'], `reject ${e.id}`);
  // Records rejected before scoring keep the same shape, every score null.
  for (const e of p.rejects.filter((x) => !scoredRejects([x]).length)) assertScores(e.scores, [], `reject ${e.id}`);
  // The unscored metrics never make a reject: every reason of a scored reject is a failed itm/odf condition.
  for (const e of scoredRejects(p.rejects)) {
    for (const r of e.reasons) {
      assert.equal(r.code, 'below_threshold', `${e.id}: ${r.message}`);
      assert.ok(['itm', 'odf'].includes(r.detail?.metric as string), `${e.id}: ${r.message}`);
    }
  }

  // summary.json: which metrics were scored; the unscored ones count 0 with null quantiles.
  assert.deepEqual(p.summary.metrics, ['itm', 'odf']);
  assert.equal(p.summary.scores.itm.count, SCORABLE);
  assert.equal(p.summary.scores.odf.count, SCORABLE);
  for (const m of ['ctq', 'su']) {
    assert.equal(p.summary.scores[m].count, 0);
    assert.equal(p.summary.scores[m].mean, null);
    assert.ok(Object.values(p.summary.scores[m].quantiles).every((v) => v === null));
  }
  assert.doesNotMatch(policy.out, /^(ctq|su):/m);

  // The default (`all`) scores all four; the itm/odf numbers (hence the decisions) do not depend on the selection.
  assert.deepEqual(a.summary.metrics, ['itm', 'odf', 'ctq', 'su']);
  for (const meta of a.curated) assertScores(meta.scores, ['itm', 'odf', 'ctq', 'su'], `all: curated ${meta.id}`);
  for (const e of scoredRejects(a.rejects)) assertScores(e.scores, ['itm', 'odf', 'ctq', 'su'], `all: reject ${e.id}`);
  const itmOdf = (run: typeof a) =>
    new Map([
      ...run.curated.map((m) => [m.id, `accept ${m.scores.itm} ${m.scores.odf}`] as const),
      ...run.rejects.map((e) => [e.id, `reject ${e.scores.itm} ${e.scores.odf}`] as const),
    ]);
  assert.deepEqual(itmOdf(p), itmOdf(a));
});

test('--metrics with --top-fraction: policy scores just the --top-metric', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-metrics-')), 'top');
  const r = filter(out, '--top-fraction', '0.5', '--top-metric', 'ctq', '--metrics', 'policy');
  assert.equal(r.code, 0, r.err);
  const o = readRun(out);
  assert.deepEqual(o.summary.metrics, ['ctq']);
  const ranked = o.rejects.filter((e) => e.reasons[0]?.detail?.mode === 'top_fraction');
  assert.equal(o.curated.length + ranked.length, SCORABLE);
  assert.ok(o.curated.length >= SCORABLE / 2 && ranked.length > 0, `kept ${o.curated.length} of ${SCORABLE}`);
  for (const meta of o.curated) assertScores(meta.scores, ['ctq'], `curated ${meta.id}`);
  for (const e of ranked) assertScores(e.scores, ['ctq'], `reject ${e.id}`);
  const kept = Math.min(...o.curated.map((m) => m.scores.ctq!));
  assert.ok(ranked.every((e) => e.scores.ctq! <= kept));
});

test('a --config file may name the metrics (short names or full keys)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-metrics-'));
  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ metrics: ['su', 'object_detail_fulfillment', 'itm'] }));
  const r = filter(join(dir, 'out'), '--config', config);
  assert.equal(r.code, 0, r.err);
  const o = readRun(join(dir, 'out'));
  assert.deepEqual(o.summary.metrics, ['itm', 'odf', 'su']);
  assert.ok(o.curated.length > 0);
  for (const meta of o.curated) assertScores(meta.scores, ['itm', 'odf', 'su'], `curated ${meta.id}`);
});

test('--metrics without a metric the policy reads, or with an unknown name, exits 2 and says what to do', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-metrics-'));
  // Leaves out odf, which the default policy reads. Fails before the model loads: nothing is written.
  const out = join(dir, 'a');
  let r = filter(out, '--metrics', 'itm,ctq');
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /\[bad_metrics\]/);
  assert.match(r.err, /--metrics itm,ctq leaves out odf, which the policy reads \(itm>=66 and odf>=20\)/);
  assert.match(r.err, /add odf to --metrics \(--metrics itm,odf,ctq\), or use --metrics policy/);
  assert.ok(!existsSync(out), 'no output before the check');

  r = filter(join(dir, 'b'), '--threshold', 'su>=50', '--threshold', 'itm>=10', '--metrics', 'itm');
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /leaves out su, which the policy reads \(su>=50 and itm>=10\)/);

  r = filter(join(dir, 'c'), '--top-fraction', '0.3', '--top-metric', 'su', '--metrics', 'itm,odf');
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /leaves out su, which --top-fraction ranks on \(--top-metric su\)/);

  r = filter(join(dir, 'd'), '--metrics', 'itm,odf,beauty');
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /unknown metric 'beauty'; expected all, policy, or a comma-separated list of itm, odf, ctq, su/);

  r = filter(join(dir, 'e'), '--metrics', 'all,itm');
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /unknown metric 'all'/);

  const config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ metrics: 'itm' }));
  r = filter(join(dir, 'f'), '--config', config);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /leaves out odf/);
});
