/**
 * The image dedupe's own cost per pair against intake's on a miss: CPU time of the intake (decode + preprocess of
 * crawl-sized JPEGs into a SigLIP-384 pad tensor) and, on the same images, of the perceptual hash, the pixel digest
 * and ImageDedupe.check on an LMDB store already holding BENCH_ENTRIES accepted images (exact and near at the
 * default distance).
 *
 *   node --import tsx bench/cache/dedupe-cost.ts     # BENCH_IMAGES (default 64), BENCH_ENTRIES (default 20000)
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { ImageDedupe, DEFAULT_NEAR_DISTANCE } from '../../lib/cache/dedupe.ts';
import { perceptualHash, pixelDigest } from '../../lib/cache/image-digest.ts';
import { bucketsOf } from '../../lib/cache/near-index.ts';
import { LmdbScoreStore } from '../../lib/cache/store.ts';
import { Intake } from '../../lib/intake/index.ts';
import type { PreparedImage, PreprocessSpec } from '../../lib/types.ts';
import { SIGLIP_PAD } from '../../test/intake/helpers.ts';

const SPEC: PreprocessSpec = SIGLIP_PAD;
const IMAGES = Number(process.env.BENCH_IMAGES ?? 64);
const ENTRIES = Number(process.env.BENCH_ENTRIES ?? 20_000);

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

async function jpeg(n: number): Promise<Buffer> {
  const w = 640;
  const h = 480;
  const px = Buffer.alloc(w * h * 3);
  for (let i = 0; i < px.length; i++)
    px[i] = (Math.sin(i * 0.0007 * (n + 1)) * 90 + 128 + ((i * 2654435761) >>> 28)) & 255;
  return sharp(px, { raw: { width: w, height: h, channels: 3 } })
    .jpeg({ quality: 85 })
    .toBuffer();
}

async function main(): Promise<void> {
  const files = await Promise.all(Array.from({ length: IMAGES }, (_, n) => jpeg(n)));
  // The perceptual hash is measured where it runs, inside intake right after the tensor is made (the tensor still
  // warm in cache): intake with it against intake without, rounds interleaved against load drift, medians.
  const plain = new Intake({ maxIdleTensors: 0 }, SPEC);
  const hashing = new Intake({ maxIdleTensors: 0, perceptualHash: true }, SPEC);
  const round = async (intake: Intake) => {
    const t0 = cpuMs();
    for (const f of files) await intake.prepare({ kind: 'bytes', data: f });
    return (cpuMs() - t0) / IMAGES;
  };
  await round(plain);
  await round(hashing);
  const a: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < 5; r++) {
    a.push(await round(plain));
    b.push(await round(hashing));
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
  const intakeMs = median(a);
  console.log(
    `intake (${plain.jpegDecoder}): ${intakeMs.toFixed(3)} ms CPU per pair (rounds ${a.map((x) => x.toFixed(2))})`,
  );
  console.log(`intake with perceptualHash: ${median(b).toFixed(3)} ms (rounds ${b.map((x) => x.toFixed(2))})`);
  const hashMs = median(b) - intakeMs;
  console.log(
    `perceptual hash, in intake            ${hashMs.toFixed(4)} ms  (${((100 * hashMs) / intakeMs).toFixed(2)} % of intake)`,
  );
  const prepared: PreparedImage[] = [];
  for (const f of files) prepared.push(await plain.prepare({ kind: 'bytes', data: f }));
  await hashing.close();
  const intake = plain;

  const per = (label: string, fn: (p: PreparedImage) => unknown, reps = 5) => {
    for (const p of prepared.slice(0, 4)) fn(p);
    const t0 = cpuMs();
    for (let r = 0; r < reps; r++) for (const p of prepared) fn(p);
    const ms = (cpuMs() - t0) / (reps * IMAGES);
    console.log(`${label.padEnd(34)} ${ms.toFixed(4)} ms  (${((100 * ms) / intakeMs).toFixed(2)} % of intake)`);
    return ms;
  };
  per('perceptual hash, on a cold tensor', (p) => perceptualHash(p.pixelValues, SPEC));
  per('pixel digest (SHA-256 of tensor)', (p) => pixelDigest(p, SPEC));

  const dir = join(mkdtempSync(join(tmpdir(), 'mlmf-dedupe-cost-')), 'cache');
  const store = LmdbScoreStore.open(dir);
  const rand = () =>
    Math.floor(Math.random() * 2 ** 32)
      .toString(16)
      .padStart(8, '0');
  const space = new ImageDedupe(store, { mode: 'exact', spec: SPEC }) as unknown as { space: string };
  for (let i = 0; i < ENTRIES; i++) {
    const phash = rand() + rand();
    const first = { id: `e${i}`, source: { kind: 'file', path: '/x', line: i } as const, at: '2026-12-08T00:00:00Z' };
    await store.putImageIfAbsent(
      { digest: `d${i}`, phash, first },
      bucketsOf(phash).map((k) => `${space.space}/${k}`),
    );
  }
  const withHash = prepared.map((p) => ({ ...p, phash: perceptualHash(p.pixelValues, SPEC) }));
  for (const dedupe of [
    new ImageDedupe(store, { mode: 'exact', spec: SPEC }),
    new ImageDedupe(store, { mode: 'near', spec: SPEC }),
  ]) {
    for (const p of withHash.slice(0, 4))
      await dedupe.check(p, { id: 'q', origin: { kind: 'file', path: '/q', line: 0 } });
    const t0 = cpuMs();
    for (let r = 0; r < 5; r++) {
      for (const p of withHash) await dedupe.check(p, { id: 'q', origin: { kind: 'file', path: '/q', line: 0 } });
    }
    const ms = (cpuMs() - t0) / (5 * IMAGES);
    const label = `check ${dedupe.mode}${dedupe.mode === 'near' ? `:${DEFAULT_NEAR_DISTANCE}` : ''} (${ENTRIES} entries)`;
    console.log(`${label.padEnd(34)} ${ms.toFixed(4)} ms  (${((100 * ms) / intakeMs).toFixed(2)} % of intake)`);
  }
  await store.close();
  await intake.close();
}

await main();
