/**
 * Where a scoring call's time goes on an execution provider: scores PAIRS pairs (batch 8) with onnxruntime's profiler
 * on, then sums the profile per session (model runs: count and total) and per provider and operator, and compares
 * the wall time with the time spent inside the sessions' runs (the rest is our JS, tensor copies and waiting).
 *
 *   node --import tsx bench/scorer/ep-profile.ts MODEL_DIR [webgpu|cpu|cuda] [fp16|fp32] [PAIRS]
 */
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadEngine, type ExecutionProvider } from '../../lib/model/sessions.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import type { ModelDtype } from '../../lib/model/model-dir.ts';

const [dir, ep = 'webgpu', dtype = 'fp16', pairsArg = '32'] = process.argv.slice(2);
if (!dir) throw new Error('usage: ep-profile.ts MODEL_DIR [ep] [dtype] [pairs]');
const n = Number(pairsArg);
const out = mkdtempSync(join(tmpdir(), 'ort-profile-'));
const { engine, executionProvider, info } = await loadEngine(
  dir,
  { executionProvider: ep as ExecutionProvider, dtype: dtype as ModelDtype, profilePrefix: join(out, 'p') },
  silentLogger,
);
const size = info.preprocess.size;
const pixels = new Float32Array(3 * size * size).map((_, i) => Math.sin(i * 0.37) * 0.8);
const inputs = Array.from({ length: n }, (_, i) => ({
  caption: `a photo of ${i} small red ${'thing '.repeat(1 + (i % 7))}on a wooden table near the window`,
  pixelValues: pixels,
}));
await engine.score(inputs.slice(0, 8)); // warm-up
const t0 = performance.now();
for (let b = 0; b < n; b += 8) await engine.score(inputs.slice(b, b + 8));
const wall = performance.now() - t0;
await engine.release();

interface Ev {
  cat: string;
  name: string;
  dur: number;
  ts: number;
  args?: { op_name?: string; provider?: string };
}
console.log(
  `${executionProvider} ${dtype}: ${n} pairs in ${wall.toFixed(0)} ms (${((n / wall) * 1000).toFixed(2)} pairs/s)`,
);
let inRuns = 0;
for (const f of readdirSync(out).sort()) {
  const events = JSON.parse(readFileSync(join(out, f), 'utf8')) as Ev[];
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run');
  const ops = new Map<string, number>();
  let nodeTotal = 0;
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const key = `${e.args?.provider ?? '?'} ${e.args?.op_name ?? '?'}`;
    ops.set(key, (ops.get(key) ?? 0) + e.dur);
    nodeTotal += e.dur;
  }
  const runTotal = runs.reduce((a, e) => a + e.dur, 0);
  inRuns += runTotal;
  console.log(
    `${f.replace(/_\d.*$/, '')}: ${runs.length} runs, ${(runTotal / 1000).toFixed(0)} ms in runs, ` +
      `${(nodeTotal / 1000).toFixed(0)} ms in kernels`,
  );
  for (const [k, v] of [...ops].sort((a, b) => b[1] - a[1]).slice(0, 8)) {
    console.log(`  ${(v / 1000).toFixed(1).padStart(8)} ms  ${k}`);
  }
}
console.log(
  `all session runs (warm-up included): ${(inRuns / 1000).toFixed(0)} ms; measured wall ${wall.toFixed(0)} ms; profile files in ${out}`,
);
