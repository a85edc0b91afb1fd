/**
 * How far apart the perceptual hashes (lib/cache/image-digest.ts) of one image's copies are, against those of
 * different images: the measurement behind the image dedupe's default near distance (DEFAULT_NEAR_DISTANCE).
 *
 * No photo corpus ships with the project, so the images are generated with sharp, varied on purpose: gradients,
 * shapes, text, noise at several scales, and mixtures. Each is put through the real intake (a SigLIP-384
 * pad-to-square spec, the native JPEG path where built) as itself and as 11 copies: JPEG q50/q75/q95, resized 50%
 * and 200%, lossy WebP, cropped 2% and 5%, brightness -10%/+10%, a watermark-sized text. Prints the Hamming distance
 * histograms of same-image pairs and of different-image pairs, then for each D the false negatives (copies farther
 * than D) and false positives (different images within D).
 *
 *   node --import tsx bench/cache/phash-distance.ts   # BENCH_IMAGES=N (80), BENCH_SEED=S (7), BENCH_SPEC=siglip|clip
 */
import sharp from 'sharp';
import { Intake } from '../../lib/intake/index.ts';
import { hamming } from '../../lib/cache/near-index.ts';
import type { PreprocessSpec } from '../../lib/types.ts';
import { SIGLIP_PAD } from '../../test/intake/helpers.ts';

const SPECS: Record<string, PreprocessSpec> = {
  // SigLIP-384 with LLaVA's pad-to-square (the Qwen-layout models).
  siglip: SIGLIP_PAD,
  // CLIP-336 shortest-edge resize and centre crop.
  clip: {
    size: 336,
    mean: [0.48145466, 0.4578275, 0.40821073],
    std: [0.26862954, 0.26130258, 0.27577711],
    rescale: 1 / 255,
    padToSquare: false,
    centerCrop: true,
    resample: 'bicubic',
  },
};
const SPEC = SPECS[process.env.BENCH_SPEC ?? 'siglip']!;
const COUNT = Number(process.env.BENCH_IMAGES ?? 80);
let seed = Number(process.env.BENCH_SEED ?? 7);
const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;
const colour = () => `rgb(${(rand() * 255) | 0},${(rand() * 255) | 0},${(rand() * 255) | 0})`;
const WORDS = ['harbour', 'sale 50%', 'The quick fox', 'mountain trail', 'RECIPE', 'invoice #4471', 'hello world'];

/** An SVG of a few layers drawn from the kinds above, `w` x `h`. */
function scene(w: number, h: number): string {
  const layers: string[] = [];
  const kind = Math.floor(rand() * 4);
  layers.push(
    `<defs><linearGradient id="g" x1="0" y1="0" x2="${rand().toFixed(2)}" y2="${rand().toFixed(2)}">` +
      `<stop offset="0" stop-color="${colour()}"/><stop offset="1" stop-color="${colour()}"/></linearGradient></defs>`,
    `<rect width="${w}" height="${h}" fill="url(#g)"/>`,
  );
  const shapes = kind === 0 ? 2 : 4 + Math.floor(rand() * 10);
  for (let i = 0; i < shapes; i++) {
    const x = rand() * w;
    const y = rand() * h;
    const s = (0.05 + rand() * 0.4) * Math.min(w, h);
    layers.push(
      rand() < 0.5
        ? `<circle cx="${x}" cy="${y}" r="${s / 2}" fill="${colour()}" opacity="${0.5 + rand() / 2}"/>`
        : `<rect x="${x}" y="${y}" width="${s}" height="${s * (0.3 + rand())}" fill="${colour()}" ` +
            `transform="rotate(${rand() * 90} ${x} ${y})"/>`,
    );
  }
  if (kind >= 2) {
    for (let i = 0; i < 1 + Math.floor(rand() * 3); i++) {
      const size = Math.round((0.06 + rand() * 0.12) * h);
      layers.push(
        `<text x="${rand() * w * 0.5}" y="${(0.2 + rand() * 0.7) * h}" font-family="sans-serif" ` +
          `font-size="${size}" fill="${colour()}">${pick(WORDS)}</text>`,
      );
    }
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}">${layers.join('')}</svg>`;
}

/** Noise at one scale: random pixels `w / cell` wide, blown up smoothly (cell 1: pixel noise). */
async function noise(w: number, h: number, cell: number): Promise<Buffer> {
  const sw = Math.max(1, Math.round(w / cell));
  const sh = Math.max(1, Math.round(h / cell));
  const px = Buffer.alloc(sw * sh * 3);
  for (let i = 0; i < px.length; i++) px[i] = (rand() * 256) | 0;
  return sharp(px, { raw: { width: sw, height: sh, channels: 3 } })
    .resize(w, h, { kernel: 'cubic' })
    .png()
    .toBuffer();
}

async function original(): Promise<Buffer> {
  const w = 320 + Math.floor(rand() * 700);
  const h = Math.round(w * (0.6 + rand() * 0.8));
  const base = sharp(Buffer.from(scene(w, h))).flatten();
  const r = rand();
  if (r < 0.25) return base.png().toBuffer();
  // A scene over or under noise of one scale: textures from grain (cell 1) to blotches (cell 64).
  const n = await noise(w, h, pick([1, 4, 16, 64]));
  const blend = r < 0.6 ? 'overlay' : 'soft-light';
  return base
    .composite([{ input: n, blend }])
    .png()
    .toBuffer();
}

