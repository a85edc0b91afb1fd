/**
 * Issue 12 through the real CLI: hostile JPEGs inlined as base64 end as `undecodable_image` rejects in
 * rejects.jsonl, nothing is accepted, and the run finishes in bounded time.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { hiddenFrameJpeg, manyScansJpeg } from '../intake/jpeg-craft.ts';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const model = new URL('../../test/fixtures/models/tiny-llava-qwen', import.meta.url).pathname;

test('filter: a hidden 65500x65500 frame header and a 3000-scan JPEG are rejected as undecodable_image', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-hostile-jpeg-'));
  const input = join(dir, 'in.jsonl');
  const out = join(dir, 'out');
  const records = [
    { id: 'hidden-frame', bytes: await hiddenFrameJpeg() },
    { id: 'hidden-frame-progressive', bytes: await hiddenFrameJpeg({ progressive: true }) },
    { id: 'many-scans', bytes: manyScansJpeg(2048, 2048, 3000) },
  ];
  writeFileSync(
    input,
    records
      .map((r) => JSON.stringify({ id: r.id, image: { base64: r.bytes.toString('base64') }, caption: 'a photo' }))
      .join('\n') + '\n',
  );
  const t0 = performance.now();
  const r = spawnSync(
    process.execPath,
    [bin, 'filter', '--input', input, '--out', out, '--model', model, '--progress', 'none'],
    { encoding: 'utf8', timeout: 120_000 },
  );
  const ms = performance.now() - t0;
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}\n${r.stderr}`);
  const rejects = readFileSync(join(out, 'rejects.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { id: string; reasons: { code: string; detail?: { kind?: string } }[] });
  assert.deepEqual(rejects.map((e) => e.id).sort(), records.map((x) => x.id).sort());
  for (const e of rejects) assert.deepEqual([...new Set(e.reasons.map((x) => x.code))], ['undecodable_image'], e.id);
  const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as {
    decisions: { accept: number; reject: number };
  };
  assert.deepEqual([summary.decisions.accept, summary.decisions.reject], [0, records.length]);
  const curated = join(out, 'curated');
  const shards = existsSync(curated) ? readdirSync(curated).filter((n) => n.endsWith('.index.json')) : [];
  for (const n of shards) {
    assert.deepEqual((JSON.parse(readFileSync(join(curated, n), 'utf8')) as { samples: unknown[] }).samples, []);
  }
  // Model load and startup included; the decodes themselves were unbounded (minutes, or killed) before the fix.
  assert.ok(ms < 60_000, `${ms.toFixed(0)} ms`);
});
