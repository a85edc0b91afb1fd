/**
 * `filter --input` as data teams write it (issue 20), through the real CLI and the tiny model: repeatable inputs,
 * brace lists, gzip shards and JSONL, S3 prefixes and objects in the local S3 server (moto), http(s) shard URLs
 * from a server in this process (loopback opened with --allow-address, as the address guard requires), inputs
 * recognised by their bytes (an unknown binary is a usage error, nothing written), and a shard cut at a member
 * boundary reported as truncated in the rejects, on stderr and in summary.json.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import { readRun } from '../helpers/cli-output.ts';
import { ustar, ustarMember } from '../sources/ustar.ts';
import { S3_ENDPOINT, createBucket, needServices, s3Client, uniq } from '../stream/helpers.ts';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const model = new URL('../../test/fixtures/models/tiny-llava-qwen', import.meta.url).pathname;
const skip = !existsSync(model) && 'tiny model fixture missing';
const RUN_LIMIT_MS = 120_000;

let jpeg: Buffer;
let server: Server;
let base: string;
/** What the test server serves, by path. */
const served = new Map<string, Buffer>();
/** Connections the server dropped mid-body. */
let cuts = 0;

before(async () => {
  jpeg = await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 10, g: 120, b: 200 } } })
    .jpeg()
    .toBuffer();
  server = createServer((req, res) => {
    const body = served.get(req.url ?? '');
    if (!body) {
      res.writeHead(404);
      return res.end();
    }
    // Ranges as a file server answers them (the CLI reads an input's first bytes before the run, and resumes a
    // body cut short from where it stopped).
    const common = { 'accept-ranges': 'bytes', etag: '"v1"' };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (range) {
      const first = Number(range[1]);
      // /changing/: resumed from a new version of the file (a server that ignores If-Range), with its new ETag.
      if (req.url?.startsWith('/changing/') && first > 0) common.etag = '"v2"';
      const last = Math.min(range[2] ? Number(range[2]) : Infinity, body.length - 1);
      res.writeHead(206, { ...common, 'content-range': `bytes ${first}-${last}/${body.length}` });
      return res.end(body.subarray(first, last + 1));
    }
    res.writeHead(200, { ...common, 'content-length': body.length });
    // /flaky/ and /changing/: the connection drops halfway through the whole-body GET.
    if (req.url?.startsWith('/flaky/') || req.url?.startsWith('/changing/')) {
      cuts++;
      res.write(body.subarray(0, body.length >> 1), () => res.destroy());
      return;
    }
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => server?.close());

const members = (key: string): [string, Buffer][] => [
  [`${key}.jpg`, jpeg],
  [`${key}.txt`, Buffer.from(`a blue square ${key}`)],
  [`${key}.json`, Buffer.from(JSON.stringify({ src: 'shard' }))],
];
const shard = (...keys: string[]) => ustar(keys.flatMap(members));
const jsonl = (...ids: string[]) =>
  ids
    .map((id) => JSON.stringify({ id, image: { base64: jpeg.toString('base64') }, caption: `a square ${id}` }))
    .join('\n') + '\n';

function cli(args: string[], env: Record<string, string> = {}, stdin?: Buffer) {
  return new Promise<{ code: number | null; signal: string | null; out: string; err: string }>((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], {
      stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    child.stdin?.end(stdin);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d));
    child.stderr!.on('data', (d: Buffer) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_LIMIT_MS);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, err });
    });
  });
}

const filterArgs = (out: string, inputs: string[], extra: string[] = []) => [
  'filter',
  ...inputs.flatMap((i) => ['--input', i]),
  '--out',
  out,
  '--model',
  model,
  '--threshold',
  'itm>=0',
  '--progress',
  'none',
  ...extra,
];

