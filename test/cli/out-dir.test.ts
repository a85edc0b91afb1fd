/**
 * The --out directory under careless and hostile use (issue 21), through the real CLI on the tiny model: one run per
 * directory (two at once, --resume beside a live run, a stale lock after kill -9, another host's lock), nothing
 * followed through a symlink out of --out, --overwrite removing only a run's files, planted shard names, index sizes
 * past the tar, and a rejects line of 1 GiB (a sparse file: no disk, little time).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  closeSync,
  ftruncateSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
  lstatSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { OutputLock } from '../../lib/cli/out-lock.ts';
import { parseEvent } from '../../lib/monitor/aggregate.ts';
import type { ReportData } from '../../lib/report/collect.ts';
import { AUDIT_LINE_MAX_BYTES } from '../../lib/sinks/local-audit.ts';
import { LocalCuratedSink } from '../../lib/sinks/local-curated.ts';
import type { ShardIndex } from '../../lib/sinks/webdataset.ts';
import { readRun } from '../helpers/cli-output.ts';
import { exitWithin, startCli, type LiveCli } from '../helpers/live-cli.ts';
import { waitFor } from '../helpers/poll.ts';

const root = new URL('../../', import.meta.url).pathname;
const bin = join(root, 'bin/mlm-filter.js');
const model = join(root, 'test/fixtures/models/tiny-llava-qwen');
const sample = join(root, 'sample/pairs.jsonl');
const sampleLines = readFileSync(sample, 'utf8').split('\n').filter(Boolean).length;
const LOCK = '.mlm-filter.lock';

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const filterArgs = (input: string, out: string, ...flags: string[]) => [
  'filter',
  ...['--input', input, '--out', out, '--model', model, '--progress', 'none'],
  ...flags,
];

/** Every file and link under `dir` (not followed) with its bytes or target and its mtime, by relative path. */
function snapshot(dir: string): Map<string, string> {
  const entries = readdirSync(dir, { recursive: true, withFileTypes: true });
  return new Map(
    entries.map((e) => {
      const path = join(e.parentPath, e.name);
      const st = lstatSync(path);
      const body = e.isFile() ? readFileSync(path).toString('base64') : e.isSymbolicLink() ? 'link' : 'dir';
      return [path.slice(dir.length), `${body} ${st.mtimeMs}`];
    }),
  );
}

/** A finished run of the sample (some accepted, some rejected), made once and copied for each case. */
let finished: string;
before(() => {
  finished = join(mkdtempSync(join(tmpdir(), 'mlmf-outdir-')), 'run');
  const r = cli(filterArgs(sample, finished));
  assert.equal(r.code, 0, r.err);
  assert.ok(existsSync(join(finished, 'curated', 'shard-000000.tar')), 'the sample has accepts');
});

/** A copy of the finished run, and a directory beside it (outside --out) with files of the user's. */
function fixture() {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-outdir-case-'));
  const out = join(dir, 'out');
  cpSync(finished, out, { recursive: true });
  const elsewhere = join(dir, 'elsewhere');
  mkdirSync(elsewhere);
  writeFileSync(join(elsewhere, 'precious.txt'), 'the user\'s own\n{"half a line');
  writeFileSync(join(elsewhere, 'shard-000000.tar'), 'not a shard');
  return { dir, out, elsewhere };
}

/** A run reading stdin, kept open: it holds --out until the test ends its input. */
function liveRun(out: string, ...flags: string[]): LiveCli {
  return startCli(filterArgs('-', out, '--samples-per-shard', '2', ...flags));
}

const finishInput = (run: LiveCli) => {
  run.child.stdin.end(readFileSync(sample));
};

test('two runs at once on one empty --out: one is refused naming the other, whose output is complete', async () => {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-twice-')), 'out');
  const a = liveRun(out);
  const b = liveRun(out);
  const refused = await Promise.race([a.exited.then(() => b), b.exited.then(() => a)]).then((live) =>
    live === a ? b : a,
  );
  const live = refused === a ? b : a;
  assert.equal((await refused.exited).code, 2, refused.stderr());
  assert.match(
    refused.stderr(),
    new RegExp(`\\[output_locked\\]: --out ${out} is in use by pid ${live.child.pid} on this host`),
  );

  // --resume and --overwrite beside the live run are refused too, before touching anything.
  for (const flag of ['--resume', '--overwrite']) {
    const r = cli(filterArgs(sample, out, flag));
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, new RegExp(`\\[output_locked\\].*pid ${live.child.pid}`));
  }

  finishInput(live);
  assert.deepEqual(await exitWithin(live, 120_000), { code: 0, signal: null }, live.stderr());
  const run = readRun(out);
  assert.equal(run.curated.length + run.rejects.length, sampleLines, 'every record once');
  assert.equal(run.summary.records, sampleLines);
  assert.ok(!existsSync(join(out, LOCK)), 'the lock is released at the end');
});

