/**
 * Scorer benchmark, one process, same pairs, same random-weight model: the reference's way (one full-prompt pass per
 * metric, 2 greedy tokens), the previous engine (shared-prefix KV cache moved through JS, 10 session runs per batch;
 * run from its last commit, BASELINE_REF, as the intake bench keeps its baseline), and the one-pass scoring graph
 * with all four metrics and with `--metrics policy` (ITM and ODF, the paper's default policy).
 *
 *   npm run bench:scorer -- [--model DIR] [--family qwen|llava_v1|llama3|llama3.2] [--pairs 8] [--batch 4]
 *                           [--threads N] [--dtype fp32|fp16] [--ep cpu|cuda|webgpu] [--layers 2]
 *                           [--baseline REF|none] [--tokenizer tokenizer.json] [--write]
 *
 * Without --model it generates a random-weight model of realistic width with tools/export/export.sh (both the
 * scoring graph and the transformers.js trio the previous engine runs, from the same weights) into bench/.cache/
 * (gitignored) on first use, and again whenever the exporter's graph code changes: --family qwen (default) =
 * Qwen2.5-1.5B + SigLIP-so400m shapes, real Qwen vocabulary; llava_v1 = Vicuna-13B + CLIP ViT-L/14-336 shapes (576
 * image tokens); llama3 / llama3.2 = Llama-3-8B / Llama-3.2-3B shapes (the export tool's --random-config for them).
 * Few layers either way; --tokenizer hands the export a real tokenizer.json (the Llama-3 families otherwise prompt through
 * the export tool's tiny Llama-3-style tokenizer, which makes the token counts unlike the real ones). --baseline none (or a model without the trio, or a Llama-3 model: the previous engine
 * predates the llama_3 format) leaves the previous engine's rows out. --write replaces this family's section of
 * BENCHMARKS.md.
 *
 * Pairs per CPU-second (the process's user + system CPU time, onnxruntime's threads included) is the figure that
 * survives a shared machine, as in the intake bench: wall-clock pairs/s swung 3-4x between phases of one run here.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import * as ort from '../../lib/model/onnxruntime.ts';
import { loadEngine } from '../../lib/model/sessions.ts';
import { jsonLogger } from '../../lib/support/logger.ts';
import type { MetricKey } from '../../lib/types.ts';

/** The last commit with the previous (multi-session, KV cache through JS) engine. */
const BASELINE_REF = '8235523';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    family: { type: 'string', default: 'qwen' },
    pairs: { type: 'string', default: '8' },
    batch: { type: 'string', default: '4' },
    threads: { type: 'string' },
    dtype: { type: 'string', default: 'fp32' },
    ep: { type: 'string', default: 'cpu' },
    layers: { type: 'string', default: '2' },
    baseline: { type: 'string', default: process.env.BENCH_BASELINE ?? BASELINE_REF },
    write: { type: 'boolean', default: false },
    tokenizer: { type: 'string' },
  },
});

const ROOT = new URL('../../', import.meta.url).pathname;
/** Crawled-alt-text-like captions of varied length (the prefix share depends on the caption length). */
const CAPTIONS = [
  'A red bicycle leaning against a brick wall.',
  'Vintage 1960s Ford Mustang convertible parked on a coastal road at sunset, side view',
  'IMG_2041.JPG',
  'Two golden retriever puppies playing in the snow in the backyard',
  'Buy Now! 50% off summer dresses - free shipping on all orders over $50',
  'The Eiffel Tower seen from the Trocadéro gardens on a cloudy afternoon in Paris, France.',
  'bowl of ramen with soft-boiled egg, nori and green onions',
  'Aerial photograph of a winding river cutting through a dense autumn forest with orange and yellow leaves',
  'logo',
  'A woman in a blue raincoat walks her dog past a row of colourful terraced houses on a rainy morning in Dublin',
  'Close-up of a monarch butterfly on a purple coneflower',
  'Diagram showing the water cycle: evaporation, condensation, precipitation and collection',
];

/** The exporter files that shape the graphs: a cached bench model made by older code is regenerated. */
function exporterHash(): string {
  const h = createHash('sha256');
  for (const f of ['export.py', 'llava_model.py', 'onnx_export.py', 'scorer_graph.py', 'tiny.py'])
    h.update(readFileSync(`${ROOT}tools/export/${f}`));
  return h.digest('hex').slice(0, 8);
}

const FAMILIES = ['qwen', 'llava_v1', 'llama3', 'llama3.2'] as const;
const SECTIONS: Record<string, string> = {
  qwen: 'Scorer',
  llava_v1: 'Scorer, LLaVA-1.5 family',
  llama3: 'Scorer, Llama-3-8B family',
  'llama3.2': 'Scorer, Llama-3.2-3B family',
};