test(
  'a brace list over 3 shards, a .tar.gz, a .jsonl.gz, a shard cut at a member boundary and a cut .tar.gz: cuts reported',
  { skip },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-inputs-'));
    const shards = join(dir, 'shards');
    mkdirSync(shards);
    writeFileSync(join(shards, '00000.tar'), shard('a0', 'a1'));
    writeFileSync(join(shards, '00001.tar'), shard('b0'));
    writeFileSync(join(shards, '00002.tar'), shard('c0'));
    writeFileSync(join(shards, '00003.tar'), shard('not-in-the-list'));
    writeFileSync(join(dir, 'more.tar.gz'), gzipSync(shard('g0', 'g1')));
    writeFileSync(join(dir, 'pairs.jsonl.gz'), gzipSync(jsonl('j0', 'j1')));
    // Two whole samples, then the shard ends between members: no end-of-archive blocks.
    const cut = Buffer.concat(['k0', 'k1'].flatMap(members).map(([n, d]) => ustarMember(n, d)));
    writeFileSync(join(dir, 'cut.tar'), cut);
    // A .tar.gz cut inside z1's image (stored deflate: the tar's bytes sit at their offset + 15 in the file).
    const z0 = Buffer.concat(members('z0').map(([n, d]) => ustarMember(n, d)));
    const stored = gzipSync(shard('z0', 'z1'), { level: 0 });
    writeFileSync(join(dir, 'cutgz.tar.gz'), stored.subarray(0, 15 + z0.length + 512 + 100));

    const out = join(dir, 'out');
    const inputs = [join(shards, '{00000..00002}.tar'), join(dir, 'more.tar.gz'), join(dir, 'pairs.jsonl.gz')];
    const r = await cli(filterArgs(out, [...inputs, join(dir, 'cut.tar'), join(dir, 'cutgz.tar.gz')]));
    assert.equal(r.signal, null, r.err.slice(-2000));
    assert.equal(r.code, 0, r.err.slice(-2000));
    const run = readRun(out);
    assert.deepEqual(run.curated.map((c) => c.id).sort(), [
      'a0',
      'a1',
      'b0',
      'c0',
      'g0',
      'g1',
      'j0',
      'j1',
      'k0',
      'k1',
      'z0',
    ]);
    // The cut shards: one truncated_shard reject each, naming it, the samples read before it, a warning, summary.json.
    assert.equal(run.rejects.length, 2);
    const gz = run.rejects.find((e) => e.reasons[0]!.detail!.shard === join(dir, 'cutgz.tar.gz'))!.reasons[0]!;
    assert.equal(gz.detail!.kind, 'truncated_shard');
    assert.equal(gz.detail!.member, 'z1.jpg');
    assert.equal(gz.detail!.offset, z0.length);
    assert.equal(gz.detail!.samplesRead, 1);
    const detail = run.rejects.find((e) => e.reasons[0]!.detail!.shard === join(dir, 'cut.tar'))!.reasons[0]!.detail!;
    assert.ok(run.rejects.every((e) => e.reasons[0]!.code === 'invalid_record'));
    assert.equal(detail.kind, 'truncated_shard');
    assert.equal(detail.shard, join(dir, 'cut.tar'));
    assert.equal(detail.offset, cut.length);
    assert.equal(detail.samplesRead, 2);
    assert.match(r.err, /warning: shard .*cut\.tar is truncated at byte \d+ .*; 2 samples read/);
    assert.deepEqual(run.summary.inputs, {
      count: 7,
      truncatedShards: [
        {
          shard: join(dir, 'cut.tar'),
          offset: cut.length,
          samplesRead: 2,
          message: 'the shard ends without its end-of-archive blocks',
        },
        {
          shard: join(dir, 'cutgz.tar.gz'),
          offset: z0.length,
          samplesRead: 1,
          message: `the shard ends inside member "z1.jpg" (100 of ${jpeg.length} bytes)`,
        },
      ],
    });
    assert.equal(run.summary.records, 13);
    assert.deepEqual(run.summary.input, [...inputs, join(dir, 'cut.tar'), join(dir, 'cutgz.tar.gz')]);
  },
);

