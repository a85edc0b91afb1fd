/**
 * --dedupe-images and exactly-once: a `filter` run is killed (SIGKILL) once the image store has entries for pairs
 * whose outcomes are not written yet; `--resume` on the same cache then loses nothing and drops no pair as its own
 * duplicate: each image ends with exactly one pair kept, every other copy pointing at it.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { open } from 'lmdb';
import { readRun } from '../helpers/cli-output.ts';
import { exitWithin, startCli, tinyFilterArgs, visibleOutcomes } from '../helpers/live-cli.ts';
import { waitFor } from '../helpers/poll.ts';
import { picture, record } from './dedupe-images.ts';
import type { ImageEntry } from '../../lib/cache/store.ts';

/** The image entries a run recorded so far, read beside it (LMDB readers never block its writer). */
function recorded(cache: string): ImageEntry[] {
  if (!existsSync(join(cache, 'data.mdb'))) return [];
  const root = open({ path: cache, readOnly: true });
  try {
    // Undefined until the run's first write made the sub-database (a read-only handle cannot make it).
    const images = root.openDB<ImageEntry, string>({ name: 'images' }) as ReturnType<typeof root.openDB> | undefined;
    return images ? [...images.getRange()].map(({ value }) => value as ImageEntry) : [];
  } finally {
    void root.close();
  }
}

test('kill -9 after images are recorded but before their outcomes are written, then --resume: nothing lost', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-dedupe-kill-'));
  const lines: string[] = [];
  const groups: string[][] = [];
  for (let n = 0; n < 40; n++) {
    const png = await (await picture(100 + n)).png().toBuffer();
    const again = await (await picture(100 + n)).png({ compressionLevel: 1 }).toBuffer();
    groups.push([`k${n}-a`, `k${n}-b`]);
    lines.push(record(`k${n}-a`, png), record(`k${n}-b`, again));
  }
  const input = join(dir, 'in.jsonl');
  writeFileSync(input, lines.join('\n') + '\n');
  const out = join(dir, 'out');
  const cache = join(dir, 'cache');
  // One shard for the whole run: accepted pairs are written only at its end, so a kill leaves recorded images whose
  // pairs are in no output.
  const args = tinyFilterArgs(
    input,
    out,
    '--score-cache',
    cache,
    '--dedupe-images',
    'exact',
    '--samples-per-shard',
    '1000',
  );

  const run1 = startCli(args);
  await waitFor('images recorded', () => recorded(cache).length >= 3, 120_000, 10);
  run1.child.kill('SIGKILL');
  assert.deepEqual(await exitWithin(run1, 30_000), { code: null, signal: 'SIGKILL' }, 'killed while running');
  assert.ok(!existsSync(join(out, 'summary.json')), 'the run did not finish');
  const before = recorded(cache);
  assert.ok(visibleOutcomes(out) < lines.length, 'outcomes were missing at the kill');
  assert.ok(before.length >= 3);

  const run2 = startCli([...args, '--resume']);
  assert.deepEqual(await exitWithin(run2, 120_000), { code: 0, signal: null }, run2.stderr());
  const run = readRun(out);
  const ids = [...run.curated.map((s) => s.id), ...run.rejects.map((e) => e.id)].sort();
  assert.deepEqual(ids, groups.flat().sort(), 'every record exactly once');
  const kept = new Set(run.curated.map((s) => s.id));
  for (const group of groups) {
    const k = group.filter((id) => kept.has(id));
    assert.equal(k.length, 1, `one of ${group} kept, got ${k}`);
    const other = run.rejects.find((e) => group.includes(e.id))!;
    assert.equal(other.reasons[0]?.code, 'duplicate_image');
    assert.equal((other.reasons[0]!.detail as { first: { id: string } }).first.id, k[0]);
  }
  // The pairs recorded before the kill are the ones kept: their replay was not its own duplicate.
  for (const entry of before) assert.ok(kept.has(entry.first.id), `${entry.first.id} kept after the replay`);
  assert.equal(recorded(cache).length, groups.length);
});
