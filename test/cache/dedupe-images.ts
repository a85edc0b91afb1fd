/** Images for the --dedupe-images tests, drawn with sharp: varied enough that different ones hash far apart. */
import sharp, { type Sharp } from 'sharp';

/** A varied 200 x 150 picture: a gradient, shapes and a word, all drawn from `n`. */
export async function picture(n: number, width = 200, height = 150): Promise<Sharp> {
  const c = (k: number) => `hsl(${(n * 67 + k * 131) % 360},70%,${30 + ((n * 13 + k * 7) % 40)}%)`;
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">` +
    `<defs><linearGradient id="g" x2="${(n % 3) / 2}" y2="1"><stop offset="0" stop-color="${c(0)}"/>` +
    `<stop offset="1" stop-color="${c(1)}"/></linearGradient></defs><rect width="100%" height="100%" fill="url(#g)"/>` +
    `<circle cx="${(n * 37) % width}" cy="${(n * 53) % height}" r="${20 + (n % 4) * 12}" fill="${c(2)}"/>` +
    `<rect x="${(n * 71) % (width - 40)}" y="${(n * 29) % (height - 40)}" width="60" height="35" fill="${c(3)}"/>` +
    `<text x="10" y="${height - 15}" font-size="28" fill="${c(4)}">w${n}</text></svg>`;
  return sharp(Buffer.from(svg)).flatten();
}

/** The same JPEG with a comment segment after SOI: other bytes, the same entropy-coded pixels. */
export function withComment(jpeg: Buffer, text: string): Buffer {
  const body = Buffer.from(text, 'latin1');
  const segment = Buffer.concat([Buffer.from([0xff, 0xfe, (body.length + 2) >> 8, (body.length + 2) & 255]), body]);
  return Buffer.concat([jpeg.subarray(0, 2), segment, jpeg.subarray(2)]);
}

export const record = (id: string, image: Buffer, caption = `a picture called ${id}`) =>
  JSON.stringify({ id, image: { base64: image.toString('base64') }, caption });
