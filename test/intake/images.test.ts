/** Awkward but valid images decode and preprocess to the right shape, values and orientation. */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { Intake, normalise, padColour, sniffFormat } from '../../lib/intake/index.ts';
import { normalisePadded } from '../../lib/intake/preprocess.ts';
import { RejectError, type PreparedImage, type PreprocessSpec } from '../../lib/types.ts';
import { SIGLIP_PAD, SMALL_SQUASH, photoJpeg, pixel, solid } from './helpers.ts';

const CLIP: PreprocessSpec = {
  size: 336,
  mean: [0.48145466, 0.4578275, 0.40821073],
  std: [0.26862954, 0.26130258, 0.27577711],
  rescale: 1 / 255,
  padToSquare: true,
  centerCrop: false,
  resample: 'bicubic',
};

const open: Intake[] = [];
function intake(spec: PreprocessSpec): Intake {
  const i = new Intake({}, spec);
  open.push(i);
  return i;
}
after(() => Promise.all(open.map((i) => i.close())));

/** Normalised value of a 0..255 channel value under spec channel c. */
const norm = (spec: PreprocessSpec, c: number, v: number): number => (v * spec.rescale - spec.mean[c]!) / spec.std[c]!;

function checkTensor(p: PreparedImage, size: number): void {
  assert.deepEqual(p.shape, [3, size, size]);
  assert.equal(p.pixelValues.length, 3 * size * size);
  for (const v of p.pixelValues) assert.ok(Number.isFinite(v) && v >= -3 && v <= 3, `value ${v}`);
}

function near(actual: readonly number[], expected: readonly number[], tol: number, what: string): void {
  actual.forEach((a, i) => assert.ok(Math.abs(a - expected[i]!) <= tol, `${what}: ${actual} vs ${expected}`));
}

const RED = [255, 0, 0];
const BLUE = [0, 0, 255];
const expectRgb = (spec: PreprocessSpec, rgb: number[]): number[] => rgb.map((v, c) => norm(spec, c, v));

