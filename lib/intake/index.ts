/**
 * Image intake: gets an image's bytes (URL, S3, inline), refuses hostile or useless input with a reason, and turns
 * the rest into the model's input tensor plus the bytes the curated sink stores.
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import { AddressGuard, parseAllowAddress, type AllowRule, type LookupFn } from './address-guard.ts';
import { decodeError, encodedForSink, inspect, openImage, type DecodeLimits, type ImageHeader } from './decode.ts';
import { Fetcher, type FetcherOptions } from './fetch.ts';
import {
  DEFAULT_MAX_SCANS,
  loadJpegNative,
  nativeParams,
  nativeReject,
  nativeSupports,
  prepareJpeg,
} from './jpeg-native.ts';
import { TensorPool, affine, padColour, toPixelValues } from './preprocess.ts';
import { perceptualHash } from '../cache/image-digest.ts';
import { fetchFailed } from './reject.ts';
import { FilterError, RejectError, type ImageRef, type PreparedImage, type PreprocessSpec } from '../types.ts';
import { httpStatus, isNotFound } from '../support/aws-errors.ts';

export { parseAllowAddress, blockedRange, type AllowRule, type LookupFn } from './address-guard.ts';
export { sniffFormat, type ImageFormat } from './decode.ts';
export { normalise, padColour } from './preprocess.ts';

export interface IntakeOptions {
  /** User-Agent sent with every image request; operators should name their crawler and a contact. */
  userAgent?: string;
  /** TCP (and TLS) connect timeout per connection, ms. Default 5000. */
  connectTimeoutMs?: number;
  /** Time to wait for response headers once the request is sent, ms. Default 10000. */
  headersTimeoutMs?: number;
  /** Longest gap between two body chunks, ms. Default 10000. */
  bodyTimeoutMs?: number;
  /** Whole-fetch deadline including redirects and retries, ms; stops bodies that trickle in forever. Default 30000. */
  totalTimeoutMs?: number;
  /** Largest accepted image in bytes (URL, S3 and inline). Default 16 MiB. */
  maxBytes?: number;
  /** Redirect hops followed, each one re-checked by the address guard. Default 5. */
  maxRedirects?: number;
  /** Extra attempts after a 429, a 5xx or a connection error. Default 2. */
  retries?: number;
  /** First backoff delay, ms; doubles per attempt, each delay drawn in [50%, 100%] of that (jitter). Default 250. */
  retryBaseDelayMs?: number;
  /** Cap on one backoff delay, ms; a longer Retry-After gives up at once instead of waiting. Default 5000. */
  maxRetryDelayMs?: number;
  /** Concurrent requests (and pooled connections) per host:port. Default 8. */
  perHostConcurrency?: number;
  /**
   * Addresses opened despite the SSRF policy: `CIDR` (any port) or `host:port` (`127.0.0.1:8080`, `localhost:9000`).
   * Strings are parsed with parseAllowAddress. Default none: only global unicast addresses are fetched.
   */
  allowAddresses?: (string | AllowRule)[];
  /**
   * Largest width x height decoded (decompression bomb guard), checked on the header before decoding. It is also the
   * CPU bound per image: libvips cannot interrupt a running decode (sharp's timeout() did not fire on streamed
   * decodes in our tests), and decode time grows with pixels (~2 s per Gpixel here). Default 50 000 000.
   */
  maxPixels?: number;
  /** Smallest accepted short side, px. Default 32 (spacers, tracking pixels, icons). */
  minSide?: number;
  /** Largest accepted long/short side ratio. Default 10 (banners, separators). */
  maxAspectRatio?: number;
  /** Client for `image.s3` refs; without it such refs reject as `fetch_failed` connection_error. */
  s3?: S3Client;
  /** Host resolver, injectable for tests; default node:dns lookup (all addresses). */
  lookup?: LookupFn;
  /**
   * Most released tensors kept for reuse (see Intake.release); each is 3 x size x size float32 (1.77 MB at 384).
   * 0 disables recycling. Default 16.
   */
  maxIdleTensors?: number;
  /**
   * Keep libvips' operation cache as configured elsewhere. By default the intake turns it off, process-wide
   * (`sharp.cache(false)`): every crawled image is new, so the cache never hits, holds up to 50 MB of decoded pixels
   * and cost ~0.2-0.3 ms of CPU per image in bench/intake/stages.ts.
   */
  keepSharpCache?: boolean;
  /**
   * Which decoder turns JPEGs into model tensors. `native`: the project's libjpeg-turbo module
   * (scripts/build-native.sh), about twice as fast as sharp on crawl-sized JPEGs; the construction fails when it is not
   * built. `sharp`: libvips only. `auto` (default): native when built, else sharp. Either way, JPEGs with EXIF
   * rotation, CMYK JPEGs, other formats and anything libjpeg refuses go through sharp, which also decides the reject.
   */
  jpegDecoder?: 'auto' | 'native' | 'sharp';
  /**
   * Native JPEG path only: let libjpeg decode at M/8 of the size (DCT scaling), never below the output's footprint,
   * instead of at full size: the opt-in speed mode. Default false: full decode, PIL's tensors bit for bit (fidelity
   * first: one core of it, ~220 pairs per CPU-second, still feeds about two GPUs). True costs ~1.7x less decode
   * (~1.4x fewer intake CPU-seconds per pair) and leaves tensors ~0.3-0.9/255 (mean) off PIL's (bench images; sharp's
   * path: 0.2-1.8), which moved expected scores by up to 7.4e-2 points on a Qwen-layout model and 2.25 on a tiny
   * LLaVA-1.5 one (integers unchanged there).
   */
  jpegDctScaling?: boolean;
  /**
   * Most scans a JPEG may have (`undecodable_image` decode_error above it): counted on the bytes before any decoder
   * (sharp too) sees them, and enforced again by libjpeg in the native path. Decode cost grows with pixels x scans
   * and no decoder can be interrupted: a crafted file with thousands of scans costs minutes of CPU. Default 100
   * (encoders write about 10; libjpeg-turbo's djpeg -maxscans sets the same kind of limit).
   */
  jpegMaxScans?: number;
  /**
   * Compute each image's 64-bit perceptual hash (PreparedImage.phash) from its tensor, for the image dedupe
   * (lib/cache/dedupe.ts): 0.1-0.3 ms per image at 384 px (BENCHMARKS.md). Default false: runs without a dedupe pay nothing.
   */
  perceptualHash?: boolean;
}

