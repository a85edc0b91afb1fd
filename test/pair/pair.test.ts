import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { derivePairId, parseRecord, rawRecordId } from '../../lib/pair/index.ts';
import type { SourceRecord } from '../../lib/types.ts';
import { RejectError } from '../../lib/types.ts';

const schema = JSON.parse(readFileSync(new URL('../../schema/pair-record.schema.json', import.meta.url), 'utf8'));
const validate = new Ajv2020({ strict: false }).compile(schema);
const rec = (raw: SourceRecord['raw']): SourceRecord => ({ raw, origin: { kind: 'file', path: 't', line: 1 } });

function rejectOf(raw: SourceRecord['raw']) {
  try {
    parseRecord(rec(raw));
  } catch (err) {
    assert.ok(err instanceof RejectError, `expected a RejectError, got ${err}`);
    return err.reason;
  }
  assert.fail(`record was accepted: ${String(raw).slice(0, 80)}`);
}

const hostile: [string, string | Buffer, string][] = [
  ['malformed JSON', '{"url": "http://a/b.jpg", "caption": ', ''],
  ['JSON array', '[1,2]', 'object'],
  ['JSON string', '"hello"', 'object'],
  ['null', 'null', 'object'],
  ['empty record', '', 'empty'],
  ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'UTF-8'],
  ['missing caption', '{"url": "http://a.test/b.jpg"}', 'caption'],
  ['empty caption', '{"url": "http://a.test/b.jpg", "caption": ""}', 'caption'],
  ['blank caption', '{"url": "http://a.test/b.jpg", "caption": "  \\n\\t "}', 'caption'],
  ['numeric caption', '{"url": "http://a.test/b.jpg", "caption": 5}', 'caption'],
  ['1 MB caption', JSON.stringify({ url: 'http://a.test/b.jpg', caption: 'x'.repeat(1 << 20) }), 'caption'],
  ['lone surrogate', '{"url": "http://a.test/b.jpg", "caption": "a\\ud800b"}', 'surrogate'],
  ['no image', '{"caption": "a dog"}', 'url'],
  ['both url and image', '{"url": "http://a.test/b.jpg", "image": {"base64": "AA=="}, "caption": "a"}', 'both'],
  ['file scheme', '{"url": "file:///etc/passwd", "caption": "a"}', 'http'],
  ['gopher scheme', '{"url": "gopher://a.test/", "caption": "a"}', 'http'],
  ['javascript scheme', '{"url": "javascript:alert(1)", "caption": "a"}', 'http'],
  ['data URI', '{"url": "data:image/png;base64,AAAA", "caption": "a"}', 'http'],
  ['not a URL', '{"url": "not a url", "caption": "a"}', 'valid URL'],
  ['credentials in URL', '{"url": "http://u:p@a.test/b.jpg", "caption": "a"}', 'credentials'],
  ['url not a string', '{"url": 42, "caption": "a"}', 'url'],
  ['bad base64', '{"image": {"base64": "@@@"}, "caption": "a"}', 'base64'],
  ['bad s3 ref', '{"image": {"s3": "https://bucket/key"}, "caption": "a"}', 's3'],
  ['image is a string', '{"image": "abc", "caption": "a"}', 'image'],
  ['id is an object', '{"id": {}, "url": "http://a.test/b.jpg", "caption": "a"}', 'id'],
  ['id with control chars', '{"id": "a\\u0000b", "url": "http://a.test/b.jpg", "caption": "a"}', 'id'],
  ['id with a bidi override', '{"id": "a\\u202eb", "url": "http://a.test/b.jpg", "caption": "a"}', 'id'],
  [
    'zero-width caption',
    '{"url": "http://a.test/b.jpg", "caption": "\\u200b\\u200c \\u200d\\u2060\\ufeff\\n"}',
    'empty',
  ],
];

for (const [name, raw, mentions] of hostile) {
  test(`hostile record: ${name} -> invalid_record`, () => {
    const reason = rejectOf(raw);
    assert.equal(reason.code, 'invalid_record');
    assert.match(reason.message, new RegExp(mentions.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'i'));
  });
}

