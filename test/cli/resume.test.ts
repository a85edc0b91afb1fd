/**
 * Re-runs of `mlm-filter filter` into the same --out (issue 14), through the real CLI on the tiny model: a non-empty
 * --out is refused unless --resume or --overwrite says what to do with the run it holds; --overwrite replaces it;
 * --resume after a kill -9 halfway through a 2000-record input leaves every input record in the output exactly once,
 * with what the kill left half-written completed or dropped and summary.json counting both runs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseRecord, rawRecordId } from '../../lib/pair/index.ts';
import type { ShardIndex } from '../../lib/sinks/webdataset.ts';
import { RejectError, type SourceRecord } from '../../lib/types.ts';
import { readRun } from '../helpers/cli-output.ts';
import { exitWithin, startCli, visibleOutcomes } from '../helpers/live-cli.ts';
import { waitFor } from '../helpers/poll.ts';

const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin/mlm-filter.js');
const model = join(root, 'test/fixtures/models/tiny-llava-qwen');
const sample = join(root, 'sample/pairs.jsonl');

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const filterArgs = (input: string, out: string, ...flags: string[]) => [
  'filter',
  ...['--input', input, '--out', out, '--model', model, '--progress', 'none'],
  ...flags,
];

/** Every file under `dir` with its bytes, by relative path. */
function snapshot(dir: string): Map<string, string> {
  const files = readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
  return new Map(
    files.map((e) => {
      const path = join(e.parentPath, e.name);
      return [path.slice(dir.length), readFileSync(path).toString('base64')];
    }),
  );
}

/** stderr without the launcher's note and the JSON log lines. */
const errorLines = (err: string) =>
  err.split('\n').filter((l) => l && !l.startsWith('{') && !/^mlm-filter: running /.test(l));

test('a non-empty --out is refused (exit 2, one line, nothing touched); --overwrite replaces the run', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-rerun-')), 'out');
  let r = cli(filterArgs(sample, out));
  assert.equal(r.code, 0, r.err);
  const first = snapshot(out);

  r = cli(filterArgs(sample, out));
  assert.equal(r.code, 2, r.err);
  assert.equal(errorLines(r.err).length, 1, r.err);
  assert.match(r.err, /^mlm-filter: error \[output_not_empty\]: .*--resume.*--overwrite/m);
  assert.deepEqual(snapshot(out), first);

  r = cli(filterArgs(sample, out, '--resume', '--overwrite'));
  assert.equal(r.code, 2, r.err);
  assert.deepEqual(snapshot(out), first);

  r = cli(filterArgs(sample, out, '--overwrite'));
  assert.equal(r.code, 0, r.err);
  const run = readRun(out);
  const lines = readFileSync(sample, 'utf8').split('\n').filter(Boolean).length;
  assert.equal(run.curated.length + run.rejects.length, lines, 'one run, not two');
  assert.equal(run.summary.records, lines);
  assert.deepEqual(
    readdirSync(join(out, 'curated')).filter((n) => n.endsWith('.tar')),
    ['shard-000000.tar'],
  );

  // A directory holding files no run writes is not a run to replace.
  writeFileSync(join(out, 'notes.txt'), 'mine');
  r = cli(filterArgs(sample, out, '--overwrite'));
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /\[output_not_empty\].*notes\.txt/);
  assert.ok(existsSync(join(out, 'notes.txt')));
});

/**
 * 2000 records: pairs with inline images of sample/pairs.jsonl that are scored (half with their own id, some
 * without, so the id comes from the image and caption), and cheap rejects: no caption, broken JSON (its id comes
 * from its bytes), a blocked address.
 */
function mixedInput(n: number): string[] {
  const images = readFileSync(sample, 'utf8')
    .split('\n')
    .flatMap((l) => {
      try {
        const r = JSON.parse(l) as { image?: unknown; caption?: unknown };
        return r.image && typeof r.caption === 'string' ? [r.image] : [];
      } catch {
        return [];
      }
    });
  return Array.from({ length: n }, (_, i) => {
    const image = images[i % images.length];
    switch (i % 8) {
      case 1:
        return JSON.stringify({ id: `r-${i}`, image });
      case 3:
        return `{"id": "r-${i}", "caption": "cut`;
      case 5:
        return JSON.stringify({ url: `http://169.254.169.254/img-${i}.jpg`, caption: `blocked ${i}` });
      case 7:
        return JSON.stringify({ image, caption: `no id ${i}` });
      default:
        return JSON.stringify({ id: `r-${i}`, image, caption: `pair ${i}`, i });
    }
  });
}

/** The id the contract gives a record (README: its own, else derived from image and caption, else from its bytes). */
function contractId(line: string, number: number): string {
  const record: SourceRecord = { raw: Buffer.from(line), origin: { kind: 'file', path: 'x', line: number } };
  try {
    return parseRecord(record).id;
  } catch (err) {
    if (err instanceof RejectError) return rawRecordId(record);
    throw err;
  }
}

