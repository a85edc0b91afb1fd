/**
 * Bench image server, run as its own process so serving does not share the measured event loop. Serves `count`
 * photographic-ish JPEGs (256-1024 px per side, quality 85) at /img/<n>.jpg and prints its port on stdout.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { photoJpeg } from '../../test/intake/helpers.ts';

const count = Number(process.argv[2] ?? 64);
let seed = 12345;
const rand = (): number => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed / 0x7fffffff;
};
const images: Buffer[] = [];
let bytes = 0;
let pixels = 0;
for (let i = 0; i < count; i++) {
  const w = 256 + Math.floor(rand() * 769);
  const h = 256 + Math.floor(rand() * 769);
  const img = await photoJpeg(w, h, 85, i + 1);
  images.push(img);
  bytes += img.length;
  pixels += w * h;
}
const server = http.createServer((req, res) => {
  const m = /^\/img\/(\d+)\.jpg(?:\?.*)?$/.exec(req.url ?? '');
  const img = m ? images[Number(m[1]) % images.length] : undefined;
  if (!img) return void res.writeHead(404).end();
  res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': img.length });
  res.end(img);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(JSON.stringify({ port, count, meanBytes: bytes / count, meanPixels: pixels / count }) + '\n');
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
