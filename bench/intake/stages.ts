/**
 * Where the decode side of a pair's CPU goes: each variant runs over the bench's JPEGs in this one process and
 * reports client CPU ms per image, so stages can be compared against each other under the same machine load.
 *
 *   UV_THREADPOOL_SIZE=1 taskset -c 0 node --import tsx bench/intake/stages.ts [pairs] [variants,comma,separated]
 */
import sharp from 'sharp';
import { Intake } from '../../lib/intake/index.ts';
import { normalisePadded } from '../../lib/intake/preprocess.ts';
import type { PreprocessSpec } from '../../lib/types.ts';
import { photoJpeg } from '../../test/intake/helpers.ts';

const N = Number(process.argv[2] ?? 400);
const only = process.argv[3]?.split(',');
sharp.concurrency(1);
if (process.env.SHARP_CACHE !== '1') sharp.cache(false); // what Intake does unless keepSharpCache

const SIGLIP: PreprocessSpec = {
  size: 384,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  rescale: 1 / 255,
  padToSquare: true,
  centerCrop: false,
  resample: 'bicubic',
};

// Same image set as bench/intake/server.ts.
let seed = 12345;
const rand = (): number => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed / 0x7fffffff;
};
const images: { bytes: Buffer; w: number; h: number }[] = [];
for (let i = 0; i < 64; i++) {
  const w = 256 + Math.floor(rand() * 769);
  const h = 256 + Math.floor(rand() * 769);
  images.push({ bytes: await photoJpeg(w, h, 85, i + 1), w, h });
}
const intake = new Intake({ keepSharpCache: true }, SIGLIP);

const variants: Record<string, (i: number) => Promise<unknown>> = {
  metadata: (i) => sharp(images[i]!.bytes).metadata(),
  'decode raw': (i) => sharp(images[i]!.bytes).raw().toBuffer(),
  'resize inside cubic': (i) =>
    sharp(images[i]!.bytes).resize(384, 384, { fit: 'inside', kernel: 'cubic' }).raw().toBuffer(),
  'resize inside linear': (i) =>
    sharp(images[i]!.bytes).resize(384, 384, { fit: 'inside', kernel: 'linear' }).raw().toBuffer(),
  'resize contain cubic': (i) =>
    sharp(images[i]!.bytes)
      .resize(384, 384, { fit: 'contain', kernel: 'cubic', background: { r: 127, g: 127, b: 127 } })
      .raw()
      .toBuffer(),
  'normalisePadded only': async (i) => {
    const { w, h } = images[i]!;
    const s = 384 / Math.max(w, h);
    const cw = Math.round(w * s),
      ch = Math.round(h * s);
    return normalisePadded(rawFor(cw, ch), 3, cw, ch, (384 - cw) >> 1, (384 - ch) >> 1, SIGLIP);
  },
  'normalisePadded, reused out': async (i) => {
    const { w, h } = images[i]!;
    const s = 384 / Math.max(w, h);
    const cw = Math.round(w * s),
      ch = Math.round(h * s);
    return normalisePadded(rawFor(cw, ch), 3, cw, ch, (384 - cw) >> 1, (384 - ch) >> 1, SIGLIP, reused);
  },
  'pipeline as openImage': (i) =>
    sharp(images[i]!.bytes, { failOn: 'truncated', limitInputPixels: 5e7, autoOrient: true, pages: 1 })
      .toColourspace('srgb')
      .resize(384, 384, { fit: 'inside', kernel: 'cubic', fastShrinkOnLoad: true })
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true }),
  'pipeline no srgb/orient': (i) =>
    sharp(images[i]!.bytes, { failOn: 'truncated', limitInputPixels: 5e7, pages: 1 })
      .resize(384, 384, { fit: 'inside', kernel: 'cubic', fastShrinkOnLoad: true })
      .raw()
      .toBuffer({ resolveWithObject: true }),
  'intake.prepare bytes': (i) => intake.prepare({ kind: 'bytes', data: images[i]!.bytes }),
  'intake.prepare bytes, released': async (i) =>
    intake.release(await intake.prepare({ kind: 'bytes', data: images[i]!.bytes })),
};
const reused = new Float32Array(3 * 384 * 384);
const raws = new Map<number, Uint8Array>();
function rawFor(w: number, h: number): Uint8Array {
  const k = w * 10000 + h;
  let r = raws.get(k);
  if (!r) raws.set(k, (r = new Uint8Array(w * h * 3).fill(100)));
  return r;
}

async function measure(fn: (i: number) => Promise<unknown>, n: number): Promise<number> {
  let next = 0;
  const c0 = process.cpuUsage();
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < n) await fn(next++ % images.length);
    }),
  );
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1000 / n;
}

// Interleaved rounds, median per variant: other load on a shared machine hits every variant alike.
const chosen = Object.entries(variants).filter(([name]) => !only || only.some((o) => name.includes(o)));
const samples = new Map<string, number[]>(chosen.map(([name]) => [name, []]));
for (const [, fn] of chosen) await measure(fn, 64);
for (let round = 0; round < 5; round++) {
  for (const [name, fn] of chosen) samples.get(name)!.push(await measure(fn, Math.ceil(N / 5)));
}
for (const [name, ms] of samples) {
  const m = ms.sort((a, b) => a - b)[ms.length >> 1]!;
  console.log(
    `${name.padEnd(32)} ${m.toFixed(2)} ms CPU/image  (${(1000 / m).toFixed(0)}/CPU-s)  [${ms.map((x) => x.toFixed(2)).join(' ')}]`,
  );
}
await intake.close();
