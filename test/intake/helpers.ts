/** Test fixtures for the intake: a loopback HTTP server with scripted routes and images generated at test time. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import zlib from 'node:zlib';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { RejectError, type PreprocessSpec } from '../../lib/types.ts';

export type Route = (req: http.IncomingMessage, res: http.ServerResponse) => void;

export interface TestServer {
  readonly port: number;
  readonly base: string;
  /** Requests received per path. */
  readonly hits: Map<string, number>;
  readonly userAgents: string[];
  /** TCP connections accepted in total. */
  connections: number;
  total(): number;
  close(): Promise<void>;
}

export async function startServer(routes: Record<string, Route>): Promise<TestServer> {
  const hits = new Map<string, number>();
  const userAgents: string[] = [];
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    userAgents.push(String(req.headers['user-agent']));
    const route = routes[path];
    if (!route) {
      res.writeHead(404).end('not found');
      return;
    }
    route(req, res);
  });
  const state: TestServer = {
    port: 0,
    base: '',
    hits,
    userAgents,
    connections: 0,
    total: () => [...hits.values()].reduce((a, b) => a + b, 0),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  server.on('connection', (s) => {
    state.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return Object.assign(state, { port, base: `http://127.0.0.1:${port}` });
}

/** Serves `body` with a content type. */
export function serve(body: Buffer, type = 'image/jpeg', extra: http.OutgoingHttpHeaders = {}): Route {
  return (_req, res) => {
    res.writeHead(200, { 'content-type': type, 'content-length': body.length, ...extra });
    res.end(body);
  };
}

/** A photographic-ish JPEG: smooth gradients plus noise, so it compresses like a real photo. */
export async function photoJpeg(width: number, height: number, quality = 85, seed = 1): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  let s = seed >>> 0 || 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      // sensor-like grain plus mid-frequency texture over smooth gradients: about 1.5-2 bits/pixel at q85,
      // in the range of crawled photos
      const n = ((s >>> 0) % 20) - 10 + 18 * Math.sin(x / 9 + seed) * Math.cos(y / 13);
      const i = (y * width + x) * 3;
      raw[i] = clamp((x / width) * 200 + 30 + n);
      raw[i + 1] = clamp((y / height) * 180 + 40 + n);
      raw[i + 2] = clamp(((x + y) / (width + height)) * 220 + 20 - n);
    }
  }
  return sharp(raw, { raw: { width, height, channels: 3 } })
    .jpeg({ quality })
    .toBuffer();
}

function clamp(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : Math.round(v);
}

/** A solid-colour image in the given format. */
export function solid(width: number, height: number, colour: { r: number; g: number; b: number; alpha?: number }) {
  return sharp({ create: { width, height, channels: colour.alpha === undefined ? 3 : 4, background: colour } });
}

/**
 * A valid PNG whose header says `side` x `side` 1-bit grey pixels, all zero: a few KB on disk, `side`^2 pixels
 * decoded. Written by hand because sharp itself refuses to create something that large.
 */
export function pngBomb(side: number): Buffer {
  const chunk = (type: string, data: Buffer): Buffer => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(td) >>> 0);
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(side, 0);
  ihdr.writeUInt32BE(side, 4);
  ihdr[8] = 1; // bit depth
  ihdr[9] = 0; // greyscale
  const rowBytes = 1 + Math.ceil(side / 8); // filter byte + packed pixels
  const idat = zlib.deflateSync(Buffer.alloc(rowBytes * side), { level: 9 });
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', idat),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

export const SIGLIP_PAD: PreprocessSpec = {
  size: 384,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  rescale: 1 / 255,
  padToSquare: true,
  centerCrop: false,
  resample: 'bicubic',
};

export const SMALL_SQUASH: PreprocessSpec = { ...SIGLIP_PAD, size: 32, padToSquare: false };

/** Asserts `p` rejects with a RejectError of `code` whose detail contains `detail`; returns the reason. */
export async function expectReject(
  p: Promise<unknown>,
  code: string,
  detail: Record<string, unknown> = {},
): Promise<RejectError['reason']> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof RejectError, `expected RejectError ${code}, got ${String(caught)}`);
  assert.equal(caught.reason.code, code, caught.message);
  for (const [k, v] of Object.entries(detail)) {
    assert.deepEqual(caught.reason.detail?.[k], v, `detail.${k} in ${JSON.stringify(caught.reason.detail)}`);
  }
  return caught.reason;
}

/** Channel values of pixel (x, y) of a CHW tensor. */
export function pixel(t: Float32Array, size: number, x: number, y: number): [number, number, number] {
  const n = size * size;
  const i = y * size + x;
  return [t[i]!, t[n + i]!, t[2 * n + i]!];
}