const DEFAULTS = {
  userAgent: 'mlm-filter-stream/0.1 (image-text pair filtering)',
  connectTimeoutMs: 5000,
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
  totalTimeoutMs: 30_000,
  maxBytes: 16 * 1024 * 1024,
  maxRedirects: 5,
  retries: 2,
  retryBaseDelayMs: 250,
  maxRetryDelayMs: 5000,
  perHostConcurrency: 8,
  maxPixels: 50_000_000,
  minSide: 32,
  maxAspectRatio: 10,
  maxIdleTensors: 16,
  jpegDecoder: 'auto',
  jpegDctScaling: false,
  jpegMaxScans: DEFAULT_MAX_SCANS,
} as const;

function positive(name: string, v: number, integer = true): number {
  if (!Number.isFinite(v) || v < 0 || (integer && !Number.isInteger(v))) {
    throw new FilterError(
      'invalid_option',
      `intake option ${name} must be a non-negative ${integer ? 'integer' : 'number'}, got ${v}`,
      {
        option: name,
        value: v,
      },
    );
  }
  return v;
}

export class Intake {
  private readonly fetcher: Fetcher;
  private readonly limits: DecodeLimits;
  private readonly maxBytes: number;
  private readonly s3?: S3Client;
  private readonly background: { r: number; g: number; b: number; alpha: number };
  private readonly pool: TensorPool;
  /** Images whose tensor came from the pool and has not been released: a second release is a no-op. */
  private readonly pooled = new WeakSet<PreparedImage>();
  private readonly native?: {
    module: NonNullable<ReturnType<typeof loadJpegNative>['module']>;
    params: Float64Array;
  };
  /** The decoder JPEGs go through, for startup logs: `native (libjpeg-turbo X, ...)` or `sharp (why)`. */
  readonly jpegDecoder: string;
  /** JPEGs the native path handed to sharp after libjpeg refused them (each is decoded twice). */
  nativeFallbacks = 0;
  private readonly perceptualHash: boolean;

