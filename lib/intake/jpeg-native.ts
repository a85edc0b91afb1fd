/**
 * The native JPEG path (lib/intake/native/jpeg_prepare.c, built by scripts/build-native.sh): libjpeg-turbo decode at
 * a DCT scale, Pillow's resampling arithmetic and the normalisation in one call on the libuv pool. About twice as fast
 * as sharp's decode + resize + the JS normalise on crawl-sized JPEGs (BENCHMARKS.md), and with DCT scaling off its
 * tensors equal the reference's PIL preprocessing bit for bit.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { PreprocessSpec, RejectError } from '../types.ts';
import { padColour } from './preprocess.ts';
import { undecodable } from './reject.ts';

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

/** Most scans of a JPEG read: the intake's jpegMaxScans default (djpeg's -maxscans sets such a limit). */
export const DEFAULT_MAX_SCANS = 100;

export interface NativeLimits {
  /** Largest width x height decoded (the intake's maxPixels); 0: the module's default, 50 000 000. */
  maxPixels?: number;
  /** Most scans read; 0: DEFAULT_MAX_SCANS. */
  maxScans?: number;
}

/**
 * The parameter block for `prepare` (see jpeg_prepare.c). `minRatio`: decoded size / output footprint below which
 * the DCT scale does not go (1: the smallest scale that never upsamples; 0: no DCT scaling). The expected size
 * (params 15 and 16) is filled in per image by prepareJpeg.
 */
export function nativeParams(
  spec: PreprocessSpec,
  affine: Float32Array,
  minRatio: number,
  limits: NativeLimits = {},
): Float64Array {
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
    0,
    0,
    limits.maxPixels ?? 0,
    limits.maxScans ?? DEFAULT_MAX_SCANS,
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

/** libuv's pool size: UV_THREADPOOL_SIZE as libuv reads it at its first use (default 4, at most 1024). */
export function threadPoolSize(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number.parseInt(env.UV_THREADPOOL_SIZE ?? '', 10);
  return Number.isFinite(n) && n > 0 ? Math.min(n, 1024) : 4;
}

/**
 * Native decodes running on the libuv pool at once, process-wide. The pool (4 threads unless UV_THREADPOOL_SIZE says
 * otherwise) also runs DNS lookups (dns.lookup, which every image fetch does), file I/O and sharp's work, and queues
 * FIFO: decodes holding every thread would stall all fetches behind them. One thread stays free for the rest (with
 * a 1-thread pool, 1 decode).
 */
export const nativeDecodeSlots = Math.max(1, threadPoolSize() - 1);

let running = 0;
const waiting: (() => void)[] = [];

/** Decodes running and waiting for a slot, for tests and metrics. */
export function nativeDecodeLoad(): { running: number; waiting: number } {
  return { running, waiting: waiting.length };
}

async function withSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (running >= nativeDecodeSlots) await new Promise<void>((resolve) => waiting.push(resolve));
  else running++;
  try {
    return await fn();
  } finally {
    const next = waiting.shift();
    if (next)
      next(); // the slot passes on: `running` stays
    else running--;
  }
}

/**
 * Decodes `bytes` (a JPEG with no EXIF rotation) of stored and displayed size width x height (as read from its
 * markers) into `out`. At most nativeDecodeSlots run at once. Rejects with the module's coded Error when libjpeg
 * refuses it: JPEG_TRUNCATED, JPEG_UNSUPPORTED, JPEG_ERROR (another decoder may do better), or one of the hostile
 * input codes nativeReject turns into a reject.
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
  const p = params.slice();
  if (params[1] === MODES.crop) [p[12], p[13]] = shortestEdgeSize(width, height, spec.size);
  p[15] = width;
  p[16] = height;
  await withSlot(() => native.prepare(bytes, out, p));
}

/**
 * The reject for a native failure that no other decoder should retry: the image is hostile (its frame header says
 * another size than its markers, it is over the pixel or memory limit, it has too many scans or a bogus
 * progression), and sharp would pay the cost it was refused for. Undefined for failures sharp may still decode.
 */
export function nativeReject(err: unknown): RejectError | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message.slice(0, 200) : '';
  switch (code) {
    case 'JPEG_SIZE_MISMATCH':
      return undecodable('decode_error', `jpeg frame header disagrees with its markers: ${message}`, {
        format: 'jpeg',
        error: message,
        native: code,
      });
    case 'JPEG_TOO_LARGE':
      return undecodable('too_many_pixels', `jpeg exceeds the decode limits: ${message}`, {
        format: 'jpeg',
        error: message,
        native: code,
      });
    case 'JPEG_TOO_MANY_SCANS':
    case 'JPEG_BAD_PROGRESSION':
      return undecodable('decode_error', `cannot decode jpeg: ${message}`, {
        format: 'jpeg',
        error: message,
        native: code,
      });
    default:
      return undefined;
  }
}
