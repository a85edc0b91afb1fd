/**
 * The outputs a pool needs (issue 20), through the real `mlm-filter filter` on the tiny model: `pairs.parquet` read
 * back by pyarrow with summary.json's counts, DataComp's `kept_uids.npy` read back by numpy as resharder.py reads it,
 * a resumed run's table holding both runs, and --no-parquet. The Python readers come from scripts/py-readers.sh
 * (a pinned venv, installed on first use).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import sharp from 'sharp';
import { readRun } from '../helpers/cli-output.ts';
import { ustar } from '../sources/ustar.ts';

const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin/mlm-filter.js');
const model = join(root, 'test/fixtures/models/tiny-llava-qwen');
let python: string;

before(() => {
  python = execFileSync('bash', [join(root, 'scripts/py-readers.sh')], { encoding: 'utf8' }).trim();
});

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, 'filter', '--model', model, '--progress', 'none', ...args], {
    encoding: 'utf8',
    timeout: 180_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Runs a Python snippet with the readers' venv; it prints one JSON value. */
function py(script: string, ...args: string[]): unknown {
  const r = spawnSync(python, ['-c', script, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** A 32-hex-digit DataComp uid. */
const uidOf = (shard: number, i: number) =>
  `${shard.toString(16).padStart(2, '0')}${'c0ffee'.repeat(5)}`.slice(0, 31) + i;

/**
 * A DataComp-like shard: `<key>.jpg`, `<key>.txt`, `<key>.json` with `uid`, `key` and `url`. Sample 2 has bytes
 * that are no image (an `undecodable_image` reject), sample 3 no caption (`invalid_record`, its uid unreadable).
 */
async function datacompShard(path: string, shard: number): Promise<void> {
  const members: [string, Buffer][] = [];
  for (let i = 0; i < 5; i++) {
    const key = `${String(shard).padStart(5, '0')}${String(i).padStart(4, '0')}`;
    const jpeg = await sharp({
      create: { width: 40 + i, height: 32, channels: 3, background: { r: 30 * i, g: 90, b: 160 } },
    })
      .jpeg()
      .toBuffer();
    const meta = {
      uid: uidOf(shard, i),
      key,
      url: `https://images.example/${key}.jpg`,
      caption: `pool caption ${key}`,
    };
    members.push([`${key}.jpg`, i === 2 ? Buffer.from('not an image') : jpeg]);
    if (i !== 3) members.push([`${key}.txt`, Buffer.from(`a blue square number ${key}`)]);
    else delete (meta as Partial<typeof meta>).caption;
    members.push([`${key}.json`, Buffer.from(JSON.stringify(meta))]);
  }
  writeFileSync(path, ustar(members));
}

const READ_TABLE = `
import json, sys, collections
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
rows = t.to_pylist()
reasons = collections.Counter(c for r in rows for c in set(r['reasons']))
print(json.dumps({
  'columns': t.column_names,
  'types': {f.name: str(f.type) for f in t.schema},
  'rows': rows,
  'decisions': dict(collections.Counter(r['decision'] for r in rows)),
  'reasons': dict(reasons),
}))
`;

const READ_UIDS = `
import json, sys
import numpy as np
u16 = np.dtype("u8,u8")
with open(sys.argv[1], "rb") as f:
    assert f.read(6) == b"\\x93NUMPY"
subset = np.load(sys.argv[1], mmap_mode="r")
assert subset.dtype == u16, subset.dtype
assert subset.ndim == 1
found = {}
for uid in sys.argv[2:]:
    # resharder.py's own lookup of a sample's uid in the subset
    key_u16 = np.array([divmod(int(uid, 16), 2**64)], u16)[0]
    found[uid] = int(np.searchsorted(subset, key_u16, "right") - np.searchsorted(subset, key_u16, "left"))
print(json.dumps({
  'uids': ['%016x%016x' % (int(a), int(b)) for a, b in subset],
  'sorted': bool((np.sort(subset) == subset).all()),
  'found': found,
}))
`;

interface Table {
  columns: string[];
  types: Record<string, string>;
  rows: Record<string, unknown>[];
  decisions: Record<string, number>;
  reasons: Record<string, number>;
}

test('pairs.parquet and kept_uids.npy of two DataComp shards read back by pyarrow and numpy', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-pool-'));
  const shards = join(dir, 'shards');
  mkdirSync(shards);
  await datacompShard(join(shards, '00000.tar'), 0);
  await datacompShard(join(shards, '00001.tar'), 1);
  const out = join(dir, 'out');
  const r = cli('--input', shards, '--out', out, '--threshold', 'itm>=0');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /pairs\.parquet/);

  const run = readRun(out);
  const table = py(READ_TABLE, join(out, 'pairs.parquet')) as Table;
  assert.deepEqual(table.columns, [
    ...['id', 'uid', 'url', 'caption', 'input', 'key', 'line'],
    ...['itm', 'odf', 'ctq', 'su', 'expected_itm', 'expected_odf', 'expected_ctq', 'expected_su'],
    ...['decision', 'reasons'],
  ]);
  assert.equal(table.types.itm, 'double');
  assert.equal(table.types.reasons, 'list<element: string not null>');
  // The same counts as summary.json.
  assert.equal(table.rows.length, run.summary.records);
  assert.equal(table.rows.length, 10);
  assert.deepEqual(table.decisions, { accept: run.summary.decisions.accept, reject: run.summary.decisions.reject });
  assert.deepEqual(table.reasons, run.summary.reasons);
  assert.deepEqual(run.summary.outputs.pairsTable, { file: 'pairs.parquet', rows: 10 });

  // Each kept row is its curated sample; each row names its shard and key.
  for (const meta of run.curated) {
    const row = table.rows.find((x) => x.id === meta.id)!;
    assert.equal(row.decision, 'accept');
    assert.equal(row.uid, meta.metadata.uid);
    assert.equal(row.url, meta.url);
    assert.equal(row.caption, meta.caption);
    assert.equal(row.itm, meta.scores.itm);
    assert.equal(row.expected_itm, meta.expected_scores?.itm ?? null);
    assert.equal(row.input, meta.source.kind === 'webdataset' ? meta.source.path : undefined);
    assert.deepEqual(row.reasons, []);
  }
  const undecodable = table.rows.find((x) => x.key === '000010002')!;
  assert.equal(undecodable.decision, 'reject');
  assert.deepEqual(undecodable.reasons, ['undecodable_image']);
  assert.equal(undecodable.uid, uidOf(1, 2));
  assert.equal(undecodable.input, join(shards, '00001.tar'));
  assert.equal(undecodable.itm, null);
  const noCaption = table.rows.find((x) => x.key === '000000003')!;
  assert.deepEqual(noCaption.reasons, ['invalid_record']);

  // The uid list: every kept uid once, sorted, found by resharder.py's lookup; rejected ones absent.
  const kept = run.curated.map((m) => m.metadata.uid as string).sort();
  assert.equal(kept.length, 6);
  const rejected = [uidOf(0, 2), uidOf(1, 2)];
  const uids = py(READ_UIDS, join(out, 'kept_uids.npy'), ...kept, ...rejected) as {
    uids: string[];
    sorted: boolean;
    found: Record<string, number>;
  };
  assert.deepEqual(uids.uids, kept);
  assert.equal(uids.sorted, true);
  for (const uid of kept) assert.equal(uids.found[uid], 1, uid);
  for (const uid of rejected) assert.equal(uids.found[uid], 0, uid);
  assert.deepEqual(run.summary.outputs.keptUids, { file: 'kept_uids.npy', uids: 6, keptWithoutUid: 0 });
  assert.deepEqual(
    readdirSync(out).filter((n) => n.includes('.tmp-')),
    [],
  );
});

test('a resumed run writes the table of the whole output; JSONL rows carry their line; --no-parquet writes none', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-pool-resume-'));
  const shards = join(dir, 'shards');
  mkdirSync(shards);
  await datacompShard(join(shards, '00000.tar'), 0);
  const out = join(dir, 'out');
  let r = cli('--input', join(shards, '00000.tar'), '--out', out, '--threshold', 'itm>=0');
  assert.equal(r.code, 0, r.err);
  await datacompShard(join(shards, '00001.tar'), 1);
  r = cli('--input', shards, '--out', out, '--threshold', 'itm>=0', '--resume');
  assert.equal(r.code, 0, r.err);
  const run = readRun(out);
  assert.equal(run.summary.resumed.previousRecords, 5);
  const table = py(READ_TABLE, join(out, 'pairs.parquet')) as Table;
  assert.equal(table.rows.length, run.summary.records);
  assert.equal(table.rows.length, 10);
  assert.deepEqual(new Set(table.rows.map((x) => x.id)).size, 10);
  assert.deepEqual(table.decisions, { accept: run.summary.decisions.accept, reject: run.summary.decisions.reject });
  const uids = py(READ_UIDS, join(out, 'kept_uids.npy')) as { uids: string[] };
  assert.deepEqual(uids.uids, run.curated.map((m) => m.metadata.uid as string).sort());

  // JSONL without uids: the table has each record's line; no uid list.
  const jsonlOut = join(dir, 'jsonl');
  r = cli('--input', join(root, 'sample/pairs.jsonl'), '--out', jsonlOut);
  assert.equal(r.code, 0, r.err);
  const jsonl = py(READ_TABLE, join(jsonlOut, 'pairs.parquet')) as Table;
  const summary = readRun(jsonlOut).summary;
  assert.equal(jsonl.rows.length, summary.records);
  assert.deepEqual(
    jsonl.rows.map((x) => x.line),
    jsonl.rows.map((_, i) => i + 1),
  );
  assert.equal(existsSync(join(jsonlOut, 'kept_uids.npy')), false);
  assert.equal(summary.outputs.keptUids, undefined);

  const off = join(dir, 'off');
  r = cli('--input', join(root, 'sample/pairs.jsonl'), '--out', off, '--no-parquet');
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(readdirSync(off).sort(), ['curated', 'rejects.jsonl', 'summary.json']);
});

