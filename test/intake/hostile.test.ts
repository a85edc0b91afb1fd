/**
 * Hostile-input corpus: every case must end as the right RejectError, and blocked addresses must never be connected to.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Intake, type IntakeOptions } from '../../lib/intake/index.ts';
import { RejectError } from '../../lib/types.ts';
import { waitFor } from '../helpers/poll.ts';
import {
  SMALL_SQUASH,
  expectReject,
  photoJpeg,
  pngBomb,
  serve,
  solid,
  startServer,
  type TestServer,
} from './helpers.ts';

let srv: TestServer;
let jpeg: Buffer;
const open: Intake[] = [];
let flaky = 0;

function intake(o: IntakeOptions = {}): Intake {
  const i = new Intake({ retryBaseDelayMs: 5, maxRetryDelayMs: 200, ...o }, SMALL_SQUASH);
  open.push(i);
  return i;
}
/** An intake allowed to reach the test server only. */
function allowed(o: IntakeOptions = {}): Intake {
  return intake({ allowAddresses: [`127.0.0.1:${srv.port}`], ...o });
}
const url = (path: string): { kind: 'url'; url: string } => ({ kind: 'url', url: srv.base + path });

before(async () => {
  jpeg = await photoJpeg(64, 48);
  const big = Buffer.alloc(300_000, 0xff);
  const svg = Buffer.from('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>');
  srv = await startServer({
    '/ok.jpg': serve(jpeg),
    '/no-type.jpg': (_q, r) => r.end(jpeg),
    '/404': (_q, r) => r.writeHead(404).end('gone'),
    '/500': (_q, r) => r.writeHead(500).end('oops'),
    '/429': (_q, r) => r.writeHead(429, { 'retry-after': '0' }).end(),
    '/429-long': (_q, r) => r.writeHead(429, { 'retry-after': '3600' }).end(),
    '/flaky': (q, r) => (++flaky % 2 === 1 ? r.writeHead(503).end() : serve(jpeg)(q, r)),
    '/redirect-private': (_q, r) => r.writeHead(302, { location: 'http://10.0.0.1/x.jpg' }).end(),
    '/redirect-metadata': (_q, r) => r.writeHead(301, { location: 'http://169.254.169.254/latest/meta-data/' }).end(),
    '/redirect-evil': (_q, r) => r.writeHead(307, { location: `http://evil.test:${srv.port}/ok.jpg` }).end(),
    '/redirect-file': (_q, r) => r.writeHead(302, { location: 'file:///etc/passwd' }).end(),
    '/redirect-ok': (_q, r) => r.writeHead(302, { location: '/ok.jpg' }).end(),
    '/loop': (_q, r) => r.writeHead(302, { location: '/loop' }).end(),
    '/slow-headers': () => undefined, // never answers
    '/slow-body': (_q, r) => {
      r.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': jpeg.length });
      r.write(jpeg.subarray(0, 100)); // then stalls
    },
    '/trickle': (_q, r) => {
      r.writeHead(200, { 'content-type': 'image/jpeg' });
      const t = setInterval(() => (r.destroyed ? clearInterval(t) : r.write(Buffer.from([0xff]))), 40);
    },
    '/big-cl': serve(big),
    '/big-chunked': (_q, r) => {
      r.writeHead(200, { 'content-type': 'image/jpeg' });
      let sent = 0;
      const pump = (): void => {
        while (sent < 400_000 && !r.destroyed) {
          sent += 16_384;
          if (!r.write(big.subarray(0, 16_384))) return void r.once('drain', pump);
        }
        r.end();
      };
      pump();
    },
    '/html': serve(Buffer.from('<!doctype html><title>x</title>'), 'text/html; charset=utf-8'),
    '/svg': serve(svg, 'image/svg+xml'),
    '/svg-octet': serve(svg, 'application/octet-stream'),
    '/truncated.jpg': serve(jpeg.subarray(0, Math.floor(jpeg.length / 2))),
    '/bomb.png': serve(pngBomb(20000), 'image/png'),
    '/empty': serve(Buffer.alloc(0)),
    '/tiny.png': async (q, r) => serve(await solid(8, 8, { r: 1, g: 2, b: 3 }).png().toBuffer(), 'image/png')(q, r),
    '/banner.png': async (q, r) =>
      serve(await solid(1200, 40, { r: 1, g: 2, b: 3 }).png().toBuffer(), 'image/png')(q, r),
  });
});

