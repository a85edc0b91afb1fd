/**
 * ImageDedupe inside one pipeline run (the real intake on real images, the real LMDB store; a caption-driven scorer
 * so that the policy's decision is chosen per pair): copies of one image in one scorer batch. The first recorded is
 * kept, the other accepted copies become duplicate_image; a copy the policy rejects keeps its own reasons and is
 * never remembered, so it never makes another copy a duplicate.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { ImageDedupe, type DedupeMode } from '../../lib/cache/dedupe.ts';
import { LmdbScoreStore } from '../../lib/cache/store.ts';
import { Intake } from '../../lib/intake/index.ts';
import { runPipeline } from '../../lib/pipeline/index.ts';
import { Policy } from '../../lib/policy/index.ts';
import type { Outcome, PreprocessSpec, Sink } from '../../lib/types.ts';
import { ArraySource, CaptionScorer, jsonRecord } from '../helpers/doubles.ts';
import { picture } from './dedupe-images.ts';

const SPEC: PreprocessSpec = { ...new CaptionScorer().preprocess, size: 64 };

class MemorySink implements Sink {
  readonly name = 'memory';
  readonly durability = 'durable' as const;
  outcomes: Outcome[] = [];
  async write(outcomes: readonly Outcome[]) {
    this.outcomes.push(...outcomes);
  }
  async flush() {}
  async close() {}
}

async function run(mode: DedupeMode, pairs: { id: string; image: Buffer; score: number }[]) {
  const store = LmdbScoreStore.open(join(mkdtempSync(join(tmpdir(), 'mlmf-dedupe-run-')), 'cache'));
  const intake = new Intake({ perceptualHash: true }, SPEC);
  const scorer = Object.assign(new CaptionScorer(8), { preprocess: SPEC });
  const sink = new MemorySink();
  const records = pairs.map((p, i) =>
    jsonRecord({ id: p.id, image: { base64: p.image.toString('base64') }, caption: `score=${p.score}` }, i + 1),
  );
  try {
    await runPipeline({
      // One source batch, one scorer batch: every copy is in flight at once.
      source: new ArraySource(records, records.length),
      intake,
      scorer,
      policy: new Policy(),
      sinks: [sink],
      imageDedupe: new ImageDedupe(store, { mode, spec: SPEC }),
    });
  } finally {
    await Promise.all([intake.close(), store.close()]);
  }
  assert.equal(sink.outcomes.length, pairs.length);
  return new Map(sink.outcomes.map((o) => [o.id, o]));
}

const codes = (o: Outcome | undefined) => o?.reasons.map((r) => r.code);

test('one image three times in one batch, all accepted by the policy: one kept, two duplicates of it', async () => {
  const png = await (await picture(21)).png().toBuffer();
  const again = await (await picture(21)).png({ compressionLevel: 1 }).toBuffer();
  const out = await run('exact', [
    { id: 'a', image: png, score: 90 },
    { id: 'b', image: again, score: 90 },
    { id: 'c', image: png, score: 90 },
  ]);
  const kept = [...out.values()].filter((o) => o.decision === 'accept').map((o) => o.id);
  assert.equal(kept.length, 1, `kept ${kept}`);
  for (const o of out.values()) {
    if (o.id === kept[0]) continue;
    assert.deepEqual(codes(o), ['duplicate_image']);
    assert.equal((o.reasons[0]!.detail as { first: { id: string } }).first.id, kept[0]);
    // Scored before the race was lost: the scores stay on the reject.
    assert.equal(o.scores.itm, 90);
    assert.equal(o.image, undefined);
  }
});

test('a copy the policy rejects keeps its own reasons and does not make the other copy a duplicate', async () => {
  const png = await (await picture(22)).png().toBuffer();
  const out = await run('exact', [
    { id: 'low', image: png, score: 10 },
    { id: 'high', image: png, score: 90 },
  ]);
  assert.deepEqual(codes(out.get('low'))?.[0], 'below_threshold');
  assert.equal(out.get('high')?.decision, 'accept');
});

test('near: two near copies in one batch are recorded one after the other, so one is kept', async () => {
  const base = await (await picture(23, 320, 240)).png().toBuffer();
  const smaller = await sharp(base).resize(200).jpeg({ quality: 80 }).toBuffer();
  const out = await run('near', [
    { id: 'base', image: base, score: 90 },
    { id: 'smaller', image: smaller, score: 90 },
  ]);
  const kept = [...out.values()].filter((o) => o.decision === 'accept').map((o) => o.id);
  assert.equal(kept.length, 1, `kept ${kept}`);
  const other = [...out.values()].find((o) => o.decision === 'reject')!;
  assert.deepEqual(codes(other), ['duplicate_image']);
  assert.equal((other.reasons[0]!.detail as { match: string }).match, 'near');
});