const READ_TARS = `
import json, sys, tarfile
print(json.dumps({p: [m.name for m in tarfile.open(p)] for p in sys.argv[1:]}))
`;

test('--keep-shard-names: curated/00000.tar holds the kept samples of input 00000.tar, joined from numbered parts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-keep-names-'));
  const shards = join(dir, 'shards');
  mkdirSync(shards);
  await datacompShard(join(shards, '00000.tar'), 0);
  await datacompShard(join(shards, '00001.tar'), 1);
  const out = join(dir, 'out');
  // Two samples per numbered part: each input shard's three kept samples are written as two parts, then joined.
  const r = cli(
    '--input',
    shards,
    '--out',
    out,
    '--threshold',
    'itm>=0',
    '--keep-shard-names',
    '--samples-per-shard',
    '2',
  );
  assert.equal(r.code, 0, r.err);
  const curated = join(out, 'curated');
  assert.deepEqual(readdirSync(curated).sort(), [
    '00000.index.json',
    '00000.tar',
    '00001.index.json',
    '00001.tar',
    'shards.json',
  ]);
  const run = readRun(out);
  assert.equal(run.curated.length, 6);
  for (const meta of run.curated) {
    const shard = meta.source.kind === 'webdataset' ? meta.source.path : '';
    assert.equal(shard, join(shards, meta.id.startsWith('00000') ? '00000.tar' : '00001.tar'));
  }
  // Plain tar readers read the joined shards whole, members in order.
  const tars = py(READ_TARS, join(curated, '00000.tar'), join(curated, '00001.tar')) as Record<string, string[]>;
  const keys = (shard: string) => run.curated.filter((m) => m.id.startsWith(shard)).map((m) => m.key);
  for (const shard of ['00000', '00001']) {
    const names = tars[join(curated, `${shard}.tar`)]!;
    assert.deepEqual(
      names,
      keys(shard).flatMap((k) => [`${k}.jpg`, `${k}.txt`, `${k}.json`]),
    );
  }
  // The joined shards are a run's own files: --overwrite replaces them.
  const again = cli('--input', shards, '--out', out, '--threshold', 'itm>=0', '--overwrite');
  assert.equal(again.code, 0, again.err);
  assert.deepEqual(
    readdirSync(curated).filter((n) => n.endsWith('.tar')),
    ['shard-000000.tar'],
  );
});

