/**
 * Parity of the Node scorer with the PyTorch reference on the committed tiny models (test/fixtures/models/*):
 * reference.json holds, per (image, caption, metric), the exact prompt, input ids, the logits of the first generated
 * token, the greedy tokens/score and the reference script's 2-token score, computed by the LLaVA-style PyTorch model.
 */
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { loadEngine } from '../../lib/model/sessions.ts';
import { buildPrompt } from '../../lib/model/prompt.ts';
import type { EngineResult } from '../../lib/model/engine.ts';
import { loadScorer } from '../../lib/model/scorer.ts';
import { METRICS, type MetricKey, type MetricShort } from '../../lib/types.ts';
import { loadReference as load } from './reference.ts';

const FIXTURES = ['tiny-llava-qwen', 'tiny-llava-v1'];
const quiet = () => undefined;
const SHORT = Object.fromEntries(METRICS.map((m) => [m.key, m.short])) as Record<MetricKey, MetricShort>;

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'logits length');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

function argmaxOf(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if ((a[i] as number) > (a[best] as number)) best = i;
  return best;
}

for (const name of FIXTURES) {
  const present = existsSync(new URL(`../fixtures/models/${name}/reference.json`, import.meta.url));
  const skip = !present && `fixture ${name} not committed yet`;

  for (const [label, slack] of [
    ['suffixes grouped by length', undefined],
    ['all suffixes in one batch', Number.POSITIVE_INFINITY],
  ] as const) {
    test(`${name}: shared-prefix batched path matches the PyTorch reference (fp32, ${label})`, { skip }, async (t) => {
      const { dir, ref, pairs, inputs } = load(name);
      const { engine } = await loadEngine(
        dir,
        { captureScoreLogits: true, intraOpThreads: 1, ...(slack ? { suffixPaddingSlack: slack } : {}) },
        quiet,
      );
      try {
        const results = await engine.score(inputs);
        let worst = 0;
        let scored = 0;
        pairs.forEach((p, i) => {
          const r = results[i] as EngineResult;
          for (const c of p.cases) {
            const short = SHORT[c.metric];
            const trace = r.traces[short];
            assert.ok(trace, `${short} traced`);
            assert.equal(buildPrompt(ref.format as never, c.metric, c.caption), c.prompt, 'prompt');
            assert.deepEqual(trace.inputIds, c.input_ids, `input ids ${short} ${JSON.stringify(c.caption)}`);
            const d = maxAbsDiff(trace.scoreLogits as Float32Array, c.score_logits);
            worst = Math.max(worst, d);
            assert.ok(d < 1e-3, `score logits differ by ${d} (${short}, ${JSON.stringify(c.caption)})`);
            assert.deepEqual(trace.tokens, c.greedy_tokens.slice(0, trace.tokens.length), `greedy tokens ${short}`);
            // The fixture's greedy_score is the raw digits of up to 3 tokens; ours is the same number clamped to 0..100.
            assert.equal(trace.digits === '' ? null : Number(trace.digits), c.greedy_score, `digits ${short}`);
            const want = c.greedy_score === null ? null : Math.min(100, c.greedy_score);
            assert.equal(r.scores[short] ?? null, want, `greedy score ${short} ${JSON.stringify(c.caption)}`);
            if (c.greedy_score !== null) {
              scored++;
              const e = r.expected[short] as number;
              assert.ok(e >= 0 && e <= 100, `expected in range: ${e}`);
            } else {
              assert.equal(r.expected[short], undefined);
            }
          }
        });
        assert.ok(scored > 0, 'the fixture must produce some scores for the test to mean anything');
        assert.ok(worst < 1e-3);
        t.diagnostic(`worst |logits - reference| = ${worst.toExponential(2)}; ${scored} scores read`);
        // The shared prefix must actually be shared: fewer decoder tokens than four full prompts per pair.
        const full = ref.cases.reduce((a, c) => a + c.input_ids.length, 0);
        assert.ok(engine.stats.decoderRealTokens < full, `${engine.stats.decoderRealTokens} < ${full}`);
      } finally {
        await engine.release();
      }
    });
  }

  test(`${name}: reference mode reproduces the reference script's 2-token scores (fp32)`, { skip }, async () => {
    const { dir, pairs, inputs } = load(name);
    const { engine } = await loadEngine(
      dir,
      { captureScoreLogits: true, referenceMode: true, intraOpThreads: 1 },
      quiet,
    );
    try {
      const results = await engine.score(inputs);
      pairs.forEach((p, i) => {
        const r = results[i] as EngineResult;
        for (const c of p.cases) {
          const short = SHORT[c.metric];
          const trace = r.traces[short];
          const d = maxAbsDiff(trace?.scoreLogits as Float32Array, c.score_logits);
          assert.ok(d < 1e-3, `score logits differ by ${d}`);
          const want = c.reference_2tok_score === null ? null : Math.min(100, Math.max(0, c.reference_2tok_score));
          assert.equal(r.scores[short] ?? null, want, `2-token score ${short} ${JSON.stringify(c.caption)}`);
        }
      });
    } finally {
      await engine.release();
    }
  });

  test(`${name}: scores do not depend on the batch (each pair alone = all together)`, { skip }, async () => {
    const { dir, inputs } = load(name);
    const { engine } = await loadEngine(dir, { intraOpThreads: 1 }, quiet);
    try {
      const together = await engine.score(inputs);
      for (let i = 0; i < inputs.length; i++) {
        const [alone] = await engine.score([inputs[i] as (typeof inputs)[number]]);
        assert.deepEqual(alone?.scores, together[i]?.scores);
      }
    } finally {
      await engine.release();
    }
  });

  const fp16 =
    present && existsSync(new URL(`../fixtures/models/${name}/onnx/decoder_model_merged_fp16.onnx`, import.meta.url));
  test(
    `${name}: the fp16 files run and agree loosely with the reference`,
    { skip: !fp16 && `no fp16 files in ${name}` },
    async (t) => {
      const { dir, pairs, inputs } = load(name);
      const { engine } = await loadEngine(dir, { dtype: 'fp16', captureScoreLogits: true, intraOpThreads: 1 }, quiet);
      try {
        const results = await engine.score(inputs);
        let same = 0;
        let total = 0;
        let worst = 0;
        pairs.forEach((p, i) => {
          for (const c of p.cases) {
            const trace = (results[i] as EngineResult).traces[SHORT[c.metric]];
            const logits = trace?.scoreLogits as Float32Array;
            worst = Math.max(worst, maxAbsDiff(logits, c.score_logits));
            total++;
            if (argmaxOf(logits) === argmaxOf(c.score_logits)) same++;
          }
        });
        t.diagnostic(
          `fp16: worst |logits - fp32 reference| = ${worst.toExponential(2)}; first token agrees ${same}/${total}`,
        );
        assert.ok(worst < 0.25, `fp16 score logits within 0.25 of fp32 reference (worst ${worst})`);
        assert.ok(same / total >= 0.75, `fp16 first token agrees in ${same}/${total}`);
      } finally {
        await engine.release();
      }
    },
  );

  test(`${name}: the worker-thread scorer returns the same scores as the engine`, { skip }, async () => {
    const { dir, inputs } = load(name);
    const { engine } = await loadEngine(dir, { intraOpThreads: 1 }, quiet);
    const direct = await engine.score(inputs);
    await engine.release();
    const scorer = await loadScorer(dir, { batchSize: 3, workers: 2, intraOpThreads: 1, logger: quiet });
    try {
      assert.equal(scorer.maxBatch, 3);
      assert.deepEqual(scorer.metrics, ['itm', 'odf', 'ctq', 'su']);
      const res = await scorer.score(inputs.map((x, i) => ({ id: String(i), ...x })));
      assert.deepEqual(
        res.map((r) => r.scores),
        direct.map((r) => r.scores),
      );
      assert.ok(scorer.stats().pairs >= inputs.length);
    } finally {
      await scorer.close();
    }
  });
}

