import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromHalf, toHalf, floatsToHalf, halfToFloats } from '../../lib/model/half.ts';

test('float16 encoding of exact values, limits and specials', () => {
  assert.equal(toHalf(0), 0x0000);
  assert.equal(toHalf(-0), 0x8000);
  assert.equal(toHalf(1), 0x3c00);
  assert.equal(toHalf(-2), 0xc000);
  assert.equal(toHalf(65504), 0x7bff);
  assert.equal(toHalf(65520), 0x7c00, 'rounds up to infinity');
  assert.equal(toHalf(Infinity), 0x7c00);
  assert.equal(toHalf(-Infinity), 0xfc00);
  assert.equal(toHalf(NaN) & 0x7c00, 0x7c00);
  assert.notEqual(toHalf(NaN) & 0x03ff, 0);
  assert.equal(toHalf(2 ** -24), 0x0001, 'smallest subnormal');
  assert.equal(toHalf(2 ** -26), 0x0000, 'underflows to zero');
  assert.equal(toHalf(1 + 2 ** -11), 0x3c00, 'ties to even (down)');
  assert.equal(toHalf(1 + 3 * 2 ** -11), 0x3c02, 'ties to even (up)');
});

test('float16 decoding and round trip', () => {
  assert.equal(fromHalf(0x3c00), 1);
  assert.equal(fromHalf(0x7bff), 65504);
  assert.equal(fromHalf(0x0001), 2 ** -24);
  assert.equal(fromHalf(0x7c00), Infinity);
  assert.ok(Number.isNaN(fromHalf(0x7e00)));
  for (let h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) continue; // NaNs
    assert.equal(toHalf(fromHalf(h)), h, `0x${h.toString(16)}`);
  }
  const xs = Float32Array.from([0.1, -3.25, 1000.5, 1e-5]);
  const back = halfToFloats(floatsToHalf(xs));
  xs.forEach((x, i) => assert.ok(Math.abs((back[i] as number) - x) <= Math.abs(x) * 2 ** -10 + 2 ** -24));
});
