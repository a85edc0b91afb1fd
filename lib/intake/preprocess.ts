/**
 * Model preprocessing: geometry in sharp (one pass, shrink-on-load), normalisation in JS (sharp's linear() clamps to
 * uchar, so negative normalised values cannot come out of it).
 */
import type { Sharp } from 'sharp';
import type { PreprocessSpec } from '../types.ts';

const KERNELS = { bicubic: 'cubic', bilinear: 'linear', nearest: 'nearest' } as const;

/**
 * The colour LLaVA pads with (`expand2square(img, tuple(int(x*255) for x in image_mean))`): the processor mean,
 * truncated as the training code did, so a padded pixel normalises to ~0.
 */
export function padColour(spec: PreprocessSpec): { r: number; g: number; b: number } {
  const [r, g, b] = spec.mean.map((m) => Math.trunc(m * 255)) as [number, number, number];
  return { r, g, b };
}

/**
 * Resizes `img` (displayed size `width` x `height`) to spec.size square: pad-to-square with the pad colour
 * (`padToSquare`), shortest-edge resize + centre crop (`centerCrop`), or squash. Returns float32 CHW normalised as
 * (px * rescale - mean) / std.
 *
 * Padding is done here while normalising rather than by sharp's `contain`: same placement (the reference's paste
 * offset `(side - w) // 2` scaled to the output, floored), one image-sized copy less, and a smaller raw buffer.
 * This is the sharp path (non-JPEG images, rotated or CMYK JPEGs; JPEGs otherwise take lib/intake/native). Measured
 * against PIL's expand2square + bicubic: mean |diff| 0.2-1.8 /255 (see parity.slow.test.ts), the residual
 * being sub-pixel placement and the hard content edge (PIL blends the pad into the edge row when it resizes).
 */
export async function toPixelValues(
  img: Sharp,
  spec: PreprocessSpec,
  width: number,
  height: number,
  pool?: TensorPool,
): Promise<{ pixelValues: Float32Array; shape: [number, number, number] }> {
  const S = spec.size;
  const fit = spec.padToSquare ? 'inside' : spec.centerCrop ? 'cover' : 'fill';
  const { data, info } = await img
    .resize(S, S, {
      fit,
      position: 'centre',
      kernel: KERNELS[spec.resample],
      // JPEG/WebP decode at 1/2, 1/4, 1/8 scale when the target is that much smaller: most of the decode cost saved.
      fastShrinkOnLoad: true,
    })
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  const shape: [number, number, number] = [3, S, S];
  if (!spec.padToSquare || (info.width === S && info.height === S)) {
    if (info.width !== S || info.height !== S) {
      throw new Error(`resize produced ${info.width}x${info.height}, expected ${S}x${S}`);
    }
    return { pixelValues: normalise(data, info.channels, spec, pool?.take()), shape };
  }
  const side = Math.max(width, height);
  const left = Math.min(S - info.width, Math.max(0, Math.floor((((side - width) >> 1) * S) / side)));
  const top = Math.min(S - info.height, Math.max(0, Math.floor((((side - height) >> 1) * S) / side)));
  return {
    pixelValues: normalisePadded(data, info.channels, info.width, info.height, left, top, spec, pool?.take()),
    shape,
  };
}

const affineCache = new WeakMap<PreprocessSpec, Float32Array>();

/** (v * rescale - mean) / std folded into v * scale + offset per channel. */
export function affine(spec: PreprocessSpec): Float32Array {
  let a = affineCache.get(spec);
  if (!a) {
    a = new Float32Array(6);
    for (let c = 0; c < 3; c++) {
      a[c] = spec.rescale / spec.std[c]!;
      a[3 + c] = -spec.mean[c]! / spec.std[c]!;
    }
    affineCache.set(spec, a);
  }
  return a;
}

/**
 * Interleaved uchar HWC (3 or more channels) -> planar float32 CHW, normalised per spec. Writes every element of
 * `out` (a recycled tensor of 3 x pixels) when given, else of a new array.
 */
export function normalise(raw: Uint8Array, channels: number, spec: PreprocessSpec, out?: Float32Array): Float32Array {
  const n = raw.length / channels;
  out = tensor(3 * n, out);
  const r = out.subarray(0, n);
  const g = out.subarray(n, 2 * n);
  const b = out.subarray(2 * n);
  toPlanes(raw, channels, wordsOf(raw, channels), 0, n, r, g, b, 0, affine(spec));
  return out;
}

/**
 * Like normalise, for content of `w` x `h` placed at (`left`, `top`) of a spec.size square whose other pixels are the
 * pad colour.
 */
