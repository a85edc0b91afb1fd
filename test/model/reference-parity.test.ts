/**
 * Parity with the paper's own reference code (test/fixtures/parity/<family>/, written by
 * tools/export/reference-parity.sh): tiny checkpoints in each released layout, built with LLaVA-Unified's classes and
 * scored by LLaVA-Unified's load_pretrained_model, the MLM_Filter v2 script's collator and its model.generate call
 * (reference.json), then exported with tools/export (model/). Here the real scorer runs on that export:
 * - prompt ids: the reference collator's ids (reference mode) and the caption-as-text ids (default mode), id for id;
 * - reference mode: the integer the reference reads (int() of the first line of its generated text), pair by pair;
 * - default mode: the greedy integer and the expected score of the exact 0..100 distribution that teacher-forced
 *   forward passes of the same reference model give (fp32: within 1e-3 points).
 * Pixels: the tensors the reference fed its model (its image processor, without / with pad-to-square).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { loadScorer } from '../../lib/model/scorer.ts';
import { readModelDir } from '../../lib/model/model-dir.ts';
import { PromptTokenizer } from '../../lib/model/tokens.ts';
import { METRICS, type MetricKey, type MetricShort, type ScoreResult } from '../../lib/types.ts';
import { silentLogger } from '../../lib/support/logger.ts';

interface ParityCase {
  image: number;
  caption: string;
  metric: MetricKey;
  reference: {
    prompt_ids: number[];
    generated_ids: number[];
    text: string;
    integer: number | null;
    parse_error: string | null;
    integer_without_penalty: number | null;
  };
  default: {
    prompt_ids: number[];
    caption_kept_chars: number | null;
    distribution: number[];
    expected: number | null;
    greedy_integer: number | null;
  };
}
interface ParityFixture {
  family: string;
  conv_mode: string;
  images: { file: string; reference_pixels: string; default_pixels: string }[];
  stats: Record<string, number>;
  cases: ParityCase[];
}

const FAMILIES = ['llava_qwen', 'llava_v1', 'llama3_8b', 'llama3_2'];
const SHORT = Object.fromEntries(METRICS.map((m) => [m.key, m.short])) as Record<MetricKey, MetricShort>;
const quiet = silentLogger;

function load(family: string) {
  const dir = new URL(`../fixtures/parity/${family}/`, import.meta.url).pathname;
  const fixture = JSON.parse(readFileSync(`${dir}reference.json`, 'utf8')) as ParityFixture;
  const tensor = (file: string) => {
    const buf = readFileSync(`${dir}${file}`);
    return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
  };
  const pixels = {
    reference: fixture.images.map((im) => tensor(im.reference_pixels)),
    default: fixture.images.map((im) => tensor(im.default_pixels)),
  };
  // Pairs in first-seen order, each with its four metric cases.
  const pairs: { image: number; caption: string; cases: Partial<Record<MetricKey, ParityCase>> }[] = [];
  for (const c of fixture.cases) {
    let p = pairs.find((x) => x.image === c.image && x.caption === c.caption);
    if (!p) pairs.push((p = { image: c.image, caption: c.caption, cases: {} }));
    p.cases[c.metric] = c;
  }
  return { modelDir: `${dir}model`, fixture, pixels, pairs };
}

async function score(family: string, referenceMode: boolean): Promise<ScoreResult[]> {
  const { modelDir, pixels, pairs } = load(family);
  const scorer = await loadScorer(modelDir, { referenceMode, batchSize: 6, intraOpThreads: 1, logger: quiet });
  try {
    const px = referenceMode ? pixels.reference : pixels.default;
    return await scorer.score(
      pairs.map((p, i) => ({ id: String(i), caption: p.caption, pixelValues: px[p.image] as Float32Array })),
    );
  } finally {
    await scorer.close();
  }
}

const label = (c: ParityCase) => `image ${c.image} ${c.metric} ${JSON.stringify(c.caption.slice(0, 60))}`;

for (const family of FAMILIES) {
  test(`${family}: prompt ids equal the reference collator's (reference mode) and the caption-as-text ids`, () => {
    const { modelDir, fixture, pairs } = load(family);
    const info = readModelDir(modelDir, 'fp32');
    assert.equal(info.format, fixture.conv_mode, 'conversation format');
    const tok = PromptTokenizer.fromFiles(info.tokenizerJson, info.tokenizerConfigJson, {
      format: info.format,
      ...(info.whitespaceTokenId !== undefined ? { whitespaceTokenId: info.whitespaceTokenId } : {}),
    });
    const keys = METRICS.map((m) => m.key);
    let compared = 0;
    for (const p of pairs) {
      const ref = tok.metricPrompts(keys, p.caption, true);
      const dflt = tok.metricPrompts(keys, p.caption, false);
      keys.forEach((k, i) => {
        const c = p.cases[k] as ParityCase;
        assert.deepEqual(ref.ids?.[i], c.reference.prompt_ids, `reference-mode ids ${label(c)}`);
        assert.deepEqual(dflt.ids?.[i], c.default.prompt_ids, `default-mode ids ${label(c)}`);
        assert.equal(dflt.cut?.keptChars ?? null, c.default.caption_kept_chars, `caption cut ${label(c)}`);
        compared++;
      });
    }
    assert.equal(compared, fixture.cases.length);
    assert.ok(compared >= 72, `${compared} cases`);
  });

  test(`${family}: reference mode's integers equal the reference's int() of its generated text`, async (t) => {
    const { fixture, pairs } = load(family);
    const results = await score(family, true);
    let parseFailures = 0;
    let penalised = 0;
    pairs.forEach((p, i) => {
      for (const c of Object.values(p.cases) as ParityCase[]) {
        const want = c.reference.integer === null ? null : Math.min(100, Math.max(0, c.reference.integer));
        assert.equal(
          results[i]?.scores[SHORT[c.metric]] ?? null,
          want,
          `${label(c)}: text ${JSON.stringify(c.reference.text)}`,
        );
        if (c.reference.integer === null) parseFailures++;
        if (c.reference.integer !== c.reference.integer_without_penalty) penalised++;
      }
    });
    t.diagnostic(
      `${fixture.cases.length} integers equal; reference parse failures ${parseFailures}; ` +
        `integers the repetition penalty changed ${penalised}`,
    );
  });

  test(`${family}: default mode's greedy integers and expected scores equal the reference model's`, async (t) => {
    const { fixture, pairs } = load(family);
    const results = await score(family, false);
    let worst = 0;
    pairs.forEach((p, i) => {
      const r = results[i] as ScoreResult;
      for (const c of Object.values(p.cases) as ParityCase[]) {
        const short = SHORT[c.metric];
        assert.equal(r.scores[short] ?? null, c.default.greedy_integer, `greedy ${label(c)}`);
        if (c.default.expected === null) {
          assert.equal(r.expected?.[short], undefined, `no expected ${label(c)}`);
        } else {
          const got = r.expected?.[short];
          assert.ok(got !== undefined, `expected ${label(c)}`);
          worst = Math.max(worst, Math.abs(got - c.default.expected));
        }
      }
    });
    t.diagnostic(
      `${fixture.cases.length} greedy integers equal; worst |expected - reference| = ${worst.toExponential(2)}`,
    );
    assert.ok(worst < 1e-3, `expected scores within 1e-3 (worst ${worst})`);
  });
}
