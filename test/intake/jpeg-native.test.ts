/**
 * The native JPEG path (lib/intake/native/jpeg_prepare.c): PIL's preprocessing to the bit with DCT scaling off
 * (fixtures from tools/export/pil_fixtures.py), close to it with DCT scaling on, and every JPEG it cannot take
 * (truncated, CMYK, EXIF-rotated) handed to sharp with the same outcome as before. scripts/test.sh builds the module
 * when it is missing, so these tests run in every suite.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import sharp from 'sharp';
import { readJpegHeader } from '../../lib/intake/decode.ts';
import { Intake } from '../../lib/intake/index.ts';
import { loadJpegNative, nativeParams, prepareJpeg, shortestEdgeSize } from '../../lib/intake/jpeg-native.ts';
import { FilterError, type PreprocessSpec } from '../../lib/types.ts';
import { SIGLIP_PAD, expectReject, photoJpeg, solid } from './helpers.ts';

const native = loadJpegNative();
const FIXTURES = new URL('../fixtures/intake/pil-reference/', import.meta.url);
const CLIP_MEAN: [number, number, number] = [0.48145466, 0.4578275, 0.40821073];

interface FixtureCase {
  jpeg: string;
  width: number;
  height: number;
  mode: 'pad' | 'crop' | 'squash';
  size: number;
  filter: 'bicubic' | 'bilinear';
  rgb: string;
}

/** A spec whose normalisation is the identity, so the tensor holds the 8-bit values PIL produced. */
function identitySpec(c: Pick<FixtureCase, 'mode' | 'size' | 'filter'>): PreprocessSpec {
  return {
    size: c.size,
    mean: CLIP_MEAN,
    std: [1, 1, 1],
    rescale: 1,
    padToSquare: c.mode === 'pad',
    centerCrop: c.mode === 'crop',
    resample: c.filter,
  };
}

async function nativeTensor(bytes: Buffer, w: number, h: number, spec: PreprocessSpec, minRatio: number) {
  const out = new Float32Array(3 * spec.size * spec.size);
  const params = nativeParams(spec, new Float32Array([1, 1, 1, 0, 0, 0]), minRatio);
  await prepareJpeg(native.module!, bytes, w, h, spec, params, out);
  return out;
}

function meanAbs(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!);
  return s / a.length;
}

