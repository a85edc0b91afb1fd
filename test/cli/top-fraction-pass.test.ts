/**
 * The second pass of a top-fraction run (applyTopFraction) over real staged shards written by the curated sink: it
 * goes through the batch ledger and the sink retry policy (a sink down for a while loses nothing), and a staged shard
 * that cannot be read back fails the run instead of silently dropping the accepts it held.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { applyTopFraction } from '../../lib/cli/top-fraction.ts';
import { RankingValues } from '../../lib/policy/ranking.ts';
import { LocalCuratedSink } from '../../lib/sinks/local-curated.ts';
import type { Outcome, Sink } from '../../lib/types.ts';
import { jsonRecord } from '../helpers/doubles.ts';

const model = { name: 'test', revision: 'r' };

async function stage(dir: string, scores: number[]): Promise<RankingValues> {
  const sink = await LocalCuratedSink.open({ dir, model, samplesPerShard: 1000 });
  const values = new RankingValues();
  const outcomes: Outcome[] = scores.map((s, i) => {
    const id = `p${i}`;
    values.add(s, s);
    return {
      record: jsonRecord({ id }, i),
      id,
      pair: { id, caption: `caption ${i}`, image: { kind: 'url', url: `http://x.test/${i}.jpg` }, metadata: {} },
      decision: 'accept',
      reasons: [],
      scores: { itm: s, odf: s, ctq: s, su: s },
      image: { encoded: Buffer.from([0xff, 0xd8, 0xff, 0xd9]), ext: 'jpg', width: 4, height: 4 },
    };
  });
  // The curated sink resolves a write once its shard is cut: flush cuts it.
  const written = sink.write(outcomes);
  await sink.flush();
  await written;
  await sink.close();
  return values;
}

/** Keeps outcome ids by decision; fails its first `failures` writes with a retriable error (a sink down). */
class FlakySink implements Sink {
  readonly name = 'flaky';
  readonly durability = 'durable' as const;
  readonly accepted: string[] = [];
  readonly rejected: string[] = [];
  constructor(private failures: number) {}
  async write(outcomes: readonly Outcome[]) {
    if (this.failures-- > 0) throw new Error('sink down for a while');
    for (const o of outcomes) (o.decision === 'accept' ? this.accepted : this.rejected).push(o.id);
  }
  async flush() {}
  async close() {}
}

test('the second pass retries a sink that is down for a while and loses nothing', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-top-')), '.staging');
  const values = await stage(dir, [90, 10, 70, 30]);
  const sink = new FlakySink(2);
  const seen: string[] = [];
  const cutoff = await applyTopFraction(dir, { fraction: 0.5, metric: 'itm' }, values, [sink], (o) => seen.push(o.id));
  assert.equal(cutoff?.score, 70);
  assert.deepEqual(sink.accepted.sort(), ['p0', 'p2']);
  assert.deepEqual(sink.rejected.sort(), ['p1', 'p3']);
  assert.deepEqual(seen, ['p0', 'p1', 'p2', 'p3'], 'every staged pair once, in staged order');
});

test('a staged shard that cannot be read back fails the run: no accept is dropped silently', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-top-')), '.staging');
  const values = await stage(dir, [90, 10, 70, 30]);
  const tar = readdirSync(dir).find((f) => f.endsWith('.tar'))!;
  truncateSync(join(dir, tar), Math.floor(statSync(join(dir, tar)).size / 2));
  const sink = new FlakySink(0);
  await assert.rejects(applyTopFraction(dir, { fraction: 0.5, metric: 'itm' }, values, [sink], () => {}));
});
