/**
 * `mlm-filter filter --input -` on a pipe its writer keeps open, as `tail -f crawl.jsonl | mlm-filter filter ...`
 * (issue 14), through the real CLI on the tiny model: records flow without the pipe ending; SIGINT drains what was
 * read (every outcome written, exit 130) with the pipe still open; a second SIGINT ends a run at once.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { readRun } from '../helpers/cli-output.ts';
import { exitWithin, startCli, visibleOutcomes } from '../helpers/live-cli.ts';
import { waitFor } from '../helpers/poll.ts';

const model = new URL('../../test/fixtures/models/tiny-llava-qwen', import.meta.url).pathname;
const sample = new URL('../../sample/pairs.jsonl', import.meta.url).pathname;

let server: Server;
let base: string;
let jpeg: Buffer;
/** Image requests the server holds unanswered until release(). */
const held: ServerResponse[] = [];

function release(): void {
  for (const res of held.splice(0)) {
    res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': jpeg.length });
    res.end(jpeg);
  }
}

before(async () => {
  jpeg = await sharp({ create: { width: 96, height: 80, channels: 3, background: { r: 30, g: 140, b: 90 } } })
    .jpeg()
    .toBuffer();
  server = createServer((req, res) => {
    if (req.url?.startsWith('/held/')) held.push(res);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => {
  held.splice(0).forEach((res) => res.destroy());
  server?.closeAllConnections();
  server?.close();
});

/** Five records with inline images of sample/pairs.jsonl, under new ids. */
function inlineRecords(prefix: string): { ids: string[]; text: string } {
  const withImage = readFileSync(sample, 'utf8')
    .split('\n')
    .flatMap((l) => {
      try {
        const r = JSON.parse(l) as { image?: unknown; caption?: unknown };
        return r.image && typeof r.caption === 'string' ? [r] : [];
      } catch {
        return [];
      }
    });
  const records = withImage.slice(0, 5).map((r, i) => ({ ...r, id: `${prefix}-${i}` }));
  return { ids: records.map((r) => r.id), text: records.map((r) => JSON.stringify(r) + '\n').join('') };
}

/** Records whose image fetches the server holds. */
function heldRecords(prefix: string, n: number): { ids: string[]; text: string } {
  const ids = Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
  const text = ids.map((id) => JSON.stringify({ id, url: `${base}/held/${id}.jpg`, caption: `a photo ${id}` }) + '\n');
  return { ids, text: text.join('') };
}

function filterArgs(out: string, ...flags: string[]): string[] {
  return ['filter', '--input', '-', '--out', out, '--model', model, '--progress', 'none', ...flags];
}

/** Every id of a finished run's output (curated samples and rejects), sorted. */
function outputIds(out: string): string[] {
  const run = readRun(out);
  return [...run.curated.map((s) => s.id), ...run.rejects.map((e) => e.id)].sort();
}

const freshOut = () => join(mkdtempSync(join(tmpdir(), 'mlmf-stdin-')), 'out');

test('records on stdin flow while the pipe stays open; SIGINT then exits 130 with each outcome once', async () => {
  const out = freshOut();
  const cli = startCli(filterArgs(out));
  const { ids, text } = inlineRecords('live');
  cli.child.stdin.write(text);
  // Accepted pairs reach curated/ on the shard's idle flush (10 s), rejects at once.
  await waitFor('the 5 outcomes in --out, stdin still open', () => visibleOutcomes(out) >= 5, 90_000);
  assert.equal(cli.child.exitCode, null, 'the run keeps reading the open pipe');
  cli.child.kill('SIGINT');
  const exit = await exitWithin(cli, 60_000);
  cli.child.stdin.end();
  assert.deepEqual(exit, { code: 130, signal: null }, cli.stderr());
  assert.deepEqual(outputIds(out), [...ids].sort());
  const { summary } = readRun(out);
  assert.equal(summary.records, 5);
  assert.equal(summary.interrupted, true);
});

test('SIGINT with the pipe open drains the records already read: their outcomes are written, exit 130', async () => {
  const out = freshOut();
  const cli = startCli(filterArgs(out, '--allow-address', `127.0.0.1:${new URL(base).port}`));
  const { ids, text } = heldRecords('drain', 5);
  cli.child.stdin.write(text);
  // All five were read and reached the intake; none has an outcome yet.
  await waitFor('the 5 image requests', () => held.length >= 5, 90_000);
  assert.equal(visibleOutcomes(out), 0);
  cli.child.kill('SIGINT');
  await waitFor('the drain notice', () => /draining/.test(cli.stderr()), 30_000);
  release();
  const exit = await exitWithin(cli, 60_000);
  cli.child.stdin.end();
  assert.deepEqual(exit, { code: 130, signal: null }, cli.stderr());
  assert.deepEqual(outputIds(out), [...ids].sort());
  const { summary } = readRun(out);
  assert.equal(summary.records, 5);
  assert.equal(summary.interrupted, true);
});

test('a second SIGINT ends a draining run at once, the pipe open and a fetch still in flight', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-stdin-'));
  // Fetch timeouts far past the deadline below: only the second signal can end this run in time.
  const config = join(dir, 'slow-fetch.json');
  const slow = 300_000;
  writeFileSync(
    config,
    JSON.stringify({ intake: { headersTimeoutMs: slow, bodyTimeoutMs: slow, totalTimeoutMs: slow } }),
  );
  const out = join(dir, 'out');
  const cli = startCli(filterArgs(out, '--allow-address', `127.0.0.1:${new URL(base).port}`, '--config', config));
  cli.child.stdin.write(heldRecords('stuck', 1).text);
  await waitFor('the image request', () => held.length >= 1, 90_000);
  cli.child.kill('SIGINT');
  await waitFor('the drain notice', () => /draining/.test(cli.stderr()), 30_000);
  assert.equal(cli.child.exitCode, null, 'the first signal drains: the held fetch keeps the run going');
  cli.child.kill('SIGINT');
  const exit = await exitWithin(cli, 30_000);
  cli.child.stdin.end();
  assert.deepEqual(exit, { code: 130, signal: null }, cli.stderr());
  assert.match(cli.stderr(), /stopped at once/);
});
