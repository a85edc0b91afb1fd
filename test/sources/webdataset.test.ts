/**
 * WebDataset source over hostile shards: a truncated shard, a member whose header claims 8 GiB and a corrupt header
 * each become one record that parses to an invalid_record reject naming the shard and the offset; the samples before
 * them and the shards after them are still read.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import tarStream from 'tar-stream';
import { parseRecord, rawRecordId } from '../../lib/pair/index.ts';
import { Semaphore } from '../../lib/pipeline/semaphore.ts';
import { streamTarBytes, type TarBytes } from '../../lib/formats/tar-reader.ts';
import { WebDatasetSource } from '../../lib/sources/webdataset.ts';
import type { RawSample, Reason, SourceBatch, SourceRecord } from '../../lib/types.ts';
import { RejectError } from '../../lib/types.ts';
import { base256, ustar, ustarHeader, ustarMember } from './ustar.ts';

const jpg = Buffer.from([0xff, 0xd8, 0xff, 0xd9]);
const sample = (key: string): [string, Buffer][] => [
  [`${key}.jpg`, jpg],
  [`${key}.txt`, Buffer.from(`caption of ${key}`)],
  [`${key}.json`, Buffer.from(JSON.stringify({ n: key }))],
];

async function readAll(paths: string[], options: { maxMemberBytes?: number } = {}): Promise<SourceRecord[]> {
  const source = await WebDatasetSource.open({ paths, batchSize: 2, ...options });
  const out: SourceRecord[] = [];
  for await (const b of source.batches(new AbortController().signal)) out.push(...b.records);
  return out;
}

function outcome(r: SourceRecord): { id: string; reason?: Reason } {
  try {
    return { id: parseRecord(r).id };
  } catch (err) {
    assert.ok(err instanceof RejectError, String(err));
    return { id: rawRecordId(r), reason: err.reason };
  }
}

test('a directory with a good, a truncated and an 8 GiB-member shard: every good sample read, each bad part a reject', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-wds-'));
  writeFileSync(join(dir, 'a.tar'), ustar([...sample('a0'), ...sample('a1')]));
  // b.tar: b0 whole, then b1's .txt member cut in the middle of its data.
  const b0 = Buffer.concat(sample('b0').map(([n, d]) => ustarMember(n, d)));
  const b1jpg = ustarMember('b1.jpg', jpg);
  const b1txt = ustarMember('b1.txt', Buffer.from('x'.repeat(2000)));
  writeFileSync(join(dir, 'b.tar'), Buffer.concat([b0, b1jpg, b1txt.subarray(0, 512 + 700)]));
  // c.tar: c0 whole, c1's image claims 8 GiB (12-digit octal) and the file ends right after the header.
  const c0 = Buffer.concat(sample('c0').map(([n, d]) => ustarMember(n, d)));
  writeFileSync(join(dir, 'c.tar'), Buffer.concat([c0, ustarHeader('c1.jpg', 8 * 1024 ** 3), Buffer.alloc(1024)]));
  // e.tar: a good shard after them all.
  writeFileSync(join(dir, 'e.tar'), ustar(sample('e0')));

  const records = await readAll([dir]);
  const results = records.map(outcome);
  const ok = results.filter((r) => !r.reason).map((r) => r.id);
  assert.deepEqual(ok, ['a0', 'a1', 'b0', 'c0', 'e0']);
  const bad = results.filter((r) => r.reason);
  assert.equal(bad.length, 2);
  const truncated = bad.find((r) => r.reason!.detail?.shard === join(dir, 'b.tar'))!;
  assert.equal(truncated.reason!.detail!.kind, 'truncated_shard');
  assert.equal(truncated.reason!.code, 'invalid_record');
  assert.equal(truncated.reason!.detail!.shard, join(dir, 'b.tar'));
  assert.equal(truncated.reason!.detail!.offset, b0.length + b1jpg.length);
  assert.equal(truncated.reason!.detail!.member, 'b1.txt');
  assert.match(truncated.reason!.message, /b\.tar is unreadable from byte \d+/);
  assert.match(truncated.id, /^invalid-[0-9a-f]{24}$/);
  // c1's image is over the member limit and skipped unread, but the shard ends inside it: the shard is truncated.
  const large = bad.find((r) => r.reason!.detail?.shard === join(dir, 'c.tar'))!;
  assert.equal(large.reason!.detail!.kind, 'truncated_shard');
  assert.equal(large.reason!.detail!.offset, c0.length);
  assert.equal(large.reason!.detail!.member, 'c1.jpg');
  assert.equal(large.reason!.detail!.samplesRead, 1);
  assert.match(large.reason!.message, /ends inside member "c1\.jpg" \(1024 of 8589934592 bytes\)/);
  // The rejects' origins name the shard and the sample.
  const origins = records.filter((_, i) => results[i]!.reason).map((r) => r.origin);
  assert.deepEqual(origins, [
    { kind: 'webdataset', path: join(dir, 'b.tar'), key: 'b1' },
    { kind: 'webdataset', path: join(dir, 'c.tar'), key: 'c1' },
  ]);
  // Replays agree on the rejects' ids.
  assert.deepEqual(
    (await readAll([dir])).map((r) => outcome(r).id),
    results.map((r) => r.id),
  );
});

test('an oversized member (base-256 size) is skipped unread and the shard goes on after it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-wds-'));
  // A member claiming 4 KiB against a 1 KiB limit, with its data present: the next sample is still read.
  const big = Buffer.alloc(4096, 7);
  const head = ustarHeader('k0.jpg', big.length, base256(BigInt(big.length)));
  writeFileSync(
    join(dir, 's.tar'),
    Buffer.concat([
      head,
      big,
      ustarMember('k0.txt', Buffer.from('a')),
      ...sample('k1').map(([n, d]) => ustarMember(n, d)),
      Buffer.alloc(1024),
    ]),
  );
  const results = (await readAll([dir], { maxMemberBytes: 1024 })).map(outcome);
  assert.equal(results.length, 2);
  assert.equal(results[0]!.reason?.detail?.kind, 'member_too_large');
  assert.equal(results[0]!.reason?.detail?.member, 'k0.jpg');
  assert.equal(results[0]!.reason?.detail?.offset, 0);
  assert.equal(results[1]!.id, 'k1');
  assert.equal(results[1]!.reason, undefined);
});

test('a corrupt header ends its shard as a reject; a cut inside a header too', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-wds-'));
  const good = Buffer.concat(sample('g0').map(([n, d]) => ustarMember(n, d)));
  const corrupt = ustarHeader('g1.jpg', 4);
  corrupt[0] = 'h'.charCodeAt(0); // checksum no longer matches
  writeFileSync(join(dir, '1.tar'), Buffer.concat([good, corrupt, Buffer.alloc(1024)]));
  writeFileSync(
    join(dir, '2.tar'),
    Buffer.concat([ustarMember('h0.jpg', jpg), ustarHeader('h0.txt', 3).subarray(0, 100)]),
  );
  const results = (await readAll([dir])).map(outcome);
  assert.deepEqual(
    results.map((r) => [
      r.id.startsWith('invalid-') ? 'invalid' : r.id,
      r.reason?.detail?.kind,
      r.reason?.detail?.offset,
    ]),
    [
      ['g0', undefined, undefined],
      ['invalid', 'corrupt_shard', good.length],
      ['h0', undefined, undefined],
      ['invalid', 'truncated_shard', 1024],
    ],
  );
});

test('shards written by tar-stream (the curated sink writer) read back whole', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-wds-'));
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((r) => pack.on('end', () => r()));
  const longKey = `${'d'.repeat(120)}/s0`;
  for (const [n, d] of [...sample('s0'), ...sample(longKey)]) pack.entry({ name: n, size: d.length }, d);
  pack.finalize();
  await done;
  writeFileSync(join(dir, 'x.tar'), Buffer.concat(chunks));
  const results = (await readAll([dir])).map(outcome);
  assert.deepEqual(
    results.map((r) => r.id),
    ['s0', longKey],
  );
});

/** A ByteAdmission over the pipeline's own semaphore, recording the most bytes ever held. */
function admission(capacity: number) {
  const sem = new Semaphore(capacity);
  const a = {
    capacity,
    held: 0,
    peak: 0,
    waits: 0,
    take(n: number) {
      a.held += n;
      a.peak = Math.max(a.peak, a.held);
    },
    tryReserve(n: number) {
      const ok = sem.tryAcquire(n);
      if (ok) a.take(n);
      return ok;
    },
    async reserve(n: number, signal: AbortSignal) {
      a.waits++;
      await sem.acquire(n, signal);
      a.take(n);
    },
    unreserve(n: number) {
      a.held -= n;
      sem.release(n);
    },
  };
  return a;
}

