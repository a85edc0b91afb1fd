/**
 * What `--input` resolves to, for local files a careless user names (lib/inputs/resolve.ts): formats told by bytes,
 * including the ones that must be refused before a run reads them as something they are not.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { dryRun } from '../../lib/cli/filter-plan.ts';
import { resolveInputs } from '../../lib/inputs/resolve.ts';
import { FilterError } from '../../lib/types.ts';
import { ustar } from '../sources/ustar.ts';

const ctx = { s3: () => assert.fail('no s3'), http: () => assert.fail('no http') };
const dir = mkdtempSync(join(tmpdir(), 'mlmf-resolve-'));
const file = (name: string, bytes: Buffer | string) => {
  writeFileSync(join(dir, name), bytes);
  return join(dir, name);
};

test('a file gzip-compressed twice is refused by name, not read as JSONL of compressed bytes', async () => {
  const tar = ustar([['k.txt', Buffer.from('hi')]]);
  for (const inner of [tar, Buffer.from('{"id":"a","url":"https://e.com/a.jpg","caption":"c"}\n')]) {
    const twice = file('twice.tar.gz.gz', gzipSync(gzipSync(inner)));
    await assert.rejects(resolveInputs([twice], ctx), (err: FilterError) => {
      assert.equal(err.code, 'unrecognised_input');
      assert.match(err.message, /twice\.tar\.gz\.gz is gzip-compressed twice/);
      return true;
    });
  }
  const once = file('once.tar.gz', gzipSync(tar));
  const [item] = await resolveInputs([once], ctx);
  assert.deepEqual({ format: item!.format, gzip: item!.gzip }, { format: 'webdataset', gzip: true });
});

test('an empty tar (only end-of-archive blocks) is a shard with no sample; zeros then data are not', async () => {
  // GNU tar's empty archive: 10240 zero bytes.
  const empty = Buffer.alloc(10_240);
  for (const path of [file('empty.tar', empty), file('empty.tar.gz', gzipSync(empty))]) {
    const [item] = await resolveInputs([path], ctx);
    assert.equal(item!.format, 'webdataset', path);
  }
  const zerosThenData = Buffer.concat([Buffer.alloc(1024), Buffer.from('not a tar at all')]);
  await assert.rejects(resolveInputs([file('disk.img', zerosThenData)], ctx), /neither a tar shard nor JSONL/);
});

const model = new URL('../../test/fixtures/models/tiny-llava-qwen', import.meta.url).pathname;

test('--dry-run lists an input whose name holds terminal controls escaped', { skip: !existsSync(model) }, async () => {
  const path = file('evil\x1b[2J.jsonl', '{"id":"a","url":"https://e.com/a.jpg","caption":"c"}\n');
  const lines = await dryRun({ input: [path], out: join(dir, 'out'), model });
  const listed = lines.find((l) => l.includes('evil'))!;
  assert.equal(listed, `  JSONL ${join(dir, 'evil')}\\u{001b}[2J.jsonl`);
});
