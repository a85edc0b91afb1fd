/**
 * `mlm-filter filter --top-fraction` through the real CLI on the committed tiny model and sample/pairs.jsonl: the run
 * ends once its second pass is written (it used to wait out the curated sink's idle timer), and `--threshold` given
 * with it applies first: the fraction is of the pairs that pass the thresholds.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { AuditEvent } from '../../lib/formats/audit-event.ts';
import { readRun } from '../helpers/cli-output.ts';

const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin/mlm-filter.js');
const model = join(root, 'test/fixtures/models/tiny-llava-qwen');
const input = join(root, 'sample/pairs.jsonl');
/** sample/pairs.jsonl: 14 records, 10 of them reach the scorer. */
const RECORDS = 14;
const SCORABLE = 10;

/** Runs `mlm-filter filter`; a run that has not ended after `hangAfterMs` is killed (a hang guard, not a timing). */
function filter(out: string, flags: string[], hangAfterMs = 120_000) {
  const args = [bin, 'filter', '--input', input, '--out', out, '--model', model, '--progress', 'none', ...flags];
  const child = spawn(process.execPath, args);
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const guard = setTimeout(() => child.kill('SIGKILL'), hangAfterMs);
  return new Promise<{ code: number | null; signal: string | null; err: string }>((resolve) =>
    child.on('exit', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, err });
    }),
  );
}

const ranked = (e: AuditEvent) => e.reasons.some((r) => r.detail?.mode === 'top_fraction');

test('--top-fraction 0.5 runs to its end and keeps the best half of the scored pairs', async () => {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-top-')), 'out');
  const r = await filter(out, ['--top-fraction', '0.5']);
  assert.equal(r.signal, null, `the run did not end: ${r.err}`);
  assert.equal(r.code, 0, r.err);
  const run = readRun(out);
  assert.equal(run.curated.length + run.rejects.length, RECORDS);
  const cut = run.rejects.filter(ranked);
  assert.equal(run.curated.length + cut.length, SCORABLE);
  assert.ok(run.curated.length >= SCORABLE / 2, `kept ${run.curated.length}`);
  const kept = run.curated.map((c) => c.scores.itm!);
  assert.ok(Math.min(...kept) >= Math.max(...cut.map((e) => e.scores.itm!)), `kept ${kept}`);
  assert.deepEqual(run.summary.policy, { topFraction: { fraction: 0.5, metric: 'itm' } });
  assert.ok(!existsSync(join(out, '.staging')));
});

test('--threshold with --top-fraction: thresholds first, then the top fraction of what passes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-top-'));
  // A threshold on ctq that some scored pairs of this model pass and some fail, read off a plain run.
  const all = await filter(join(dir, 'all'), ['--threshold', 'itm>=0']);
  assert.equal(all.code, 0, all.err);
  const ctq = readRun(join(dir, 'all'))
    .curated.map((c) => c.scores.ctq!)
    .sort((a, b) => a - b);
  const passingAt = (v: number) => ctq.filter((x) => x >= v).length;
  const value = ctq.find((v) => passingAt(v) >= 2 && passingAt(v) < ctq.length);
  assert.ok(value !== undefined, `no ctq threshold splits ${ctq}`);
  const passing = passingAt(value);

  const out = join(dir, 'both');
  const r = await filter(out, ['--threshold', `ctq>=${value}`, '--top-fraction', '0.5']);
  assert.equal(r.signal, null, `the run did not end: ${r.err}`);
  assert.equal(r.code, 0, r.err);
  const run = readRun(out);
  assert.equal(run.curated.length + run.rejects.length, RECORDS);
  const failed = run.rejects.filter((e) => e.reasons.some((x) => x.code === 'below_threshold') && !ranked(e));
  const cut = run.rejects.filter(ranked);
  assert.equal(failed.length, SCORABLE - passing);
  for (const e of failed) {
    assert.deepEqual(e.reasons[0]!.detail, { metric: 'ctq', score: e.scores.ctq, threshold: value, op: '>=' });
    assert.ok(e.scores.ctq! < value);
  }
  // The fraction is of the pairs that passed, not of the run.
  assert.equal(run.curated.length + cut.length, passing);
  assert.ok(run.curated.length >= passing / 2 && cut.length >= 1, `kept ${run.curated.length} of ${passing}`);
  for (const c of run.curated) assert.ok(c.scores.ctq! >= value);
  const kept = run.curated.map((c) => c.scores.itm!);
  assert.ok(Math.min(...kept) >= Math.max(...cut.map((e) => e.scores.itm!)));
  for (const e of cut) assert.equal(e.reasons[0]!.code, 'below_threshold');
  assert.deepEqual(run.summary.policy, {
    topFraction: { fraction: 0.5, metric: 'itm' },
    thresholds: [{ metric: 'ctq', op: '>=', value }],
    combine: 'and',
  });
});

test('--metrics must include what the thresholds read and what --top-fraction ranks on', async () => {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-top-')), 'out');
  const r = await filter(out, ['--threshold', 'ctq>=50', '--top-fraction', '0.5', '--metrics', 'itm']);
  assert.equal(r.code, 2, r.err);
  assert.match(
    r.err,
    /\[bad_metrics\]: --metrics itm leaves out ctq, which the policy reads \(ctq>=50\) and --top-fraction/,
  );
});