after(async () => {
  await Promise.all(open.map((i) => i.close()));
  await srv.close();
});

describe('SSRF guard: blocked before any connection', () => {
  const cases: [string, () => string, Record<string, unknown>][] = [
    ['loopback', () => `http://127.0.0.1:${srv.port}/ok.jpg`, { address: '127.0.0.1', range: 'loopback' }],
    ['decimal IPv4', () => `http://2130706433:${srv.port}/ok.jpg`, { address: '127.0.0.1' }],
    ['hex IPv4', () => `http://0x7f000001:${srv.port}/ok.jpg`, { address: '127.0.0.1' }],
    ['octal IPv4', () => `http://0177.0.0.1:${srv.port}/ok.jpg`, { address: '127.0.0.1' }],
    ['short IPv4', () => `http://127.1:${srv.port}/ok.jpg`, { address: '127.0.0.1' }],
    ['unspecified', () => `http://0.0.0.0:${srv.port}/ok.jpg`, { range: 'unspecified' }],
    ['IPv6 loopback', () => `http://[::1]:${srv.port}/ok.jpg`, { range: 'loopback' }],
    ['IPv4-mapped IPv6', () => `http://[::ffff:127.0.0.1]:${srv.port}/ok.jpg`, { address: '127.0.0.1' }],
    ['RFC1918', () => 'http://10.0.0.1/x.jpg', { address: '10.0.0.1', range: 'private' }],
    ['172.16/12', () => 'http://172.31.255.1/x.jpg', { range: 'private' }],
    ['192.168/16', () => 'http://192.168.1.1/x.jpg', { range: 'private' }],
    ['CGNAT', () => 'http://100.64.0.1/x.jpg', { range: 'carrierGradeNat' }],
    ['benchmarking 198.18/15', () => 'http://198.18.0.1/x.jpg', { range: 'reserved' }],
    ['cloud metadata', () => 'http://169.254.169.254/latest/meta-data/', { range: 'linkLocal' }],
    ['broadcast', () => 'http://255.255.255.255/x.jpg', { range: 'broadcast' }],
    ['multicast', () => 'http://224.0.0.1/x.jpg', { range: 'multicast' }],
    ['IPv6 link-local', () => 'http://[fe80::1]/x.jpg', { range: 'linkLocal' }],
    ['IPv6 unique-local', () => 'http://[fd12:3456::1]/x.jpg', { range: 'uniqueLocal' }],
    ['NAT64 of private', () => 'http://[64:ff9b::a00:1]/x.jpg', { range: 'rfc6052 of private' }],
    ['6to4 of loopback', () => 'http://[2002:7f00:1::1]/x.jpg', { range: '6to4 of loopback' }],
    ['IPv4-compatible IPv6', () => 'http://[::7f00:1]/x.jpg', {}],
    ['name -> loopback (test server)', () => `http://evil.test:${srv.port}/ok.jpg`, { address: '127.0.0.1' }],
    ['name -> 10.0.0.1', () => 'http://internal.test/x.jpg', { address: '10.0.0.1' }],
    ['name -> metadata', () => 'http://meta.test/x.jpg', { address: '169.254.169.254' }],
    ['name -> public + private (rebinding bait)', () => 'http://mixed.test/x.jpg', { address: '10.0.0.2' }],
    ['localhost', () => `http://localhost:${srv.port}/ok.jpg`, { address: '127.0.0.1' }],
  ];
  const lookup: IntakeOptions['lookup'] = async (host) => {
    const table: Record<string, string[]> = {
      'evil.test': ['127.0.0.1'],
      'internal.test': ['10.0.0.1'],
      'meta.test': ['169.254.169.254'],
      'mixed.test': ['93.184.215.14', '10.0.0.2'],
      localhost: ['127.0.0.1', '::1'],
    };
    const a = table[host];
    if (!a) throw Object.assign(new Error(`no such host ${host}`), { code: 'ENOTFOUND' });
    return a.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }) as const);
  };
  for (const [name, u, detail] of cases) {
    it(name, async () => {
      const before = srv.connections;
      await expectReject(intake({ lookup }).prepare({ kind: 'url', url: u() }), 'fetch_failed', {
        kind: 'blocked_address',
        ...detail,
      });
      assert.equal(srv.connections, before, 'a blocked address must never be connected to');
    });
  }

  it('an allow rule host:port opens that port only', async () => {
    const i = allowed();
    const ok = await i.prepare(url('/ok.jpg'));
    assert.equal(ok.width, 64);
    await expectReject(i.prepare({ kind: 'url', url: `http://127.0.0.1:${srv.port + 1}/ok.jpg` }), 'fetch_failed', {
      kind: 'blocked_address',
    });
  });

  it('a CIDR allow rule opens the range', async () => {
    const ok = await intake({ allowAddresses: ['127.0.0.0/8'] }).prepare(url('/ok.jpg'));
    assert.equal(ok.height, 48);
  });

  it('resolves once per connection and dials the checked address (no rebinding window)', async () => {
    let calls = 0;
    const answers = [['127.0.0.1'], ['10.0.0.1']];
    const i = intake({
      allowAddresses: [`127.0.0.1:${srv.port}`],
      lookup: async () => (answers[Math.min(calls++, 1)] ?? []).map((address) => ({ address, family: 4 as const })),
    });
    const u = { kind: 'url' as const, url: `http://rebind.test:${srv.port}/ok.jpg` };
    await i.prepare(u);
    await i.prepare(u); // keep-alive: same checked connection, no second lookup
    assert.equal(calls, 1);
  });

  it('HTTPS dials the checked address and keeps the host name for SNI (and verifies certificates)', async () => {
    const tls = await import('node:tls');
    const seen: (string | undefined)[] = [];
    const server = tls.createServer({
      SNICallback: (name, cb) => {
        seen.push(name);
        cb(new Error('test server has no certificate'), undefined);
      },
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as import('node:net').AddressInfo).port;
    try {
      const i = intake({
        allowAddresses: [`127.0.0.1:${port}`],
        retries: 0,
        lookup: async () => [{ address: '127.0.0.1', family: 4 }],
      });
      await expectReject(i.prepare({ kind: 'url', url: `https://img.test:${port}/a.jpg` }), 'fetch_failed', {
        kind: 'connection_error',
      });
      assert.deepEqual(seen, ['img.test']);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('a redirect from an allowed server to private addresses is blocked on that hop', async () => {
    const lookup: IntakeOptions['lookup'] = async () => [{ address: '10.0.0.5', family: 4 }];
    for (const [path, address] of [
      ['/redirect-private', '10.0.0.1'],
      ['/redirect-metadata', '169.254.169.254'],
      ['/redirect-evil', '10.0.0.5'],
    ] as const) {
      const before = srv.hits.get(path) ?? 0;
      await expectReject(allowed({ lookup }).prepare(url(path)), 'fetch_failed', { kind: 'blocked_address', address });
      assert.equal((srv.hits.get(path) ?? 0) - before, 1, 'the first hop was fetched, the second refused');
    }
  });

  it('follows a same-origin redirect, refuses non-http schemes and loops', async () => {
    const i = allowed({ maxRedirects: 3 });
    assert.equal((await i.prepare(url('/redirect-ok'))).width, 64);
    await expectReject(i.prepare(url('/redirect-file')), 'fetch_failed', { kind: 'bad_scheme', scheme: 'file:' });
    const before = srv.hits.get('/loop') ?? 0;
    await expectReject(i.prepare(url('/loop')), 'fetch_failed', { kind: 'too_many_redirects', limit: 3 });
    assert.equal((srv.hits.get('/loop') ?? 0) - before, 4);
  });

  it('refuses non-http schemes up front', async () => {
    await expectReject(intake().prepare({ kind: 'url', url: 'gopher://127.0.0.1/x' }), 'fetch_failed', {
      kind: 'bad_scheme',
    });
  });
});

describe('HTTP failures', () => {
  it('404 is not retried', async () => {
    const before = srv.hits.get('/404') ?? 0;
    await expectReject(allowed().prepare(url('/404')), 'fetch_failed', { kind: 'http_status', status: 404 });
    assert.equal((srv.hits.get('/404') ?? 0) - before, 1);
  });

  it('500 is retried with backoff, then rejected', async () => {
    const before = srv.hits.get('/500') ?? 0;
    await expectReject(allowed({ retries: 2 }).prepare(url('/500')), 'fetch_failed', {
      kind: 'http_status',
      status: 500,
      attempts: 3,
    });
    assert.equal((srv.hits.get('/500') ?? 0) - before, 3);
  });

  it('429 honours Retry-After within the cap, gives up at once beyond it', async () => {
    let before = srv.hits.get('/429') ?? 0;
    await expectReject(allowed({ retries: 3 }).prepare(url('/429')), 'fetch_failed', {
      status: 429,
      attempts: 4,
    });
    assert.equal((srv.hits.get('/429') ?? 0) - before, 4);
    before = srv.hits.get('/429-long') ?? 0;
    await expectReject(allowed({ retries: 3 }).prepare(url('/429-long')), 'fetch_failed', {
      status: 429,
      attempts: 1,
      retryAfterMs: 3_600_000,
    });
    assert.equal((srv.hits.get('/429-long') ?? 0) - before, 1);
  });

  it('a transient 503 then 200 succeeds', async () => {
    flaky = 0;
    const r = await allowed({ retries: 1 }).prepare(url('/flaky'));
    assert.equal(r.width, 64);
  });

  it('connection refused is retried, then connection_error', async () => {
    const closed = await startServer({});
    const port = closed.port;
    await closed.close();
    await expectReject(
      intake({ allowAddresses: [`127.0.0.1:${port}`], retries: 2 }).prepare({
        kind: 'url',
        url: `http://127.0.0.1:${port}/x.jpg`,
      }),
      'fetch_failed',
      { kind: 'connection_error', code: 'ECONNREFUSED', attempts: 3 },
    );
  });

  it('slow-loris headers hit the headers timeout', async () => {
    const t0 = Date.now();
    await expectReject(allowed({ headersTimeoutMs: 200 }).prepare(url('/slow-headers')), 'fetch_failed', {
      kind: 'timeout',
      phase: 'headers',
    });
    assert.ok(Date.now() - t0 < 3000);
  });

  it('a stalled body hits the body timeout', async () => {
    await expectReject(allowed({ bodyTimeoutMs: 200 }).prepare(url('/slow-body')), 'fetch_failed', {
      kind: 'timeout',
      phase: 'body',
    });
  });

  it('a body trickling in forever hits the total deadline', async () => {
    const t0 = Date.now();
    await expectReject(allowed({ bodyTimeoutMs: 1000, totalTimeoutMs: 400 }).prepare(url('/trickle')), 'fetch_failed', {
      kind: 'timeout',
      phase: 'total',
    });
    assert.ok(Date.now() - t0 < 3000);
  });

  it('a body over the cap is cut off, with and without Content-Length', async () => {
    await expectReject(allowed({ maxBytes: 100_000 }).prepare(url('/big-cl')), 'fetch_failed', {
      kind: 'too_large',
      contentLength: 300_000,
    });
    const r = await expectReject(allowed({ maxBytes: 100_000 }).prepare(url('/big-chunked')), 'fetch_failed', {
      kind: 'too_large',
    });
    const received = r.detail?.received as number;
    assert.ok(received > 100_000 && received < 200_000, `stopped early, at ${received}`);
  });

  it('refuses non-image content types, including SVG', async () => {
    await expectReject(allowed().prepare(url('/html')), 'fetch_failed', {
      kind: 'bad_content_type',
      contentType: 'text/html',
    });
    await expectReject(allowed().prepare(url('/svg')), 'fetch_failed', {
      kind: 'bad_content_type',
      contentType: 'image/svg+xml',
    });
  });

  it('refuses SVG bytes behind a generic content type by magic bytes', async () => {
    await expectReject(allowed().prepare(url('/svg-octet')), 'undecodable_image', {
      kind: 'unsupported_format',
      format: 'svg',
    });
  });

  it('accepts a missing content type when the bytes are an image', async () => {
    assert.equal((await allowed().prepare(url('/no-type.jpg'))).ext, 'jpg');
  });

  it('a zero-byte body is empty_body', async () => {
    await expectReject(allowed().prepare(url('/empty')), 'fetch_failed', { kind: 'empty_body' });
  });

  it('sends the operator User-Agent', async () => {
    await allowed({ userAgent: 'ExampleCrawler/2.0 (+ops@example.org)' }).prepare(url('/ok.jpg'));
    assert.equal(srv.userAgents.at(-1), 'ExampleCrawler/2.0 (+ops@example.org)');
  });

  it('an abort from the caller rejects with the abort reason, not a RejectError', async () => {
    const ac = new AbortController();
    const asked = srv.userAgents.length;
    const p = allowed().prepare(url('/slow-headers'), ac.signal);
    p.catch(() => undefined); // asserted below, once aborted
    // Aborted while the request waits for headers the server never sends.
    await waitFor('the request at the server', () => srv.userAgents.length > asked, 10_000, 5);
    ac.abort(new Error('shutdown'));
    await assert.rejects(p, (e: unknown) => !(e instanceof RejectError) && (e as Error).message === 'shutdown');
  });

  it('limits concurrent requests per host', async () => {
    let active = 0;
    let peak = 0;
    const s = await startServer({
      '/slow.jpg': (_q, r) => {
        peak = Math.max(peak, ++active);
        setTimeout(() => {
          active--;
          serve(jpeg)(_q, r);
        }, 60);
      },
    });
    try {
      const i = intake({ allowAddresses: [`127.0.0.1:${s.port}`], perHostConcurrency: 2 });
      await Promise.all(Array.from({ length: 6 }, () => i.prepare({ kind: 'url', url: `${s.base}/slow.jpg` })));
      assert.equal(peak, 2);
      assert.ok(s.connections <= 2, `keep-alive reuses connections (${s.connections} opened)`);
    } finally {
      await s.close();
    }
  });
});

describe('hostile images', () => {
  it('a truncated JPEG is undecodable', async () => {
    await expectReject(allowed().prepare(url('/truncated.jpg')), 'undecodable_image', { kind: 'decode_error' });
  });

  it('a 20000x20000 PNG bomb is refused from its header', async () => {
    const t0 = performance.now();
    await expectReject(allowed().prepare(url('/bomb.png')), 'undecodable_image', {
      kind: 'too_many_pixels',
      width: 20000,
      height: 20000,
    });
    assert.ok(performance.now() - t0 < 2000);
  });

  it('when the operator allows that many pixels, the bomb streams through in bounded memory', async () => {
    const rss0 = process.memoryUsage().rss;
    const p = await allowed({ maxPixels: 500_000_000 }).prepare(url('/bomb.png'));
    assert.deepEqual(p.shape, [3, 32, 32]);
    assert.ok(process.memoryUsage().rss - rss0 < 600e6, 'decoded by streaming, not as one 400 MP buffer');
  });

  it('tiny images and extreme aspect ratios are image_too_small', async () => {
    await expectReject(allowed().prepare(url('/tiny.png')), 'image_too_small', { width: 8, height: 8, minSide: 32 });
    await expectReject(allowed().prepare(url('/banner.png')), 'image_too_small', { aspectRatio: 30, max: 10 });
  });

  it('random bytes, empty and oversized inline images are rejected', async () => {
    const i = intake({ maxBytes: 1000 });
    await expectReject(i.prepare({ kind: 'bytes', data: Buffer.from('hello world') }), 'undecodable_image', {
      kind: 'unsupported_format',
    });
    await expectReject(i.prepare({ kind: 'base64', data: Buffer.alloc(0) }), 'fetch_failed', { kind: 'empty_body' });
    await expectReject(i.prepare({ kind: 'bytes', data: Buffer.alloc(2000) }), 'fetch_failed', { kind: 'too_large' });
    // JPEG magic followed by garbage
    await expectReject(
      i.prepare({ kind: 'bytes', data: Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(500, 7)]) }),
      'undecodable_image',
    );
  });
});