test('--resume after kill -9 halfway: every input record ends in the output exactly once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-resume-'));
  const input = join(dir, 'in.jsonl');
  const lines = mixedInput(2000);
  writeFileSync(input, lines.join('\n') + '\n');
  const out = join(dir, 'out');
  // The tiny model scores these captions' ITM at 45 mostly (a few 4-41): most pairs are accepted, shards fill early.
  const args = filterArgs(input, out, '--threshold', 'itm>=42', '--metrics', 'policy', '--samples-per-shard', '25');

  const run1 = startCli(args);
  await waitFor('half the outcomes', () => visibleOutcomes(out) >= 1000, 120_000, 20);
  run1.child.kill('SIGKILL');
  assert.deepEqual(await exitWithin(run1, 30_000), { code: null, signal: 'SIGKILL' }, 'killed while running');
  assert.ok(visibleOutcomes(out) < lines.length, 'the kill came before the end');

  // What else a kill -9 can leave: a shard whose index was not renamed into place yet, a shard's temp file, an
  // append to rejects.jsonl cut short.
  const curated = join(out, 'curated');
  const indexes = readdirSync(curated)
    .filter((n) => /^shard-\d+\.index\.json$/.test(n))
    .sort();
  assert.ok(indexes.length >= 2, `${indexes.length} shards written before the kill`);
  const lastIndex = join(curated, indexes.at(-1)!);
  const savedIndex = readFileSync(lastIndex, 'utf8');
  rmSync(lastIndex);
  const lastTar = lastIndex.replace(/\.index\.json$/, '.tar');
  writeFileSync(join(curated, 'shard-000999.tar.tmp-4242'), readFileSync(lastTar).subarray(0, 1500));
  const rejectsText = readFileSync(join(out, 'rejects.jsonl'), 'utf8');
  const completeRejects = rejectsText.slice(0, rejectsText.lastIndexOf('\n') + 1).split('\n').length - 1;
  appendFileSync(join(out, 'rejects.jsonl'), '{"v":1,"id":"torn-');
  const indexed = indexes.map(
    (n) => (JSON.parse(n === indexes.at(-1) ? savedIndex : readFileSync(join(curated, n), 'utf8')) as ShardIndex).count,
  );
  // A kill -9 between a shard's tar and its index being renamed into place leaves a tar the resume indexes again.
  const unindexed = readdirSync(curated)
    .filter((n) => /^shard-\d+\.tar$/.test(n))
    .map((n) => n.replace(/\.tar$/, '.index.json'))
    .filter((n) => !indexes.includes(n));

  const run2 = startCli([...args, '--resume']);
  const exit = await exitWithin(run2, 120_000);
  assert.deepEqual(exit, { code: 0, signal: null }, run2.stderr());

  const rebuilt = unindexed.map((n) => (JSON.parse(readFileSync(join(curated, n), 'utf8')) as ShardIndex).count);
  const previous = completeRejects + [...indexed, ...rebuilt].reduce((a, b) => a + b, 0);
  const run = readRun(out);
  const sourceLines = [...run.curated, ...run.rejects].map((x) => (x.source.kind === 'file' ? x.source.line : -1));
  assert.deepEqual(
    sourceLines.sort((a, b) => a - b),
    lines.map((_, i) => i + 1),
    'each input line once',
  );
  const ids = [...run.curated.map((s) => s.id), ...run.rejects.map((e) => e.id)];
  assert.equal(new Set(ids).size, lines.length, 'no id twice');
  assert.deepEqual(new Set(ids), new Set(lines.map((l, i) => contractId(l, i + 1))));

  // Consistent shards: the missing index rebuilt as it was, the temp file gone, shards.json listing every tar.
  assert.equal(readFileSync(lastIndex, 'utf8'), savedIndex);
  const names = readdirSync(curated);
  assert.deepEqual(
    names.filter((n) => n.includes('.tmp-')),
    [],
  );
  const tars = names.filter((n) => n.endsWith('.tar')).sort();
  for (const tar of tars) assert.ok(names.includes(tar.replace(/\.tar$/, '.index.json')), `${tar} has its index`);
  assert.deepEqual(JSON.parse(readFileSync(join(curated, 'shards.json'), 'utf8')).shards, tars);

  // The summary covers the whole output, both runs.
  const { summary } = run;
  assert.equal(summary.records, lines.length);
  assert.deepEqual(summary.decisions, { accept: run.curated.length, reject: run.rejects.length });
  assert.deepEqual(summary.resumed, { previousRecords: previous, skippedRecords: previous });
  const reasons = new Map<string, number>();
  for (const e of run.rejects) {
    for (const code of new Set(e.reasons.map((r) => r.code))) reasons.set(code, (reasons.get(code) ?? 0) + 1);
  }
  assert.deepEqual(summary.reasons, Object.fromEntries(reasons));
  const scored = run.curated.length + run.rejects.filter((e) => e.scores.itm !== null).length;
  assert.equal(summary.scores.itm.count, scored);
});