test(
  'an s3:// prefix, an s3:// object and http shard URLs (loopback opened by --allow-address, a cut body resumed)',
  { skip: skip || (await needServices('s3')) },
  async () => {
    const s3 = s3Client();
    const bucket = uniq('mlmf-inputs');
    await createBucket(s3, bucket);
    const put = (Key: string, Body: Buffer) => s3.send(new PutObjectCommand({ Bucket: bucket, Key, Body }));
    await put('pool/00000.tar', shard('p0', 'p1'));
    await put('pool/00001.tar.gz', gzipSync(shard('p2')));
    await put('pool/README.txt', Buffer.from('not a shard: left out of the listing'));
    await put('pool/pairs.jsonl.gz', gzipSync(jsonl('pj0', 'pj1')));
    await put('pool-other/00000.tar', shard('other'));
    await put('single/one.tar', shard('s0'));
    served.set('/remote/00000.tar', shard('h0', 'h1'));
    served.set('/flaky/00001.tar', shard('f0', 'f1', 'f2'));
    s3.destroy();

    const dir = mkdtempSync(join(tmpdir(), 'mlmf-inputs-'));
    const out = join(dir, 'out');
    const url = `${base}/remote/00000.tar`;
    const inputs = [`s3://${bucket}/pool/`, `s3://${bucket}/single/one.tar`, url, `${base}/flaky/00001.tar`];
    const env = { MLMF_S3_ENDPOINT: S3_ENDPOINT, AWS_EC2_METADATA_DISABLED: 'true' };

    // Without the opt-in, the loopback URL is refused by the address guard before anything is written.
    const refused = await cli(filterArgs(out, inputs), env);
    assert.equal(refused.code, 2, refused.err);
    assert.match(refused.err, /input_unreadable.*127\.0\.0\.1/);
    assert.equal(existsSync(out), false);

    const r = await cli(filterArgs(out, inputs, ['--allow-address', '127.0.0.1/32']), env);
    assert.equal(r.code, 0, r.err.slice(-2000));
    const run = readRun(out);
    assert.deepEqual(run.curated.map((c) => c.id).sort(), [
      'f0',
      'f1',
      'f2',
      'h0',
      'h1',
      'p0',
      'p1',
      'p2',
      'pj0',
      'pj1',
      's0',
    ]);
    assert.equal(run.rejects.length, 0);
    assert.equal(run.summary.inputs.count, 6);
    // The flaky URL's body was cut once and resumed by a ranged GET from where it stopped.
    assert.equal(cuts, 1);
    assert.deepEqual(run.summary.input, inputs);
  },
);

test(
  'an http shard resumed from another version of it fails the run (input_changed), not a spliced shard',
  { skip },
  async () => {
    served.set('/changing/00000.tar', shard('v0', 'v1', 'v2', 'v3'));
    const dir = mkdtempSync(join(tmpdir(), 'mlmf-inputs-'));
    const out = join(dir, 'out');
    const url = `${base.replace('//', '//crawler:pw9@')}/changing/00000.tar`;
    const r = await cli(filterArgs(out, [url], ['--allow-address', '127.0.0.1/32']));
    assert.equal(r.code, 1, r.err.slice(-2000));
    assert.match(
      r.err,
      /error \[input_changed\]: input http:\/\/\*\*\*@127\.0\.0\.1:\d+\/changing\/00000\.tar changed/,
    );
    assert.ok(!r.err.includes('pw9'), 'the password was shown');
  },
);

test('an unknown binary input is a usage error naming the file; nothing is written', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-inputs-'));
  const good = join(dir, 'good.jsonl');
  writeFileSync(good, jsonl('x0'));
  const binary = join(dir, 'pairs.jsonl');
  writeFileSync(binary, Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48]));
  const out = join(dir, 'out');
  const r = await cli(filterArgs(out, [good, binary]));
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /unrecognised_input/);
  assert.ok(r.err.includes(binary), r.err);
  assert.equal(existsSync(out), false, 'the output directory was created');

  // A gzip whose content is not a shard nor JSONL: refused the same way.
  const gz = join(dir, 'x.tar.gz');
  writeFileSync(gz, gzipSync(Buffer.alloc(4096, 0xa5)));
  const r2 = await cli(filterArgs(out, [gz]));
  assert.equal(r2.code, 2, r2.err);
  assert.match(r2.err, /unrecognised_input.*x\.tar\.gz.*inside its gzip/);
  // A tar named .jsonl is read as what it is; --input-format contradicting the bytes is refused.
  const tarNamedJsonl = join(dir, 'shard.jsonl');
  writeFileSync(tarNamedJsonl, shard('t0'));
  const r3 = await cli(filterArgs(out, [tarNamedJsonl], ['--input-format', 'jsonl']));
  assert.equal(r3.code, 2, r3.err);
  assert.match(r3.err, /unrecognised_input.*shard\.jsonl holds a tar shard, not jsonl/);
  assert.equal(existsSync(out), false);
});

test('--input - with --input-format webdataset reads a tar shard from stdin, gzip or not', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-inputs-'));
  for (const [name, bytes] of [
    ['plain', shard('s0', 's1')],
    ['gzip', gzipSync(shard('s0', 's1'))],
  ] as const) {
    const out = join(dir, name);
    const r = await cli(filterArgs(out, ['-'], ['--input-format', 'webdataset']), {}, bytes);
    assert.equal(r.code, 0, r.err.slice(-2000));
    const run = readRun(out);
    assert.deepEqual(run.curated.map((c) => c.id).sort(), ['s0', 's1'], name);
    assert.equal(run.rejects.length, 0, name);
  }
});
