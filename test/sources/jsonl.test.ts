import assert from 'node:assert/strict';
import { PassThrough, Readable } from 'node:stream';
import { test } from 'node:test';
import { parseRecord } from '../../lib/pair/index.ts';
import { JsonlSource } from '../../lib/sources/jsonl.ts';
import { boundedLines } from '../../lib/formats/lines.ts';
import { RejectError, type SourceBatch, type SourceRecord } from '../../lib/types.ts';

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function* chunked(text: string, size: number): AsyncIterable<Buffer> {
  const buf = Buffer.from(text);
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

test('lines split across chunks, CRLF, a last line without newline, empty lines kept with their numbers', async () => {
  for (const size of [1, 2, 3, 7, 1000]) {
    const lines = await collect(boundedLines(chunked('ab\r\ncdé\n\nlast', size), 100));
    assert.deepEqual(
      lines.map((l) => [l.number, l.bytes.toString(), l.size]),
      [
        [1, 'ab', 2],
        [2, 'cdé', 4],
        [3, '', 0],
        [4, 'last', 4],
      ],
      `chunk size ${size}`,
    );
  }
});

test('a line over the cap keeps only cap + 1 bytes and reports its full size', async () => {
  const long = 'x'.repeat(10_000);
  const lines = await collect(boundedLines(chunked(`short\n${long}\nafter\n`, 64), 100));
  assert.deepEqual(
    lines.map((l) => [l.bytes.length, l.size]),
    [
      [5, 5],
      [101, 10_000],
      [5, 5],
    ],
  );
});

test('a CRLF line of exactly the cap is kept whole, one byte more is refused by size', async () => {
  const lines = await collect(boundedLines(chunked('aaaa\r\nbbbbb\r\n', 3), 4));
  assert.deepEqual(
    lines.map((l) => [l.bytes.toString(), l.size]),
    [
      ['aaaa', 4],
      ['bbbbb', 6],
    ],
  );
});

test('memory stays bounded while a huge line without newlines streams through', async () => {
  const chunk = Buffer.alloc(1 << 20, 0x61); // 1 MiB of 'a'
  async function* huge(): AsyncIterable<Buffer> {
    for (let i = 0; i < 256; i++) yield chunk; // 256 MiB, one line
    yield Buffer.from('\n{"caption":"ok"}\n');
  }
  const before = process.memoryUsage().arrayBuffers;
  let peak = 0;
  const seen: number[] = [];
  for await (const line of boundedLines(huge(), 1 << 20)) {
    peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
    seen.push(line.size);
  }
  assert.deepEqual(seen, [256 << 20, 16]);
  assert.ok(peak < 64 << 20, `line buffer grew to ${peak} bytes`);
});

test('JSONL source: an oversized line becomes an invalid_record reject naming its size, the next line still parses', async () => {
  const big = JSON.stringify({ caption: 'c', image: { base64: 'A'.repeat(5000) } });
  const text = `${big}\n\n   \n{"caption":"fine","url":"https://example.com/a.jpg"}\n`;
  const source = await JsonlSource.open({
    path: 'mem.jsonl',
    stream: Readable.from([Buffer.from(text)]),
    maxLineBytes: 1000,
  });
  const records: SourceRecord[] = [];
  for await (const b of source.batches(new AbortController().signal)) records.push(...b.records);
  assert.equal(records.length, 2, 'blank lines are skipped');
  assert.deepEqual(
    records.map((r) => (r.origin.kind === 'file' ? r.origin.line : -1)),
    [1, 4],
  );
  assert.throws(
    () => parseRecord(records[0] as SourceRecord, { maxRecordBytes: 1000 }),
    (err: unknown) =>
      err instanceof RejectError &&
      err.reason.code === 'invalid_record' &&
      err.reason.message.includes(`${Buffer.byteLength(big)} bytes`),
  );
  assert.equal(parseRecord(records[1] as SourceRecord).caption, 'fine');
});

test('JSONL source: invalid UTF-8 is a reject, not a silent replacement character', async () => {
  const bad = Buffer.concat([
    Buffer.from('{"caption":"caf'),
    Buffer.from([0xe9]),
    Buffer.from('","url":"https://e.com/a.jpg"}\n'),
  ]);
  const source = await JsonlSource.open({ path: 'mem.jsonl', stream: Readable.from([bad]) });
  const records: SourceRecord[] = [];
  for await (const b of source.batches(new AbortController().signal)) records.push(...b.records);
  assert.throws(
    () => parseRecord(records[0] as SourceRecord),
    (err: unknown) => err instanceof RejectError && /UTF-8/.test(err.reason.message),
  );
});

test('JSONL source on a stream kept open: a partial batch flows without the end; abort hands over complete lines', async () => {
  const stream = new PassThrough();
  const source = await JsonlSource.open({ path: '-', stream, maxBatchWaitMs: 20 });
  const stop = new AbortController();
  const batches = source.batches(stop.signal)[Symbol.asyncIterator]();
  const text = (b: IteratorResult<SourceBatch>) => (b.done ? [] : b.value.records.map((r) => String(r.raw)));
  stream.write('{"a":1}\n{"a":2}\n');
  // Two lines of a 64-line batch, the stream still open: they come as a batch of their own.
  assert.deepEqual(text(await batches.next()), ['{"a":1}', '{"a":2}']);
  // Read but not yet batched when the stop comes: the complete lines are handed over, the cut-off one is not a line.
  stream.write('{"a":3}\n{"a":4}\n{"a":');
  stop.abort();
  assert.deepEqual(text(await batches.next()), ['{"a":3}', '{"a":4}']);
  assert.equal((await batches.next()).done, true);
});
