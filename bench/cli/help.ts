/**
 * CLI start-up benchmark: wall time of `mlm-filter --help`, a new Node process each time, for
 *   - before: the bin of BASELINE_REF (the last commit without the compiled build), which compiled the TypeScript
 *     through tsx at every start and loaded every command's modules, with tsx's compile cache warm and with it off
 *     (TSX_DISABLE_CACHE=1: the first start after an edit, or on a machine whose cache was cleared);
 *   - the current sources through tsx (what bin/mlm-filter.js falls back to in a checkout without a build);
 *   - after: bin/mlm-filter.js running the compiled dist/ (`npm run build`);
 *   - the floor: `node -e 0`, Node's own start.
 * Runs are interleaved (one of each per round) against load drift; each variant gets one discarded warm-up start.
 *
 * Usage: npm run build && node --import tsx bench/cli/help.ts [--runs 10] [--baseline REF|none] [--json out.json]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';

/** The last commit whose bin ran the sources through tsx with main.ts importing every command's modules at start. */
const BASELINE_REF = '9886b4c';
const ROOT = new URL('../../', import.meta.url).pathname;

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '10' },
    baseline: { type: 'string', default: BASELINE_REF },
    json: { type: 'string' },
  },
});
const RUNS = Number(args.runs);

interface Variant {
  readonly name: string;
  readonly argv: string[];
  readonly cwd: string;
  readonly env?: Record<string, string>;
}

/** That commit's bin, lib/ and functions/ under bench/.cache (git-ignored); node_modules resolve from the root. */
function baselineCheckout(ref: string): string {
  const dir = `${ROOT}bench/.cache/cli-baseline-${ref}`;
  if (!existsSync(`${dir}/bin/mlm-filter.js`)) {
    mkdirSync(dir, { recursive: true });
    const files = ['bin', 'lib', 'functions', 'package.json', 'tsconfig.json'];
    const tar = execFileSync('git', ['-C', ROOT, 'archive', ref, ...files], { maxBuffer: 1 << 28 });
    execFileSync('tar', ['-x', '-C', dir], { input: tar });
  }
  return dir;
}

/** The fallback of bin/mlm-filter.js, forced: tsx's loader, then the current lib/cli/main.ts. */
const sourcesBoot =
  "import { register } from 'tsx/esm/api'; register();" +
  `const { main } = await import(${JSON.stringify(`${ROOT}lib/cli/main.ts`)});` +
  'process.exitCode = await main(process.argv.slice(1));';

const AFTER = 'after: compiled dist/ (bin/mlm-filter.js)';

function variants(): Variant[] {
  const list: Variant[] = [];
  if (args.baseline !== 'none') {
    const dir = baselineCheckout(args.baseline);
    const bin = [`${dir}/bin/mlm-filter.js`, '--help'];
    list.push({ name: `before (${args.baseline}): tsx, compile cache warm`, argv: bin, cwd: dir });
    list.push({
      name: `before (${args.baseline}): tsx, TSX_DISABLE_CACHE=1`,
      argv: bin,
      cwd: dir,
      env: { TSX_DISABLE_CACHE: '1' },
    });
  }
  list.push({
    name: 'current sources through tsx, cache warm',
    argv: ['--input-type=module', '-e', sourcesBoot, '--', '--help'],
    cwd: ROOT,
  });
  list.push({ name: 'floor: node -e 0', argv: ['-e', 'console.log("Usage: mlm-filter")'], cwd: ROOT });
  list.push({ name: AFTER, argv: [`${ROOT}bin/mlm-filter.js`, '--help'], cwd: ROOT });
  return list;
}

/** One start: wall ms from spawn to exit. Fails the bench when the CLI fails or the compiled bin fell back to tsx. */
function start(v: Variant): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, v.argv, { cwd: v.cwd, env: { ...process.env, ...v.env }, encoding: 'utf8' });
  const ms = performance.now() - t0;
  if (r.status !== 0 || !r.stdout.includes('Usage: mlm-filter')) {
    throw new Error(`${v.name}: exit ${r.status}\n${r.stderr}`);
  }
  if (v.name === AFTER && r.stderr.includes('through tsx')) {
    throw new Error(`the bin ran the sources, not dist/ (${r.stderr.trim()}): run npm run build first`);
  }
  return ms;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const list = variants();
for (const v of list) start(v);
const times = list.map(() => [] as number[]);
for (let round = 0; round < RUNS; round++) list.forEach((v, i) => times[i]!.push(start(v)));

const rows = list.map((v, i) => ({
  name: v.name,
  medianMs: Math.round(median(times[i]!)),
  minMs: Math.round(Math.min(...times[i]!)),
  maxMs: Math.round(Math.max(...times[i]!)),
}));
const after = rows.find((r) => r.name === AFTER)!.medianMs;
console.log(`mlm-filter --help, ${RUNS} starts each, Node ${process.version}, ${os.availableParallelism()} cores`);
console.log(
  `load average ${os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}\n`,
);
console.log('| start | median s | min s | max s | vs compiled |');
console.log('|---|---:|---:|---:|---:|');
for (const r of rows) {
  const s = (ms: number) => (ms / 1000).toFixed(2);
  console.log(`| ${r.name} | ${s(r.medianMs)} | ${s(r.minMs)} | ${s(r.maxMs)} | ${(r.medianMs / after).toFixed(1)}x |`);
}
if (args.json) writeFileSync(args.json, JSON.stringify({ runs: RUNS, node: process.version, rows }, null, 2) + '\n');
