/**
 * Regenerates sample/pairs.jsonl: small synthetic images (inline base64, so the quick start needs no network) with
 * captions, plus a few records that must end as rejects (bad JSON, missing caption, blocked address, tiny image).
 * Run: npx tsx scripts/make-sample.ts
 */
import { writeFileSync } from 'node:fs';
import sharp from 'sharp';

const captions = [
  'A red double-decker bus parked beside a stone bridge in London on a cloudy afternoon.',
  'Golden retriever puppy lying on a green lawn with a blue ball between its paws.',
  'Bowl of ramen with a soft-boiled egg, sliced pork and spring onions on a wooden table.',
  'Snow-covered pine forest at sunrise, seen from the top of a ski lift.',
  'Vintage typewriter on a desk next to a stack of old letters and a cup of coffee.',
  'Two kids flying a yellow kite on a windy beach in Brittany.',
  'IMG_2041.JPG',
  'buy cheap shoes online free shipping best price',
  'Close-up of a monarch butterfly resting on a purple coneflower.',
  'Aerial view of terraced rice fields in Bali, bright green after the rain.',
];

async function image(i: number): Promise<string> {
  const w = 160 + ((i * 37) % 96);
  const h = 128 + ((i * 53) % 96);
  const raw = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = (y * w + x) * 3;
      raw[o] = (x * (i + 3) + y) & 255;
      raw[o + 1] = (y * (i + 5)) & 255;
      raw[o + 2] = ((x ^ y) * (i + 1)) & 255;
    }
  }
  const jpg = await sharp(raw, { raw: { width: w, height: h, channels: 3 } })
    .jpeg({ quality: 70 })
    .toBuffer();
  return jpg.toString('base64');
}

const lines: string[] = [];
for (let i = 0; i < captions.length; i++) {
  lines.push(
    JSON.stringify({ id: `sample-${i}`, image: { base64: await image(i) }, caption: captions[i], lang: 'en' }),
  );
}
lines.push('{"id": "broken-json", "caption": ');
lines.push(JSON.stringify({ id: 'no-caption', image: { base64: await image(99) } }));
lines.push(JSON.stringify({ id: 'metadata-address', url: 'http://169.254.169.254/latest/meta-data/', caption: 'x' }));
const tiny = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } })
  .png()
  .toBuffer();
lines.push(JSON.stringify({ id: 'tiny-image', image: { base64: tiny.toString('base64') }, caption: 'a gray square' }));
writeFileSync(new URL('../sample/pairs.jsonl', import.meta.url), lines.join('\n') + '\n');
console.log(`wrote sample/pairs.jsonl (${lines.length} records)`);
