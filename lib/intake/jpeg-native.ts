/**
 * The native JPEG path (lib/intake/native/jpeg_prepare.c, built by scripts/build-native.sh): libjpeg-turbo decode at
 * a DCT scale, Pillow's resampling arithmetic and the normalisation in one call on the libuv pool. About twice as fast
 * as sharp's decode + resize + the JS normalise on crawl-sized JPEGs (BENCHMARKS.md), and with DCT scaling off its
 * tensors equal the reference's PIL preprocessing bit for bit.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { PreprocessSpec } from '../types.ts';
import { padColour } from './preprocess.ts';

interface NativeModule {
  prepare(
    bytes: Buffer,
    out: Float32Array,
    params: Float64Array,
  ): Promise<{ width: number; height: number; scaleNum: number }>;
  readonly libjpegTurboVersion: string;
}

/** Where the module is looked for: MLMF_NATIVE_DIR, else build/native/ of the package (source or compiled layout). */
function candidates(): string[] {
  const dirs = process.env.MLMF_NATIVE_DIR ? [process.env.MLMF_NATIVE_DIR] : [];
  for (const up of ['../../build/native/', '../../../build/native/']) {
    dirs.push(fileURLToPath(new URL(up, import.meta.url)));
  }
  return dirs.map((d) => `${d.replace(/\/$/, '')}/jpeg_prepare.node`);
}

let loaded: { module?: NativeModule; path?: string; error?: string } | undefined;

/** The native module, loaded once per process; `error` says why it is not available. */
export function loadJpegNative(): { module?: NativeModule; path?: string; error?: string } {
  if (loaded) return loaded;
  const found = candidates().find((p) => existsSync(p));
  if (!found) {
    loaded = { error: `not built (looked for ${candidates().join(', ')}; run scripts/build-native.sh)` };
    return loaded;
  }
  try {
    loaded = { module: createRequire(import.meta.url)(found) as NativeModule, path: found };
  } catch (err) {
    loaded = { error: `cannot load ${found}: ${(err as Error).message}` };
  }
  return loaded;
}

const MODES = { squash: 0, pad: 1, crop: 2 } as const;

/**
 * The parameter block for `prepare` (see jpeg_prepare.c). `minRatio`: decoded size / output footprint below which
 * the DCT scale does not go (1: the smallest scale that never upsamples; 0: no DCT scaling).
 */
export function nativeParams(spec: PreprocessSpec, affine: Float32Array, minRatio: number): Float64Array {
  const pad = padColour(spec);
  const mode = spec.padToSquare ? MODES.pad : spec.centerCrop ? MODES.crop : MODES.squash;
  return new Float64Array([
    spec.size,
    mode,
    spec.resample === 'bilinear' ? 1 : 0,
    pad.r,
    pad.g,
    pad.b,
    affine[0]!,
    affine[1]!,
    affine[2]!,
    affine[3]!,
    affine[4]!,
    affine[5]!,
    0,
    0,
    minRatio,
  ]);
}

/**
 * transformers' shortest-edge resize (get_resize_output_image_size, default_to_square=False): the short side becomes
 * `size`, the long side int(size * long / short).
 */
export function shortestEdgeSize(width: number, height: number, size: number): [number, number] {
  if (width <= height) return [size, Math.trunc((size * height) / width)];
  return [Math.trunc((size * width) / height), size];
}

/** Whether the native path can produce this spec's tensor (it has bicubic and bilinear; nearest stays with sharp). */
export function nativeSupports(spec: PreprocessSpec): boolean {
  return spec.resample === 'bicubic' || spec.resample === 'bilinear';
}

/**
 * Decodes `bytes` (a JPEG with no EXIF rotation) of displayed size width x height into `out`. Rejects with the
 * module's coded Error (JPEG_TRUNCATED, JPEG_UNSUPPORTED, JPEG_ERROR) when libjpeg refuses it.
 */
export async function prepareJpeg(
  native: NativeModule,
  bytes: Buffer,
  width: number,
  height: number,
  spec: PreprocessSpec,
  params: Float64Array,
  out: Float32Array,
): Promise<void> {
  let p = params;
  if (params[1] === MODES.crop) {
    p = params.slice();
    [p[12], p[13]] = shortestEdgeSize(width, height, spec.size);
  }
  await native.prepare(bytes, out, p);
}