  constructor(
    options: IntakeOptions,
    private readonly spec: PreprocessSpec,
  ) {
    const o = { ...DEFAULTS, ...stripUndefined(options) };
    const fetchOpts: FetcherOptions = {
      userAgent: o.userAgent,
      connectTimeoutMs: positive('connectTimeoutMs', o.connectTimeoutMs),
      headersTimeoutMs: positive('headersTimeoutMs', o.headersTimeoutMs),
      bodyTimeoutMs: positive('bodyTimeoutMs', o.bodyTimeoutMs),
      totalTimeoutMs: positive('totalTimeoutMs', o.totalTimeoutMs),
      maxBytes: positive('maxBytes', o.maxBytes),
      maxRedirects: positive('maxRedirects', o.maxRedirects),
      retries: positive('retries', o.retries),
      retryBaseDelayMs: positive('retryBaseDelayMs', o.retryBaseDelayMs),
      maxRetryDelayMs: positive('maxRetryDelayMs', o.maxRetryDelayMs),
      perHostConcurrency: Math.max(1, positive('perHostConcurrency', o.perHostConcurrency)),
    };
    const allow = (options.allowAddresses ?? []).map((a) => (typeof a === 'string' ? parseAllowAddress(a) : a));
    const guard = new AddressGuard({ allow, lookup: options.lookup, timeoutMs: fetchOpts.connectTimeoutMs });
    this.fetcher = new Fetcher(fetchOpts, guard);
    this.maxBytes = fetchOpts.maxBytes;
    this.limits = {
      maxPixels: positive('maxPixels', o.maxPixels),
      minSide: positive('minSide', o.minSide),
      maxAspectRatio: positive('maxAspectRatio', o.maxAspectRatio, false),
      maxJpegScans: Math.max(1, positive('jpegMaxScans', o.jpegMaxScans)),
    };
    this.s3 = options.s3;
    this.perceptualHash = options.perceptualHash === true;
    // Transparent areas get the pad colour: like padding, "no content" then normalises to ~0.
    this.background = { ...padColour(spec), alpha: 1 };
    if (!options.keepSharpCache) sharp.cache(false);
    this.pool = new TensorPool(3 * spec.size * spec.size, positive('maxIdleTensors', o.maxIdleTensors));
    const choice = o.jpegDecoder;
    if (choice !== 'auto' && choice !== 'native' && choice !== 'sharp') {
      throw new FilterError(
        'invalid_option',
        `intake option jpegDecoder must be auto, native or sharp, got ${choice}`,
        {
          option: 'jpegDecoder',
          value: choice,
        },
      );
    }
    const loaded = choice === 'sharp' ? { error: 'jpegDecoder is sharp' } : loadJpegNative();
    if (loaded.module && nativeSupports(spec)) {
      const limits = { maxPixels: this.limits.maxPixels, maxScans: this.limits.maxJpegScans };
      this.native = {
        module: loaded.module,
        params: nativeParams(spec, affine(spec), o.jpegDctScaling ? 1 : 0, limits),
      };
      this.jpegDecoder = `native (libjpeg-turbo ${loaded.module.libjpegTurboVersion}, DCT scaling ${o.jpegDctScaling ? 'on' : 'off'})`;
    } else {
      const why = loaded.error ?? `the native path has no ${spec.resample} resampling`;
      if (choice === 'native') {
        throw new FilterError('invalid_option', `jpegDecoder native is not available: ${why}`, {
          option: 'jpegDecoder',
        });
      }
      this.jpegDecoder = `sharp (${why})`;
    }
  }

  /**
   * Fetches (url, s3) or takes (base64, bytes) the image, decodes, checks and preprocesses it. Every failure of the
   * record is a RejectError (`fetch_failed`, `undecodable_image`, `image_too_small`); an abort through `signal`
   * rethrows the signal's reason instead, since the caller asked for it.
   */
  async prepare(image: ImageRef, signal?: AbortSignal): Promise<PreparedImage> {
    const bytes = await this.bytesOf(image, signal);
    signal?.throwIfAborted();
    const header = await inspect(bytes, this.limits);
    try {
      const [px, sink] = await Promise.all([
        this.pixelValues(bytes, header),
        encodedForSink(bytes, header, this.limits),
      ]);
      const prepared: PreparedImage = {
        encoded: sink.encoded,
        ext: sink.ext,
        width: header.width,
        height: header.height,
        pixelValues: px.pixelValues,
        shape: px.shape,
        ...(this.perceptualHash ? { phash: perceptualHash(px.pixelValues, this.spec) } : {}),
      };
      if (this.pool.max > 0) this.pooled.add(prepared);
      return prepared;
    } catch (err) {
      throw decodeError(err, header.format);
    }
  }