describe('awkward valid images', () => {
  it('CMYK JPEG converts to sRGB', async () => {
    const bytes = await solid(64, 64, { r: 200, g: 30, b: 30 }).toColourspace('cmyk').jpeg().toBuffer();
    assert.equal((await sharp(bytes).metadata()).space, 'cmyk');
    const p = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 32);
    const [r, g, b] = pixel(p.pixelValues, 32, 16, 16);
    assert.ok(r > 0.3 && g < -0.5 && b < -0.5, `reddish after CMYK->sRGB: ${[r, g, b]}`);
    assert.equal(p.ext, 'jpg');
    assert.equal(p.encoded, bytes, 'original JPEG bytes are kept');
  });

  it('16-bit PNG', async () => {
    const bytes = await solid(40, 40, { r: 10, g: 128, b: 250 }).toColourspace('rgb16').png().toBuffer();
    assert.equal((await sharp(bytes).metadata()).depth, 'ushort');
    const p = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 32);
    near(pixel(p.pixelValues, 32, 5, 5), expectRgb(SMALL_SQUASH, [10, 128, 250]), 0.02, '16-bit colour');
    assert.equal(p.ext, 'png');
  });

  it('greyscale PNG becomes 3 equal channels', async () => {
    const bytes = await solid(48, 48, { r: 90, g: 90, b: 90 }).toColourspace('b-w').png().toBuffer();
    assert.equal((await sharp(bytes).metadata()).channels, 1);
    const p = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 32);
    near(pixel(p.pixelValues, 32, 3, 30), expectRgb(SMALL_SQUASH, [90, 90, 90]), 0.01, 'grey');
  });

  it('alpha PNG is flattened onto the pad colour', async () => {
    // left half opaque red, right half fully transparent (with green hidden under it)
    const w = 64;
    const raw = Buffer.alloc(w * w * 4);
    for (let y = 0; y < w; y++)
      for (let x = 0; x < w; x++) raw.set(x < w / 2 ? [255, 0, 0, 255] : [0, 255, 0, 0], (y * w + x) * 4);
    const bytes = await sharp(raw, { raw: { width: w, height: w, channels: 4 } })
      .png()
      .toBuffer();
    const p = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 32);
    near(pixel(p.pixelValues, 32, 4, 16), expectRgb(SMALL_SQUASH, RED), 0.02, 'opaque part');
    near(pixel(p.pixelValues, 32, 28, 16), [0, 0, 0], 0.01, 'transparent part is the neutral pad colour');
    assert.equal(p.ext, 'png');
  });

  it('animated GIF uses its first frame and is stored as PNG', async () => {
    const f1 = await solid(40, 40, { r: 255, g: 0, b: 0 }).png().toBuffer();
    const f2 = await solid(40, 40, { r: 0, g: 0, b: 255 }).png().toBuffer();
    const bytes = await sharp([f1, f2], { join: { animated: true } })
      .gif()
      .toBuffer();
    assert.equal((await sharp(bytes).metadata()).pages, 2);
    const p = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 32);
    assert.equal(p.height, 40);
    near(pixel(p.pixelValues, 32, 16, 16), expectRgb(SMALL_SQUASH, RED), 0.05, 'first frame');
    assert.equal(p.ext, 'png');
    assert.equal(sniffFormat(p.encoded), 'png');
  });

  it('EXIF-rotated JPEG is shown upright', async () => {
    // Stored 60x40: left half red, right half blue. Orientation 6 = display rotated 90 degrees clockwise,
    // so upright it is 40x60 with red on top and blue at the bottom.
    const raw = Buffer.alloc(60 * 40 * 3);
    for (let y = 0; y < 40; y++) for (let x = 0; x < 60; x++) raw.set(x < 30 ? RED : BLUE, (y * 60 + x) * 3);
    const bytes = await sharp(raw, { raw: { width: 60, height: 40, channels: 3 } })
      .jpeg({ quality: 95 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    assert.equal((await sharp(bytes).metadata()).orientation, 6);
    const p = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 32);
    assert.deepEqual([p.width, p.height], [40, 60]);
    near(pixel(p.pixelValues, 32, 16, 3), expectRgb(SMALL_SQUASH, RED), 0.1, 'top is red');
    near(pixel(p.pixelValues, 32, 16, 28), expectRgb(SMALL_SQUASH, BLUE), 0.1, 'bottom is blue');
  });

  it('WebP keeps its bytes; TIFF is re-encoded as JPEG', async () => {
    const webp = await solid(40, 40, { r: 1, g: 2, b: 3 }).webp().toBuffer();
    const pw = await intake(SMALL_SQUASH).prepare({ kind: 'base64', data: webp });
    assert.equal(pw.ext, 'webp');
    assert.equal(pw.encoded, webp);
    const tiff = await solid(40, 40, { r: 1, g: 2, b: 3 }).tiff().toBuffer();
    const pt = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: tiff });
    assert.equal(pt.ext, 'jpg');
    assert.equal(sniffFormat(pt.encoded), 'jpeg');
  });
  it('AVIF decodes and is re-encoded as JPEG; BMP (no decoder in sharp) is a clean reject', async () => {
    const avif = await solid(40, 40, { r: 200, g: 10, b: 10 }).avif().toBuffer();
    assert.equal(sniffFormat(avif), 'heif');
    const p = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: avif });
    checkTensor(p, 32);
    assert.equal(p.ext, 'jpg');
    // 2x2 24-bit BMP, BITMAPINFOHEADER
    const bmp = Buffer.alloc(54 + 16);
    bmp.write('BM', 0, 'latin1');
    bmp.writeUInt32LE(bmp.length, 2);
    bmp.writeUInt32LE(54, 10);
    bmp.writeUInt32LE(40, 14);
    bmp.writeInt32LE(2, 18);
    bmp.writeInt32LE(2, 22);
    bmp.writeUInt16LE(1, 26);
    bmp.writeUInt16LE(24, 28);
    assert.equal(sniffFormat(bmp), 'bmp');
    const e = await intake(SMALL_SQUASH)
      .prepare({ kind: 'bytes', data: bmp })
      .catch((err: unknown) => err);
    assert.ok(e instanceof RejectError && e.reason.code === 'undecodable_image', String(e));
    assert.equal(e.reason.detail?.format, 'bmp');
  });
});