test(
  'an unavailable execution provider falls back to cpu with a logged warning',
  {
    skip: !existsSync(new URL('../fixtures/models/tiny-llava-qwen/reference.json', import.meta.url)) && 'no fixture',
  },
  async () => {
    const { dir, inputs } = load('tiny-llava-qwen');
    for (const ep of ['cuda', 'webgpu'] as const) {
      const logs: { level: string; message: string; context: Record<string, unknown> }[] = [];
      const scorer = await loadScorer(dir, {
        executionProvider: ep,
        intraOpThreads: 1,
        logger: (level, message, context) => logs.push({ level, message, context }),
      });
      try {
        if (scorer.executionProvider === 'cpu') {
          const warn = logs.find((l) => l.level === 'warn');
          assert.ok(warn, `a warning is logged when ${ep} falls back`);
          assert.match(warn.message, new RegExp(`'${ep}' is unavailable here, falling back to cpu`));
          assert.equal(warn.context.requested, ep);
        } else {
          assert.equal(scorer.executionProvider, ep);
        }
        const [res] = await scorer.score([{ id: 'x', ...(inputs[0] as (typeof inputs)[number]) }]);
        assert.ok(res && Object.keys(res.scores).length > 0);
      } finally {
        await scorer.close();
      }
    }
  },
);