describe('native JPEG path', () => {
  it('is built (scripts/build-native.sh)', () => {
    assert.ok(native.module, `native module: ${native.error}`);
    assert.match(native.module.libjpegTurboVersion, /^\d+\.\d+/);
  });

  const manifest = JSON.parse(readFileSync(new URL('manifest.json', FIXTURES), 'utf8')) as { cases: FixtureCase[] };
  for (const c of manifest.cases) {
    it(`equals PIL bit for bit without DCT scaling: ${c.rgb}`, async () => {
      const bytes = readFileSync(new URL(c.jpeg, FIXTURES));
      const ref = readFileSync(new URL(c.rgb, FIXTURES)); // HWC uint8
      const S = c.size;
      const ours = await nativeTensor(bytes, c.width, c.height, identitySpec(c), 0);
      let differing = 0;
      for (let y = 0; y < S; y++) {
        for (let x = 0; x < S; x++) {
          for (let ch = 0; ch < 3; ch++) {
            if (ours[ch * S * S + y * S + x] !== ref[(y * S + x) * 3 + ch]) differing++;
          }
        }
      }
      assert.equal(differing, 0, `${differing} of ${3 * S * S} values differ from PIL`);
    });
  }

  it('shortest-edge sizes truncate like transformers', () => {
    assert.deepEqual(shortestEdgeSize(800, 600, 336), [448, 336]);
    assert.deepEqual(shortestEdgeSize(333, 180, 64), [118, 64]); // 64 * 333 / 180 = 118.4
    assert.deepEqual(shortestEdgeSize(150, 277, 72), [72, 132]); // 132.96 -> 132
  });

  it('with DCT scaling stays within ~1/255 of the full decode, and decodes large images smaller', async () => {
    const spec = identitySpec({ mode: 'pad', size: 384, filter: 'bicubic' });
    for (const [w, h] of [
      [1000, 700],
      [777, 1024],
      [900, 900],
    ] as const) {
      const bytes = await photoJpeg(w, h, 85, w);
      const exact = await nativeTensor(bytes, w, h, spec, 0);
      const scaled = await nativeTensor(bytes, w, h, spec, 1);
      const d = meanAbs(exact, scaled);
      assert.ok(d > 0 && d < 1.2, `${w}x${h}: mean |diff| ${d.toFixed(3)}/255`);
    }
    const bytes = await photoJpeg(1000, 700, 85, 1);
    const out = new Float32Array(3 * 384 * 384);
    const r = await native.module!.prepare(bytes, out, nativeParams(spec, new Float32Array([1, 1, 1, 0, 0, 0]), 1));
    assert.deepEqual([r.width, r.height, r.scaleNum], [1000, 700, 4]); // 500x350 covers the 384x269 footprint
  });

  it('refuses bad arguments with a coded error instead of crashing', () => {
    const p = nativeParams(SIGLIP_PAD, new Float32Array(6), 1);
    assert.throws(() => native.module!.prepare(Buffer.alloc(4), new Float32Array(10), p), { code: 'JPEG_ARGS' });
    assert.throws(
      () => native.module!.prepare('x' as unknown as Buffer, new Float32Array(3 * 384 * 384), p),
      /prepare\(bytes/,
    );
  });

  it('rejects a truncated JPEG with JPEG_TRUNCATED and garbage with JPEG_ERROR, leaving the tensor alone', async () => {
    const bytes = await photoJpeg(300, 200);
    const out = new Float32Array(3 * 384 * 384).fill(7);
    const p = nativeParams(SIGLIP_PAD, new Float32Array([1, 1, 1, 0, 0, 0]), 1);
    await assert.rejects(native.module!.prepare(bytes.subarray(0, bytes.length >> 1), out, p), {
      code: 'JPEG_TRUNCATED',
    });
    await assert.rejects(native.module!.prepare(Buffer.from('\xff\xd8\xffnot a jpeg', 'latin1'), out, p), {
      code: 'JPEG_ERROR',
    });
    assert.ok(out.every((v) => v === 7));
  });
});

describe('Intake with the native JPEG path', () => {
  it('uses it for plain JPEGs, full decode by default, and its tensors agree with the sharp path', async () => {
    const a = new Intake({}, SIGLIP_PAD);
    const b = new Intake({ jpegDecoder: 'sharp' }, SIGLIP_PAD);
    const fast = new Intake({ jpegDctScaling: true }, SIGLIP_PAD);
    assert.match(a.jpegDecoder, /^native \(libjpeg-turbo .*DCT scaling off\)$/);
    assert.match(fast.jpegDecoder, /^native \(libjpeg-turbo .*DCT scaling on\)$/);
    assert.match(b.jpegDecoder, /^sharp \(/);
    await fast.close();
    const bytes = await photoJpeg(800, 500, 85, 3);
    const pa = await a.prepare({ kind: 'bytes', data: bytes });
    const pb = await b.prepare({ kind: 'bytes', data: bytes });
    assert.equal(a.nativeFallbacks, 0);
    // both approximate PIL: ~0.5-1/255 each, in SigLIP's normalised units (x 127.5 for /255)
    const d = meanAbs(pa.pixelValues, pb.pixelValues) * 127.5;
    assert.ok(d < 2, `native vs sharp mean |diff| ${d.toFixed(2)}/255`);
    assert.deepEqual([pa.width, pa.height, pa.ext, pa.encoded], [800, 500, 'jpg', bytes]);
    await Promise.all([a.close(), b.close()]);
  });

  it('hands truncated JPEGs to sharp, which names the reject as before', async () => {
    const intake = new Intake({}, SIGLIP_PAD);
    const bytes = await photoJpeg(300, 200);
    await expectReject(
      intake.prepare({ kind: 'bytes', data: bytes.subarray(0, bytes.length >> 1) }),
      'undecodable_image',
      {
        kind: 'decode_error',
      },
    );
    assert.equal(intake.nativeFallbacks, 1);
    await intake.close();
  });

  it('leaves CMYK and EXIF-rotated JPEGs to sharp without trying', async () => {
    const intake = new Intake({}, SIGLIP_PAD);
    const cmyk = await solid(64, 48, { r: 200, g: 30, b: 30 }).toColourspace('cmyk').jpeg().toBuffer();
    const rotated = await solid(60, 40, { r: 10, g: 200, b: 10 }).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    const p1 = await intake.prepare({ kind: 'bytes', data: cmyk });
    const p2 = await intake.prepare({ kind: 'bytes', data: rotated });
    assert.deepEqual([p2.width, p2.height], [40, 60]);
    assert.ok(p1.pixelValues[192 * 384 + 192]! > 0.3, 'reddish');
    assert.equal(intake.nativeFallbacks, 0);
    await intake.close();
  });

  it('a grey JPEG decodes to three equal channels', async () => {
    const intake = new Intake({}, SIGLIP_PAD);
    const grey = await solid(100, 80, { r: 90, g: 90, b: 90 }).greyscale().jpeg().toBuffer();
    const p = await intake.prepare({ kind: 'bytes', data: grey });
    const S = 384;
    const at = (c: number) => p.pixelValues[c * S * S + 192 * S + 192]!;
    assert.ok(Math.abs(at(0) - (90 / 255 - 0.5) / 0.5) < 0.02 && at(0) === at(1) && at(1) === at(2));
    assert.equal(intake.nativeFallbacks, 0);
    await intake.close();
  });

  it('many images at once on the libuv pool give the same tensors as one at a time', async () => {
    const intake = new Intake({}, SIGLIP_PAD);
    const images = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => photoJpeg(300 + 97 * i, 500 - 41 * i, 85, i)));
    const one: number[][] = [];
    for (const data of images) one.push(Array.from((await intake.prepare({ kind: 'bytes', data })).pixelValues));
    const all = await Promise.all(images.map((data) => intake.prepare({ kind: 'bytes', data })));
    all.forEach((p, i) =>
      assert.ok(
        one[i]!.every((v, j) => v === p.pixelValues[j]),
        `image ${i}`,
      ),
    );
    await intake.close();
  });

  it("refuses jpegDecoder 'native' where it cannot serve, and unknown decoders", () => {
    assert.throws(
      () => new Intake({ jpegDecoder: 'native' }, { ...SIGLIP_PAD, resample: 'nearest' }),
      (err) => err instanceof FilterError && err.code === 'invalid_option' && /nearest/.test(err.message),
    );
    assert.throws(
      () => new Intake({ jpegDecoder: 'turbo' as 'native' }, SIGLIP_PAD),
      (err) => err instanceof FilterError && /auto, native or sharp/.test(err.message),
    );
  });
});

