/**
 * One bench measurement, in its own process so UV_THREADPOOL_SIZE (read once at libuv start) can differ per run.
 * argv: <port> <pairs> <inFlight> <sharpConcurrency|0=default> <source: url|bytes|decode|fetch> <imageCount> [release]
 * `release` = 1 hands each tensor back with intake.release() once read, as the pipeline does after scoring.
 * `decode` times sharp's plain JPEG decode to raw pixels only: the ceiling no preprocessing can beat.
 * `fetch` times the guarded HTTP fetch alone (no decode), for the fetch share of a pair.
 * env BENCH_JPEG_DECODER (auto|native|sharp) and BENCH_JPEG_DCT_SCALING (0|1) set the intake's JPEG options.
 * Prints {pairs, wallMs, cpuMs, rejects, decoder}.
 */
import http from 'node:http';
import { PerformanceObserver, constants as perfConstants, type PerformanceEntry } from 'node:perf_hooks';
import sharp from 'sharp';
import { AddressGuard, parseAllowAddress } from '../../lib/intake/address-guard.ts';
import { Fetcher } from '../../lib/intake/fetch.ts';
import { Intake } from '../../lib/intake/index.ts';
import type { ImageRef, PreprocessSpec } from '../../lib/types.ts';

const [port, pairs, inFlight, sharpConc, source, imageCount, release] = process.argv.slice(2);
const recycle = release === '1';
const n = Number(pairs);
const count = Number(imageCount);
if (Number(sharpConc) > 0) sharp.concurrency(Number(sharpConc));

const SIGLIP: PreprocessSpec = {
  size: 384,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  rescale: 1 / 255,
  padToSquare: true,
  centerCrop: false,
  resample: 'bicubic',
};
const jpegOptions = {
  ...(process.env.BENCH_JPEG_DECODER ? { jpegDecoder: process.env.BENCH_JPEG_DECODER as 'auto' } : {}),
  ...(process.env.BENCH_JPEG_DCT_SCALING ? { jpegDctScaling: process.env.BENCH_JPEG_DCT_SCALING === '1' } : {}),
};
const intake = new Intake(
  { allowAddresses: [`127.0.0.1:${port}`], perHostConcurrency: Number(inFlight), ...jpegOptions },
  SIGLIP,
);
// run.ts may run this client against an earlier lib/intake (BENCH_BASELINE) that has no release() and left the libvips
// cache on; its own bench measured it with the cache off, and so does this one.
const canRelease = typeof (intake as Partial<Intake>).release === 'function';
if (!canRelease) sharp.cache(false);
const fetcher = new Fetcher(
  {
    userAgent: 'bench',
    connectTimeoutMs: 5000,
    headersTimeoutMs: 10_000,
    bodyTimeoutMs: 10_000,
    totalTimeoutMs: 30_000,
    maxBytes: 16 * 1024 * 1024,
    maxRedirects: 5,
    retries: 2,
    retryBaseDelayMs: 250,
    maxRetryDelayMs: 5000,
    perHostConcurrency: Number(inFlight),
  },
  new AddressGuard({ allow: [parseAllowAddress(`127.0.0.1:${port}`)] }),
);

// For the decode-only run the bytes are fetched up front with plain http, outside the measurement.
const held: Buffer[] = [];
if (source === 'bytes' || source === 'decode') {
  for (let i = 0; i < count; i++) {
    held.push(
      await new Promise<Buffer>((resolve, reject) =>
        http
          .get(`http://127.0.0.1:${port}/img/${i}.jpg`, (res) => {
            const c: Buffer[] = [];
            res.on('data', (d: Buffer) => c.push(d)).on('end', () => resolve(Buffer.concat(c)));
          })
          .on('error', reject),
      ),
    );
  }
}
const ref = (i: number): ImageRef =>
  source === 'bytes'
    ? { kind: 'bytes', data: held[i % count]! }
    : { kind: 'url', url: `http://127.0.0.1:${port}/img/${i % count}.jpg?r=${i}` };

// Warm up: connections, sharp init, JIT.
await Promise.all(
  Array.from({ length: Math.min(16, n) }, (_, i) =>
    source === 'fetch' ? fetcher.fetch(`http://127.0.0.1:${port}/img/${i % count}.jpg`) : intake.prepare(ref(i)),
  ),
);

// Main-thread GC pauses during the measurement: the per-pair tensors are external memory, and the full collections
// they trigger are a large share of a pair's CPU.
let gcMs = 0;
let majorGcs = 0;
const gcObserver = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    gcMs += e.duration;
    const detail = (e as PerformanceEntry & { detail?: { kind?: number } }).detail;
    if (detail?.kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) majorGcs++;
  }
});
gcObserver.observe({ entryTypes: ['gc'] });

let next = 0;
let rejects = 0;
let checksum = 0;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await Promise.all(
  Array.from({ length: Number(inFlight) }, async () => {
    while (next < n) {
      const i = next++;
      try {
        if (source === 'fetch') {
          const r = ref(i);
          const got = await fetcher.fetch(r.kind === 'url' ? r.url : '');
          checksum += got.bytes[i % got.bytes.length]!;
        } else if (source === 'decode') {
          const raw = await sharp(held[i % count]!)
            .raw()
            .toBuffer();
          checksum += raw[i % raw.length]!;
        } else {
          const p = await intake.prepare(ref(i));
          checksum += p.pixelValues[i % p.pixelValues.length]!;
          if (recycle && canRelease) intake.release(p);
        }
      } catch {
        rejects++;
      }
    }
  }),
);
const wallMs = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
gcObserver.disconnect();
await intake.close();
await fetcher.close();
process.stdout.write(
  JSON.stringify({
    pairs: n,
    wallMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
    rejects,
    gcMs,
    majorGcs,
    checksum: Number.isFinite(checksum),
  }) + '\n',
);
