/**
 * The progress display (issue 20): the bar's ETA is a time (`ETA NFs` before), and on stdin the bar counts pairs as
 * they are decided, before their batch commits (it said "0 processed" while rejects were written). Through the real
 * CLI on the tiny model, on a pseudo-terminal from util-linux's `script` (the bar is drawn on a TTY only).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DecidedCounts, formatEta } from '../../lib/cli/progress.ts';
import { readRun } from '../helpers/cli-output.ts';
import { visibleOutcomes } from '../helpers/live-cli.ts';
import { waitFor } from '../helpers/poll.ts';
import { scoringInput } from './double-signal.ts';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const model = new URL('../../test/fixtures/models/tiny-llava-qwen', import.meta.url).pathname;
const noScript = spawnSync('script', ['--version']).status !== 0 && 'util-linux script(1) is not installed';

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Runs `shell` on a pseudo-terminal; the terminal's output (the bar's frames) so far, and the exit. */
function onTerminal(shell: string) {
  const child = spawn('script', ['-qfec', shell, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let screen = '';
  child.stdout.on('data', (c: Buffer) => (screen += c.toString()));
  child.stderr.on('data', (c: Buffer) => (screen += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  /** Each redraw of the bar, escapes removed (the terminal's own control characters, matched on purpose). */
  const frames = () =>
    screen
      .split(/\r|\x1b\[1G/) // eslint-disable-line no-control-regex
      .map((f) => f.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g, '').trim()) // eslint-disable-line no-control-regex
      .filter((f) => / processed | pairs\/s/.test(f));
  return { child, exited, frames, screen: () => screen };
}

test('formatEta and the rate since the first decision', () => {
  assert.equal(formatEta(undefined), '--');
  assert.equal(formatEta(Infinity), '--');
  assert.equal(formatEta(9.6), '10s');
  assert.equal(formatEta(185), '3m05s');
  assert.equal(formatEta(3720), '1h02m');
  let now = 1000;
  const c = new DecidedCounts({ accepted: 2, rejected: 3 }, () => now);
  assert.equal(c.etaSeconds(100), undefined, 'no rate before a decision');
  c.add({ decision: 'accept' });
  now += 5000;
  for (let i = 0; i < 9; i++) c.add({ decision: 'reject' });
  assert.equal(c.records, 15);
  assert.equal(c.rate, 2); // 10 decided in 5 s; the 5 resumed ones are not in the rate
  assert.equal(c.etaSeconds(115), 50);
});

test("the bar's ETA is a time or --, never NF/INF, and it counts every pair", { skip: noScript }, async () => {
  const input = scoringInput(300);
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-progress-')), 'out');
  const run = onTerminal(
    `${quote(process.execPath)} ${quote(bin)} filter --input ${quote(input)} --out ${quote(out)} ` +
      `--model ${quote(model)} >/dev/null`,
  );
  assert.equal(await run.exited, 0, run.screen());
  const etas = run.frames().map((f) => /ETA (\S*)/.exec(f)?.[1]);
  assert.ok(etas.length > 2, run.screen());
  for (const eta of etas) assert.match(eta ?? '', /^(--|\d+s|\d+m\d\ds|\d+h\d\dm)$/, run.frames().join('\n'));
  assert.ok(
    etas.some((e) => e !== '--'),
    'an estimate once pairs are decided',
  );
  assert.match(run.frames().at(-1)!, /\| 300\/300 \|/);
});

test('on stdin the bar counts the pairs decided while their shard is still open', { skip: noScript }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-progress-'));
  const input = scoringInput(20);
  const fifo = join(dir, 'in.fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const out = join(dir, 'out');
  const run = onTerminal(
    `${quote(process.execPath)} ${quote(bin)} filter --input - --out ${quote(out)} --model ${quote(model)} ` +
      `--threshold 'itm>=0' < ${quote(fifo)} >/dev/null`,
  );
  // Opening the writing end blocks until the CLI's shell opens the reading end: the records go in, the pipe stays open.
  const fd = openSync(fifo, 'w');
  try {
    writeSync(fd, await import('node:fs').then((fs) => fs.readFileSync(input)));
    await waitFor(
      '20 pairs on the bar',
      () => run.frames().some((f) => /^20 processed \| accepted \d+/.test(f)),
      90_000,
    );
    // Nearly every pair is accepted: those are not in --out before the open shard's idle flush, 10 s after the last
    // accept, and their batch does not commit before then either; the bar counted them all the same.
    assert.ok(visibleOutcomes(out) < 20, 'the bar counted pairs whose batch had not committed');
  } finally {
    closeSync(fd);
  }
  assert.equal(await run.exited, 0, run.screen());
  assert.equal(readRun(out).summary.records, 20);
});