test("a lock left by kill -9 is taken over with a note; another host's lock is refused unless --break-lock", async () => {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-stale-')), 'out');
  const a = liveRun(out);
  await waitFor('the lock', () => existsSync(join(out, LOCK)), 60_000);
  const held = JSON.parse(readFileSync(join(out, LOCK), 'utf8')) as { pid: number; host: string };
  assert.deepEqual([held.pid, held.host], [a.child.pid, hostname()]);
  a.child.kill('SIGKILL');
  await a.exited;
  assert.ok(existsSync(join(out, LOCK)), 'kill -9 leaves the lock');

  let r = cli(filterArgs(sample, out, '--resume'));
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, new RegExp(`took over the stale lock of pid ${a.child.pid} on this host`));
  assert.ok(!existsSync(join(out, LOCK)));
  assert.equal(readRun(out).summary.records, sampleLines);

  // A lock naming another host cannot be checked from here.
  const lock = { ...held, host: 'build-box-7.example' };
  writeFileSync(join(out, LOCK), JSON.stringify(lock));
  r = cli(filterArgs(sample, out, '--overwrite'));
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /\[output_locked\]: .* in use by pid \d+ on host build-box-7\.example .*--break-lock/);
  assert.equal(readRun(out).summary.records, sampleLines, 'nothing removed');
  r = cli(filterArgs(sample, out, '--overwrite', '--break-lock'));
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /took over the stale lock of pid \d+ on host build-box-7\.example/);
  assert.ok(!existsSync(join(out, LOCK)));

  // A pid of this host that runs again, but in a process started after the lock was taken: reused, so stale.
  const reused = spawn('sleep', ['60']);
  try {
    const startedAt = new Date(Date.now() - 3_600_000).toISOString();
    writeFileSync(join(out, LOCK), JSON.stringify({ pid: reused.pid, host: hostname(), startedAt, command: 'x' }));
    r = cli(filterArgs(sample, out, '--overwrite'));
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, new RegExp(`took over the stale lock of pid ${reused.pid} on this host`));
  } finally {
    reused.kill();
  }
});

test('signals release the lock: a drained stop, and a second signal that exits at once', async () => {
  for (const signals of [['SIGTERM'], ['SIGINT', 'SIGINT']] as const) {
    const out = join(mkdtempSync(join(tmpdir(), 'mlmf-signal-')), 'out');
    const run = liveRun(out);
    await waitFor('the lock', () => existsSync(join(out, LOCK)), 60_000);
    for (const s of signals) run.child.kill(s);
    assert.equal((await exitWithin(run, 60_000))?.code, 130, run.stderr());
    assert.ok(!existsSync(join(out, LOCK)), `${signals.join('+')}: the lock is released`);
  }
});

/** The refusals of --resume and --overwrite on `out`; nothing changes in --out nor outside it. */
function assertRefused(out: string, elsewhere: string, code: RegExp, flags = ['--resume', '--overwrite']) {
  const before = [snapshot(out), snapshot(elsewhere)];
  for (const flag of flags) {
    const r = cli(filterArgs(sample, out, flag));
    assert.equal(r.code, 2, `${flag}: ${r.err}`);
    assert.match(r.err, code, flag);
    assert.deepEqual([snapshot(out), snapshot(elsewhere)], before, `${flag} changed nothing`);
  }
}