describe('JPEG header reader (the inspect fast path)', () => {
  it('agrees with sharp on size, components and orientation', async () => {
    const base = solid(70, 50, { r: 20, g: 120, b: 220 });
    const cases: [string, Buffer][] = [
      ['baseline', await photoJpeg(123, 77)],
      ['progressive', await base.clone().jpeg({ progressive: true }).toBuffer()],
      ['grey', await base.clone().greyscale().jpeg().toBuffer()],
      ['cmyk', await base.clone().toColourspace('cmyk').jpeg().toBuffer()],
      ...(await Promise.all(
        [1, 2, 3, 4, 5, 6, 7, 8].map(
          async (o) =>
            [`orientation ${o}`, await base.clone().jpeg().withMetadata({ orientation: o }).toBuffer()] as [
              string,
              Buffer,
            ],
        ),
      )),
    ];
    for (const [name, bytes] of cases) {
      const meta = await sharp(bytes).metadata();
      const h = readJpegHeader(bytes);
      assert.ok(h, name);
      assert.deepEqual(
        [h.width, h.height, h.orientation, h.components],
        [meta.width, meta.height, meta.orientation ?? 1, meta.channels],
        name,
      );
    }
  });

  it('never throws on damaged headers, and gives up rather than guess', async () => {
    const bytes = await base4();
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let k = 0; k < 2000; k++) {
      const b = Buffer.from(bytes.subarray(0, 2 + rand(600)));
      for (let f = rand(4); f > 0; f--) b[2 + rand(Math.max(1, b.length - 2))] = rand(256);
      const h = readJpegHeader(b);
      if (h) assert.ok(h.width > 0 && h.height > 0 && h.orientation >= 1 && h.orientation <= 8);
    }
    assert.equal(readJpegHeader(bytes.subarray(0, 40)), undefined, 'cut before the frame header');
  });
});

/** A JPEG with an Exif block (orientation 3) before its frame header. */
function base4(): Promise<Buffer> {
  return solid(40, 30, { r: 1, g: 2, b: 3 }).jpeg().withMetadata({ orientation: 3 }).toBuffer();
}

describe('native JPEG path on damaged input', () => {
  it('mutated and cut JPEGs resolve or reject with a code, never crash, and the tensor is written only on success', async () => {
    const spec = identitySpec({ mode: 'pad', size: 64, filter: 'bicubic' });
    const seeds = [await photoJpeg(200, 150, 85, 9), readFileSync(new URL('progressive.jpg', FIXTURES))];
    let seed = 11;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const codes = new Map<string, number>();
    for (let k = 0; k < 300; k++) {
      const src = seeds[k % seeds.length]!;
      const b = Buffer.from(src.subarray(0, rand(4) === 0 ? 2 + rand(src.length) : src.length));
      for (let f = 1 + rand(6); f > 0; f--) b[2 + rand(b.length - 2)] = rand(256);
      const out = new Float32Array(3 * 64 * 64).fill(-1);
      for (const minRatio of [0, 1]) {
        try {
          await native.module!.prepare(b, out, nativeParams(spec, new Float32Array([1, 1, 1, 0, 0, 0]), minRatio));
          assert.ok(out.every((v) => v >= 0 && v <= 255 && Number.isInteger(v)));
          codes.set('ok', (codes.get('ok') ?? 0) + 1);
        } catch (err) {
          const code = (err as { code?: string }).code ?? 'none';
          assert.match(code, /^JPEG_(TRUNCATED|ERROR|UNSUPPORTED)$/);
          codes.set(code, (codes.get(code) ?? 0) + 1);
        }
      }
    }
    assert.ok((codes.get('ok') ?? 0) > 0 && (codes.get('JPEG_ERROR') ?? 0) + (codes.get('JPEG_TRUNCATED') ?? 0) > 0);
  });
});