type Copy = (img: Buffer, w: number, h: number) => Promise<Buffer>;
const COPIES: Record<string, Copy> = {
  'jpeg q50': (img) => sharp(img).jpeg({ quality: 50 }).toBuffer(),
  'jpeg q75': (img) => sharp(img).jpeg({ quality: 75 }).toBuffer(),
  'jpeg q95': (img) => sharp(img).jpeg({ quality: 95 }).toBuffer(),
  'resize 50%': (img, w) =>
    sharp(img)
      .resize(Math.round(w / 2))
      .png()
      .toBuffer(),
  'resize 200%': (img, w) =>
    sharp(img)
      .resize(w * 2)
      .jpeg({ quality: 90 })
      .toBuffer(),
  'webp q80': (img) => sharp(img).webp({ quality: 80 }).toBuffer(),
  'crop 2%': (img, w, h) => crop(img, w, h, 0.02),
  'crop 5%': (img, w, h) => crop(img, w, h, 0.05),
  'brightness -10%': (img) => sharp(img).modulate({ brightness: 0.9 }).png().toBuffer(),
  'brightness +10%': (img) => sharp(img).modulate({ brightness: 1.1 }).png().toBuffer(),
  watermark: (img, w, h) => watermark(img, w, h),
};

/** Cuts `f` of each side's length away, split between the two edges unevenly (as a re-framing does). */
function crop(img: Buffer, w: number, h: number, f: number): Promise<Buffer> {
  const dx = Math.round(w * f);
  const dy = Math.round(h * f);
  const left = Math.round(dx * 0.3);
  const top = Math.round(dy * 0.7);
  return sharp(img)
    .extract({ left, top, width: w - dx, height: h - dy })
    .png()
    .toBuffer();
}

/** A corner text about 1/4 of the width and 1/20 of the height, as sites stamp their name. */
function watermark(img: Buffer, w: number, h: number): Promise<Buffer> {
  const size = Math.max(10, Math.round(h / 20));
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><text x="${w * 0.7}" y="${h * 0.95}" ` +
    `font-family="sans-serif" font-size="${size}" fill="white" opacity="0.8">© example.com</text></svg>`;
  return sharp(img)
    .composite([{ input: Buffer.from(svg) }])
    .png()
    .toBuffer();
}

async function main(): Promise<void> {
  const intake = new Intake({ perceptualHash: true }, SPEC);
  const hashOf = async (bytes: Buffer) => {
    const p = await intake.prepare({ kind: 'bytes', data: bytes });
    intake.release(p);
    return p.phash!;
  };
  const originals: string[] = [];
  const same: { copy: string; d: number }[] = [];
  const copies: { of: number; hash: string }[] = [];
  for (let i = 0; i < COUNT; i++) {
    const img = await original();
    const { width, height } = await sharp(img).metadata();
    const h0 = await hashOf(img);
    originals.push(h0);
    for (const [name, make] of Object.entries(COPIES)) {
      const h = await hashOf(await make(img, width!, height!));
      same.push({ copy: name, d: hamming(h0, h) });
      copies.push({ of: i, hash: h });
    }
  }
  await intake.close();
  // Different images: every two originals, and every copy against every other original.
  const different: number[] = [];
  for (let i = 0; i < originals.length; i++) {
    for (let j = i + 1; j < originals.length; j++) different.push(hamming(originals[i]!, originals[j]!));
  }
  for (const c of copies) originals.forEach((o, j) => j !== c.of && different.push(hamming(o, c.hash)));
  report(same, different);
}

function report(same: { copy: string; d: number }[], different: number[]): void {
  const line = (label: string, ds: number[]) => {
    const s = [...ds].sort((a, b) => a - b);
    const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
    return `${label.padEnd(18)} n=${String(s.length).padStart(6)}  min ${q(0)}  p5 ${q(0.05)}  median ${q(0.5)}  p95 ${q(0.95)}  max ${s[s.length - 1]}`;
  };
  console.log(
    `images: ${COUNT} originals x ${Object.keys(COPIES).length} copies; spec ${process.env.BENCH_SPEC ?? 'siglip'}`,
  );
  console.log(
    line(
      'same image (all)',
      same.map((s) => s.d),
    ),
  );
  for (const name of Object.keys(COPIES)) {
    console.log(
      line(
        `  ${name}`,
        same.filter((s) => s.copy === name).map((s) => s.d),
      ),
    );
  }
  console.log(line('different images', different));
  console.log('\n D   false negatives (copies > D)   false positives (different <= D)');
  for (let D = 0; D <= 24; D++) {
    const fn = same.filter((s) => s.d > D).length / same.length;
    const fp = different.filter((d) => d <= D).length / different.length;
    console.log(
      `${String(D).padStart(2)}   ${(100 * fn).toFixed(2).padStart(6)} %                       ${(100 * fp).toFixed(3).padStart(7)} %`,
    );
  }
}

await main();
