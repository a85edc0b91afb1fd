/**
 * Score cache benchmark (issue 24): replays a synthetic crawl (bench/cache/crawl.ts: 40% exact repeats of an
 * earlier pair, 10% an earlier image under another caption) through the real `filter` job (runFilterJob, the tiny
 * fixture model as the scorer), each run in its own Node process:
 *   - off:   no --score-cache;
 *   - fresh: a new --score-cache directory (first occurrences miss, repeats hit);
 *   - warm:  the same directory again (every pair a hit);
 *   - dedupe: a new directory with --dedupe-images exact (an image repeat of an accepted pair is rejected
 *     duplicate_image before the scorer; one the policy rejected is scored under its new caption).
 * Rounds interleave the three against load drift on a shared machine. Reported per run: pairs the scorer ran
 * (summary scoreCache.scorerPairs), the run's CPU (process.cpuUsage: main thread, libuv pool, scorer threads) and
 * pairs per CPU-second.
 * Then a microbench in this process over the same pairs: the cache's own cost per pair (key digest + lookup +
 * write, the calls record-processor makes, 8 pairs in flight as the pipeline has them) against intake.prepare
 * (decode + preprocess, the cost of a pair on a miss) for the tiny model's 56 px spec and a real model's 384 px.
 *
 *   npm run bench:cache -- [--pairs 800] [--rounds 2] [--json out.json]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Intake } from '../../lib/intake/index.ts';
import { ScoreCache } from '../../lib/cache/score-cache.ts';
import { LmdbScoreStore } from '../../lib/cache/store.ts';
import { scopeOfModel } from '../../lib/cache/key.ts';
import type { PreprocessSpec, ScoreResult } from '../../lib/types.ts';
import { crawlPairs, writeShard, type CrawlPair } from './crawl.ts';
import { SIGLIP_PAD } from '../../test/intake/helpers.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const TINY_MODEL = `${ROOT}test/fixtures/models/tiny-llava-qwen`;

const { values: args } = parseArgs({
  options: {
    pairs: { type: 'string', default: '800' },
    rounds: { type: 'string', default: '2' },
    seed: { type: 'string', default: '24' },
    json: { type: 'string' },
    // internal: one run of the filter job in this process
    child: { type: 'string' },
    shard: { type: 'string' },
    out: { type: 'string' },
    cache: { type: 'string' },
  },
});

interface RunResult {
  readonly variant: string;
  readonly pairs: number;
  readonly scorerPairs: number;
  readonly hits: number;
  readonly misses: number;
  readonly cpuMs: number;
  readonly wallMs: number;
  readonly accepted: number;
  /** duplicate_image rejects (the dedupe variant). */
  readonly duplicates: number;
}

