/**
 * Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with multi-index hashing", CVPR
 * 2012) over the 64-bit perceptual hashes of lib/cache/image-digest.ts: each hash is filed under CHUNKS buckets, one
 * per 16-bit chunk (key `<chunk index>:<4 hex digits>`). By the pigeonhole principle, two hashes within Hamming
 * distance d agree within floor(d / CHUNKS) bits on at least one chunk, so a query probes, for each chunk, the
 * buckets of every value that close to its own, and verifies the candidates by their full distance. Not a scan: a
 * query reads CHUNKS buckets for d < 4, 4 x 17 for d < 8, 4 x 137 for d < 12.
 *
 * Why 4 x 16 bits: a 16-bit bucket holds about N / 65536 of N images (15 at a million), so candidates stay few while
 * the probe count stays small at the near distances measured useful (BENCHMARKS.md, "Image dedupe: near distance").
 * Changing CHUNKS changes every key: a store filed under other chunks must be rebuilt.
 */

export const CHUNKS = 4;
const BITS = 64 / CHUNKS;
const HEX = BITS / 4;
/** The largest distance a query may ask: beyond it, near duplicates are no longer near (and probes explode). */
export const MAX_DISTANCE = 32;

function check(phash: string): void {
  if (!/^[0-9a-f]{16}$/.test(phash)) throw new Error(`not a 64-bit hash of 16 lower-case hex digits: ${phash}`);
}

const chunkKey = (index: number, value: number) => `${index}:${value.toString(16).padStart(HEX, '0')}`;

/** The bucket keys a hash is filed under: one per chunk. */
export function bucketsOf(phash: string): string[] {
  check(phash);
  const keys: string[] = [];
  for (let i = 0; i < CHUNKS; i++) keys.push(`${i}:${phash.slice(i * HEX, (i + 1) * HEX)}`);
  return keys;
}

/** The bucket keys a query for hashes within `d` of `phash` reads: each chunk's values within floor(d / CHUNKS). */
export function probeKeys(phash: string, d: number): string[] {
  check(phash);
  if (!Number.isInteger(d) || d < 0 || d > MAX_DISTANCE) throw new Error(`distance ${d} is not in 0..${MAX_DISTANCE}`);
  const radius = Math.floor(d / CHUNKS);
  const keys: string[] = [];
  for (let i = 0; i < CHUNKS; i++) {
    const value = parseInt(phash.slice(i * HEX, (i + 1) * HEX), 16);
    for (const flip of masksWithin(radius)) keys.push(chunkKey(i, value ^ flip));
  }
  return keys;
}

/** Every BITS-bit mask with at most `r` bits set (0 first). */
function masksWithin(r: number): number[] {
  const masks = [0];
  const grow = (mask: number, from: number, left: number) => {
    for (let b = from; b < BITS; b++) {
      const m = mask | (1 << b);
      masks.push(m);
      if (left > 1) grow(m, b + 1, left - 1);
    }
  };
  if (r > 0) grow(0, 0, r);
  return masks;
}

/** Hamming distance of two 64-bit hashes given as 16 hex digits. */
export function hamming(a: string, b: string): number {
  check(a);
  check(b);
  let d = 0;
  for (let i = 0; i < 16; i += 8) {
    let x = (parseInt(a.slice(i, i + 8), 16) ^ parseInt(b.slice(i, i + 8), 16)) >>> 0;
    while (x !== 0) {
      x &= x - 1;
      d++;
    }
  }
  return d;
}

/**
 * The most entries one image bucket files. Only images with one perceptual hash fill a bucket so (blank or flat
 * images at many sizes, each its own digest); past it an image is still stored by digest, and still found as an exact
 * copy (ImageDedupe looks digests up once a bucket shows an entry of the same hash, as a bucket that one hash filled
 * does), but not filed there, so a near copy found only through that bucket may be missed: a missed duplicate, never
 * a wrong one. It bounds the bytes a query reads and a write rewrites.
 */
export const MAX_BUCKET_ENTRIES = 1000;