export function normalisePadded(
  raw: Uint8Array,
  channels: number,
  w: number,
  h: number,
  left: number,
  top: number,
  spec: PreprocessSpec,
  out?: Float32Array,
): Float32Array {
  const S = spec.size;
  const n = S * S;
  out = tensor(3 * n, out);
  const a = affine(spec);
  const pad = padColour(spec);
  const planes = [out.subarray(0, n), out.subarray(n, 2 * n), out.subarray(2 * n)] as const;
  const padValues = [pad.r, pad.g, pad.b];
  // Pad only the border: the content area is written once, below.
  for (let c = 0; c < 3; c++) {
    const p = planes[c]!;
    const v = padValues[c]! * a[c]! + a[3 + c]!;
    p.fill(v, 0, top * S);
    p.fill(v, (top + h) * S, n);
    if (w < S) {
      for (let y = top; y < top + h; y++) {
        p.fill(v, y * S, y * S + left);
        p.fill(v, y * S + left + w, (y + 1) * S);
      }
    }
  }
  const [r, g, b] = planes;
  const words = wordsOf(raw, channels);
  for (let y = 0; y < h; y++) toPlanes(raw, channels, words, y * w, w, r, g, b, (top + y) * S + left, a);
  return out;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** A word view of 3-channel pixels for the 4-pixels-per-3-words path, when alignment and byte order allow it. */
function wordsOf(raw: Uint8Array, channels: number): Uint32Array | undefined {
  if (channels !== 3 || !LITTLE_ENDIAN || raw.byteOffset % 4 !== 0) return undefined;
  return new Uint32Array(raw.buffer, raw.byteOffset, raw.byteLength >> 2);
}

/**
 * Normalises `count` pixels starting at pixel `k` of `raw` into r/g/b from index `i`. With `words`, runs of 4 pixels
 * (12 bytes, 3 aligned words) are read as 3 uint32 loads instead of 12 byte loads: ~30% faster on this loop, the
 * same float arithmetic.
 */
function toPlanes(
  raw: Uint8Array,
  channels: number,
  words: Uint32Array | undefined,
  k: number,
  count: number,
  r: Float32Array,
  g: Float32Array,
  b: Float32Array,
  i: number,
  a: Float32Array,
): void {
  const s0 = a[0]!,
    s1 = a[1]!,
    s2 = a[2]!,
    o0 = a[3]!,
    o1 = a[4]!,
    o2 = a[5]!;
  const end = k + count;
  if (words !== undefined) {
    // Up to a pixel whose first byte is word-aligned (3k divisible by 4 <=> k divisible by 4).
    for (; k < end && (k & 3) !== 0; k++, i++) {
      const j = 3 * k;
      r[i] = raw[j]! * s0 + o0;
      g[i] = raw[j + 1]! * s1 + o1;
      b[i] = raw[j + 2]! * s2 + o2;
    }
    for (let q = (3 * k) >> 2; k + 4 <= end; k += 4, i += 4, q += 3) {
      const w0 = words[q]!,
        w1 = words[q + 1]!,
        w2 = words[q + 2]!;
      r[i] = (w0 & 255) * s0 + o0;
      g[i] = ((w0 >>> 8) & 255) * s1 + o1;
      b[i] = ((w0 >>> 16) & 255) * s2 + o2;
      r[i + 1] = (w0 >>> 24) * s0 + o0;
      g[i + 1] = (w1 & 255) * s1 + o1;
      b[i + 1] = ((w1 >>> 8) & 255) * s2 + o2;
      r[i + 2] = ((w1 >>> 16) & 255) * s0 + o0;
      g[i + 2] = (w1 >>> 24) * s1 + o1;
      b[i + 2] = (w2 & 255) * s2 + o2;
      r[i + 3] = ((w2 >>> 8) & 255) * s0 + o0;
      g[i + 3] = ((w2 >>> 16) & 255) * s1 + o1;
      b[i + 3] = (w2 >>> 24) * s2 + o2;
    }
  }
  for (let j = k * channels; k < end; k++, i++, j += channels) {
    r[i] = raw[j]! * s0 + o0;
    g[i] = raw[j + 1]! * s1 + o1;
    b[i] = raw[j + 2]! * s2 + o2;
  }
}

function tensor(length: number, recycled: Float32Array | undefined): Float32Array {
  if (recycled === undefined) return new Float32Array(length);
  if (recycled.length !== length) throw new Error(`recycled tensor has ${recycled.length} elements, need ${length}`);
  return recycled;
}

/**
 * Recycles model input tensors. A 384x384 tensor is 1.77 MB of external memory; allocating one per image made V8
 * run a full mark-compact every ~12 images (~1.5-2.5 ms of CPU per image on the bench machine, more than the resize).
 * Tensors come back only through `give`, from a caller that promises nothing reads them any more; an array is
 * taken back once per `take` (a second give of the same array is ignored), and at most `max` wait idle.
 */
export class TensorPool {
  private readonly free: Float32Array[] = [];
  /** Arrays handed out and not yet given back: only these are accepted, once each. */
  private readonly out = new WeakSet<Float32Array>();

  constructor(
    readonly length: number,
    readonly max: number,
  ) {}

  take(): Float32Array {
    const a = this.free.pop() ?? new Float32Array(this.length);
    this.out.add(a);
    return a;
  }

  /** Returns `a` to the pool; false (and nothing kept) when it is not an array this pool handed out. */
  give(a: Float32Array): boolean {
    if (!this.out.delete(a)) return false;
    if (this.free.length < this.max) this.free.push(a);
    return true;
  }

  /** Tensors waiting for reuse. */
  get idle(): number {
    return this.free.length;
  }
}
