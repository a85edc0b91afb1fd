/**
 * Does the scoring graph (fused MultiHeadAttention / RotaryEmbedding / SimplifiedLayerNormalization) run on a GPU
 * execution provider, and does it give the CPU's numbers? Scores the committed tiny fixtures' reference pairs on the
 * CPU and on each EP named, and prints per fixture: the EP actually used (a failed one falls back to cpu with a
 * warning), the largest digit-probability difference against PyTorch's reference and against the CPU run, the
 * expected scores against PyTorch's, whether the greedy
 * scores agree, and the wall time of one scoring call (the tiny models say nothing about throughput: this is a
 * placement and correctness check). onnxruntime's own warnings (nodes not assigned to the EP) go to stderr;
 * EP_VERBOSE=1 turns onnxruntime's verbose log on, which lists every node placed on each provider.
 *
 *   node --import tsx bench/scorer/ep-check.ts webgpu [cuda]
 */
import * as ort from '../../lib/model/onnxruntime.ts';
import type { EngineResult } from '../../lib/model/engine.ts';
import { loadEngine, type ExecutionProvider } from '../../lib/model/sessions.ts';
import { jsonLogger } from '../../lib/support/logger.ts';
import { METRICS, type MetricKey, type MetricShort } from '../../lib/types.ts';
import { loadReference } from '../../test/model/reference.ts';

if (process.env.EP_VERBOSE === '1') ort.env.logLevel = 'verbose';
const SHORT = Object.fromEntries(METRICS.map((m) => [m.key, m.short])) as Record<MetricKey, MetricShort>;
const eps = (process.argv.slice(2).length ? process.argv.slice(2) : ['webgpu']) as ExecutionProvider[];
const log = jsonLogger(process.stderr, { level: 'warn' });

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

for (const name of ['tiny-llava-qwen', 'tiny-llava-v1']) {
  const { dir, pairs, inputs } = loadReference(name);
  const runs: { ep: string; used: string; results: EngineResult[]; ms: number }[] = [];
  for (const requested of ['cpu', ...eps] as ExecutionProvider[]) {
    for (const dtype of requested === 'cpu' ? (['fp32'] as const) : (['fp32', 'fp16'] as const)) {
      const { engine, executionProvider } = await loadEngine(
        dir,
        { executionProvider: requested, dtype, captureDetail: true },
        log,
      );
      try {
        await engine.score(inputs.slice(0, 1)); // warm-up (shader compilation)
        const t0 = performance.now();
        const results = await engine.score(inputs);
        runs.push({ ep: `${requested}/${dtype}`, used: executionProvider, results, ms: performance.now() - t0 });
      } finally {
        await engine.release();
      }
    }
  }
  const cpu = runs[0]!;
  for (const r of runs) {
    let vsRef = 0;
    let vsCpu = 0;
    let expRef = 0;
    let same = 0;
    let total = 0;
    pairs.forEach((p, i) => {
      for (const c of p.cases) {
        const short = SHORT[c.metric];
        const d = r.results[i]!.detail![short]!;
        const dc = cpu.results[i]!.detail![short]!;
        vsRef = Math.max(vsRef, maxAbs(d.q, c.q), ...c.r.map((rd, k) => maxAbs(d.r[k]!, rd)));
        vsCpu = Math.max(vsCpu, maxAbs(d.q, dc.q), ...dc.r.map((rd, k) => maxAbs(d.r[k]!, rd)));
        expRef = Math.max(expRef, Math.abs((d.expected ?? NaN) - (c.expected ?? NaN)));
        total++;
        if (r.results[i]!.scores[short] === cpu.results[i]!.scores[short]) same++;
      }
    });
    console.log(
      `${name} ${r.ep}: ran on ${r.used}; max |digit probability diff| vs PyTorch ${vsRef.toExponential(2)}, vs CPU ` +
        `${vsCpu.toExponential(2)}; max |expected - PyTorch| ${expRef.toFixed(4)}; scores equal to CPU ` +
        `${same}/${total}; one call ${r.ms.toFixed(0)} ms`,
    );
  }
}