describe('preprocessing geometry', () => {
  it('pad-to-square fills with the mean colour (SigLIP, 384): padded pixels normalise to ~0', async () => {
    const bytes = await photoJpeg(640, 320);
    const p = await intake(SIGLIP_PAD).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 384);
    assert.deepEqual([p.width, p.height], [640, 320]);
    // 640x320 -> 384x192 content centred: rows 0..95 and 288..383 are padding
    for (const [x, y] of [
      [0, 0],
      [200, 40],
      [383, 383],
      [100, 300],
    ] as const) {
      near(pixel(p.pixelValues, 384, x, y), [0, 0, 0], 0.005, `pad pixel (${x},${y})`);
    }
    // content occupies rows 96..287; PIL's bicubic (support 3.3 source px here) blends the pad into the two rows
    // next to each edge, so rows 93 and 290 are the last pure pad ones
    const rowDiff = (y: number): number => {
      let d = 0;
      for (let x = 0; x < 384; x++) d += Math.abs(pixel(p.pixelValues, 384, x, y)[0] - (127 / 255 - 0.5) / 0.5);
      return d / 384;
    };
    assert.ok(rowDiff(93) < 1e-6 && rowDiff(290) < 1e-6, 'rows 93 and 290 are padding');
    assert.ok(rowDiff(96) > 0.02 && rowDiff(287) > 0.02, 'rows 96 and 287 are content');
    const content = pixel(p.pixelValues, 384, 192, 192);
    assert.ok(
      content.some((v) => Math.abs(v) > 0.05),
      'content is not padding',
    );
  });

  it('CLIP mean pad colour is truncated like LLaVA (int(x*255))', async () => {
    assert.deepEqual(padColour(CLIP), { r: 122, g: 116, b: 104 });
    const bytes = await solid(100, 50, { r: 255, g: 255, b: 255 }).png().toBuffer();
    const p = await intake(CLIP).prepare({ kind: 'bytes', data: bytes });
    checkTensor(p, 336);
    near(pixel(p.pixelValues, 336, 10, 5), [0, 0, 0], 0.02, 'padding');
    near(pixel(p.pixelValues, 336, 168, 168), expectRgb(CLIP, [255, 255, 255]), 0.02, 'white content');
  });

  it('centre crop keeps the middle; squash keeps everything', async () => {
    // 180x60: red | blue | red thirds
    const raw = Buffer.alloc(180 * 60 * 3);
    for (let y = 0; y < 60; y++)
      for (let x = 0; x < 180; x++) raw.set(x >= 60 && x < 120 ? BLUE : RED, (y * 180 + x) * 3);
    const bytes = await sharp(raw, { raw: { width: 180, height: 60, channels: 3 } })
      .png()
      .toBuffer();
    const crop = await intake({ ...SMALL_SQUASH, centerCrop: true }).prepare({ kind: 'bytes', data: bytes });
    near(pixel(crop.pixelValues, 32, 1, 16), expectRgb(SMALL_SQUASH, BLUE), 0.05, 'crop edge is the blue middle');
    const squash = await intake(SMALL_SQUASH).prepare({ kind: 'bytes', data: bytes });
    near(pixel(squash.pixelValues, 32, 1, 16), expectRgb(SMALL_SQUASH, RED), 0.05, 'squash edge is red');
    near(pixel(squash.pixelValues, 32, 16, 16), expectRgb(SMALL_SQUASH, BLUE), 0.05, 'squash middle is blue');
  });

  it('normalise maps HWC uchar to CHW (px*rescale-mean)/std', () => {
    const raw = Uint8Array.from([0, 128, 255, 255, 0, 10]);
    const t = normalise(raw, 3, SMALL_SQUASH);
    assert.deepEqual(
      Array.from(t, (v) => Math.round(v * 1e4) / 1e4),
      [-1, 1, 0.0039, -1, 1, -0.9216].map((v) => Math.round(v * 1e4) / 1e4),
    );
  });
});

