/**
 * Hostile inputs through the real CLI (issue 12), each run bounded in time: a record whose metadata nests ~5000 deep
 * (JSON.stringify of it throws), and a directory of WebDataset shards holding a good shard, a shard cut off inside a
 * member and a shard whose member header claims 8 GiB. Each run must end with exit 0, the bad parts in rejects.jsonl
 * and every good pair scored.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { sampleMembers, ustar, ustarHeader, ustarMember } from '../sources/ustar.ts';
import { readRun } from '../helpers/cli-output.ts';
import { runCliToEnd, tinyFilterArgs } from '../helpers/live-cli.ts';

/** A run of a few pairs on the tiny model takes seconds; a hang is killed here and fails the test. */
const RUN_LIMIT_MS = 90_000;

let server: Server;
let base: string;
let jpeg: Buffer;

before(async () => {
  jpeg = await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 10, g: 120, b: 200 } } })
    .jpeg()
    .toBuffer();
  server = createServer((req, res) => {
    if (req.url === '/a.jpg') {
      res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': jpeg.length });
      res.end(jpeg);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => server?.close());

/** Runs the CLI (the image server lives in this process), killing it after RUN_LIMIT_MS. */
function filter(input: string, out: string) {
  return runCliToEnd(tinyFilterArgs(input, out, '--allow-address', `127.0.0.1:${new URL(base).port}`), RUN_LIMIT_MS);
}

const scoredCount = (r: ReturnType<typeof readRun>) =>
  r.curated.length + r.rejects.filter((e) => e.scores.itm !== null).length;

test('a record whose metadata nests 5000 deep is an invalid_record reject and the run ends', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-deep-'));
  const input = join(dir, 'x.jsonl');
  const deep = `{"id": "deep", "url": "${base}/a.jpg", "caption": "a blue square", "m": ${'['.repeat(5000)}${']'.repeat(5000)}}`;
  assert.ok(deep.length > 10_000 && deep.length < 16_000);
  const wide = JSON.stringify({ id: 'wide', url: `${base}/a.jpg`, caption: 'a blue square', m: 'x'.repeat(70_000) });
  const good = JSON.stringify({ id: 'good', url: `${base}/a.jpg`, caption: 'a blue square', src: 't' });
  writeFileSync(input, [deep, wide, good].join('\n') + '\n');
  const out = join(dir, 'out');
  const r = await filter(input, out);
  assert.equal(r.signal, null, `the run did not end within ${RUN_LIMIT_MS} ms:\n${r.err.slice(-2000)}`);
  assert.equal(r.code, 0, r.err.slice(-2000));
  const run = readRun(out);
  const byId = new Map(run.rejects.map((e) => [e.id, e]));
  assert.equal(byId.get('deep')?.reasons[0]?.code, 'invalid_record');
  assert.deepEqual(byId.get('deep')?.reasons[0]?.detail, { field: 'metadata', limit: 'depth', max: 32 });
  assert.equal(byId.get('wide')?.reasons[0]?.detail?.field, 'metadata');
  assert.equal(byId.get('wide')?.reasons[0]?.detail?.limit, 'bytes');
  assert.deepEqual(
    run.curated.map((c) => c.id),
    ['good'],
  );
  assert.equal(run.summary.records, 3);
  assert.equal(scoredCount(run), 1);
});

test('a directory with a good, a truncated and an 8 GiB-member shard: good samples scored, bad parts rejected, exit 0', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-shards-'));
  const shards = join(dir, 'shards');
  mkdirSync(shards);
  const members = (key: string, meta: Record<string, unknown> = {}) =>
    sampleMembers(key, jpeg, `a blue square ${key}`, { src: 'shard', ...meta });
  const blocks = (ms: [string, Buffer][]) => Buffer.concat(ms.map(([n, d]) => ustarMember(n, d)));
  writeFileSync(
    join(shards, '000.tar'),
    ustar([
      ...members('g0', { url: 'javascript:alert(1)' }),
      ...members('g1', { url: 'data:image/png;base64,AAAA' }),
      ...members('g2', { url: `${base}/a.jpg` }),
    ]),
  );
  // 001.tar: t0 whole, then t1's image cut off in the middle of its data.
  const t0 = blocks(members('t0'));
  const t1 = ustarMember('t1.jpg', jpeg);
  writeFileSync(join(shards, '001.tar'), Buffer.concat([t0, t1.subarray(0, 512 + Math.floor(jpeg.length / 2))]));
  // 002.tar: h0 whole, then a header claiming 8 GiB for h1's image, with only 1 KiB after it.
  const h0 = blocks(members('h0'));
  writeFileSync(join(shards, '002.tar'), Buffer.concat([h0, ustarHeader('h1.jpg', 8 * 1024 ** 3), Buffer.alloc(1024)]));
  writeFileSync(join(shards, '003.tar'), ustar(members('z0')));

  const out = join(dir, 'out');
  const r = await filter(shards, out);
  assert.equal(r.signal, null, `the run did not end within ${RUN_LIMIT_MS} ms:\n${r.err.slice(-2000)}`);
  assert.equal(r.code, 0, r.err.slice(-2000));
  const run = readRun(out);
  // Every good sample scored (itm>=0 accepts every scored pair).
  assert.deepEqual(run.curated.map((c) => c.id).sort(), ['g0', 'g1', 'g2', 't0', 'h0', 'z0'].sort());
  for (const c of run.curated) assert.equal(typeof c.scores.itm, 'number', c.id);
  // The bad parts are rejects naming the shard and the offset.
  assert.equal(run.rejects.length, 2);
  const truncated = run.rejects.find((e) => e.reasons[0]?.detail?.shard === join(shards, '001.tar'));
  assert.equal(truncated?.reasons[0]?.detail?.kind, 'truncated_shard');
  assert.equal(truncated?.reasons[0]?.code, 'invalid_record');
  assert.equal(truncated?.reasons[0]?.detail?.shard, join(shards, '001.tar'));
  assert.equal(truncated?.reasons[0]?.detail?.offset, t0.length);
  assert.deepEqual(truncated?.source, { kind: 'webdataset', path: join(shards, '001.tar'), key: 't1' });
  // h1's image is over the member limit (skipped unread), and the shard ends inside it: a truncated shard.
  const large = run.rejects.find((e) => e.reasons[0]?.detail?.shard === join(shards, '002.tar'));
  assert.equal(large?.reasons[0]?.code, 'invalid_record');
  assert.equal(large?.reasons[0]?.detail?.kind, 'truncated_shard');
  assert.equal(large?.reasons[0]?.detail?.offset, h0.length);
  assert.equal(large?.reasons[0]?.detail?.member, 'h1.jpg');
  assert.deepEqual(
    run.summary.inputs.truncatedShards.map((t: { shard: string }) => t.shard),
    [join(shards, '001.tar'), join(shards, '002.tar')],
  );
  // summary.json counts them all.
  assert.equal(run.summary.records, 8);
  assert.equal(run.summary.decisions.accept, 6);
  assert.equal(run.summary.decisions.reject, 2);
  // A sample's non-http(s) url never reaches the curated .json nor the audit events; a good one does.
  const byId = new Map(run.curated.map((c) => [c.id, c]));
  for (const id of ['g0', 'g1']) {
    assert.equal(byId.get(id)?.url, null, id);
    assert.match(String(byId.get(id)?.metadata.url_dropped), /http or https/, id);
  }
  assert.equal(byId.get('g2')?.url, `${base}/a.jpg`);
  const everything = readFileSync(join(out, 'rejects.jsonl'), 'utf8') + JSON.stringify(run.curated);
  assert.ok(!everything.includes('javascript:') && !everything.includes('data:image'), 'a bad url leaked');
});