function generatedModelDir(family: string, layers: number): string {
  if (!(FAMILIES as readonly string[]).includes(family)) {
    throw new Error(`--family must be one of ${FAMILIES.join(', ')}, not ${family}`);
  }
  const tok = args.tokenizer ? `-tok${createHash('sha256').update(args.tokenizer).digest('hex').slice(0, 6)}` : '';
  const dir = `${ROOT}bench/.cache/realistic-${family}-l${layers}${tok}-${exporterHash()}`;
  if (
    existsSync(`${dir}/mlm_filter.json`) &&
    existsSync(`${dir}/onnx/mlm_scorer${args.dtype === 'fp16' ? '_fp16' : ''}.onnx`)
  ) {
    return dir;
  }
  const cmd = [
    `${ROOT}tools/export/export.sh`,
    '--random-config',
    '--family',
    family,
    '--layers',
    String(layers),
    '--dtypes',
    args.dtype === 'fp16' ? 'fp16' : 'fp32',
    '--parts',
    args.baseline === 'none' || family.startsWith('llama3') ? 'scorer' : 'scorer,trio',
    '--no-check',
    ...(args.tokenizer ? ['--tokenizer', args.tokenizer] : []),
    '--out',
    dir,
  ];
  process.stderr.write(`bench: generating a realistic-width random model: ${cmd.join(' ')}\n`);
  execFileSync(cmd[0] as string, cmd.slice(1), { stdio: 'inherit' });
  return dir;
}