test('--keep-shard-names refuses, before anything is written: a name it cannot keep, JSONL input, --resume', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-keep-names-bad-'));
  const odd = join(dir, 'shard-000001.tar');
  await datacompShard(odd, 0);
  // Two inputs with one name (one of them gzip) would both be curated/00000.tar.
  mkdirSync(join(dir, 'a'));
  mkdirSync(join(dir, 'b'));
  await datacompShard(join(dir, 'a', '00000.tar'), 0);
  await datacompShard(join(dir, 'b', '00000.tar'), 1);
  writeFileSync(join(dir, 'b', '00000.tar.gz'), gzipSync(readFileSync(join(dir, 'b', '00000.tar'))));
  for (const [args, message] of [
    [['--input', odd], /cannot name a curated shard after .*shard-000001\.tar/],
    [
      ['--input', join(dir, 'a', '00000.tar'), '--input', join(dir, 'b', '00000.tar')],
      /would both write curated\/00000\.tar/,
    ],
    [
      ['--input', join(dir, 'a', '00000.tar'), '--input', join(dir, 'b', '00000.tar.gz')],
      /would both write curated\/00000\.tar/,
    ],
    [['--input', join(root, 'sample/pairs.jsonl')], /the input is not WebDataset/],
    [['--input', odd, '--resume'], /cannot be used with option '--resume'|cannot --resume/],
  ] as const) {
    const out = join(dir, `out-${Math.random().toString(36).slice(2)}`);
    const r = cli(...args, '--out', out, '--keep-shard-names');
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, message);
    assert.equal(existsSync(out), false, 'nothing written');
  }
});