/** One `filter` run, in this process; prints its RunResult as JSON. */
async function childRun(): Promise<void> {
  const { runFilterJob } = await import('../../lib/cli/filter.ts');
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  const summary = await runFilterJob({
    input: args.shard!,
    out: args.out!,
    model: TINY_MODEL,
    policy: { thresholds: [{ metric: 'itm', op: '>=', value: 50 }] },
    progress: 'none',
    parquet: false,
    ...(args.cache ? { scoreCache: args.cache } : {}),
    ...(args.child === 'dedupe' ? { dedupeImages: 'exact' } : {}),
  });
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - wall0;
  const file = JSON.parse(readFileSync(join(args.out!, 'summary.json'), 'utf8'));
  const result: RunResult = {
    variant: args.child!,
    pairs: summary.records,
    scorerPairs: file.scoreCache?.scorerPairs ?? summary.records,
    hits: file.scoreCache?.hits ?? 0,
    misses: file.scoreCache?.misses ?? 0,
    cpuMs: (cpu.user + cpu.system) / 1000,
    wallMs,
    accepted: summary.decisions.accept,
    duplicates: file.imageDedupe?.duplicates?.exact ?? 0,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

function spawnRun(variant: string, shard: string, out: string, cache?: string): RunResult {
  const argv = ['--import', 'tsx', new URL(import.meta.url).pathname, '--child', variant, '--shard', shard];
  argv.push('--out', out, ...(cache ? ['--cache', cache] : []));
  const r = spawnSync(process.execPath, argv, { cwd: ROOT, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${variant} run failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as RunResult;
}

async function main(): Promise<void> {
  const pairsN = Number(args.pairs);
  const seed = Number(args.seed);
  const crawl = await crawlPairs({ pairs: pairsN, repeatPair: 0.4, repeatImage: 0.1, seed });
  const shard = `${ROOT}bench/.cache/cache-crawl-${pairsN}-${seed}.tar`;
  await writeShard(shard, crawl);
  const tmp = mkdtempSync(join(os.tmpdir(), 'mlmf-cachebench-'));
  try {
    const runs: RunResult[] = [];
    const disk: { entries: number; bytes: number; blocks: number }[] = [];
    for (let round = 0; round < Number(args.rounds); round++) {
      const cache = join(tmp, `cache-${round}`);
      runs.push(spawnRun('off', shard, join(tmp, `off-${round}`)));
      const fresh = spawnRun('fresh', shard, join(tmp, `fresh-${round}`), cache);
      runs.push(fresh);
      const s = statSync(join(cache, 'data.mdb'));
      disk.push({ entries: fresh.misses, bytes: s.size, blocks: s.blocks * 512 });
      runs.push(spawnRun('warm', shard, join(tmp, `warm-${round}`), cache));
      runs.push(spawnRun('dedupe', shard, join(tmp, `dedupe-${round}`), join(tmp, `dedupe-cache-${round}`)));
    }
    const micro = await microbench(crawl, tmp);
    report(crawl, runs, disk, micro);
    if (args.json) writeFileSync(args.json, JSON.stringify({ runs, disk, micro }, null, 2) + '\n');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

const SIGLIP_384: PreprocessSpec = SIGLIP_PAD;
const TINY_56: PreprocessSpec = { ...SIGLIP_384, size: 56 };

/** CPU ms per item of `fn` over `items`, `inFlight` at once (process.cpuUsage: every thread of this process). */
async function cpuPerItem<T>(items: readonly T[], inFlight: number, fn: (item: T) => Promise<unknown>) {
  let next = 0;
  const c0 = process.cpuUsage();
  const w0 = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
  const c = process.cpuUsage(c0);
  return { cpuMs: (c.user + c.system) / 1000 / items.length, wallMs: (performance.now() - w0) / items.length };
}

interface Micro {
  readonly [name: string]: { cpuMs: number[]; wallMs: number[] };
}

/**
 * The cache's calls and intake's, timed over the crawl's pairs in interleaved rounds. The scores stored are of the
 * shape the scorer returns (4 integer scores, 4 expected scores).
 */
async function microbench(crawl: readonly CrawlPair[], tmp: string): Promise<Micro> {
  const model = JSON.parse(readFileSync(join(TINY_MODEL, 'mlm_filter.json'), 'utf8')).model;
  const scope = await scopeOfModel(TINY_MODEL, model, ['itm', 'odf', 'ctq', 'su']);
  const result: ScoreResult = {
    scores: { itm: 61, odf: 47, ctq: 70, su: 33 },
    expected: { itm: 60.71, odf: 47.22, ctq: 69.93, su: 33.4 },
  };
  // A repeat shares its original's Buffer (crawl.ts): identity tells the distinct pairs apart.
  const seen = new Map<Buffer, Set<string>>();
  const distinct = crawl.filter((p) => {
    const captions = seen.get(p.image) ?? seen.set(p.image, new Set()).get(p.image)!;
    return !captions.has(p.caption) && !!captions.add(p.caption);
  });
  const intakes = { tiny: new Intake({}, TINY_56), siglip: new Intake({}, SIGLIP_384) };
  const samples: Record<string, { cpuMs: number[]; wallMs: number[] }> = {};
  const add = (name: string, m: { cpuMs: number; wallMs: number }) => {
    samples[name] ??= { cpuMs: [], wallMs: [] };
    samples[name].cpuMs.push(m.cpuMs);
    samples[name].wallMs.push(m.wallMs);
  };
  for (let round = 0; round < 5; round++) {
    const cache = new ScoreCache(LmdbScoreStore.open(join(tmp, `micro-${round}`)), scope);
    add('cache: key digest only', await cpuPerItem(crawl, 8, async (p) => cache.key(p.image, p.caption)));
    // A miss: the digest, a lookup that finds nothing, the write after scoring (each distinct pair once).
    const miss = await cpuPerItem(distinct, 8, async (p) => {
      const key = cache.key(p.image, p.caption);
      if (await cache.lookup(key)) return;
      await cache.remember(key, result, { id: p.key, source: origin(p) });
      cache.settle(key);
    });
    add(MISS, miss);
    add(HIT, await cpuPerItem(crawl, 8, async (p) => cache.lookup(cache.key(p.image, p.caption))));
    await cache.close();
    for (const [name, intake] of Object.entries(intakes)) {
      const m = await cpuPerItem(crawl, 4, async (p) =>
        intake.release(await intake.prepare({ kind: 'bytes', data: p.image })),
      );
      add(`intake.prepare (decode + preprocess), ${name === 'tiny' ? '56 px (tiny model)' : '384 px (SigLIP)'}`, m);
    }
  }
  await Promise.all(Object.values(intakes).map((i) => i.close()));
  return samples;
}

const origin = (p: CrawlPair) => ({ kind: 'webdataset' as const, path: '/data/crawl/00000.tar', key: p.key });
const MISS = 'cache on a miss: key + lookup + write + settle (each distinct pair)';
const HIT = 'cache on a hit: key + lookup (every pair, store filled)';

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function report(
  crawl: readonly CrawlPair[],
  runs: readonly RunResult[],
  disk: readonly { entries: number; bytes: number; blocks: number }[],
  micro: Micro,
): void {
  const kinds = { new: 0, repeatPair: 0, repeatImage: 0 };
  for (const p of crawl) kinds[p.kind]++;
  const distinct = new Set(crawl.map((p) => p.image)).size;
  const kb = crawl.reduce((a, p) => a + p.image.length, 0) / crawl.length / 1024;
  const cpuModel = os.cpus()[0]?.model ?? 'unknown';
  console.log(
    `crawl: ${crawl.length} pairs (${kinds.new} new, ${kinds.repeatPair} exact repeats, ${kinds.repeatImage} ` +
      `image repeats under a new caption), ${distinct} distinct JPEGs, mean ${kb.toFixed(0)} KiB`,
  );
  console.log(
    `machine: ${os.cpus().length} x ${cpuModel}, Node ${process.version}, load ${os.loadavg()[0]!.toFixed(1)}`,
  );
  console.log('\n| run | pairs | scorer pairs | hits | duplicate_image | CPU s | pairs per CPU-second | wall s |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of runs) {
    const perCpu = r.pairs / (r.cpuMs / 1000);
    console.log(
      `| ${r.variant} | ${r.pairs} | ${r.scorerPairs} | ${r.hits} | ${r.duplicates} | ${(r.cpuMs / 1000).toFixed(1)} | ` +
        `${perCpu.toFixed(1)} | ${(r.wallMs / 1000).toFixed(1)} |`,
    );
  }
  if (runs.length === 0) return microReport(micro); // --rounds 0: the microbench alone
  const byVariant = (v: string) => runs.filter((r) => r.variant === v);
  const rate = (v: string) => median(byVariant(v).map((r) => r.pairs / (r.cpuMs / 1000)));
  const off = byVariant('off')[0]!;
  const fresh = byVariant('fresh')[0]!;
  console.log(
    `\nscorer calls saved by a fresh cache: ${off.scorerPairs - fresh.scorerPairs} of ${off.scorerPairs} ` +
      `(${(((off.scorerPairs - fresh.scorerPairs) / off.scorerPairs) * 100).toFixed(1)}%); pairs per CPU-second ` +
      `(median): off ${rate('off').toFixed(1)}, fresh ${rate('fresh').toFixed(1)} ` +
      `(${(rate('fresh') / rate('off')).toFixed(2)}x), warm ${rate('warm').toFixed(1)} (${(rate('warm') / rate('off')).toFixed(2)}x)`,
  );
  const dedupe = byVariant('dedupe')[0]!;
  console.log(
    `with --dedupe-images exact on a fresh cache: ${off.scorerPairs - dedupe.scorerPairs} scorer calls saved ` +
      `(${(((off.scorerPairs - dedupe.scorerPairs) / off.scorerPairs) * 100).toFixed(1)}%), ${dedupe.duplicates} ` +
      `duplicate_image rejects, ${dedupe.accepted} accepted (off: ${off.accepted}); pairs per CPU-second ` +
      `${rate('dedupe').toFixed(1)} (${(rate('dedupe') / rate('off')).toFixed(2)}x)`,
  );
  const d = disk[0]!;
  console.log(
    `store after the fresh run: ${d.entries} entries, data.mdb ${(d.bytes / 1024).toFixed(0)} KiB ` +
      `(${(d.blocks / 1024).toFixed(0)} KiB allocated): ${(d.blocks / d.entries).toFixed(0)} bytes on disk per entry`,
  );
  microReport(micro);
}

function microReport(micro: Micro): void {
  console.log('\n| microbench (5 interleaved rounds, median) | CPU ms per pair | wall ms per pair |');
  console.log('|---|---:|---:|');
  for (const [name, s] of Object.entries(micro)) {
    console.log(`| ${name} | ${median(s.cpuMs).toFixed(4)} | ${median(s.wallMs).toFixed(4)} |`);
  }
  const missCost = median(micro[MISS]!.cpuMs);
  for (const name of Object.keys(micro).filter((n) => n.startsWith('intake'))) {
    const intake = median(micro[name]!.cpuMs);
    console.log(`cache cost (key + lookup + write) / ${name}: ${((missCost / intake) * 100).toFixed(2)}%`);
  }
}

if (args.child) {
  await childRun();
} else {
  await main();
}
