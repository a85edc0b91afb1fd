/** The image dedupe's keys of a tensor: the exact digest and the DCT perceptual hash. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { perceptualHash, pixelDigest } from '../../lib/cache/image-digest.ts';
import { hamming } from '../../lib/cache/near-index.ts';
import type { PreprocessSpec } from '../../lib/types.ts';
import { Intake } from '../../lib/intake/index.ts';
import { picture } from './dedupe-images.ts';

const spec: PreprocessSpec = {
  size: 96,
  mean: [0.48, 0.45, 0.4],
  std: [0.27, 0.26, 0.28],
  rescale: 1 / 255,
  padToSquare: true,
  centerCrop: false,
  resample: 'bicubic',
};
const n = spec.size * spec.size;

/** A normalised CHW tensor of a picture given as RGB 0..255 per pixel. */
function tensor(rgb: (x: number, y: number) => [number, number, number]): Float32Array {
  const t = new Float32Array(3 * n);
  for (let y = 0; y < spec.size; y++) {
    for (let x = 0; x < spec.size; x++) {
      const px = rgb(x, y);
      for (let c = 0; c < 3; c++) t[c * n + y * spec.size + x] = (px[c]! * spec.rescale - spec.mean[c]!) / spec.std[c]!;
    }
  }
  return t;
}

const scene =
  (shift = 0) =>
  (x: number, y: number) =>
    [
      Math.min(255, Math.max(0, 120 + 100 * Math.sin(x / 9) + shift)),
      Math.min(255, Math.max(0, (x * y) / 40 + shift)),
      (x - 48) ** 2 + (y - 30) ** 2 < 400 ? 230 : 40,
    ] as [number, number, number];

test('the perceptual hash: 16 hex digits, 32 bits set, equal for equal tensors, near for a brightness shift', () => {
  const a = perceptualHash(tensor(scene()), spec);
  assert.match(a, /^[0-9a-f]{16}$/);
  const ones = [...BigInt(`0x${a}`).toString(2)].filter((b) => b === '1').length;
  assert.equal(ones, 32, 'bits above the median of 64 coefficients: half');
  assert.equal(perceptualHash(tensor(scene()), spec), a);
  assert.ok(hamming(a, perceptualHash(tensor(scene(12)), spec)) <= 6, 'a +12 brightness shift stays near');
  const other = perceptualHash(
    tensor((x, y) => [(y * 5) % 256, 255 - x * 2, (x ^ y) & 255]),
    spec,
  );
  assert.ok(hamming(a, other) > 12, `a different picture is far (${hamming(a, other)})`);
});

test('the digest: equal for equal tensors and sizes, different for one value, another size or preprocessing', () => {
  const px = tensor(scene());
  const digest = pixelDigest({ pixelValues: px, width: 640, height: 480 }, spec);
  assert.match(digest, /^[0-9a-f]{64}$/);
  assert.equal(pixelDigest({ pixelValues: px.slice(), width: 640, height: 480 }, spec), digest);
  assert.notEqual(pixelDigest({ pixelValues: px, width: 1280, height: 960 }, spec), digest);
  assert.notEqual(pixelDigest({ pixelValues: px, width: 640, height: 480 }, { ...spec, padToSquare: false }), digest);
  const touched = px.slice();
  touched[n + 4000] = touched[n + 4000]! + 1e-6;
  assert.notEqual(pixelDigest({ pixelValues: touched, width: 640, height: 480 }, spec), digest);
});

test('a tensor of the wrong size is refused', () => {
  assert.throws(() => perceptualHash(new Float32Array(10), spec), /expected 27648/);
});

test('the intake hashes the tensor it made only when asked (perceptualHash), and as perceptualHash does', async () => {
  const png = await (await picture(31)).png().toBuffer();
  const plain = new Intake({}, spec);
  const hashing = new Intake({ perceptualHash: true }, spec);
  try {
    const without = await plain.prepare({ kind: 'bytes', data: png });
    assert.equal(without.phash, undefined);
    const withHash = await hashing.prepare({ kind: 'bytes', data: png });
    assert.equal(withHash.phash, perceptualHash(withHash.pixelValues, spec));
    assert.deepEqual(withHash.pixelValues, without.pixelValues, 'the tensor is the same either way');
  } finally {
    await Promise.all([plain.close(), hashing.close()]);
  }
});
