/**
 * The score-cache benchmark's synthetic crawl: one img2dataset-style WebDataset shard (`<key>.jpg`, `.txt`,
 * `.json` with key and url) in which a share of the pairs are revisits. Seeded, so every run replays the same crawl.
 *
 * Each pair after the first is, by a draw:
 *   - `repeatPair` (default 40%): an exact repeat of an earlier pair (same image bytes, same caption) under a new key
 *     and url, as a crawler revisiting a page gives;
 *   - `repeatImage` (default 10%): an earlier pair's image bytes under a new caption (one image, many pages);
 *   - otherwise a new image and a new caption.
 * Images are photographic-ish JPEGs (gradients, texture and grain; test/intake/helpers.ts photoJpeg), 300-1100 px per
 * side at quality 80-90: 20-200 KB, the range of crawled photos.
 */
import { createWriteStream, existsSync, mkdirSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';
import { finished } from 'node:stream/promises';
import tarStream from 'tar-stream';
import { photoJpeg } from '../../test/intake/helpers.ts';

export interface CrawlPair {
  readonly key: string;
  readonly image: Buffer;
  readonly caption: string;
  readonly kind: 'new' | 'repeatPair' | 'repeatImage';
}

export interface CrawlOptions {
  readonly pairs: number;
  readonly repeatPair: number;
  readonly repeatImage: number;
  readonly seed: number;
}

const WORDS = (
  'photo of a red vintage car parked on street old town sunset beach with palm trees family dinner table ' +
  'wooden chair kitchen interior modern design stock image isolated white background cute dog running in the ' +
  'park mountain landscape lake reflection winter snow city skyline at night wedding dress bride flowers ' +
  'handmade ceramic mug coffee breakfast laptop on desk office workspace shoes for men leather brown'
).split(' ');

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    return s / 0x7fffffff;
  };
}

/** The crawl's pairs, in order. */
export async function crawlPairs(options: CrawlOptions): Promise<CrawlPair[]> {
  const rand = rng(options.seed);
  const pick = <T>(list: readonly T[]) => list[Math.floor(rand() * list.length)]!;
  const caption = () => Array.from({ length: 4 + Math.floor(rand() * 18) }, () => pick(WORDS)).join(' ');
  const pairs: CrawlPair[] = [];
  for (let i = 0; i < options.pairs; i++) {
    const key = `crawl-${String(i).padStart(6, '0')}`;
    const draw = rand();
    if (i > 0 && draw < options.repeatPair) {
      const earlier = pick(pairs);
      pairs.push({ key, image: earlier.image, caption: earlier.caption, kind: 'repeatPair' });
    } else if (i > 0 && draw < options.repeatPair + options.repeatImage) {
      pairs.push({ key, image: pick(pairs).image, caption: `${caption()} #${i}`, kind: 'repeatImage' });
    } else {
      const width = 300 + Math.floor(rand() * 800);
      const height = 300 + Math.floor(rand() * 800);
      const image = await photoJpeg(width, height, 80 + Math.floor(rand() * 11), options.seed + i);
      pairs.push({ key, image, caption: `${caption()} #${i}`, kind: 'new' });
    }
  }
  return pairs;
}

/** Writes the pairs as one WebDataset shard at `path` (renamed into place whole; kept across runs by the caller). */
export async function writeShard(path: string, pairs: readonly CrawlPair[]): Promise<void> {
  if (existsSync(path)) return;
  mkdirSync(dirname(path), { recursive: true });
  const pack = tarStream.pack();
  const file = createWriteStream(`${path}.partial`);
  pack.pipe(file);
  const mtime = new Date(0);
  for (const [i, p] of pairs.entries()) {
    const meta = { key: p.key, url: `https://shop${i % 97}.example.com/item/${i}` };
    pack.entry({ name: `${p.key}.jpg`, mtime }, p.image);
    pack.entry({ name: `${p.key}.txt`, mtime }, p.caption);
    pack.entry({ name: `${p.key}.json`, mtime }, JSON.stringify(meta));
  }
  pack.finalize();
  await finished(file);
  renameSync(`${path}.partial`, path);
}