test('--resume and --overwrite follow no symlink out of --out and remove no directory they did not write', () => {
  // curated/ itself a link to a directory elsewhere.
  let { out, elsewhere } = fixture();
  cpSync(join(out, 'curated'), join(elsewhere, 'curated'), { recursive: true });
  spawnSync('rm', ['-r', join(out, 'curated')]);
  symlinkSync(join(elsewhere), join(out, 'curated'));
  assertRefused(out, elsewhere, /\[output_unsafe\]: --out .* holds curated \(a symlink\)/);

  // rejects.jsonl a link to a file elsewhere whose last line has no newline (a resume used to truncate it).
  ({ out, elsewhere } = fixture());
  spawnSync('rm', [join(out, 'rejects.jsonl')]);
  symlinkSync(join(elsewhere, 'precious.txt'), join(out, 'rejects.jsonl'));
  assertRefused(out, elsewhere, /\[output_unsafe\]: .*rejects\.jsonl \(a symlink\)/);

  // A shard inside curated/ linked out, and summary.json linked out.
  ({ out, elsewhere } = fixture());
  spawnSync('rm', [join(out, 'curated', 'shard-000000.tar'), join(out, 'summary.json')]);
  symlinkSync(join(elsewhere, 'shard-000000.tar'), join(out, 'curated', 'shard-000000.tar'));
  symlinkSync(join(elsewhere, 'precious.txt'), join(out, 'summary.json'));
  assertRefused(
    out,
    elsewhere,
    /\[output_unsafe\]: .*curated\/shard-000000\.tar \(a symlink\), summary\.json \(a symlink\)/,
  );

  // A directory named rejects.jsonl, with files of the user's in it.
  ({ out, elsewhere } = fixture());
  spawnSync('rm', [join(out, 'rejects.jsonl')]);
  mkdirSync(join(out, 'rejects.jsonl'));
  writeFileSync(join(out, 'rejects.jsonl', 'mine.txt'), 'keep');
  assertRefused(out, elsewhere, /\[output_unsafe\]: .*rejects\.jsonl \(a directory\)/);
});

test("--overwrite removes only what runs write: a file of the user's inside curated/ refuses it, listed", () => {
  const { out, elsewhere } = fixture();
  writeFileSync(join(out, 'curated', 'notes.txt'), 'mine');
  mkdirSync(join(out, 'curated', 'extra'));
  assertRefused(out, elsewhere, /\[output_not_empty\]: .*curated\/extra, curated\/notes\.txt/, ['--overwrite']);
  // --resume leaves them alone too, and says why it cannot go on.
  assertRefused(out, elsewhere, /\[output_unresumable\]: .*curated\/extra, curated\/notes\.txt/, ['--resume']);
});

test('a planted shard-9007199254740992.tar is refused by name and never sets the numbering', async () => {
  const { out, elsewhere } = fixture();
  const planted = join(out, 'curated', 'shard-9007199254740992.tar');
  cpSync(join(out, 'curated', 'shard-000000.tar'), planted);
  cpSync(join(out, 'curated', 'shard-000000.index.json'), planted.replace(/\.tar$/, '.index.json'));
  assertRefused(out, elsewhere, /\[output_unresumable\]: .*shard-9007199254740992\.index\.json, .*\.tar/, ['--resume']);
  assertRefused(out, elsewhere, /\[output_not_empty\]: .*shard-9007199254740992/, ['--overwrite']);

  // The sink numbers after the shards a run wrote, whatever else sits there.
  const sink = await LocalCuratedSink.open({ dir: join(out, 'curated'), model: { name: 'm', revision: 'r' } });
  assert.equal((sink as unknown as { next: number }).next, 1);
});

test('an index member size of 2^31 is never read as is: --resume rebuilds the index from the tar, report too', () => {
  const { out } = fixture();
  const indexPath = join(out, 'curated', 'shard-000000.index.json');
  const original = readFileSync(indexPath, 'utf8');
  const index = JSON.parse(original) as ShardIndex;
  index.samples[0]!.members.json!.size = 2 ** 31;
  writeFileSync(indexPath, JSON.stringify(index));

  const html = join(out, '..', 'report.html');
  let r = cli(['report', '--input', out, '--out', html]);
  assert.equal(r.code, 0, r.err);
  const data = reportData(html);
  assert.equal(data.totals.accepted, (JSON.parse(original) as ShardIndex).count);
  assert.ok(
    data.notes.some((n) => /shard-000000\.index\.json was not used \(member .* is outside the \d+-byte tar\)/.test(n)),
  );

  r = cli(filterArgs(sample, out, '--resume'));
  assert.equal(r.code, 0, r.err);
  assert.equal(readFileSync(indexPath, 'utf8'), original, 'the index rebuilt as the run wrote it');
  const run = readRun(out);
  assert.equal(run.curated.length + run.rejects.length, sampleLines);
});

