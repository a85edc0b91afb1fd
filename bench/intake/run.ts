/**
 * Intake throughput: fetch over loopback HTTP + decode + preprocess to SigLIP's 384x384 pad-to-square input.
 *
 *   npm run bench:intake            (= node --import tsx bench/intake/run.ts)
 *   BENCH_PAIRS=2000 npm run bench:intake
 *   BENCH_NO_WRITE=1 ...            prints only, leaves BENCHMARKS.md alone
 *   BENCH_BASELINE=<git ref> ...    also runs the per-core pipeline row on that commit's lib/intake, interleaved
 *                                   with the current code (A-B-A-B), and prints the ratio
 *
 * The image server and each measurement run in their own processes: the server must not share the measured event
 * loop, and UV_THREADPOOL_SIZE (sharp's worker threads) is fixed when a process starts. "Per core" pins the client to
 * one CPU with taskset (the server to another when there is one), with one libuv thread and sharp concurrency 1.
 */
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync, existsSync, mkdirSync, rmSync, copyFileSync } from 'node:fs';
import os from 'node:os';
import { createInterface } from 'node:readline';

const PAIRS = Number(process.env.BENCH_PAIRS ?? 1000);
const IMAGES = 64;
const cores = os.availableParallelism();
const hasTaskset = (() => {
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const tsx = ['--import', 'tsx'];

function pinned(cpu: number | undefined, args: string[]): [string, string[]] {
  return hasTaskset && cpu !== undefined
    ? ['taskset', ['-c', String(cpu), process.execPath, ...args]]
    : [process.execPath, args];
}

const [serverCmd, serverArgs] = pinned(cores > 1 ? cores - 1 : undefined, [
  ...tsx,
  'bench/intake/server.ts',
  String(IMAGES),
]);
const server = spawn(serverCmd, serverArgs, { stdio: ['ignore', 'pipe', 'inherit'] });
const [first] = (await once(createInterface({ input: server.stdout! }), 'line')) as [string];
const info = JSON.parse(first) as { port: number; meanBytes: number; meanPixels: number };

interface Run {
  readonly name: string;
  readonly cpu?: number;
  readonly threads: number;
  readonly sharpConcurrency: number;
  readonly inFlight: number;
  readonly source: 'url' | 'bytes' | 'decode' | 'fetch';
  /** Hand each tensor back with intake.release() once read, as the pipeline does after scoring. */
  readonly release?: boolean;
  /** Client script to run (a baseline copy for BENCH_BASELINE). */
  readonly client?: string;
  /** Extra environment for the client (BENCH_JPEG_DECODER, BENCH_JPEG_DCT_SCALING). */
  readonly env?: Record<string, string>;
}
const perCore = { cpu: 0, threads: 1, sharpConcurrency: 1 } as const;
const native: Run = {
  name: 'per core: fetch+decode+preprocess, tensors released (native, full decode: PIL-exact, the default)',
  ...perCore,
  inFlight: 8,
  source: 'url',
  release: true,
};
const sharpOnly: Run = {
  ...native,
  name: 'per core: fetch+decode+preprocess, released, sharp JPEG decoder',
  env: { BENCH_JPEG_DECODER: 'sharp' },
};
const fast: Run = {
  ...native,
  name: 'per core: fetch+decode+preprocess, released, native with DCT scaling (`--jpeg-fast-decode`)',
  env: { BENCH_JPEG_DCT_SCALING: '1' },
};
const runs: Run[] = [
  // A-B-C-A-B-C-A-B-C: the native JPEG path's full decode (default) and DCT-scaled decode (speed mode) against sharp
  // alone, so that load drift hits all three alike
  native,
  fast,
  sharpOnly,
  { ...native },
  { ...fast },
  { ...sharpOnly },
  { ...native },
  { ...fast },
  { ...sharpOnly },
  { name: 'per core: fetch+decode+preprocess, tensors not released', ...perCore, inFlight: 8, source: 'url' },
  { name: 'per core: decode+preprocess only, released', ...perCore, inFlight: 4, source: 'bytes', release: true },
  { name: 'per core: sharp JPEG decode only, no resize', ...perCore, inFlight: 4, source: 'decode' },
  { name: 'per core: guarded fetch only', ...perCore, inFlight: 8, source: 'fetch' },
  {
    name: `all ${cores} cores: fetch+decode+preprocess, released`,
    threads: cores,
    sharpConcurrency: 0,
    inFlight: 8 * cores,
    source: 'url',
    release: true,
  },
];

// BENCH_BASELINE: that commit's lib/intake + lib/types.ts under bench/.cache (git-ignored), driven by this client.
const baselineRef = process.env.BENCH_BASELINE;
if (baselineRef) {
  const dir = 'bench/.cache/intake-baseline';
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(`${dir}/bench/intake`, { recursive: true });
  const tar = execFileSync('git', ['archive', baselineRef, 'lib/intake', 'lib/types.ts']);
  execFileSync('tar', ['-x', '-C', dir], { input: tar });
  copyFileSync('bench/intake/client.ts', `${dir}/bench/intake/client.ts`);
  const base = runs.find((r) => r.name.endsWith('tensors not released'))!;
  const mine = runs[0]!;
  const label = `baseline ${baselineRef}`;
  const b = {
    ...base,
    name: `${label}: ${base.name.replace(', tensors not released', '')}`,
    client: `${dir}/bench/intake/client.ts`,
  };
  // A-B-A-B so that load drift on a shared machine hits both alike
  runs.splice(0, 0, b, { ...mine }, { ...b }, { ...mine });
}
const results: {
  run: Run;
  pairsPerS: number;
  cpuMsPerPair: number;
  pairsPerCpuS: number;
  gcMsPerPair: number;
  rejects: number;
}[] = [];
const load0 = os.loadavg()[0]!;
try {
  for (const run of runs) {
    const args = [
      ...tsx,
      run.client ?? 'bench/intake/client.ts',
      String(info.port),
      String(PAIRS),
      String(run.inFlight),
      String(run.sharpConcurrency),
      run.source,
      String(IMAGES),
      run.release ? '1' : '0',
    ];
    const [cmd, a] = pinned(run.cpu, args);
    const out = execFileSync(cmd, a, {
      env: { ...process.env, ...run.env, UV_THREADPOOL_SIZE: String(run.threads) },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const r = JSON.parse(out.trim().split('\n').at(-1)!) as {
      pairs: number;
      wallMs: number;
      cpuMs: number;
      gcMs: number;
      rejects: number;
    };
    results.push({
      run,
      pairsPerS: (r.pairs / r.wallMs) * 1000,
      cpuMsPerPair: r.cpuMs / r.pairs,
      pairsPerCpuS: (r.pairs / r.cpuMs) * 1000,
      gcMsPerPair: r.gcMs / r.pairs,
      rejects: r.rejects,
    });
  }
} finally {
  server.kill('SIGTERM');
}
const load1 = os.loadavg()[0]!;

const cpuModel = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
const header = '| run | pairs/s (wall) | client CPU ms/pair | pairs per CPU-second | GC pause ms/pair | rejects |';
const rows = results.map(
  (r) =>
    `| ${r.run.name} | ${r.pairsPerS.toFixed(0)} | ${r.cpuMsPerPair.toFixed(2)} | ${r.pairsPerCpuS.toFixed(0)} | ` +
    `${r.gcMsPerPair.toFixed(2)} | ${r.rejects} |`,
);
const table = [header, '|---|---:|---:|---:|---:|---:|', ...rows].join('\n');
const median = (xs: number[]): number => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[v.length >> 1]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};
const rowsOf = (pred: (r: Run) => boolean): number[] => results.filter((r) => pred(r.run)).map((r) => r.pairsPerCpuS);
const cpuS = (pred: (r: Run) => boolean): number => median(rowsOf(pred));
const isMain = (r: Run): boolean => r.client === undefined && r.source === 'url' && r.release === true && r.cpu === 0;
const isNative = (r: Run): boolean => isMain(r) && r.env === undefined;
const isSharp = (r: Run): boolean => isMain(r) && r.env?.BENCH_JPEG_DECODER === 'sharp';
const isFast = (r: Run): boolean => isMain(r) && r.env?.BENCH_JPEG_DCT_SCALING === '1';
const nativeCpuS = cpuS(isNative);
const fastCpuS = cpuS(isFast);
const sharpCpuS = cpuS(isSharp);
let comparison =
  `Same run, per core, fetch+decode+preprocess, tensors released: native JPEG path, full decode (PIL-exact, the ` +
  `default) ${nativeCpuS.toFixed(0)} pairs per CPU-second; with DCT scaling (\`--jpeg-fast-decode\`) ` +
  `${fastCpuS.toFixed(0)} (${(fastCpuS / nativeCpuS).toFixed(2)}x the default); sharp alone ${sharpCpuS.toFixed(0)} ` +
  `(the default is ${(nativeCpuS / sharpCpuS).toFixed(2)}x it); medians of ${rowsOf(isNative).length}, ` +
  `${rowsOf(isFast).length} and ${rowsOf(isSharp).length} interleaved rows.`;
if (baselineRef) {
  const base = cpuS((r) => r.client !== undefined);
  comparison +=
    ` Baseline ${baselineRef} (its own lib/intake): ${base.toFixed(0)} pairs per CPU-second; now ` +
    `${(nativeCpuS / base).toFixed(2)}x that.`;
}
console.log(comparison);
const context =
  `${PAIRS} pairs per run over ${IMAGES} distinct JPEGs (256-1024 px per side, quality 85, mean ` +
  `${(info.meanPixels / 1e6).toFixed(2)} MP, ${(info.meanBytes / 1024).toFixed(0)} KiB), SigLIP spec 384x384, ` +
  `mean/std 0.5, pad to square, bicubic; libvips cache off. Machine: ${cores} x ${cpuModel}, Node ${process.version}, ` +
  `load average ${load0.toFixed(1)} -> ${load1.toFixed(1)} during the run` +
  (hasTaskset ? '; per-core runs pinned with taskset.' : '; taskset unavailable, runs not pinned.');
console.log(table);
console.log(context);

if (!process.env.BENCH_NO_WRITE) {
  const path = 'BENCHMARKS.md';
  const [dcmd, dargs] = pinned(0, [...tsx, 'bench/intake/decoders.ts']);
  const decoders = execFileSync(dcmd, dargs, {
    env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
    encoding: 'utf8',
  })
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .join('\n');
  const section = [
    '## Intake',
    '',
    'Command: `BENCH_BASELINE=' + (baselineRef ?? '<commit>') + ' npm run bench:intake` (= `node --import tsx',
    'bench/intake/run.ts`; `BENCH_PAIRS=N` changes the run length; without BENCH_BASELINE the baseline rows are left out).',
    `Measured ${new Date().toISOString().slice(0, 10)}.`,
    '',
    table,
    '',
    context,
    '',
    comparison,
    '',
    '"Pairs per CPU-second" divides by the CPU time the client process used (main thread + libuv pool), so it is the',
    'per-core figure that survives a shared machine; "pairs/s (wall)" is what the pinned process achieved while other',
    'work competed for the same core. Anchor: img2dataset ~85 pairs/s/core (download + resize). Target >= 300.',
    '',
    'How: JPEGs (without EXIF rotation) go through the native path (lib/intake/native/jpeg_prepare.c, README "Image',
    'preprocessing"): by default libjpeg-turbo decodes at full size, the resize reproduces Pillow\'s bicubic arithmetic,',
    "and the normalised CHW tensor, equal to the reference PIL preprocessing's bit for bit, is written in the same",
    'libuv-pool call. What fidelity costs: with `--jpeg-fast-decode` libjpeg decodes at the smallest M/8 scale that still',
    "covers the 384 px footprint (the rows marked DCT scaling), with tensors within 0.3-0.9/255 (mean) of PIL's on these",
    'images. The JPEG header is read',
    'from the markers in JS (no libvips call). sharp/libvips keeps every other image and decides every reject.',
    '',
    'Decode floor of the same 64 images, CPU per image, one core (`taskset -c 0 env UV_THREADPOOL_SIZE=1 node',
    '--import tsx bench/intake/decoders.ts`, run by this bench):',
    '',
    decoders,
    '',
    "Where a pair's CPU goes now: the native call ~2.1-2.3 ms, the guarded loopback fetch with its share of the",
    'process ~0.8 ms, the rest ~0.1 ms. By instruction count (callgrind, 16 bench images, per image): libjpeg-turbo',
    "13.8M (mostly entropy decoding, which no DCT scale reduces; Pillow's own libjpeg-turbo decode of the same files",
    'is in the table), the horizontal pass 3.6M (vectorised across 8 output pixels; 6.8M one pixel at a time), the',
    'vertical pass and normalisation 2.6M. Not kept (no measurable change, each measured interleaved against the',
    'kept code): an even-tap kernel with the pad term precomputed per output; 14-bit weights through pmaddwd; two',
    "decoded rows per horizontal-pass call; a register-blocked AVX2 vertical pass (more instructions than the auto-vectorised one); restricting DCT scales to 1/2, 1/4 and 1/8 (SIMD IDCTs); libjpeg's",
    'fast integer IDCT or plain upsampling (also less exact).',
    '',
    'The "released" rows are what the pipeline gets: it calls `intake.release(image)` once the scorer\'s score() for',
    'that pair has resolved (the scorer copies tensors into its worker when it posts them). For scale: the scorer',
    'ceiling on an H200 is ~93 pairs/s (DESIGN.md), so one core of the default (PIL-exact) intake feeds about two GPUs',
    'and one core of the speed mode about three.',
    '',
  ].join('\n');
  let doc = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n';
  const start = doc.search(/^## Intake\s*$/m);
  if (start >= 0) {
    const rest = doc.slice(start + 1).search(/^## /m);
    const end = rest >= 0 ? start + 1 + rest : doc.length;
    doc = doc.slice(0, start) + section + (end < doc.length ? '\n' : '') + doc.slice(end);
  } else {
    doc = doc.replace(/\n*$/, '\n\n') + section;
  }
  writeFileSync(path, doc);
  console.log(`wrote the "## Intake" section of ${path}`);
}
