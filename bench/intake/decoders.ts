/**
 * Decode floor of the intake bench's JPEGs: CPU time per image of sharp's decode alone, decode + the resizes the
 * intake does, and (when tools/export/.venv exists) Pillow's libjpeg-turbo decode of the same files, full size and
 * with its DCT-domain `draft` downscale. One process, pinned to one CPU, one libuv thread, sharp concurrency 1.
 *
 *   taskset -c 0 env UV_THREADPOOL_SIZE=1 node --import tsx bench/intake/decoders.ts
 *
 * It answers "how far is the intake from the fastest decoder this machine has?", not the pairs/s question
 * (bench/intake/run.ts does that).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { loadJpegNative, nativeParams } from '../../lib/intake/jpeg-native.ts';
import { benchImages } from './images.ts';

const ROUNDS = 5;
const images = await benchImages(64);
sharp.cache(false);
sharp.concurrency(1);

async function cpuMsPerImage(fn: (b: Buffer) => Promise<unknown>): Promise<number> {
  for (const im of images.slice(0, 8)) await fn(im.bytes);
  const t0 = process.cpuUsage();
  for (let r = 0; r < ROUNDS; r++) for (const im of images) await fn(im.bytes);
  const t = process.cpuUsage(t0);
  return (t.user + t.system) / 1000 / (ROUNDS * images.length);
}

const rows: [string, number][] = [
  ['sharp: header only (metadata)', await cpuMsPerImage((b) => sharp(b).metadata())],
  ['sharp: full decode to raw RGB', await cpuMsPerImage((b) => sharp(b).raw().toBuffer())],
  [
    'sharp: decode + cubic to fit 384 (the intake resize)',
    await cpuMsPerImage((b) => sharp(b).resize(384, 384, { fit: 'inside', kernel: 'cubic' }).raw().toBuffer()),
  ],
  [
    'sharp: decode + nearest to fit 384',
    await cpuMsPerImage((b) => sharp(b).resize(384, 384, { fit: 'inside', kernel: 'nearest' }).raw().toBuffer()),
  ],
];

// The intake's native path: decode + Pillow-exact bicubic pad-to-square 384 + normalise into a float32 tensor.
const native = loadJpegNative().module;
if (native) {
  const spec = {
    size: 384,
    mean: [0.5, 0.5, 0.5] as [number, number, number],
    std: [0.5, 0.5, 0.5] as [number, number, number],
    rescale: 1 / 255,
    padToSquare: true,
    centerCrop: false,
    resample: 'bicubic' as const,
  };
  const out = new Float32Array(3 * 384 * 384);
  const affine = new Float32Array([2 / 255, 2 / 255, 2 / 255, -1, -1, -1]);
  for (const [label, minRatio] of [
    ['native: DCT-scaled decode + bicubic pad 384 + normalise (`--jpeg-fast-decode`)', 1],
    ['native: full decode + bicubic pad 384 + normalise (PIL-exact, the intake default)', 0],
  ] as const) {
    const params = nativeParams(spec, affine, minRatio);
    rows.push([label, await cpuMsPerImage((b) => native.prepare(b, out, params))]);
  }
}

const python = new URL('../../tools/export/.venv/bin/python', import.meta.url).pathname;
if (existsSync(python)) {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-decoders-'));
  try {
    images.forEach((im, i) => writeFileSync(join(dir, `${i}.jpg`), im.bytes));
    const script = `
import glob, io, sys, time
from PIL import Image, features
files = [open(f, 'rb').read() for f in sorted(glob.glob(sys.argv[1] + '/*.jpg'))]
def run(draft):
    for b in files[:8]: Image.open(io.BytesIO(b)).convert('RGB')
    t = time.process_time()
    for _ in range(${ROUNDS}):
        for b in files:
            im = Image.open(io.BytesIO(b))
            if draft: im.draft('RGB', (384, 384))
            im.convert('RGB').load()
    return (time.process_time() - t) * 1000 / (${ROUNDS} * len(files))
import PIL
print(f"{run(False)} {run(True)} {PIL.__version__} {features.check_feature('libjpeg_turbo')}")
`;
    const [full, draft, version, turbo] = execFileSync(python, ['-c', script, dir], { encoding: 'utf8' })
      .trim()
      .split(' ');
    const lib = `Pillow ${version}${turbo === 'True' ? ', libjpeg-turbo' : ''}`;
    rows.push([`${lib}: full decode to RGB`, Number(full)]);
    rows.push([`${lib}: decode with draft('RGB', (384, 384)) (DCT downscale)`, Number(draft)]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const meanMp = images.reduce((a, im) => a + im.width * im.height, 0) / images.length / 1e6;
process.stdout.write(`64 bench JPEGs, mean ${meanMp.toFixed(2)} MP; CPU ms per image (one core):\n\n`);
process.stdout.write('| decoder / work | CPU ms per image | images per CPU-second |\n|---|---:|---:|\n');
for (const [label, ms] of rows) process.stdout.write(`| ${label} | ${ms.toFixed(2)} | ${(1000 / ms).toFixed(0)} |\n`);
