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
 * Measured against PIL's expand2square + bicubic: mean |diff| 0.2-1.8 /255 (see parity.slow.test.ts), the residual
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
function affine(spec: PreprocessSpec): Float32Array {
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
  const a = affine(spec);
  const s0 = a[0]!,
    s1 = a[1]!,
    s2 = a[2]!,
    o0 = a[3]!,
    o1 = a[4]!,
    o2 = a[5]!;
  // One pass over the interleaved input into three planar views (views let V8 drop the offset arithmetic).
  const r = out.subarray(0, n);
  const g = out.subarray(n, 2 * n);
  const b = out.subarray(2 * n);
  for (let i = 0, j = 0; i < n; i++, j += channels) {
    r[i] = raw[j]! * s0 + o0;
    g[i] = raw[j + 1]! * s1 + o1;
    b[i] = raw[j + 2]! * s2 + o2;
  }
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
  [pad.r, pad.g, pad.b].forEach((v, c) => planes[c]!.fill(v * a[c]! + a[3 + c]!));
  const [r, g, b] = planes;
  const s0 = a[0]!,
    s1 = a[1]!,
    s2 = a[2]!,
    o0 = a[3]!,
    o1 = a[4]!,
    o2 = a[5]!;
  for (let y = 0, j = 0; y < h; y++) {
    for (let x = 0, i = (top + y) * S + left; x < w; x++, i++, j += channels) {
      r[i] = raw[j]! * s0 + o0;
      g[i] = raw[j + 1]! * s1 + o1;
      b[i] = raw[j + 2]! * s2 + o2;
    }
  }
  return out;
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
