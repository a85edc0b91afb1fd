/**
 * The intake benchmark's images: `count` photographic-ish JPEGs, 256-1024 px per side (seeded, so every run and
 * every script gets the same set), quality 85.
 */
import { photoJpeg } from '../../test/intake/helpers.ts';

export interface BenchImage {
  readonly bytes: Buffer;
  readonly width: number;
  readonly height: number;
}

export async function benchImages(count: number): Promise<BenchImage[]> {
  let seed = 12345;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const images: BenchImage[] = [];
  for (let i = 0; i < count; i++) {
    const width = 256 + Math.floor(rand() * 769);
    const height = 256 + Math.floor(rand() * 769);
    images.push({ bytes: await photoJpeg(width, height, 85, i + 1), width, height });
  }
  return images;
}