describe('tensor recycling (Intake.release)', () => {
  it('a released tensor is reused and fully rewritten: no value of the previous image survives', async () => {
    const i = intake(SIGLIP_PAD);
    // Portrait then landscape: the second image's padding lies where the first one had content, and vice versa.
    const tall = await photoJpeg(300, 600, 90, 7);
    const wide = await photoJpeg(600, 300, 90, 8);
    const fresh = await intake(SIGLIP_PAD).prepare({ kind: 'bytes', data: wide });
    const first = await i.prepare({ kind: 'bytes', data: tall });
    const firstArray = first.pixelValues;
    i.release(first);
    const second = await i.prepare({ kind: 'bytes', data: wide });
    assert.equal(second.pixelValues, firstArray, 'the released array is handed out again');
    assert.deepEqual(second.pixelValues, fresh.pixelValues, 'same values as on a new array');
  });

  it('second releases and foreign images are ignored, so two live images never share a tensor', async () => {
    const i = intake(SMALL_SQUASH);
    const bytes = await photoJpeg(64, 48, 90, 3);
    const a = await i.prepare({ kind: 'bytes', data: bytes });
    i.release(a);
    i.release(a);
    i.release({ ...a }); // a copy is not the image the intake made
    i.release({ ...a, pixelValues: new Float32Array(a.pixelValues.length) });
    const b = await i.prepare({ kind: 'bytes', data: bytes });
    const c = await i.prepare({ kind: 'bytes', data: bytes });
    assert.notEqual(b.pixelValues, c.pixelValues);
    assert.equal(b.pixelValues, a.pixelValues);
    // b is live: releasing the stale a again must not put b's tensor back in the pool
    i.release(a);
    const d = await i.prepare({ kind: 'bytes', data: bytes });
    assert.notEqual(d.pixelValues, b.pixelValues);
  });

  it('maxIdleTensors 0 never reuses', async () => {
    const i = new Intake({ maxIdleTensors: 0 }, SMALL_SQUASH);
    open.push(i);
    const bytes = await photoJpeg(64, 48, 90, 3);
    const a = await i.prepare({ kind: 'bytes', data: bytes });
    i.release(a);
    const b = await i.prepare({ kind: 'bytes', data: bytes });
    assert.notEqual(b.pixelValues, a.pixelValues);
  });
});

describe('normalisation fast path', () => {
  // The word-at-a-time path only applies to 3-channel, 4-byte-aligned input; every width, alignment and channel
  // count must give exactly the per-pixel formula.
  it('normalisePadded equals the per-pixel formula for any width, offset and channel count', () => {
    const S = 13;
    const spec: PreprocessSpec = { ...CLIP, size: S };
    const pad = padColour(spec);
    let seed = 7;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 255;
    for (const channels of [3, 4])
      for (let w = 1; w <= S; w++)
        for (const h of [1, 6, S])
          for (const offset of [0, 1, 4]) {
            const buf = new Uint8Array(w * h * channels + offset).map(rnd);
            const raw = buf.subarray(offset);
            const left = (S - w) >> 1;
            const top = (S - h) >> 1;
            const out = normalisePadded(raw, channels, w, h, left, top, spec, new Float32Array(3 * S * S).fill(NaN));
            for (let c = 0; c < 3; c++)
              for (let y = 0; y < S; y++)
                for (let x = 0; x < S; x++) {
                  const inside = x >= left && x < left + w && y >= top && y < top + h;
                  const v = inside ? raw[((y - top) * w + (x - left)) * channels + c]! : [pad.r, pad.g, pad.b][c]!;
                  const expected = Math.fround(
                    v * Math.fround(spec.rescale / spec.std[c]!) + Math.fround(-spec.mean[c]! / spec.std[c]!),
                  );
                  assert.equal(
                    out[c * S * S + y * S + x],
                    expected,
                    `w${w} h${h} ch${channels} +${offset} (${c},${x},${y})`,
                  );
                }
          }
  });
});

describe('libvips operation cache', () => {
  it('is off after an Intake is made, unless keepSharpCache', () => {
    sharp.cache({ items: 100 });
    open.push(new Intake({ keepSharpCache: true }, SMALL_SQUASH));
    assert.equal(sharp.cache().items.max, 100);
    open.push(new Intake({}, SMALL_SQUASH));
    assert.equal(sharp.cache().items.max, 0);
  });
});
