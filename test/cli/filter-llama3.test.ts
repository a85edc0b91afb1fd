/**
 * `mlm-filter filter` end to end on the committed tiny Llama-3 export (conversation format llama_3, single-token
 * numbers readout), through the real CLI binary, in default mode and with --reference-mode: sample/pairs.jsonl in,
 * curated shards, rejects and summary out.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin/mlm-filter.js');
const model = join(root, 'test/fixtures/models/tiny-llava-llama3');

interface Line {
  id: string;
  decision: string;
  scores?: Record<string, number>;
  model?: { name: string };
}

function run(extra: string[]) {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-llama3-')), 'out');
  const args = [bin, 'filter', '--model', model, '--input', 'sample/pairs.jsonl', '--out', out, '--progress', 'none'];
  const r = spawnSync(process.execPath, [...args, '--threshold', 'itm>=50', ...extra], {
    cwd: root,
    encoding: 'utf8',
    timeout: 300_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
  const rejects = readFileSync(join(out, 'rejects.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Line);
  return { r, out, summary, rejects };
}

for (const mode of ['default', 'reference'] as const) {
  test(`filter on the tiny Llama-3 export runs end to end (${mode} mode)`, () => {
    const { r, summary, rejects } = run(mode === 'reference' ? ['--reference-mode'] : []);
    assert.match(r.stderr, /"format":"llama_3"/);
    assert.equal(summary.records, 14);
    assert.equal(summary.decisions.accept + summary.decisions.reject, 14);
    // 10 of the sample's pairs have a usable image and caption; every one of them gets all four scores.
    for (const m of ['itm', 'odf', 'ctq', 'su']) assert.equal(summary.scores[m].count, 10, m);
    assert.ok(summary.decisions.accept > 0 && summary.reasons.below_threshold > 0, JSON.stringify(summary));
    // Rejected for their scores: all four are integers 0..100 (unscorable records carry nulls).
    const scored = rejects.filter((l) => Object.values(l.scores ?? {}).some((v) => v !== null));
    assert.equal(scored.length, summary.reasons.below_threshold);
    for (const line of scored) {
      assert.equal(line.model?.name, 'tiny-random-llava-llama3');
      assert.equal(Object.keys(line.scores ?? {}).length, 4);
      for (const v of Object.values(line.scores ?? {})) assert.ok(Number.isInteger(v) && v >= 0 && v <= 100, `${v}`);
    }
  });
}
