/**
 * The image dedupe's two keys of a prepared image (issue 24), both read off the model's input tensor that intake
 * already made, so neither decodes anything again.
 *
 * Exact key, `pixelDigest`: SHA-256 of the tensor's float32 bytes with the original width and height and the
 * preprocessing (size, mean, std, resampling, pad/crop). The tensor is the decoded RGB as the model sees it: two files
 * whose pixels decode the same give the same tensor, so a JPEG re-saved with other metadata (EXIF, XMP, comments),
 * a PNG recompressed or with other text chunks, match; a JPEG decoded by libjpeg (intake's native path) and one
 * decoded by libvips do not (their tensors differ by rounding), nor does a PNG and its lossless WebP (libvips
 * shrinks WebP on load: measured, the tensors differ by up to 0.26). The width and height keep two images apart
 * that differ only below the tensor's resolution. Hashing 1.77 MB (384 x 384 x 3 floats) costs ~1.1 ms, a third of
 * a JPEG's intake, so ImageDedupe computes it only when needed: for an accepted image it records, and for a
 * candidate whose perceptual hash is equal (equal tensors have equal perceptual hashes).
 *
 * Near key, `perceptualHash`: the DCT pHash of imagehash (J. Buchner's `phash`, the one most near-duplicate
 * thresholds in the literature are quoted for): luma box-averaged to 32 x 32, a 2-D DCT-II, the 8 x 8 lowest
 * frequencies, one bit per coefficient above their median. Low frequencies survive re-encoding, resizing and small
 * brightness changes; the median makes it independent of the overall brightness. Computed from a regular sample of
 * the tensor (up to 4 x 4 pixels per cell, ~50 K floats at 384): 0.1-0.3 ms, memory-bound (BENCHMARKS.md).
 */
import { createHash } from 'node:crypto';
import type { PreparedImage, PreprocessSpec } from '../types.ts';

const GRID = 32;
const LOW = 8;
/** ITU-R BT.601 luma weights, as PIL's convert('L') that imagehash starts from. */
const LUMA = [0.299, 0.587, 0.114] as const;

/** The preprocessing a tensor was made with: tensors (and their hashes) are comparable only within one. */
export function specTag(spec: PreprocessSpec): string {
  const mode = spec.padToSquare ? 'pad' : spec.centerCrop ? 'crop' : 'squash';
  return `${spec.size}/${mode}/${spec.resample}/${spec.mean.join(',')}/${spec.std.join(',')}/${spec.rescale}`;
}

/** SHA-256 (hex) of the image's tensor, original size and preprocessing: the exact-duplicate key. */
export function pixelDigest(image: Pick<PreparedImage, 'pixelValues' | 'width' | 'height'>, spec: PreprocessSpec) {
  const px = image.pixelValues;
  return createHash('sha256')
    .update(`mlmf-pixels/1\n${specTag(spec)}\n${image.width}x${image.height}\n`)
    .update(new Uint8Array(px.buffer, px.byteOffset, px.byteLength))
    .digest('hex');
}

/** The 64-bit DCT perceptual hash of a square CHW tensor (side `spec.size`), as 16 lower-case hex digits. */
export function perceptualHash(pixelValues: Float32Array, spec: PreprocessSpec): string {
  const grid = lumaGrid(pixelValues, spec);
  const coeffs = lowFrequencies(grid);
  const sorted = Float64Array.from(coeffs).sort();
  const median = (sorted[31]! + sorted[32]!) / 2;
  let hex = '';
  for (let nibble = 0; nibble < 16; nibble++) {
    let v = 0;
    for (let b = 0; b < 4; b++) v = (v << 1) | (coeffs[nibble * 4 + b]! > median ? 1 : 0);
    hex += v.toString(16);
  }
  return hex;
}

/**
 * Mean luma of each of 32 x 32 cells of the tensor. The normalisation is undone in the weights (luma is affine in
 * the normalised values; the constant term does not change any coefficient's rank but the DC's).
 */
function lumaGrid(px: Float32Array, spec: PreprocessSpec): Float64Array {
  const S = spec.size;
  const n = S * S;
  if (px.length !== 3 * n) throw new Error(`tensor has ${px.length} values, expected ${3 * n}`);
  const [w0, w1, w2] = LUMA.map((l, c) => (l * spec.std[c]!) / spec.rescale) as [number, number, number];
  const grid = new Float64Array(GRID * GRID);
  const cell = S / GRID;
  const step = Math.max(1, Math.floor(cell / 4));
  for (let gy = 0; gy < GRID; gy++) {
    const y0 = Math.floor(gy * cell);
    const y1 = Math.max(y0 + 1, Math.floor((gy + 1) * cell));
    for (let gx = 0; gx < GRID; gx++) {
      const x0 = Math.floor(gx * cell);
      const x1 = Math.max(x0 + 1, Math.floor((gx + 1) * cell));
      let sum = 0;
      let count = 0;
      for (let y = y0; y < y1; y += step) {
        const row = y * S;
        for (let i = row + x0; i < row + x1; i += step) {
          sum += w0 * px[i]! + w1 * px[n + i]! + w2 * px[2 * n + i]!;
          count++;
        }
      }
      grid[gy * GRID + gx] = sum / count;
    }
  }
  return grid;
}

/** DCT-II basis cos(pi (2x + 1) u / 2N) for u < 8, x < 32: the only rows the hash reads. */
const BASIS = (() => {
  const b = new Float64Array(LOW * GRID);
  for (let u = 0; u < LOW; u++)
    for (let x = 0; x < GRID; x++) b[u * GRID + x] = Math.cos((Math.PI * (2 * x + 1) * u) / (2 * GRID));
  return b;
})();

/** The 8 x 8 lowest-frequency DCT-II coefficients of the 32 x 32 grid, row-major (vertical frequency first). */
function lowFrequencies(grid: Float64Array): Float64Array {
  // Rows first (each row's 8 horizontal frequencies), then the 8 vertical frequencies of those.
  const rows = new Float64Array(GRID * LOW);
  for (let y = 0; y < GRID; y++) {
    for (let v = 0; v < LOW; v++) {
      let s = 0;
      for (let x = 0; x < GRID; x++) s += grid[y * GRID + x]! * BASIS[v * GRID + x]!;
      rows[y * LOW + v] = s;
    }
  }
  const out = new Float64Array(LOW * LOW);
  for (let u = 0; u < LOW; u++) {
    for (let v = 0; v < LOW; v++) {
      let s = 0;
      for (let y = 0; y < GRID; y++) s += rows[y * LOW + v]! * BASIS[u * GRID + y]!;
      out[u * LOW + v] = s;
    }
  }
  return out;
}
