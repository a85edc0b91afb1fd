/**
 * The one logger (lib/support/logger.ts): the JSON line the worker has always written (`ts`, `level`, `msg`, then the
 * context), child contexts, the level floor, the silent logger, tap, and a context JSON cannot hold.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatEntry, jsonLogger, Logger, silentLogger, type LogEntry } from '../../lib/support/logger.ts';

function stream(): { write(s: string): boolean; lines(): Record<string, unknown>[]; raw: string[] } {
  const raw: string[] = [];
  return {
    raw,
    write(s: string) {
      raw.push(s);
      return true;
    },
    lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

test('one JSON object per line: ts, level, msg first, then the context', () => {
  const out = stream();
  jsonLogger(out).info('worker consuming', { topic: 'pairs', groupId: 'g' });
  assert.equal(out.raw.length, 1);
  assert.ok(out.raw[0]!.endsWith('}\n') && !out.raw[0]!.slice(0, -1).includes('\n'), 'one line');
  const doc = out.lines()[0]!;
  assert.deepEqual(Object.keys(doc), ['ts', 'level', 'msg', 'topic', 'groupId']);
  assert.equal(doc.level, 'info');
  assert.equal(doc.msg, 'worker consuming');
  assert.ok(!Number.isNaN(Date.parse(doc.ts as string)), `an ISO time, got ${String(doc.ts)}`);
});

test('child contexts stack; the call context wins over the child, ts/level/msg over both', () => {
  const out = stream();
  const log = jsonLogger(out).child({ component: 'scorer', shard: 1 }).child({ shard: 2 });
  log.warn('fallback', { requested: 'cuda', level: 'forged', msg: 'forged', ts: 'forged' });
  const doc = out.lines()[0]!;
  assert.equal(doc.level, 'warn');
  assert.equal(doc.msg, 'fallback');
  assert.notEqual(doc.ts, 'forged');
  assert.equal(doc.component, 'scorer');
  assert.equal(doc.shard, 2);
  assert.equal(doc.requested, 'cuda');
});

test('debug is below the default floor; a floor of warn drops info', () => {
  const saved = process.env.MLMF_DEBUG;
  delete process.env.MLMF_DEBUG;
  try {
    const out = stream();
    const log = jsonLogger(out);
    log.debug('noise');
    log.info('kept');
    const warnOnly = jsonLogger(out, { level: 'warn' });
    warnOnly.info('dropped');
    warnOnly.error('kept too');
    assert.deepEqual(
      out.lines().map((d) => d.msg),
      ['kept', 'kept too'],
    );
    process.env.MLMF_DEBUG = '1';
    const debugOut = stream();
    jsonLogger(debugOut).debug('now kept');
    assert.equal(debugOut.lines()[0]?.msg, 'now kept');
  } finally {
    if (saved === undefined) delete process.env.MLMF_DEBUG;
    else process.env.MLMF_DEBUG = saved;
  }
});

test('a sink sees entries with the merged context; tap sees them too and the sink still gets them', () => {
  const seen: LogEntry[] = [];
  const tapped: LogEntry[] = [];
  const log = new Logger((e) => seen.push(e)).child({ job: 'J' });
  const counting = log.tap((e) => tapped.push(e));
  counting.error('sink write failed', { attempt: 1 });
  log.info('not tapped');
  assert.deepEqual(seen, [
    { level: 'error', msg: 'sink write failed', ctx: { job: 'J', attempt: 1 } },
    { level: 'info', msg: 'not tapped', ctx: { job: 'J' } },
  ]);
  assert.deepEqual(tapped, [seen[0]]);
});

test('the silent logger and its children write nothing and do not throw', () => {
  silentLogger.error('x', { a: 1 });
  silentLogger.child({ b: 2 }).warn('y');
  const calls: string[] = [];
  silentLogger.tap((e) => calls.push(e.msg)).warn('seen by the tap only');
  assert.deepEqual(calls, ['seen by the tap only']);
});

test('a context JSON cannot hold still gives one parseable line', () => {
  const cyclic: Record<string, unknown> = { name: 'a' };
  cyclic.self = cyclic;
  const big = formatEntry({ level: 'info', msg: 'offsets', ctx: { offset: 2n ** 64n, error: new Error('boom') } });
  const parsed = JSON.parse(big) as Record<string, unknown>;
  assert.equal(parsed.offset, '18446744073709551616');
  assert.deepEqual(parsed.error, { name: 'Error', message: 'boom' });
  const line = formatEntry({ level: 'warn', msg: 'cyclic', ctx: { cyclic } });
  const doc = JSON.parse(line) as Record<string, unknown>;
  assert.equal(doc.msg, 'cyclic');
  assert.match(String(doc.ctx), /Circular/);
});
