/** image.s3 refs through the real S3 client against a loopback S3-compatible endpoint (path-style GetObject). */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { S3Client } from '@aws-sdk/client-s3';
import { Intake } from '../../lib/intake/index.ts';
import { SMALL_SQUASH, expectReject, photoJpeg, startServer, type TestServer } from './helpers.ts';

let srv: TestServer;
let s3: S3Client;
let jpeg: Buffer;
const open: Intake[] = [];

before(async () => {
  jpeg = await photoJpeg(80, 60);
  const big = Buffer.alloc(50_000, 1);
  srv = await startServer({
    '/crawl/images/a.jpg': (_q, r) =>
      r.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': jpeg.length }).end(jpeg),
    '/crawl/images/big.jpg': (_q, r) => r.writeHead(200, { 'content-length': big.length }).end(big),
    '/crawl/images/empty.jpg': (_q, r) => r.writeHead(200, { 'content-length': 0 }).end(),
    '/crawl/missing.jpg': (_q, r) =>
      r
        .writeHead(404, { 'content-type': 'application/xml' })
        .end(
          '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>',
        ),
    '/crawl/denied.jpg': (_q, r) =>
      r
        .writeHead(403, { 'content-type': 'application/xml' })
        .end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>'),
  });
  s3 = new S3Client({
    endpoint: srv.base,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    maxAttempts: 1,
  });
});

after(async () => {
  await Promise.all(open.map((i) => i.close()));
  s3.destroy();
  await srv.close();
});

function intake(maxBytes?: number): Intake {
  const i = new Intake({ s3, maxBytes }, SMALL_SQUASH);
  open.push(i);
  return i;
}

describe('S3 image refs', () => {
  it('fetches and prepares an object', async () => {
    const p = await intake().prepare({ kind: 's3', bucket: 'crawl', key: 'images/a.jpg' });
    assert.deepEqual([p.width, p.height, p.ext], [80, 60, 'jpg']);
    assert.ok(p.encoded.equals(jpeg));
  });

  it('a missing object is fetch_failed http_status 404', async () => {
    await expectReject(intake().prepare({ kind: 's3', bucket: 'crawl', key: 'missing.jpg' }), 'fetch_failed', {
      kind: 'http_status',
      status: 404,
    });
  });

  it('access denied keeps its status', async () => {
    await expectReject(intake().prepare({ kind: 's3', bucket: 'crawl', key: 'denied.jpg' }), 'fetch_failed', {
      kind: 'http_status',
      status: 403,
    });
  });

  it('the size cap applies to S3 objects', async () => {
    await expectReject(intake(10_000).prepare({ kind: 's3', bucket: 'crawl', key: 'images/big.jpg' }), 'fetch_failed', {
      kind: 'too_large',
      contentLength: 50_000,
    });
  });

  it('an empty object is empty_body', async () => {
    await expectReject(intake().prepare({ kind: 's3', bucket: 'crawl', key: 'images/empty.jpg' }), 'fetch_failed', {
      kind: 'empty_body',
    });
  });

  it('without an S3 client the ref is rejected, not crashed', async () => {
    const i = new Intake({}, SMALL_SQUASH);
    open.push(i);
    await expectReject(i.prepare({ kind: 's3', bucket: 'crawl', key: 'images/a.jpg' }), 'fetch_failed', {
      kind: 'connection_error',
    });
  });
});