test('a valid record parses; other fields pass through as metadata', () => {
  const pair = parseRecord(rec('{"url": "https://a.test/dog.jpg", "caption": "a dog", "lang": "en", "n": 3}'));
  assert.equal(pair.url, 'https://a.test/dog.jpg');
  assert.deepEqual(pair.image, { kind: 'url', url: 'https://a.test/dog.jpg' });
  assert.deepEqual(pair.metadata, { lang: 'en', n: 3 });
  assert.equal(pair.id, derivePairId('https://a.test/dog.jpg', 'a dog'));
  assert.match(pair.id, /^[0-9a-f]{32}$/);
});

test('ids are deterministic and depend on url and caption', () => {
  const a = parseRecord(rec('{"url": "https://a.test/1.jpg", "caption": "x"}')).id;
  assert.equal(parseRecord(rec(Buffer.from('{"caption": "x", "url": "https://a.test/1.jpg"}'))).id, a);
  assert.notEqual(parseRecord(rec('{"url": "https://a.test/1.jpg", "caption": "y"}')).id, a);
  assert.equal(parseRecord(rec('{"id": 17, "url": "https://a.test/1.jpg", "caption": "x"}')).id, '17');
});

test('inline and s3 images', () => {
  const b64 = parseRecord(
    rec(JSON.stringify({ image: { base64: Buffer.from('abc').toString('base64') }, caption: 'c' })),
  );
  assert.equal(b64.image.kind, 'base64');
  const s3 = parseRecord(rec('{"image": {"s3": "s3://bucket/a/b.jpg"}, "caption": "c"}'));
  assert.deepEqual(s3.image, { kind: 's3', bucket: 'bucket', key: 'a/b.jpg' });
});

test('WebDataset samples: caption from .txt, metadata from .json, image bytes inline', () => {
  const pair = parseRecord(
    rec({
      key: '000001',
      members: {
        jpg: Buffer.from([0xff, 0xd8]),
        txt: Buffer.from('a cat'),
        json: Buffer.from('{"url": "http://a.test/c.jpg", "similarity": 0.3}'),
      },
    }),
  );
  assert.equal(pair.caption, 'a cat');
  assert.equal(pair.id, '000001');
  assert.equal(pair.url, 'http://a.test/c.jpg');
  assert.deepEqual(pair.metadata, { similarity: 0.3 });
  assert.equal(pair.image.kind, 'bytes');
  assert.equal(rejectOf({ key: 'k', members: { txt: Buffer.from('x') } }).code, 'invalid_record');
});

test('an invalid record still gets a deterministic id, derived from its bytes unless it parsed with a plain id', () => {
  const r = rec('{oops');
  assert.equal(rawRecordId(r), rawRecordId(rec('{oops')));
  assert.match(rawRecordId(r), /^invalid-[0-9a-f]{24}$/);
  // Broken JSON: no id is fished out of it, whatever it claims (another pair's id, control characters).
  const claims = rawRecordId(rec('{"id": "ok-1", broken'));
  assert.match(claims, /^invalid-[0-9a-f]{24}$/);
  assert.notEqual(claims, rawRecordId(rec('{"id": "ok-2", broken')));
  assert.match(rawRecordId(rec('{"id": "a\\u0000\\nb", "caption": 3}')), /^invalid-[0-9a-f]{24}$/);
  assert.match(rawRecordId(rec(`{"id": "${'x'.repeat(300)}", "caption": 3}`)), /^invalid-/);
  // Well-formed JSON whose id a valid record could carry keeps it (the record failed on another field).
  assert.equal(rawRecordId(rec('{"id": "no-caption", "url": "http://a.test/b.jpg"}')), 'no-caption');
  assert.equal(rawRecordId(rec('{"id": 17, "caption": ""}')), '17');
  // A record cut off by the source (size past its bytes) is never trusted.
  assert.match(rawRecordId({ ...rec('{"id": "abc"}'), size: 1 << 30 }), /^invalid-/);
  // A sample key with control characters does not reach the audit key.
  assert.match(rawRecordId(rec({ key: 'k\u0007\n', members: {} })), /^invalid-[0-9a-f]{24}$/);
  assert.equal(rawRecordId(rec({ key: '000001', members: {} })), '000001');
});