/** A shard as TarBytes that counts the bytes actually read (skipped bytes are not). */
function countingShard(path: string, tar: Buffer) {
  const counter = { read: 0 };
  const shard = {
    path,
    open: async (): Promise<TarBytes> => {
      const inner = streamTarBytes(Readable.from([tar]));
      return {
        read: async (buf) => {
          const n = await inner.read(buf);
          counter.read += n;
          return n;
        },
        skip: (n) => inner.skip(n),
        close: () => inner.close(),
      };
    },
  };
  return { shard, counter };
}

test('only the members a pair is made of are read, each sample within its byte limit, the best image kept', async () => {
  const img = (n: number) => Buffer.alloc(n, 1);
  const tar = ustar([
    // s0: a png, then a better jpg (the png is let go), unused members in between, a caption.
    ['s0.png', img(3000)],
    ['s0.npy', img(50_000)],
    ['s0.jpg', img(1000)],
    ['s0.seg.jpg', img(40_000)],
    ['s0.txt', Buffer.from('a caption')],
    // s1: the jpg first; the webp after it is worse and is not read.
    ['s1.jpg', img(1000)],
    ['s1.webp', img(30_000)],
    ['s1.txt', Buffer.from('a caption')],
    // s2: image and json over the sample limit together: one reject, the json unread.
    ['s2.jpg', img(3000)],
    ['s2.json', img(3000)],
    ['s2.txt', Buffer.from('a caption')],
  ]);
  const { shard, counter } = countingShard('mem.tar', tar);
  const a = admission(1 << 20);
  const source = WebDatasetSource.of([shard], { maxSampleBytes: 5000 });
  const batches = [];
  for await (const b of source.batches(new AbortController().signal, a)) batches.push(b);
  const records = batches.flatMap((b) => b.records);
  const members = records.map((r) => Object.keys((r.raw as RawSample).members).sort());
  assert.deepEqual(members, [['jpg', 'txt'], ['jpg', 'txt'], []]);
  const s2 = outcome(records[2]!).reason!;
  assert.equal(s2.detail?.kind, 'sample_too_large');
  assert.equal(s2.detail?.member, 's2.json');
  assert.equal(s2.detail?.size, 6000);
  assert.equal(s2.detail?.limit, 5000);
  // Read: the headers (and the end block), s0's png (then let go) and jpg, s1's jpg, s2's jpg, the two captions of
  // the samples that keep them; nothing else.
  const headers = 12 * 512;
  assert.equal(counter.read, headers + 3000 + 1000 + 1000 + 3000 + 2 * 'a caption'.length);
  // The batch carries exactly the bytes still reserved for its records.
  assert.equal(
    batches.reduce((n, b) => n + (b.bytes ?? 0), 0),
    2 * (1000 + 'a caption'.length),
  );
  assert.equal(a.held, 2 * (1000 + 'a caption'.length));
});

