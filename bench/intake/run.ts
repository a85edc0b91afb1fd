/**
 * Intake throughput: fetch over loopback HTTP + decode + preprocess to SigLIP's 384x384 pad-to-square input.
 *
 *   npm run bench:intake            (= node --import tsx bench/intake/run.ts)
 *   BENCH_PAIRS=2000 npm run bench:intake
 *   BENCH_NO_WRITE=1 ...            prints only, leaves BENCHMARKS.md alone
 *
 * The image server and each measurement run in their own processes: the server must not share the measured event
 * loop, and UV_THREADPOOL_SIZE (sharp's worker threads) is fixed when a process starts. "Per core" pins the client to
 * one CPU with taskset (the server to another when there is one), with one libuv thread and sharp concurrency 1.
 */
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
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
  readonly source: 'url' | 'bytes' | 'decode';
}
const runs: Run[] = [
  { name: 'per core: fetch+decode+preprocess', cpu: 0, threads: 1, sharpConcurrency: 1, inFlight: 8, source: 'url' },
  { name: 'per core: decode+preprocess only', cpu: 0, threads: 1, sharpConcurrency: 1, inFlight: 4, source: 'bytes' },
  {
    name: 'per core: JPEG decode only (ceiling)',
    cpu: 0,
    threads: 1,
    sharpConcurrency: 1,
    inFlight: 4,
    source: 'decode',
  },
  {
    name: `all ${cores} cores: fetch+decode+preprocess`,
    threads: cores,
    sharpConcurrency: 0,
    inFlight: 8 * cores,
    source: 'url',
  },
];

const results: { run: Run; pairsPerS: number; cpuMsPerPair: number; pairsPerCpuS: number; rejects: number }[] = [];
const load0 = os.loadavg()[0]!;
try {
  for (const run of runs) {
    const args = [
      ...tsx,
      'bench/intake/client.ts',
      String(info.port),
      String(PAIRS),
      String(run.inFlight),
      String(run.sharpConcurrency),
      run.source,
      String(IMAGES),
    ];
    const [cmd, a] = pinned(run.cpu, args);
    const out = execFileSync(cmd, a, {
      env: { ...process.env, UV_THREADPOOL_SIZE: String(run.threads) },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const r = JSON.parse(out.trim().split('\n').at(-1)!) as {
      pairs: number;
      wallMs: number;
      cpuMs: number;
      rejects: number;
    };
    results.push({
      run,
      pairsPerS: (r.pairs / r.wallMs) * 1000,
      cpuMsPerPair: r.cpuMs / r.pairs,
      pairsPerCpuS: (r.pairs / r.cpuMs) * 1000,
      rejects: r.rejects,
    });
  }
} finally {
  server.kill('SIGTERM');
}
const load1 = os.loadavg()[0]!;

const cpuModel = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
const header = '| run | pairs/s (wall) | client CPU ms/pair | pairs per CPU-second | rejects |';
const rows = results.map(
  (r) =>
    `| ${r.run.name} | ${r.pairsPerS.toFixed(0)} | ${r.cpuMsPerPair.toFixed(2)} | ${r.pairsPerCpuS.toFixed(0)} | ${r.rejects} |`,
);
const table = [header, '|---|---:|---:|---:|---:|', ...rows].join('\n');
const context =
  `${PAIRS} pairs per run over ${IMAGES} distinct JPEGs (256-1024 px per side, quality 85, mean ` +
  `${(info.meanPixels / 1e6).toFixed(2)} MP, ${(info.meanBytes / 1024).toFixed(0)} KiB), SigLIP spec 384x384, ` +
  `mean/std 0.5, pad to square, bicubic; sharp cache off. Machine: ${cores} x ${cpuModel}, Node ${process.version}, ` +
  `load average ${load0.toFixed(1)} -> ${load1.toFixed(1)} during the run` +
  (hasTaskset ? '; per-core runs pinned with taskset.' : '; taskset unavailable, runs not pinned.');
console.log(table);
console.log(context);

if (!process.env.BENCH_NO_WRITE) {
  const path = 'BENCHMARKS.md';
  const section = [
    '## Intake',
    '',
    'Command: `npm run bench:intake` (= `node --import tsx bench/intake/run.ts`; `BENCH_PAIRS=N` to change the run length).',
    `Measured ${new Date().toISOString().slice(0, 10)}.`,
    '',
    table,
    '',
    context,
    '',
    '"Pairs per CPU-second" divides by the CPU time the client process used (main thread + libuv pool), so it is the',
    'per-core figure that survives a shared machine; "pairs/s (wall)" is what the pinned process achieved while other',
    'work competed for the same core. Anchor: img2dataset ~85 pairs/s/core (download + resize). Target >= 300.',
    '',
    "Where a pair's CPU goes on this machine (cpu-prof + the rows above): JPEG decode ~3.4 ms (the ceiling row: decode",
    'alone does not reach 300/s here), bicubic reduce ~2 ms, HWC->CHW normalise ~1 ms, GC of the 1.77 MB float tensor',
    'made per pair ~1 ms, HTTP over loopback ~1.5 ms. Done: shrink-on-load, padding inside the normalise pass (no',
    'embed copy), no AbortSignal.timeout/any per fetch (they kept requests reachable and forced frequent',
    'mark-compacts). Not done: decoding at 1/2 DCT scale below 2x the target (changes the model input) and recycling',
    'tensors (needs a release hook in the pipeline contract). For scale: the scorer ceiling on an H200 is ~93 pairs/s',
    '(DESIGN.md), so about one core of intake feeds one GPU.',
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
