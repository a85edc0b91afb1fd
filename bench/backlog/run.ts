/**
 * Bounded memory under backlog: streams N records (default 100k) from a JSONL file through the real pipeline and
 * intake (inline JPEGs, so no network) into the real local sinks, behind a deliberately slow scorer, and samples RSS.
 * The scorer is the bottleneck by construction, so the backlog sits in the input file, not in memory.
 *
 *   npm run bench:backlog -- [--records 100000] [--scorer-ms-per-batch 8] [--batch 16] [--model DIR] [--sample-ms 500]
 *
 * `--model DIR` scores with the real MLM scorer (e.g. test/fixtures/models/tiny-llava-qwen) instead of the stand-in,
 * so the scorer's own memory (onnxruntime sessions, its worker thread) is in the figures. RSS, V8 heap, external and
 * ArrayBuffer memory are sampled every `--sample-ms`; "steady" is the median of the samples taken in the second half of
 * the run (after the pipeline has filled its bounds), "peak" the highest RSS seen.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { Intake } from '../../lib/intake/index.ts';
import { runPipeline } from '../../lib/pipeline/index.ts';
import { Policy } from '../../lib/policy/index.ts';
import { LocalAuditSink } from '../../lib/sinks/local-audit.ts';
import { LocalCuratedSink } from '../../lib/sinks/local-curated.ts';
import { JsonlSource } from '../../lib/sources/jsonl.ts';
import type { PreprocessSpec, ScoreInput, ScoreResult, Scorer } from '../../lib/types.ts';

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '100000' },
    'scorer-ms-per-batch': { type: 'string', default: '8' },
    batch: { type: 'string', default: '16' },
    model: { type: 'string' },
    'sample-ms': { type: 'string', default: '500' },
  },
});
const n = Number(values.records);
const delay = Number(values['scorer-ms-per-batch']);
const batch = Number(values.batch);

/** A slow stand-in for the GPU scorer: fixed latency per batch, scores from the caption's length. */
class SlowScorer implements Scorer {
  readonly model = { name: 'slow-bench-scorer', revision: '0' };
  readonly preprocess: PreprocessSpec = {
    size: 64,
    mean: [0.5, 0.5, 0.5],
    std: [0.5, 0.5, 0.5],
    rescale: 1 / 255,
    padToSquare: true,
    centerCrop: false,
    resample: 'bicubic',
  };
  readonly metrics = ['itm', 'odf', 'ctq', 'su'] as const;
  readonly maxBatch = batch;
  async score(inputs: readonly ScoreInput[]): Promise<ScoreResult[]> {
    await new Promise((r) => setTimeout(r, delay));
    return inputs.map((x) => {
      const s = (x.caption.length * 7) % 101;
      return { scores: { itm: s, odf: s, ctq: s, su: s } };
    });
  }
  async close() {}
}

const dir = mkdtempSync(join(tmpdir(), 'mlmf-backlog-'));
const input = join(dir, 'in.jsonl');
const jpgs = await Promise.all(
  Array.from({ length: 16 }, (_, i) =>
    sharp({ create: { width: 96 + i * 4, height: 80, channels: 3, background: { r: i * 15, g: 90, b: 160 } } })
      .jpeg()
      .toBuffer(),
  ),
);
const lines: string[] = [];
for (let i = 0; i < n; i++) {
  lines.push(
    JSON.stringify({
      id: `r${i}`,
      image: { base64: jpgs[i % 16]!.toString('base64') },
      caption: `caption ${i} ${'x'.repeat(i % 40)}`,
    }),
  );
}
writeFileSync(input, lines.join('\n') + '\n');
lines.length = 0;
global.gc?.();

const scorer: Scorer = values.model
  ? await (await import('../../lib/model/index.ts')).loadScorer(values.model, { batchSize: batch })
  : new SlowScorer();
const source = await JsonlSource.open({ path: input });
const curated = await LocalCuratedSink.open({ dir: join(dir, 'curated'), model: scorer.model });
const audit = await LocalAuditSink.open({ path: join(dir, 'rejects.jsonl'), model: scorer.model });
let peak = 0;
type Sample = { records: number; rssMiB: number; heapMiB: number; externalMiB: number; arrayBuffersMiB: number };
const samples: Sample[] = [];
let done = 0;
const mib = (n: number) => Math.round(n / 2 ** 20);
const sampler = setInterval(() => {
  const rss = process.memoryUsage().rss;
  peak = Math.max(peak, rss);
}, 50);
const report = setInterval(() => {
  const m = process.memoryUsage();
  samples.push({
    records: done,
    rssMiB: mib(m.rss),
    heapMiB: mib(m.heapUsed),
    externalMiB: mib(m.external),
    arrayBuffersMiB: mib(m.arrayBuffers),
  });
}, Number(values['sample-ms']));
const started = Date.now();
const stats = await runPipeline({
  source,
  intake: new Intake({}, scorer.preprocess),
  scorer,
  policy: new Policy({ thresholds: [{ metric: 'itm', op: '>=', value: 50 }] }),
  sinks: [curated, audit],
  onOutcome: () => done++,
});
await curated.close();
await audit.close();
clearInterval(sampler);
clearInterval(report);
const seconds = (Date.now() - started) / 1000;
const median = (key: keyof Sample) => {
  const xs = samples
    .slice(Math.floor(samples.length / 2))
    .map((x) => x[key])
    .sort((a, b) => a - b);
  return xs[Math.floor(xs.length / 2)] ?? 0;
};
global.gc?.();
const afterGc = process.memoryUsage();
await scorer.close();
rmSync(dir, { recursive: true, force: true });
console.log(
  JSON.stringify(
    {
      records: stats.records,
      accepted: stats.accepted,
      rejected: stats.rejected,
      seconds,
      pairsPerSecond: +(stats.records / seconds).toFixed(1),
      peakRssMiB: mib(peak),
      steady: {
        rssMiB: median('rssMiB'),
        heapMiB: median('heapMiB'),
        externalMiB: median('externalMiB'),
        arrayBuffersMiB: median('arrayBuffersMiB'),
      },
      afterGc: { rssMiB: mib(afterGc.rss), heapMiB: mib(afterGc.heapUsed), externalMiB: mib(afterGc.external) },
      rssOverTime: samples.filter((_, i) => i % Math.max(1, Math.floor(samples.length / 12)) === 0),
    },
    null,
    1,
  ),
);