/** Deterministic pseudo-random pixels (mulberry32) in the normalised range. */
function pixels(size: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(3 * size * size);
  for (let i = 0; i < out.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

/** What every path measures: the engine's score() and the time inside onnxruntime's session.run. */
interface Engine {
  score(inputs: readonly { caption: string; pixelValues: Float32Array }[]): Promise<{ scores: object }[]>;
  release(): Promise<void>;
  readonly stats: { decoderPositions: number; visionImages: number };
}

interface RunFigures {
  seconds: number;
  /** CPU seconds of this process (user + system, every thread). */
  cpuSeconds: number;
  runSeconds: number;
  runs: number;
  batches: number;
  decoderPositions: number;
  visionImages: number;
  scored: number;
  pairs: number;
}

/** Counts and times every session.run in this process (both engines use the same onnxruntime-node). */
const runClock = { calls: 0, ms: 0 };
const proto = (ort.InferenceSession as unknown as { prototype: { run: (...a: unknown[]) => Promise<unknown> } })
  .prototype;
const originalRun = proto.run;
proto.run = async function (this: unknown, ...a: unknown[]) {
  const t = performance.now();
  try {
    return await originalRun.apply(this, a);
  } finally {
    runClock.calls++;
    runClock.ms += performance.now() - t;
  }
};

async function measure(engine: Engine, pairs: { caption: string; pixelValues: Float32Array }[], batch: number) {
  await engine.score(pairs.slice(0, 1)); // warm-up, not timed
  const before = { ...engine.stats, calls: runClock.calls, ms: runClock.ms };
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let scored = 0;
  let batches = 0;
  for (let i = 0; i < pairs.length; i += batch) {
    const res = await engine.score(pairs.slice(i, i + batch));
    scored += res.reduce((a, r) => a + Object.keys(r.scores).length, 0);
    batches++;
  }
  const cpu = process.cpuUsage(cpu0);
  return {
    seconds: (performance.now() - t0) / 1000,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    runSeconds: (runClock.ms - before.ms) / 1000,
    runs: runClock.calls - before.calls,
    batches,
    decoderPositions: engine.stats.decoderPositions - before.decoderPositions,
    visionImages: engine.stats.visionImages - before.visionImages,
    scored,
    pairs: pairs.length,
  } satisfies RunFigures;
}

function add(a: RunFigures | undefined, b: RunFigures): RunFigures {
  if (!a) return b;
  const out = { ...a };
  for (const k of Object.keys(b) as (keyof RunFigures)[]) out[k] += b[k];
  return out;
}

/** Quiet for the loadEngine of any ref: older ones call their logger as a function, newer ones call its methods. */
const quietAnyRef = Object.assign(() => undefined, { debug() {}, info() {}, warn() {}, error() {}, log() {} });

/** The previous engine's lib/model from git (with the lib/types.ts it was written against). */
async function baselineLoader(ref: string) {
  const dir = `${ROOT}bench/.cache/scorer-baseline-${ref}`;
  if (!existsSync(`${dir}/lib/model/sessions.ts`)) {
    mkdirSync(dir, { recursive: true });
    const tar = execFileSync('git', ['-C', ROOT, 'archive', ref, 'lib/model', 'lib/types.ts'], { maxBuffer: 1 << 28 });
    execFileSync('tar', ['-x', '-C', dir], { input: tar });
  }
  const mod = (await import(`${dir}/lib/model/sessions.ts`)) as { loadEngine: typeof loadEngine };
  return mod.loadEngine as unknown as (
    dir: string,
    opts: Record<string, unknown>,
    log: typeof quietAnyRef,
  ) => Promise<{ engine: Engine; info: { preprocess: { size: number } } }>;
}

/** What a reader needs to interpret the table. */
const NOTES = [
  "- Pairs per CPU-second divide by the CPU time of the bench process (user + system, onnxruntime's threads " +
    'included), the figure that survives a shared machine; pairs/s (wall) is what the process got while other work ' +
    'shared the cores. Ratios are of pairs per CPU-second.',
  '- Same pairs (captions of crawled-alt-text lengths, seeded random pixels), same weights (one export writes the ' +
    "scoring graph and the previous engine's three files), one process. Each path runs over the first half of the " +
    'pairs, then in reverse order over the second half, each phase warmed up untimed, so load from other work on a ' +
    'shared machine drifts onto every path alike.',
  "- Model tokens = the vision tower's patch tokens + decoder positions (padding included). The one-pass graph " +
    'holds ~44 more positions per pair than the previous engine (11 digit candidates per metric, which give every ' +
    "first digit's own second-digit distribution: the exact 0..100 distribution) and runs lm_head on 12 rows per " +
    'metric; its last decoder layer computes only those rows (keys and values for all positions), which at 2 layers ' +
    'is half the decoder and at 28 layers 1/28 of it, so the CPU ratio against the previous engine shrinks with depth.',
  '- session.run calls per batch: the previous engine ran the vision encoder, the embedding and the decoder with KV ' +
    'caches and logits crossing into JS between runs; the one-pass graph is one run. JS ms per pair = wall time ' +
    'minus the time inside session.run (tokenising the prompts, packing, readout, garbage collection).',
];

type PathName = 'reference' | 'previous' | 'onepass' | 'policy';
const LABELS: Record<PathName, string> = {
  reference: 'reference way (previous engine, reference mode: 4 full-prompt passes, 2 greedy tokens)',
  previous: 'previous engine (shared-prefix KV cache through JS, early-stopped digits)',
  onepass: 'one-pass graph, all 4 metrics',
  policy: 'one-pass graph, `--metrics policy` (itm, odf)',
};
const POLICY: MetricKey[] = ['image_text_matching', 'object_detail_fulfillment'];

function patchesPerImage(model: string): number {
  const cfg = JSON.parse(readFileSync(`${model}/config.json`, 'utf8')) as {
    vision_config?: { image_size?: number; patch_size?: number };
  };
  const v = cfg.vision_config ?? {};
  return v.image_size && v.patch_size ? Math.floor(v.image_size / v.patch_size) ** 2 : 0;
}

async function main(): Promise<void> {
  const model = args.model ?? generatedModelDir(args.family, Number(args.layers));
  const nPairs = Number(args.pairs);
  const batch = Number(args.batch);
  const hasTrio = existsSync(`${model}/onnx/decoder_model_merged${args.dtype === 'fp16' ? '_fp16' : ''}.onnx`);
  const llama3 = args.family.startsWith('llama3');
  const baseline = args.baseline !== 'none' && hasTrio && !llama3 ? await baselineLoader(args.baseline) : undefined;
  const common = {
    dtype: args.dtype as 'fp32' | 'fp16',
    executionProvider: args.ep as 'cpu' | 'cuda' | 'webgpu',
    // A GPU figure measured on the CPU would mislead: a requested provider that cannot load ends the bench.
    fallbackToCpu: args.ep === 'cpu',
    ...(args.threads ? { intraOpThreads: Number(args.threads) } : {}),
  };
  const log = jsonLogger(process.stderr, { level: 'warn' });
  const open = async (path: PathName): Promise<{ engine: Engine; size: number }> => {
    if (path === 'reference' || path === 'previous') {
      const l = await (baseline as NonNullable<typeof baseline>)(
        model,
        { ...common, referenceMode: path === 'reference' },
        quietAnyRef,
      );
      return { engine: l.engine, size: l.info.preprocess.size };
    }
    const l = await loadEngine(model, { ...common, ...(path === 'policy' ? { metrics: POLICY } : {}) }, log);
    return { engine: l.engine, size: l.info.preprocess.size };
  };
  const paths: PathName[] = baseline ? ['reference', 'previous', 'onepass', 'policy'] : ['onepass', 'policy'];
  const results: Partial<Record<PathName, RunFigures>> = {};
  const loadBefore = loadavg()[0] as number;
  // Each path over the first half, then in reverse order over the second half, so that load from other work on a
  // shared machine drifts onto every path alike; each phase loads its engine afresh and warms it up untimed.
  const half = Math.ceil(nPairs / 2);
  const phases = [
    ...paths.map((p) => [p, 0, half] as const),
    ...[...paths].reverse().map((p) => [p, half, nPairs] as const),
  ];
  let size = 0;
  for (const [path, from, to] of phases) {
    if (from >= to) continue;
    const { engine, size: s } = await open(path);
    size = s;
    const pairs = Array.from({ length: to - from }, (_, k) => ({
      caption: CAPTIONS[(from + k) % CAPTIONS.length] as string,
      pixelValues: pixels(size, from + k + 1),
    }));
    const r = await measure(engine, pairs, batch);
    await engine.release();
    process.stderr.write(`bench: ${path} pairs ${from}..${to - 1} done in ${r.seconds.toFixed(1)} s\n`);
    results[path] = add(results[path], r);
  }
  const patches = patchesPerImage(model);
  const perPair = (r: RunFigures, v: number) => (v / r.pairs).toFixed(0);
  const jsMs = (r: RunFigures) => (((r.seconds - r.runSeconds) * 1000) / r.pairs).toFixed(2);
  const pps = (r: RunFigures) => r.pairs / r.seconds;
  const ppcs = (r: RunFigures) => r.pairs / r.cpuSeconds;
  const row = (p: PathName) => {
    const r = results[p] as RunFigures;
    const metrics = p === 'policy' ? 2 : 4;
    return `| ${LABELS[p]} | ${ppcs(r).toFixed(3)} | ${pps(r).toFixed(3)} | ${perPair(r, r.decoderPositions + r.visionImages * patches)} | ${perPair(r, r.decoderPositions)} | ${(r.runs / r.batches).toFixed(1)} | ${jsMs(r)} | ${r.scored}/${r.pairs * metrics} |`;
  };
  const load = `load average ${loadBefore.toFixed(1)} -> ${(loadavg()[0] as number).toFixed(1)} (shared machine)`;
  const cmd = `npm run bench:scorer -- ${process.argv.slice(2).join(' ')}`.trim();
  const one = results.onepass as RunFigures;
  const ratio = (a: PathName, b: PathName) => {
    const x = results[a];
    const y = results[b];
    return x && y ? `${(ppcs(x) / ppcs(y)).toFixed(2)}x` : 'n/a';
  };
  const table = [
    `Model: ${model.replace(ROOT, '')}, ${size}px; ${args.dtype}; ${nPairs} pairs, batch ${batch}; ${cpus().length} CPU cores` +
      ` (${cpus()[0]?.model ?? 'unknown CPU'}); ${load}; ${args.ep === 'cpu' ? 'CPU only' : `on the ${args.ep} EP`}.` +
      ` Measured ${new Date().toISOString().slice(0, 10)}.`,
    '',
    '| path | pairs per CPU-second | pairs/s (wall) | model tokens / pair (vision patches + decoder positions, padding included) | decoder positions / pair | session.run calls / batch | JS ms / pair outside onnxruntime | scores read |',
    '|---|---|---|---|---|---|---|---|',
    ...paths.map(row),
    '',
    `Ratios (pairs per CPU-second): one-pass vs previous engine **${ratio('onepass', 'previous')}**, vs the reference way ` +
      `${ratio('onepass', 'reference')}; \`--metrics policy\` vs all **${ratio('policy', 'onepass')}**. ` +
      `One-pass JS outside onnxruntime: ${jsMs(one)} ms per pair (tokenising 4 prompts, packing, readout).`,
    '',
    ...NOTES,
    '',
    `Command: \`${cmd}\``,
  ].join('\n');
  process.stdout.write(`${table}\n`);
  if (args.write) writeSection(SECTIONS[args.family] ?? `Scorer, ${args.family}`, table);
}

function writeSection(title: string, body: string): void {
  const file = `${ROOT}BENCHMARKS.md`;
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n';
  const section = `## ${title}\n\n${body}\n`;
  const start = text.indexOf(`\n## ${title}\n`);
  let next: string;
  if (start < 0) {
    next = `${text.trimEnd()}\n\n${section}`;
  } else {
    const rest = text.slice(start + 1);
    const end = rest.indexOf('\n## ', 4);
    next = text.slice(0, start + 1) + section + (end < 0 ? '' : `\n${rest.slice(end + 1)}`);
  }
  writeFileSync(file, next);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:scorer failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