function reportData(html: string): ReportData {
  const m = /<script type="application\/json" id="report-data">([\s\S]*?)<\/script>/.exec(readFileSync(html, 'utf8'));
  assert.ok(m, 'report data embedded');
  return JSON.parse(m[1]!) as ReportData;
}

test('a 1 GiB rejects line is not read whole: report counts it malformed, --resume refuses it by size', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-longline-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'out');
  mkdirSync(out);
  const rejects = join(out, 'rejects.jsonl');
  const event = readFileSync(join(finished, 'rejects.jsonl'), 'utf8').split('\n')[0]!;
  // line 1: an event; line 2: 1 GiB (a hole: NUL bytes); line 3: an event.
  const fd = openSync(rejects, 'w');
  writeSync(fd, event + '\n');
  const giant = 2 ** 30;
  ftruncateSync(fd, event.length + 1 + giant);
  writeSync(fd, '\n' + event.replace(/"id":"[^"]*"/, '"id":"after-the-long-line"') + '\n', event.length + 1 + giant);
  closeSync(fd);
  const size = statSync(rejects).size;
  assert.ok(size > giant);

  const html = join(dir, 'report.html');
  let r = cli(['report', '--input', out, '--out', html]);
  assert.equal(r.code, 0, r.err);
  const data = reportData(html);
  assert.deepEqual([data.totals.rejected, data.totals.malformed], [2, 1]);
  assert.ok(
    data.notes.some((n) => n.startsWith(`1 line(s) of rejects.jsonl over ${AUDIT_LINE_MAX_BYTES / 2 ** 20} MiB`)),
  );

  r = cli(filterArgs(sample, out, '--resume'));
  assert.equal(r.code, 2, r.err);
  assert.match(
    r.err,
    new RegExp(`\\[output_unresumable\\]: .*line 2 is ${giant} bytes, over the ${AUDIT_LINE_MAX_BYTES}-byte bound`),
  );
  assert.equal(statSync(rejects).size, size, 'nothing cut');
});

test('the monitor leaves a message over the audit bound unparsed', () => {
  const value = Buffer.alloc(AUDIT_LINE_MAX_BYTES + 1, ' ');
  value.write('{"id":"x","decision":"reject","reasons":[]}');
  assert.deepEqual(parseEvent('audit', value), { error: `over ${AUDIT_LINE_MAX_BYTES} bytes` });
});

test('the lock in process: a second holder, a lock that cannot be read, a symlinked lock, a takeover under way', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-lock-'));
  const out = join(dir, 'out');
  mkdirSync(out);
  const lock = await OutputLock.acquire(out);
  await assert.rejects(OutputLock.acquire(out), /in use by pid \d+ on this host/);
  await assert.rejects(OutputLock.acquire(out, { breakLock: true }), { code: 'output_locked' }, 'a live holder stays');
  await lock.release();
  assert.deepEqual(readdirSync(out), [], 'released');

  // Not a lock this tool wrote: refused, unless the user says its holder is gone.
  writeFileSync(join(out, LOCK), 'garbage');
  await assert.rejects(OutputLock.acquire(out), /cannot be read \(it is not a lock this tool wrote\).*--break-lock/);
  const notes: string[] = [];
  const broken = await OutputLock.acquire(out, { breakLock: true, note: (m) => notes.push(m) });
  assert.match(notes.join(), /took over an unreadable lock/);
  await broken.release();

  // A symlink at the lock's name: never followed, neither to read nor to write.
  const outside = join(dir, 'outside.txt');
  writeFileSync(outside, JSON.stringify({ pid: 1, host: hostname(), startedAt: 'x', command: 'y' }));
  const before = snapshot(dir.replace(/$/, '/')).get('outside.txt');
  symlinkSync(outside, join(out, LOCK));
  await assert.rejects(OutputLock.acquire(out), /cannot be read \(it is a symlink\)/);
  const taken = await OutputLock.acquire(out, { breakLock: true });
  await taken.release();
  assert.equal(snapshot(dir.replace(/$/, '/')).get('outside.txt'), before, 'the file it pointed at is untouched');

  // Another run is taking a stale lock over: refused, naming its guard.
  writeFileSync(join(out, `${LOCK}.takeover`), '4242');
  writeFileSync(join(out, LOCK), JSON.stringify({ pid: 2 ** 30, host: hostname(), startedAt: 'x', command: 'y' }));
  await assert.rejects(OutputLock.acquire(out), /being taken over by another run \(pid 4242\)/);
  rmSync(dir, { recursive: true, force: true });
});
