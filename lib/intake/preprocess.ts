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
 * Resizes `img` to spec.size square: pad-to-square with the pad colour (`padToSquare`), shortest-edge resize +
 * centre crop (`centerCrop`), or squash. Returns float32 CHW normalised as (px * rescale - mean) / std.
 */
export async function toPixelValues(
  img: Sharp,
  spec: PreprocessSpec,
): Promise<{ pixelValues: Float32Array; shape: [number, number, number] }> {
  const fit = spec.padToSquare ? 'contain' : spec.centerCrop ? 'cover' : 'fill';
  const { data, info } = await img
    .resize(spec.size, spec.size, {
      fit,
      position: 'centre',
      background: { ...padColour(spec), alpha: 1 },
      kernel: KERNELS[spec.resample],
      // JPEG/WebP decode at 1/2, 1/4, 1/8 scale when the target is that much smaller: most of the decode cost saved.
      fastShrinkOnLoad: true,
    })
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.width !== spec.size || info.height !== spec.size) {
    throw new Error(`resize produced ${info.width}x${info.height}, expected ${spec.size}x${spec.size}`);
  }
  return { pixelValues: normalise(data, info.channels, spec), shape: [3, spec.size, spec.size] };
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

/** Interleaved uchar HWC (3 or more channels) -> planar float32 CHW, normalised per spec. */
export function normalise(raw: Uint8Array, channels: number, spec: PreprocessSpec): Float32Array {
  const n = raw.length / channels;
  const out = new Float32Array(3 * n);
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
