/**
 * One bench measurement, in its own process so UV_THREADPOOL_SIZE (read once at libuv start) can differ per run.
 * argv: <port> <pairs> <inFlight> <sharpConcurrency|0=default> <source: url|bytes|decode> <imageCount>
 * `decode` times sharp's plain JPEG decode to raw pixels only: the ceiling no preprocessing can beat.
 * Prints {pairs, wallMs, cpuMs, rejects}.
 */
import http from 'node:http';
import sharp from 'sharp';
import { Intake } from '../../lib/intake/index.ts';
import type { ImageRef, PreprocessSpec } from '../../lib/types.ts';

const [port, pairs, inFlight, sharpConc, source, imageCount] = process.argv.slice(2);
const n = Number(pairs);
const count = Number(imageCount);
if (Number(sharpConc) > 0) sharp.concurrency(Number(sharpConc));
sharp.cache(false); // every crawled image is new: the cache would only flatter the numbers

const SIGLIP: PreprocessSpec = {
  size: 384,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  rescale: 1 / 255,
  padToSquare: true,
  centerCrop: false,
  resample: 'bicubic',
};
const intake = new Intake({ allowAddresses: [`127.0.0.1:${port}`], perHostConcurrency: Number(inFlight) }, SIGLIP);

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
await Promise.all(Array.from({ length: Math.min(16, n) }, (_, i) => intake.prepare(ref(i))));

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
        if (source === 'decode') {
          const raw = await sharp(held[i % count]!)
            .raw()
            .toBuffer();
          checksum += raw[i % raw.length]!;
        } else {
          const p = await intake.prepare(ref(i));
          checksum += p.pixelValues[i % p.pixelValues.length]!;
        }
      } catch {
        rejects++;
      }
    }
  }),
);
const wallMs = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
await intake.close();
process.stdout.write(
  JSON.stringify({
    pairs: n,
    wallMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
    rejects,
    checksum: Number.isFinite(checksum),
  }) + '\n',
);