  private async pixelValues(
    bytes: Buffer,
    header: ImageHeader,
  ): Promise<{ pixelValues: Float32Array; shape: [number, number, number] }> {
    const pool = this.pool.max > 0 ? this.pool : undefined;
    if (this.native && header.format === 'jpeg' && header.orientation === 1 && header.space !== 'cmyk') {
      const S = this.spec.size;
      const out = pool ? pool.take() : new Float32Array(3 * S * S);
      try {
        await prepareJpeg(this.native.module, bytes, header.width, header.height, this.spec, this.native.params, out);
        return { pixelValues: out, shape: [3, S, S] };
      } catch (err) {
        pool?.give(out);
        // Hostile (frame size not the one checked, over the limits, too many scans): refused here, not retried.
        const reject = nativeReject(err);
        if (reject) throw reject;
        // libjpeg refused it (truncated, CMYK, corrupt...): sharp decodes it or names the reject, as for any image.
        this.nativeFallbacks++;
      }
    }
    return toPixelValues(
      openImage(bytes, header, this.limits, this.background),
      this.spec,
      header.width,
      header.height,
      pool,
    );
  }

  /**
   * Hands `image.pixelValues` back for reuse by a later prepare. Call it once nothing reads the tensor any more
   * (e.g. when the scorer's score() for it has resolved: the scorer copies inputs to its worker when it posts them),
   * and never read the tensor after. Optional: without it each image gets a new tensor, and each 1.77 MB allocation
   * brings V8's next full GC closer (measured in bench/intake: ~2 ms of CPU per image). Images not made by this
   * intake, and second releases, are ignored.
   */
  release(image: PreparedImage): void {
    if (this.pooled.delete(image)) this.pool.give(image.pixelValues);
  }

  private async bytesOf(image: ImageRef, signal?: AbortSignal): Promise<Buffer> {
    switch (image.kind) {
      case 'url':
        return (await this.fetcher.fetch(image.url, signal)).bytes;
      case 's3':
        return this.fromS3(image.bucket, image.key, signal);
      case 'base64':
      case 'bytes': {
        if (image.data.length === 0) throw fetchFailed('empty_body', 'inline image is empty');
        if (image.data.length > this.maxBytes) {
          throw fetchFailed('too_large', `inline image of ${image.data.length} bytes exceeds ${this.maxBytes}`, {
            limit: this.maxBytes,
            received: image.data.length,
          });
        }
        return image.data;
      }
    }
  }

  private async fromS3(bucket: string, key: string, signal?: AbortSignal): Promise<Buffer> {
    const where = `s3://${bucket}/${key}`;
    if (!this.s3)
      throw fetchFailed('connection_error', `no S3 client configured for ${where}`, { code: 'NO_S3_CLIENT' });
    let res;
    try {
      res = await this.s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: signal });
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      const e = err as { name?: string; message?: string };
      const status = isNotFound(err) ? 404 : httpStatus(err);
      if (status !== undefined) {
        throw fetchFailed('http_status', `S3 GetObject ${where}: ${e.name ?? 'error'} (HTTP ${status})`, {
          status,
          s3Error: e.name,
        });
      }
      throw fetchFailed('connection_error', `S3 GetObject ${where} failed: ${e.message ?? String(err)}`, {
        code: e.name ?? 'UNKNOWN',
      });
    }
    const body = res.Body as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
    if (res.ContentLength !== undefined && res.ContentLength > this.maxBytes) {
      body?.destroy?.();
      throw fetchFailed('too_large', `${where} is ${res.ContentLength} bytes, over the ${this.maxBytes}-byte limit`, {
        limit: this.maxBytes,
        contentLength: res.ContentLength,
      });
    }
    if (!body) throw fetchFailed('empty_body', `${where} has no body`);
    const chunks: Buffer[] = [];
    let received = 0;
    try {
      for await (const chunk of body) {
        received += chunk.length;
        if (received > this.maxBytes) {
          body.destroy?.();
          throw fetchFailed('too_large', `${where} exceeds the ${this.maxBytes}-byte limit`, {
            limit: this.maxBytes,
            received,
          });
        }
        chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      }
    } catch (err) {
      if (err instanceof RejectError) throw err;
      if (signal?.aborted) throw signal.reason;
      throw fetchFailed('connection_error', `reading ${where} failed: ${(err as Error).message}`, {
        code: (err as NodeJS.ErrnoException).code ?? 'UNKNOWN',
      });
    }
    if (received === 0) throw fetchFailed('empty_body', `${where} is empty`);
    return Buffer.concat(chunks, received);
  }

  /** Closes pooled connections. */
  async close(): Promise<void> {
    await this.fetcher.close();
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
