import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { expandBraces } from '../../lib/inputs/braces.ts';
import { sniff } from '../../lib/inputs/sniff.ts';
import { FilterError } from '../../lib/types.ts';
import { ustar } from '../sources/ustar.ts';

test('brace lists: zero-padded ranges, comma lists, several groups, nesting, literals left alone', () => {
  assert.deepEqual(expandBraces('s/{00000..00002}.tar'), ['s/00000.tar', 's/00001.tar', 's/00002.tar']);
  assert.deepEqual(expandBraces('{8..11}'), ['8', '9', '10', '11']);
  assert.deepEqual(expandBraces('{3..1}'), ['3', '2', '1']);
  assert.deepEqual(expandBraces('{a,b}/{0..1}.tar'), ['a/0.tar', 'a/1.tar', 'b/0.tar', 'b/1.tar']);
  assert.deepEqual(expandBraces('x{a,b{1..2}}.tar'), ['xa.tar', 'xb1.tar', 'xb2.tar']);
  assert.deepEqual(expandBraces('s3://b/p/{000..001}.tar'), ['s3://b/p/000.tar', 's3://b/p/001.tar']);
  // Not a list: a lone {x}, an empty {}, an unbalanced brace, a letter range.
  for (const literal of ['a{x}.tar', 'a{}.tar', 'a{1..2.tar', '{a..c}.tar']) {
    assert.deepEqual(expandBraces(literal), [literal]);
  }
  assert.deepEqual(expandBraces('{,x}.tar'), ['.tar', 'x.tar']);
});

test('a brace list past the limit is refused before it fills memory', () => {
  assert.throws(
    () => expandBraces('{0..99999999}.tar'),
    (e: unknown) => e instanceof FilterError && e.code === 'invalid_option' && /more than 1000000/.test(e.message),
  );
  assert.throws(() => expandBraces('{0..9}{0..9}', 50), /more than 50 names/);
});

test('hostile specs: thousands of groups are refused (no stack overflow), unmatched braces are read in one pass', () => {
  for (const spec of ['{a,b}'.repeat(20_000), `x${'{a,{b,'.repeat(5_000)}c${'}}'.repeat(5_000)}`]) {
    assert.throws(
      () => expandBraces(spec),
      (e: unknown) =>
        e instanceof FilterError &&
        e.code === 'invalid_option' &&
        /has more than 64 brace groups/.test(e.message) &&
        e.message.length < 300,
    );
  }
  // A scan from each of 100k unmatched braces was quadratic (minutes); literal, returned as written.
  const unmatched = `${'{'.repeat(100_000)}x`;
  assert.deepEqual(expandBraces(unmatched), [unmatched]);
  const deep = `${'{'.repeat(100_000)}x${'}'.repeat(100_000)}`;
  assert.deepEqual(expandBraces(deep), [deep]);
  // Below the group cap, nesting still works.
  assert.deepEqual(expandBraces('{a,{b,{c,d}}}'), ['a', 'b', 'c', 'd']);
});

test('inputs are recognised by their first bytes', () => {
  const tar = ustar([['k.txt', Buffer.from('hi')]]);
  assert.equal(sniff(tar), 'tar');
  assert.equal(sniff(gzipSync(tar)), 'gzip');
  assert.equal(sniff(Buffer.from('\ufeff\n  {"id": "é"}\n')), 'jsonl');
  assert.equal(sniff(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0])), 'zstd');
  assert.equal(sniff(Buffer.alloc(0)), 'empty');
  // PNG bytes, a UTF-16 JSONL, a JSON array, invalid UTF-8: none is read as JSONL.
  assert.equal(sniff(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), 'unknown');
  assert.equal(sniff(Buffer.from('{"id": 1}\n', 'utf16le')), 'unknown');
  assert.equal(sniff(Buffer.from('[{"id": 1}]')), 'unknown');
  assert.equal(sniff(Buffer.from([0x7b, 0xff, 0xfe, 0x22])), 'unknown');
  // A UTF-8 sequence cut by the sniffed 512 bytes (13 + 2k bytes: byte 512 is inside an é) is no reason to refuse.
  assert.equal(sniff(Buffer.from(`{"caption": "${'é'.repeat(300)}"}`)), 'jsonl');
});