test(
  'a caption longer than the reference max_len is truncated like the reference and still scored',
  {
    skip: !existsSync(new URL('../fixtures/models/tiny-llava-qwen/reference.json', import.meta.url)) && 'no fixture',
  },
  async () => {
    const { dir, inputs } = load('tiny-llava-qwen');
    const { engine } = await loadEngine(dir, { intraOpThreads: 1 }, quiet);
    try {
      const caption = 'word '.repeat(5000);
      const [res] = await engine.score([{ caption, pixelValues: (inputs[0] as (typeof inputs)[number]).pixelValues }]);
      const traces = Object.values(res?.traces ?? {});
      assert.equal(traces.length, 4);
      for (const t of traces) {
        assert.equal(t.inputIds.length, 2041, 'max_len 2040 + the whitespace id');
        assert.deepEqual(t.inputIds, traces[0]?.inputIds, 'the metric text is cut off for every metric alike');
      }
    } finally {
      await engine.release();
    }
  },
);

test(
  'the scorer honours an aborted signal and refuses work after close()',
  {
    skip: !existsSync(new URL('../fixtures/models/tiny-llava-qwen/reference.json', import.meta.url)) && 'no fixture',
  },
  async () => {
    const { dir, inputs } = load('tiny-llava-qwen');
    const scorer = await loadScorer(dir, {
      intraOpThreads: 1,
      metrics: ['itm', 'semantic_understanding'],
      logger: quiet,
    });
    const batch = [{ id: 'a', ...(inputs[0] as (typeof inputs)[number]) }];
    try {
      assert.deepEqual(scorer.metrics, ['itm', 'su']);
      const [res] = await scorer.score(batch);
      assert.deepEqual(Object.keys(res?.scores ?? {}).sort(), ['itm', 'su']);
      const ctl = new AbortController();
      ctl.abort(new Error('stop'));
      await assert.rejects(scorer.score(batch, ctl.signal), /stop/);
    } finally {
      await scorer.close();
    }
    await assert.rejects(scorer.score(batch), { code: 'scorer_closed' });
    await assert.rejects(loadScorer(dir, { metrics: ['nope' as never] }), { code: 'unknown_metric' });
  },
);

for (const name of FIXTURES) {
  test(`${name}: the decoder's num_logits_to_keep keeps the last position's logits, 0 keeps all`, async () => {
    const dir = new URL(`../fixtures/models/${name}/onnx/`, import.meta.url).pathname;
    const decoder = await ort.InferenceSession.create(`${dir}decoder_model_merged.onnx`, { intraOpNumThreads: 1 });
    try {
      assert.ok(decoder.inputNames.includes('num_logits_to_keep'), 're-export with tools/export to get the input');
      const kvInputs = decoder.inputNames.filter((n) => n.startsWith('past_key_values.'));
      const meta = decoder.inputMetadata.find((m) => m.name === kvInputs[0]);
      const kvShape = meta?.isTensor ? meta.shape : [];
      const [kvHeads, headDim] = [Number(kvShape[1]), Number(kvShape[3])];
      const embedsMeta = decoder.inputMetadata.find((m) => m.name === 'inputs_embeds');
      const hidden = Number(embedsMeta?.isTensor ? embedsMeta.shape[2] : NaN);
      const b = 2;
      const s = 5;
      const embeds = Float32Array.from({ length: b * s * hidden }, (_, i) => Math.sin(i * 0.37));
      const feeds = (keep: number): Record<string, ort.Tensor> => {
        const f: Record<string, ort.Tensor> = {
          inputs_embeds: new ort.Tensor('float32', embeds, [b, s, hidden]),
          attention_mask: new ort.Tensor('int64', new BigInt64Array(b * s).fill(1n), [b, s]),
          position_ids: new ort.Tensor(
            'int64',
            BigInt64Array.from({ length: b * s }, (_, i) => BigInt(i % s)),
            [b, s],
          ),
          num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.from([BigInt(keep)]), []),
        };
        for (const n of kvInputs) f[n] = new ort.Tensor('float32', new Float32Array(0), [b, kvHeads, 0, headDim]);
        return f;
      };
      const all = (await decoder.run(feeds(0))).logits as ort.Tensor;
      const last = (await decoder.run(feeds(1))).logits as ort.Tensor;
      const v = Number(all.dims[2]);
      assert.deepEqual(all.dims, [b, s, v]);
      assert.deepEqual(last.dims, [b, 1, v]);
      const a = all.data as Float32Array;
      const l = last.data as Float32Array;
      for (let row = 0; row < b; row++) {
        const d = maxAbsDiff(l.subarray(row * v, (row + 1) * v), a.subarray((row * s + s - 1) * v, (row * s + s) * v));
        assert.ok(d < 1e-5, `row ${row}: last-position logits differ by ${d}`);
      }
    } finally {
      await decoder.release();
    }
  });
}