test('batches are cut by bytes, and a reader out of room hands over what it holds before it waits', async () => {
  const keys = Array.from({ length: 12 }, (_, i) => `k${String(i).padStart(2, '0')}`);
  const tar = ustar(
    keys.flatMap((k) => [[`${k}.jpg`, Buffer.alloc(1000, 2)] as [string, Buffer], [`${k}.txt`, Buffer.from('c')]]),
  );
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-wds-'));
  writeFileSync(join(dir, 'b.tar'), tar);
  // Room for about three samples; a batch holds up to 64 samples or 2002 bytes (two samples).
  const a = admission(3100);
  const source = await WebDatasetSource.open({ paths: [dir], maxBatchBytes: 2002 });
  const sizes: number[] = [];
  const pending: SourceBatch[] = [];
  for await (const b of source.batches(new AbortController().signal, a)) {
    sizes.push(b.records.length);
    assert.ok((b.bytes ?? 0) <= 2002, `a batch of ${b.bytes} bytes`);
    // The pipeline commits a batch some time after it is handed over: here, once the next one arrives.
    pending.push(b);
    while (pending.length > 1) a.unreserve(pending.shift()!.bytes ?? 0);
  }
  assert.equal(
    sizes.reduce((x, y) => x + y, 0),
    12,
  );
  assert.ok(a.peak <= 3100, `held ${a.peak} bytes`);
  // Out of room with one sample read: it went out alone rather than wait on room that only its own commit frees.
  assert.ok(a.waits > 0 && sizes.includes(1), `batches ${sizes.join(',')}, waits ${a.waits}`);
});

test('a sample larger than the bytes the pipeline may hold at all is rejected, not waited for', async () => {
  const tar = ustar([
    ['big.jpg', Buffer.alloc(2000, 3)],
    ['big.txt', Buffer.from('c')],
    ['ok.jpg', Buffer.alloc(100, 3)],
    ['ok.txt', Buffer.from('c')],
  ]);
  const { shard } = countingShard('cap.tar', tar);
  const a = admission(1500);
  const records: SourceRecord[] = [];
  for await (const b of WebDatasetSource.of([shard]).batches(new AbortController().signal, a)) {
    records.push(...b.records);
    a.unreserve(b.bytes ?? 0);
  }
  const [big, ok] = records.map(outcome);
  assert.equal(big!.reason?.detail?.kind, 'sample_too_large');
  assert.equal(big!.reason?.detail?.limit, 1500);
  assert.equal(ok!.id, 'ok');
  assert.equal(a.held, 0);
});
