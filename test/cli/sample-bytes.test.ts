/**
 * WebDataset input bounded by bytes, through the real `mlm-filter filter` (issue 21): sparse shards of a few KiB on
 * disk whose members claim 60 MiB each (each under the 64 MiB member limit). One sample of 25 such members, and 60
 * one-member samples, used to be read whole (1.67 GB for one reject; 3 GB and an OOM kill). Now only the members a
 * pair is made of are read, a sample over its byte limit is skipped unread, and record bytes in flight are bounded:
 * the run ends with its rejects and the process's peak RSS (VmHWM, written by the process itself at exit) stays low.
 * Reading sparse members costs the kernel's zero-fill, not disk: the files are a few KiB.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { readRun } from '../helpers/cli-output.ts';
import { runCliToEnd, tinyFilterArgs } from '../helpers/live-cli.ts';
import { writeSparseTar, type SparseMember } from '../sources/ustar.ts';

const RUN_LIMIT_MS = 180_000;
const MIB = 1024 * 1024;
/** The member size of the report: under the 64 MiB member limit, so only the byte limits stop it. */
const BIG = 60 * MIB;
/**
 * Peak RSS allowed, MiB. The tiny model's run with nothing big in it peaks near 300 MiB here; before the byte
 * limits these shards took 1.4 to over 3 GB. The bound leaves room for the 256 MiB of sample bytes in flight.
 */
const PEAK_LIMIT_MIB = 700;

/** Runs the CLI with a preload that writes the process's VmHWM (peak RSS) to a file when it exits. */
async function filter(input: string, out: string, dir: string) {
  const preload = join(dir, 'hwm.cjs');
  const hwmFile = join(dir, 'hwm.txt');
  writeFileSync(
    preload,
    `process.on('exit', () => { const m = /VmHWM:\\s+(\\d+) kB/.exec(require('fs').readFileSync('/proc/self/status', 'utf8')); ` +
      `require('fs').writeFileSync(${JSON.stringify(hwmFile)}, m ? m[1] : ''); });\n`,
  );
  const env = { ...process.env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${preload}` };
  const r = await runCliToEnd(tinyFilterArgs(input, out), RUN_LIMIT_MS, env);
  const kb = existsSync(hwmFile) ? Number(readFileSync(hwmFile, 'utf8')) : NaN;
  return { ...r, peakMiB: Math.round(kb / 1024) };
}

const caption = (key: string): SparseMember => ({ name: `${key}.txt`, data: Buffer.from(`a blue square ${key}`) });
const holes = (key: string, n: number, size: number): SparseMember[] =>
  Array.from({ length: n }, () => ({ name: `${key}.jpg`, size }));

function assertRan(r: Awaited<ReturnType<typeof filter>>, t: { diagnostic(m: string): void }) {
  assert.equal(r.signal, null, `the run did not end within ${RUN_LIMIT_MS} ms:\n${r.err.slice(-2000)}`);
  assert.equal(r.code, 0, r.err.slice(-2000));
  t.diagnostic(`peak RSS ${r.peakMiB} MiB`);
  assert.ok(r.peakMiB > 0 && r.peakMiB < PEAK_LIMIT_MIB, `peak RSS ${r.peakMiB} MiB, over ${PEAK_LIMIT_MIB}`);
}

test('a sample of 25 members of 60 MiB is one sample_too_large reject; unused members are never read', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-sample-bytes-'));
  const jpeg = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#1478c8' } })
    .jpeg()
    .toBuffer();
  // Extensions a pair is made of and others, 60 MiB each, all holes.
  const exts = ['jpg', 'png', 'txt', 'json', 'webp', 'npy', 'cls', 'gif', 'tiff', 'avif'];
  const big = Array.from({ length: 25 }, (_, i) => ({ name: `big.${exts[i % exts.length]}`, size: BIG }));
  // A good sample carrying 20 members of 60 MiB it has no use for (depth maps, features...): read without them.
  const extra = ['npy', 'depth.png', 'mp4', 'seg.jpg'].flatMap((e) =>
    Array.from({ length: 5 }, () => ({ name: `extra.${e}`, size: BIG })),
  );
  writeSparseTar(join(dir, 'in.tar'), [
    ...big,
    { name: 'extra.jpg', data: jpeg },
    ...extra,
    caption('extra'),
    { name: 'ok.jpg', data: jpeg },
    caption('ok'),
  ]);
  const out = join(dir, 'out');
  const r = await filter(join(dir, 'in.tar'), out, dir);
  assertRan(r, t);
  const run = readRun(out);
  assert.deepEqual(run.curated.map((c) => c.id).sort(), ['extra', 'ok']);
  assert.equal(run.rejects.length, 1);
  const reason = run.rejects[0]!.reasons[0]!;
  assert.equal(reason.code, 'invalid_record');
  assert.equal(reason.detail?.kind, 'sample_too_large');
  assert.equal(reason.detail?.member, 'big.jpg');
  assert.equal(reason.detail?.size, BIG);
  assert.equal(reason.detail?.limit, 32 * MIB);
  assert.equal((run.rejects[0]!.source as { key?: string }).key, 'big');
});

/** 60 samples of one image member each, every image claiming `size` bytes over a hole: the run, checked to end. */
async function sixtyImagesOf(size: number, t: { diagnostic(m: string): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-sample-bytes-'));
  const keys = Array.from({ length: 60 }, (_, i) => `k${String(i).padStart(2, '0')}`);
  writeSparseTar(
    join(dir, 'in.tar'),
    keys.flatMap((k) => [...holes(k, 1, size), caption(k)]),
  );
  const out = join(dir, 'out');
  assertRan(await filter(join(dir, 'in.tar'), out, dir), t);
  const run = readRun(out);
  assert.equal(run.curated.length, 0);
  assert.equal(run.summary.records, 60);
  return run;
}

test('60 samples of one 60 MiB image each: 60 sample_too_large rejects, none read', async (t) => {
  const run = await sixtyImagesOf(BIG, t);
  assert.deepEqual(new Set(run.rejects.map((e) => e.reasons[0]?.detail?.kind)), new Set(['sample_too_large']));
});

test('60 samples of one 24 MiB image each: every image read, bytes in flight bounded, 60 rejects', async (t) => {
  // 1.4 GiB of images in one batch's worth of samples: without the byte bound they were all held at once.
  const run = await sixtyImagesOf(24 * MIB, t);
  // Within the reading limits, each image reaches the intake, which refuses inline images over 16 MiB.
  for (const e of run.rejects) assert.equal(e.reasons[0]?.code, 'fetch_failed', JSON.stringify(e.reasons[0]));
});
