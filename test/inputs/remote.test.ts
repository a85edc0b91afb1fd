/**
 * http(s) inputs as a careless or hostile server serves them (lib/inputs/remote.ts), against servers in this process
 * on 127.0.0.1 (opened with an allow rule, as `--allow-address` does): an object that changes between the probe and
 * the read or mid-read is never spliced, a server that ignores Range is resumed only where a strong ETag proves the
 * bytes are the same, a trickling body fails, an endless error body is not drained, credentials are sent to their
 * origin only and never shown. Redirects towards blocked addresses run in a child inside a private network
 * namespace (`unshare -n`): even a guard that let them through could reach nothing.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { HttpInputs, redactUrl } from '../../lib/inputs/remote.ts';
import { resolveInputs } from '../../lib/inputs/resolve.ts';
import { FilterError } from '../../lib/types.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** A loopback server answering by path; every request is logged. */
async function serve(
  routes: Record<string, Handler>,
): Promise<{ base: string; log: IncomingMessage[]; server: Server }> {
  const log: IncomingMessage[] = [];
  const server = createServer((req, res) => {
    log.push(req);
    const route = routes[req.url ?? ''];
    if (route) return route(req, res);
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, log, server };
}

const A = Buffer.alloc(100_000, 'a');
const B = Buffer.alloc(100_000, 'b');
const rangeStart = (req: IncomingMessage) => Number(/^bytes=(\d+)-/.exec(req.headers.range ?? '')?.[1] ?? NaN);

/** Serves `body` whole (cut halfway the first `cuts` times) and its ranges, with `headers`. */
function file(body: Buffer, headers: Record<string, string>, cuts = 1): Handler {
  return (req, res) => {
    const from = rangeStart(req);
    if (Number.isInteger(from)) {
      const last = Math.min(from === 0 && req.headers.range!.endsWith('-4095') ? 4095 : Infinity, body.length - 1);
      res.writeHead(206, { ...headers, 'content-range': `bytes ${from}-${last}/${body.length}` });
      return res.end(body.subarray(from, last + 1));
    }
    res.writeHead(200, { ...headers, 'content-length': body.length });
    if (cuts-- > 0) return res.write(body.subarray(0, body.length >> 1), () => res.destroy());
    res.end(body);
  };
}

async function readAll(http: HttpInputs, url: string): Promise<{ bytes: Buffer; error?: FilterError }> {
  const parts: Buffer[] = [];
  try {
    for await (const chunk of await http.chunks(url)) parts.push(chunk);
    return { bytes: Buffer.concat(parts) };
  } catch (error) {
    assert.ok(error instanceof FilterError, String((error as Error).stack));
    return { bytes: Buffer.concat(parts), error };
  }
}

describe('http inputs', () => {
  let served: Awaited<ReturnType<typeof serve>>;
  let http: HttpInputs;
  before(async () => {
    const swapFirst = file(A, { 'accept-ranges': 'bytes', etag: '"v1"' });
    const shrinksFirst = file(A, { 'accept-ranges': 'bytes', etag: '"v1"' });
    const swapLengthFirst = file(A, { 'accept-ranges': 'bytes', 'last-modified': 'Tue, 01 Dec 2026 00:00:00 GMT' });
    served = await serve({
      // Cut once, then the resume (If-Range ignored) is served from another object with another ETag.
      '/swap-etag': (req, res) => {
        if (rangeStart(req) > 0) return file(B, { 'accept-ranges': 'bytes', etag: '"v2"' }, 0)(req, res);
        swapFirst(req, res);
      },
      // No ETag; the resume's Content-Range says the object is now twice as long.
      '/swap-length': (req, res) => {
        if (rangeStart(req) > 0) {
          const both = Buffer.concat([B, B]);
          const from = rangeStart(req);
          res.writeHead(206, { 'content-range': `bytes ${from}-${both.length - 1}/${both.length}` });
          return res.end(both.subarray(from));
        }
        swapLengthFirst(req, res);
      },
      // Lengths past 2^53 that differ by one (equal as doubles): cut after A, resumed with the other length.
      '/swap-length-huge': (req, res) => {
        const from = rangeStart(req);
        if (from > 0) {
          res.writeHead(206, {
            'content-range': `bytes ${from}-${from + B.length - 1}/9007199254740992`,
            'last-modified': 'Tue, 01 Dec 2026 00:00:00 GMT',
          });
          return res.end(B);
        }
        res.writeHead(200, {
          'accept-ranges': 'bytes',
          'content-length': '9007199254740993',
          'last-modified': 'Tue, 01 Dec 2026 00:00:00 GMT',
        });
        res.write(A, () => res.destroy());
      },
      // Cut halfway; by the resume the file is shorter than what was read (a Range past its end: 416).
      '/shrinks': (req, res) => {
        if (rangeStart(req) > 0) {
          res.writeHead(416, { 'content-range': 'bytes */1000' });
          return res.end();
        }
        shrinksFirst(req, res);
      },
      // The probe sees v1; the whole GET right after it, v2.
      '/changed-after-probe': (() => {
        let n = 0;
        return (req: IncomingMessage, res: ServerResponse) =>
          file(n++ === 0 ? A : B, { 'accept-ranges': 'bytes', etag: n === 1 ? '"v1"' : '"v2"' }, 0)(req, res);
      })(),
      // Range ignored: always the whole body, cut the first time; a strong or a weak ETag.
      '/no-range-strong': ignoresRange('"s1"'),
      '/no-range-weak': ignoresRange('W/"w1"'),
      '/no-range-weak-dated': ignoresRange('W/"w1"', { 'last-modified': 'Tue, 01 Dec 2026 00:00:00 GMT' }),
      '/gzip-encoded.jsonl.gz': (_req, res) => {
        res.writeHead(200, { 'content-encoding': 'gzip', 'content-type': 'application/jsonl' });
        res.end(gzipSync('{"id":"g0","url":"https://example.com/a.jpg","caption":"c"}\n'));
      },
      '/endless-404': (_req, res) => {
        res.writeHead(404);
        const more = () => {
          while (res.write(A));
        };
        res.on('drain', more);
        more();
      },
      '/trickle': (_req, res) => {
        res.writeHead(200);
        const timer = setInterval(() => res.write('x'), 20);
        res.on('close', () => clearInterval(timer));
      },
      '/private': (req, res) => {
        res.writeHead(
          req.headers.authorization === `Basic ${Buffer.from('user:s3cr%t').toString('base64')}` ? 200 : 401,
        );
        res.end('{"id":"p0","url":"https://example.com/a.jpg","caption":"c"}\n');
      },
    });
    http = new HttpInputs({ allowAddresses: ['127.0.0.1/32'] });
  });
  after(async () => {
    await http.close();
    served.server.close();
  });

  function ignoresRange(etag: string, more: Record<string, string> = {}): Handler {
    let cut = false;
    return (_req, res) => {
      res.writeHead(200, { 'accept-ranges': 'bytes', etag, 'content-length': A.length, ...more });
      if (cut) return res.end(A);
      cut = true;
      res.write(A.subarray(0, 30_000), () => res.destroy());
    };
  }

  it('a resume served from another object (If-Range ignored, new ETag) fails: no bytes of it are given', async () => {
    const r = await readAll(http, `${served.base}/swap-etag`);
    assert.equal(r.error?.code, 'input_changed', r.error?.message);
    assert.match(r.error!.message, /ETag "v1" became "v2"/);
    assert.ok(
      r.bytes.every((b) => b === 0x61),
      'bytes of the second object were spliced in',
    );
  });

  it('a resume whose Content-Range gives another length fails the same way', async () => {
    const r = await readAll(http, `${served.base}/swap-length`);
    assert.equal(r.error?.code, 'input_changed', r.error?.message);
    assert.match(r.error!.message, /length 100000 became 200000/);
    assert.ok(r.bytes.every((b) => b === 0x61));
  });

  it('lengths past 2^53 are compared exactly: a resume one byte off is refused, not spliced', async () => {
    const r = await readAll(http, `${served.base}/swap-length-huge`);
    assert.equal(r.error?.code, 'input_changed', r.error?.message);
    assert.match(r.error!.message, /length 9007199254740993 became 9007199254740992/);
    assert.ok(r.bytes.every((b) => b === 0x61));
  });

  it('a resume past the end of a file that shrank fails as changed', async () => {
    const r = await readAll(http, `${served.base}/shrinks`);
    assert.equal(r.error?.code, 'input_changed', r.error?.message);
    assert.match(r.error!.message, /it now ends before byte 50000/);
    assert.equal(r.error!.context.offset, 50_000);
  });

  it('an object that changed between the probe and the read is refused before a byte is read', async () => {
    const url = `${served.base}/changed-after-probe`;
    assert.equal((await http.head(url)).length, 4096);
    const r = await readAll(http, url);
    assert.equal(r.error?.code, 'input_changed');
    assert.equal(r.bytes.length, 0);
  });

  it('a server that ignores Range is resumed by skipping what was read, only under a strong ETag', async () => {
    const strong = await readAll(http, `${served.base}/no-range-strong`);
    assert.equal(strong.error, undefined);
    assert.ok(strong.bytes.equals(A));
    // A weak ETag is no validator to resume against: the read fails, retriable, after what it had.
    const weak = await readAll(http, `${served.base}/no-range-weak`);
    assert.equal(weak.error?.code, 'shard_read_failed');
    assert.match(weak.error!.message, /no strong ETag/);
    // Resumed on its Last-Modified, it answers with the whole object: not provably the same bytes, not resumed.
    const dated = await readAll(http, `${served.base}/no-range-weak-dated`);
    assert.equal(dated.error?.code, 'shard_read_failed');
    assert.match(dated.error!.message, /cannot be resumed: the server sent the whole object again/);
    assert.equal(dated.bytes.length, 30_000);
    assert.equal(weak.bytes.length, 30_000);
    // A weak ETag is never sent as If-Range (RFC 9110 forbids it).
    assert.ok(served.log.every((req) => !String(req.headers['if-range'] ?? '').startsWith('W/')));
  });

  it('a body with Content-Encoding gzip is taken as the gzip bytes it is (recognised as gzip JSONL)', async () => {
    const url = `${served.base}/gzip-encoded.jsonl.gz`;
    const [item] = await resolveInputs([url], { http: () => http, s3: () => assert.fail('no s3') });
    assert.deepEqual({ format: item!.format, gzip: item!.gzip }, { format: 'jsonl', gzip: true });
  });

  it('an error answer with an endless body is refused at once, not drained', async () => {
    await assert.rejects(http.head(`${served.base}/endless-404`), /input_unreadable|HTTP 404/);
    await assert.rejects(http.chunks(`${served.base}/endless-404`), (err: FilterError) => {
      assert.equal(err.code, 'input_unreadable');
      return true;
    });
  });

  it('a body trickled under the low-speed floor fails (a byte at a time dodges the stall timeout)', async (t) => {
    // A floor of 1000 bytes in 300 ms of waiting; the server sends a byte every 20 ms.
    const slow = new HttpInputs({ allowAddresses: ['127.0.0.1/32'], lowSpeed: { bytes: 1000, windowMs: 300 } });
    t.after(() => slow.close());
    const r = await readAll(slow, `${served.base}/trickle`);
    assert.equal(r.error?.code, 'shard_read_failed');
    assert.match(r.error!.message, /too slow/);
    // The 4 KiB probe before the run too: it would otherwise wait hours for its bytes.
    await assert.rejects(slow.head(`${served.base}/trickle`), (err: FilterError) => {
      assert.equal(err.code, 'input_unreadable');
      assert.match(err.message, /its first bytes: too slow/);
      return true;
    });
  });

  it('credentials in a URL are sent as Basic auth to its origin and never shown', async () => {
    const url = `${served.base.replace('//', '//user:s3cr%25t@')}/private`;
    const [item] = await resolveInputs([url], { http: () => http, s3: () => assert.fail('no s3') });
    assert.equal(item!.name, `http://***@${served.base.slice(7)}/private`);
    assert.equal(item!.format, 'jsonl');
    const refused = await http.head(url.replace('/private', '/nothing-here')).catch((e: FilterError) => e);
    assert.ok(refused instanceof FilterError);
    assert.ok(!refused.message.includes('s3cr'), refused.message);
    assert.equal(redactUrl('https://tok@h/x'), 'https://***@h/x');
    assert.equal(redactUrl('https://h/a@b'), 'https://h/a@b');
    assert.equal(
      redactUrl('https://b.s3.amazonaws.com/k.tar?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12&part=1#x'),
      'https://b.s3.amazonaws.com/k.tar?X-Amz-Credential=***&X-Amz-Signature=***&part=1#x',
    );
    assert.equal(
      redactUrl('https://a.blob.core.windows.net/c/s.tar?sv=1&sig=zz%3D'),
      'https://a.blob.core.windows.net/c/s.tar?sv=1&sig=***',
    );
  });

  it('a URL that is not one is a coded error, and a huge brace list is refused before any request', async () => {
    await assert.rejects(http.head('http://u:pw@[zz/x'), (err: FilterError) => {
      assert.equal(err.code, 'input_unreadable');
      assert.equal(err.message, 'cannot read input http://***@[zz/x: not a valid URL');
      return true;
    });
    const requests = served.log.length;
    await assert.rejects(
      resolveInputs([`${served.base}/{0..9999999}.tar`], { http: () => http, s3: () => assert.fail('no s3') }),
      (err: FilterError) => err.code === 'invalid_option',
    );
    assert.equal(served.log.length, requests);
  });
});

describe('http input redirects', () => {
  const canUnshare = spawnSync('unshare', ['-n', 'true']).status === 0;
  it(
    'to blocked addresses, other schemes, loops and another origin (credentials dropped): refused, nothing reached',
    { skip: canUnshare ? false : 'needs unshare -n (root)' },
    () => {
      const probe = new URL('./redirect-probe.ts', import.meta.url).pathname;
      const r = spawnSync(
        'unshare',
        ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx "${probe}"`],
        { encoding: 'utf8', timeout: 60_000 },
      );
      assert.equal(r.status, 0, r.stderr);
      const got = JSON.parse(r.stdout) as Record<string, string>;
      for (const [path, address] of <[string, string][]>[
        ['/to-metadata', '169.254.169.254'],
        ['/to-private', '10.0.0.1'],
        ['/to-v6-loopback', '::1'],
        ['/to-mapped-metadata', '169.254.169.254'],
      ]) {
        assert.match(got[path]!, new RegExp(`^input_unreadable: .*refusing to connect to .*\\(${address}, `), path);
      }
      assert.match(got['/to-localhost-unallowed']!, /^input_unreadable: .*refusing to connect to localhost/);
      assert.match(got['/to-file']!, /^input_unreadable: .*redirected to file: \(only http and https/);
      assert.match(got['/loop']!, /^input_unreadable: .*redirected more than 5 times/);
      assert.match(got['/no-location']!, /^input_unreadable: .*HTTP 302 without a Location/);
      assert.match(got['/bad-location']!, /^input_unreadable: .*invalid Location/);
      // Followed to the other server (another origin): it answers, without the credentials.
      assert.equal(got['/to-other-origin'], 'ok; authorization there: none');
      assert.ok(!r.stdout.includes('pw0'), 'a password was shown');
    },
  );
});
