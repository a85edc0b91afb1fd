/** Multi-index hashing: bucket keys, probe keys, and a brute-force cross-check of what a probe finds. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bucketsOf, CHUNKS, hamming, probeKeys } from '../../lib/cache/near-index.ts';

let seed = 12345;
const rand32 = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0);
const hex = (n: number) => n.toString(16).padStart(8, '0');
const randomHash = () => hex(rand32()) + hex(rand32());

/** `h` with `bits` distinct random bits flipped. */
function flip(h: string, bits: number): string {
  const big = BigInt(`0x${h}`);
  const chosen = new Set<number>();
  while (chosen.size < bits) chosen.add(rand32() % 64);
  let x = big;
  for (const b of chosen) x ^= 1n << BigInt(b);
  return x.toString(16).padStart(16, '0');
}

test('hamming counts differing bits', () => {
  assert.equal(hamming('0000000000000000', '0000000000000000'), 0);
  assert.equal(hamming('0000000000000000', 'ffffffffffffffff'), 64);
  assert.equal(hamming('8000000000000001', '0000000000000000'), 2);
  const h = randomHash();
  for (const d of [1, 5, 17, 40]) assert.equal(hamming(h, flip(h, d)), d);
  assert.throws(() => hamming('abc', h));
  assert.throws(() => hamming('ABCDEF0123456789', h), /16 lower-case hex/);
});

test('a hash is filed under one bucket per chunk; probing at distance 0 reads exactly those', () => {
  const h = '0123456789abcdef';
  assert.deepEqual(bucketsOf(h), ['0:0123', '1:4567', '2:89ab', '3:cdef']);
  assert.deepEqual(probeKeys(h, 0), bucketsOf(h));
  assert.deepEqual(probeKeys(h, CHUNKS - 1), bucketsOf(h));
  // floor(d / 4) bits per 16-bit chunk: 1 + 16 keys per chunk at d 4..7, 1 + 16 + 120 at 8..11.
  assert.equal(probeKeys(h, 4).length, 4 * 17);
  assert.equal(new Set(probeKeys(h, 8)).size, 4 * 137);
  assert.throws(() => probeKeys(h, 33), /0\.\.32/);
  assert.throws(() => probeKeys(h, -1));
});

test('brute-force cross-check: a probe finds every stored hash within d, through the buckets alone', () => {
  const stored: string[] = [];
  const queries: string[] = [];
  for (let i = 0; i < 150; i++) {
    const h = randomHash();
    stored.push(h);
    // Near copies of stored hashes at every distance up to 16, and unrelated hashes.
    for (let d = 0; d <= 16; d += 1 + (i % 3)) stored.push(flip(h, d));
    queries.push(i % 2 ? h : flip(h, i % 12));
  }
  const index = new Map<string, Set<string>>();
  for (const h of stored) for (const k of bucketsOf(h)) (index.get(k) ?? index.set(k, new Set()).get(k)!).add(h);
  let found = 0;
  for (const q of queries) {
    for (const d of [0, 3, 4, 7, 8, 10]) {
      const candidates = new Set<string>();
      for (const k of probeKeys(q, d)) for (const h of index.get(k) ?? []) candidates.add(h);
      const viaIndex = [...candidates].filter((h) => hamming(h, q) <= d).sort();
      const brute = [...new Set(stored.filter((h) => hamming(h, q) <= d))].sort();
      assert.deepEqual(viaIndex, brute, `query ${q} d ${d}`);
      found += brute.length;
      // Not a scan: the candidates read are a small part of what is stored.
      assert.ok(candidates.size < stored.length / 4, `${candidates.size} candidates of ${stored.length}`);
    }
  }
  assert.ok(found > 1000, `the cross-check found matches to compare (${found})`);
});
