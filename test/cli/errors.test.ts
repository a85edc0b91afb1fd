import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ERRORS, exitCodeOf, isRetriable } from '../../lib/errors.ts';
import { FilterError } from '../../lib/types.ts';

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
  }
  assert.ok(thrown.size >= 20, `found ${thrown.size} codes`);
  for (const code of thrown) assert.ok(Object.hasOwn(ERRORS, code), `${code} is not in lib/errors.ts`);
  const unused = Object.keys(ERRORS).filter(
    (c) => !thrown.has(c) && !files.some((f) => readFileSync(f, 'utf8').includes(`'${c}'`) && !f.endsWith('errors.ts')),
  );
  assert.deepEqual(unused, [], 'catalog entries nothing uses');
});
