/**
 * Bench image server, run as its own process so serving does not share the measured event loop. Serves `count`
 * photographic-ish JPEGs (256-1024 px per side, quality 85) at /img/<n>.jpg and prints its port on stdout.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { benchImages } from './images.ts';

const count = Number(process.argv[2] ?? 64);
const set = await benchImages(count);
const images = set.map((im) => im.bytes);
const bytes = images.reduce((a, b) => a + b.length, 0);
const pixels = set.reduce((a, im) => a + im.width * im.height, 0);
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