test('metadata is bounded in depth and size at parse time', () => {
  const nest = (depth: number) => {
    let v: unknown = 1;
    for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { a: v };
    return v;
  };
  const record = (meta: unknown) => JSON.stringify({ url: 'http://a.test/b.jpg', caption: 'c', meta });
  assert.deepEqual(parseRecord(rec(record(nest(32)))).metadata.meta, nest(32));
  const deep = rejectOf(record(nest(33)));
  assert.equal(deep.code, 'invalid_record');
  assert.deepEqual(deep.detail, { field: 'metadata', limit: 'depth', max: 32 });
  // The red-team record: 13 KB nesting about 5000 deep. JSON.stringify of it throws; the parser rejects it first.
  const hostileText = `{"url": "http://a.test/b.jpg", "caption": "c", "m": ${'['.repeat(5000)}${']'.repeat(5000)}}`;
  assert.throws(() => JSON.stringify(JSON.parse(hostileText)), RangeError);
  assert.deepEqual(rejectOf(hostileText).detail, { field: 'metadata', limit: 'depth', max: 32 });
  // Size: 64 KiB of metadata JSON.
  assert.equal(parseRecord(rec(record('x'.repeat(60_000)))).metadata.meta, 'x'.repeat(60_000));
  const big = rejectOf(record('x'.repeat(70_000)));
  assert.equal(big.detail?.field, 'metadata');
  assert.equal(big.detail?.limit, 'bytes');
  assert.equal(big.detail?.max, 65536);
  // WebDataset .json metadata too.
  const sampleReason = rejectOf({
    key: 'k',
    members: { jpg: Buffer.from([1]), txt: Buffer.from('c'), json: Buffer.from(JSON.stringify({ m: nest(40) })) },
  });
  assert.equal(sampleReason.detail?.field, 'metadata');
  // Limits are options.
  assert.equal(parseRecord(rec(record(nest(40))), { maxMetadataDepth: 64 }).id.length, 32);
});

test('WebDataset sample urls get the http/https check: a bad one is dropped with a note, the sample still parses', () => {
  for (const url of ['javascript:alert(1)', 'data:image/png;base64,AAAA', 'http://u:p@a.test/x', 'not a url', 42]) {
    const pair = parseRecord(
      rec({
        key: 's1',
        members: {
          jpg: Buffer.from([0xff, 0xd8]),
          txt: Buffer.from('a cat'),
          json: Buffer.from(JSON.stringify({ url, n: 1 })),
        },
      }),
    );
    assert.equal(pair.url, undefined, String(url));
    assert.equal(pair.image.kind, 'bytes');
    assert.equal(pair.metadata.n, 1);
    assert.match(String(pair.metadata.url_dropped), /http or https/);
    assert.ok(!JSON.stringify(pair).includes(String(url)), `${url} leaked into the pair`);
  }
  const ok = parseRecord(
    rec({
      key: 's2',
      members: { jpg: Buffer.from([1]), txt: Buffer.from('c'), json: Buffer.from('{"url": "https://a.test/x.jpg"}') },
    }),
  );
  assert.equal(ok.url, 'https://a.test/x.jpg');
  assert.equal(ok.metadata.url_dropped, undefined);
  // A zero-width .txt caption is empty.
  const reason = rejectOf({ key: 's3', members: { jpg: Buffer.from([1]), txt: Buffer.from('\u200b\u2060\ufeff ') } });
  assert.deepEqual(reason.detail, { field: 'caption' });
});

test('the published JSON Schema agrees with the parser', () => {
  const valid = [
    { url: 'https://a.test/dog.jpg', caption: 'a dog' },
    { id: 'x1', image: { base64: 'AAAA' }, caption: 'c', extra: { any: 1 } },
    { id: 5, image: { s3: 's3://b/k.jpg' }, caption: 'c' },
  ];
  for (const v of valid) {
    assert.ok(validate(v), JSON.stringify(validate.errors));
    parseRecord(rec(JSON.stringify(v)));
  }
  const invalid = [
    { caption: 'no image' },
    { url: 'ftp://a/b', caption: 'c' },
    { url: 'https://a.test/x.jpg', caption: '' },
    { url: 'https://a.test/x.jpg', image: { base64: 'AAAA' }, caption: 'c' },
    { url: 'https://a.test/x.jpg', caption: 'x'.repeat(5000) },
  ];
  for (const v of invalid) {
    assert.equal(validate(v), false, `schema accepted ${JSON.stringify(v).slice(0, 80)}`);
    assert.throws(() => parseRecord(rec(JSON.stringify(v))), RejectError);
  }
});
