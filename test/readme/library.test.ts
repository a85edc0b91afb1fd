/**
 * The library entry point: the package root's openFilter scores pairs as `mlm-filter filter` decides them, and the
 * README's example runs as written in a project that imports the package by its name (the compiled dist/ through
 * the exports map; skipped without a build, like test/infra/package.test.ts).
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { FilterError, openFilter, type FilterResult, type MlmFilter } from '../../lib/index.ts';
import { readRun } from '../helpers/cli-output.ts';
import { consumerProject, noBuild, PKG, ROOT } from '../helpers/package-consumer.ts';
import { readmeBlock } from './readme-blocks.ts';

const run = promisify(execFile);
const MODEL = join(ROOT, 'test/fixtures/models/tiny-llava-qwen');
const SAMPLE = join(ROOT, 'sample/pairs.jsonl');
const lines = readFileSync(SAMPLE, 'utf8').split('\n').filter(Boolean);

describe('library API (package root)', () => {
  let filter: MlmFilter;
  let results: FilterResult[];
  before(async () => {
    filter = await openFilter({ model: MODEL, thresholds: ['itm>=66', 'odf>=20'], scorer: { intraOpThreads: 1 } });
    results = await filter.score(lines);
  });
  after(() => filter.close());

  it('gives one result per pair, in order, with the decisions mlm-filter filter writes', () => {
    assert.equal(results.length, lines.length);
    assert.deepEqual(
      results.slice(0, 10).map((r) => r.id),
      Array.from({ length: 10 }, (_, i) => `sample-${i}`),
    );
    const out = mkdtempSync(join(tmpdir(), 'mlmf-library-'));
    try {
      const bin = join(ROOT, 'bin/mlm-filter.js');
      const cli = spawnSync(
        process.execPath,
        [bin, 'filter', '--input', SAMPLE, '--out', out, '--model', MODEL, '--progress', 'none'],
        {
          encoding: 'utf8',
          timeout: 120_000,
        },
      );
      assert.equal(cli.status, 0, cli.stderr);
      const { curated, rejects } = readRun(out);
      const byCli = new Map<string, string>([
        ...curated.map((c) => [c.id, 'accept'] as [string, string]),
        ...rejects.map((r) => [r.id, `reject:${r.reasons.map((x) => x.code).join(',')}`] as [string, string]),
      ]);
      const byApi = new Map(
        results.map((r) => [
          r.id,
          r.decision === 'accept' ? 'accept' : `reject:${r.reasons.map((x) => x.code).join(',')}`,
        ]),
      );
      assert.deepEqual(byApi, byCli);
      // The scores too, for the pairs that reached the scorer.
      for (const c of curated) assert.deepEqual(results.find((r) => r.id === c.id)!.scores, c.scores);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('applies the thresholds it was given and rejects invalid pairs with their reason', async () => {
    for (const r of results.filter((x) => x.decision === 'accept')) {
      assert.ok(r.scores.itm! >= 66 && r.scores.odf! >= 20, JSON.stringify(r));
    }
    const [bad, obj] = await filter.score([{ caption: 'no image' }, JSON.parse(lines[0]!) as Record<string, unknown>]);
    assert.equal(bad!.decision, 'reject');
    assert.equal(bad!.reasons[0]!.code, 'invalid_record');
    assert.deepEqual(obj, results[0]);
  });

  it('serves concurrent score() calls on one filter, each with its own results', async () => {
    const [a, b] = await Promise.all([filter.score(lines), filter.score(lines.slice().reverse())]);
    assert.deepEqual(a, results);
    assert.deepEqual(b, results.slice().reverse());
  });

  it('refuses a bad threshold before loading the model, and score() after close()', async () => {
    await assert.rejects(openFilter({ model: '/nonexistent', thresholds: ['itm>=fifty'] }), (err: FilterError) => {
      assert.equal(err.code, 'bad_threshold');
      return true;
    });
    await assert.rejects(openFilter({ model: join(ROOT, 'sample') }), (err: FilterError) => {
      assert.equal(err.code, 'model_invalid');
      return true;
    });
    const f = await openFilter({ model: MODEL, metrics: 'policy', scorer: { intraOpThreads: 1 } });
    assert.deepEqual(f.metrics, ['itm', 'odf']);
    await f.close();
    await f.close();
    await assert.rejects(f.score(lines.slice(0, 1)), (err: FilterError) => {
      assert.equal(err.code, 'scorer_closed');
      return true;
    });
  });

  it("README's example runs in a project importing the package by its name", { skip: noBuild }, async () => {
    const app = consumerProject([]);
    // The runtime package (the repository root) as `npm install <path>` leaves it: a link named by the package.
    symlinkSync(ROOT, join(app, 'node_modules', PKG.name), 'dir');
    try {
      writeFileSync(join(app, 'example.mjs'), readmeBlock('## Library (Node API)', 'js'));
      // Run from the checkout, as the example's relative paths (sample/, the tiny model) expect.
      const { stdout } = await run(process.execPath, [join(app, 'example.mjs')], { cwd: ROOT, timeout: 120_000 });
      const want = results.map(
        (r) => `${r.id} ${r.decision} ${r.scores.itm ?? '-'} ${r.reasons.map((x) => x.code).join(',')}`,
      );
      assert.deepEqual(stdout.trimEnd().split('\n'), want);
      const resolved = await run(
        process.execPath,
        ['--input-type=module', '-e', "console.log(import.meta.resolve('mlm-filter-stream'))"],
        { cwd: app },
      );
      assert.ok(resolved.stdout.trim().endsWith('/dist/lib/index.js'), resolved.stdout);
    } finally {
      rmSync(app, { recursive: true, force: true });
    }
  });
});
