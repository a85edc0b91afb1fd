import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  BlockedAddressError,
  codeOf,
  CommitBudgetSpentError,
  ERRORS,
  exitCodeOf,
  FilterError,
  isRetriable,
  PoisonInputError,
  RejectError,
  ResolveError,
  ScorerBrokenError,
} from '../../lib/errors.ts';
import * as types from '../../lib/types.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

test('exit codes follow the catalog: usage and configuration 2, runtime 1, unknown 1', () => {
  assert.equal(exitCodeOf('bad_threshold'), 2);
  assert.equal(exitCodeOf('model_invalid'), 2);
  assert.equal(exitCodeOf('execution_provider_unavailable'), 2);
  assert.equal(exitCodeOf('scorer_failed'), 1);
  assert.equal(exitCodeOf('kafka_commit_failed'), 1);
  assert.equal(exitCodeOf('no_such_code'), 1);
});

test("retriable: the catalog for coded errors, kafkajs's own flag, else transient", () => {
  assert.equal(isRetriable(new FilterError('kafka_unavailable', 'down')), true);
  assert.equal(isRetriable(new FilterError('message_too_large', 'big')), false);
  assert.equal(isRetriable(Object.assign(new Error('x'), { retriable: false })), false);
  assert.equal(isRetriable(new Error('ECONNRESET')), true);
  // kafkajs gave up after its own retries: the outage may end, the caller's backoff goes on.
  assert.equal(
    isRetriable(Object.assign(new Error('x'), { name: 'KafkaJSNumberOfRetriesExceeded', retriable: false })),
    true,
  );
});

test('every code the sources throw is in the catalog, and every catalog entry is thrown somewhere', () => {
  const files = ['lib', 'functions', 'infra'].flatMap((d) => sources(join(ROOT, d)));
  const thrown = new Set<string>();
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(/new FilterError\(\s*'([a-z_]+)'/g)) thrown.add(m[1]!);
    // FilterError's subclasses (lib/errors.ts) pass their code to super().
    for (const m of text.matchAll(/super\(\s*'([a-z_]+)'/g)) thrown.add(m[1]!);
  }
  assert.ok(thrown.size >= 20, `found ${thrown.size} codes`);
  for (const code of thrown) assert.ok(Object.hasOwn(ERRORS, code), `${code} is not in lib/errors.ts`);
  // errors.ts counts from after its table (codeOf's fallback), not for the table itself.
  const usedText = (f: string) => {
    const text = readFileSync(f, 'utf8');
    return f.endsWith('lib/errors.ts') ? text.slice(text.indexOf('satisfies Record<string, ErrorSpec>')) : text;
  };
  const unused = Object.keys(ERRORS).filter(
    (c) => !thrown.has(c) && !files.some((f) => usedText(f).includes(`'${c}'`)),
  );
  assert.deepEqual(unused, [], 'catalog entries nothing uses');
});

test('every error class lives in lib/errors.ts, and each but RejectError is a FilterError with a catalogued code', () => {
  const files = ['lib', 'functions', 'infra'].flatMap((d) => sources(join(ROOT, d)));
  const outside = files
    .filter((f) => !f.endsWith('lib/errors.ts'))
    // A module's private control-flow error (fetch's retry signals) never reaches a caller: only exported classes count.
    .filter((f) => /export class \w+ extends \w*Error\b/.test(readFileSync(f, 'utf8')));
  assert.deepEqual(outside, [], 'error classes outside lib/errors.ts');
  const cause = new Error('boom');
  const coded: [FilterError, string, number, boolean][] = [
    [new PoisonInputError('p1', cause), 'poison_input', 1, false],
    [new ScorerBrokenError(3, cause), 'scorer_failed', 1, false],
    [new CommitBudgetSpentError('retry budget spent'), 'kafka_commit_failed', 1, true],
    [new BlockedAddressError('h', '10.0.0.1', 'private'), 'address_blocked', 1, false],
    [new ResolveError('h', 'ENOTFOUND', 'DNS lookup of h failed'), 'dns_failed', 1, true],
  ];
  for (const [err, code, exit, retriable] of coded) {
    assert.ok(err instanceof FilterError, err.name);
    assert.equal(err.code, code, err.name);
    assert.equal(exitCodeOf(err.code), exit, err.name);
    assert.equal(isRetriable(err), retriable, err.name);
  }
  // Messages as before the move.
  assert.equal(new PoisonInputError('p1', cause).message, 'scorer failed on pair p1: boom');
  assert.equal(new ScorerBrokenError(3, cause).message, 'the scorer failed on 3 pairs in a row, each alone: boom');
  assert.equal(new ResolveError('h', 'EAI_TIMEOUT', 'x').dnsCode, 'EAI_TIMEOUT');
  // lib/types.ts re-exports the same classes, so instanceof holds whichever module a caller imported them from.
  assert.equal(types.FilterError, FilterError);
  assert.equal(types.RejectError, RejectError);
  assert.ok(!(new RejectError({ code: 'invalid_record', message: 'x' }) instanceof FilterError));
});

test("codeOf: an error's own string code, else the catalogued fallback", () => {
  assert.equal(codeOf(new FilterError('kafka_unavailable', 'down')), 'kafka_unavailable');
  assert.equal(codeOf(Object.assign(new Error('x'), { code: 'ECONNRESET' })), 'ECONNRESET');
  assert.equal(codeOf(new Error('x')), 'internal');
  assert.equal(codeOf('a string thrown'), 'internal');
  assert.equal(codeOf(undefined, 'sink_refused'), 'sink_refused');
  assert.equal(codeOf(Object.assign(new Error('x'), { code: 42 }), 'sink_refused'), 'sink_refused');
  for (const code of ['internal', 'sink_refused'] as const) assert.ok(Object.hasOwn(ERRORS, code));
  assert.ok(!Object.hasOwn(ERRORS, 'kafka_unreachable'), 'one code for unreachable brokers: kafka_unavailable');
});
