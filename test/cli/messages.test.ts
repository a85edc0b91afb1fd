/**
 * What `mlm-filter filter` prints when an execution provider cannot start (issue 20): ONE coded line, no onnxruntime
 * dump and no ANSI colour into a pipe with NO_COLOR=1, nothing written; --cpu-fallback runs on cpu with one warning and
 * summary.json says which provider ran; MLMF_ORT_LOG_LEVEL brings onnxruntime's own log back for a diagnosis.
 * Through the real CLI on the tiny model; skipped on a host where CUDA may work.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { providerDiagnosis } from '../../lib/model/provider-check.ts';
import { readRun } from '../helpers/cli-output.ts';
import { scoringInput } from './double-signal.ts';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const model = new URL('../../test/fixtures/models/tiny-llava-qwen', import.meta.url).pathname;
const skip = providerDiagnosis('cuda') === undefined && existsSync('/dev/nvidiactl') && 'CUDA may work on this host';
const input = scoringInput(4);

function filter(args: string[], env: NodeJS.ProcessEnv = {}) {
  const out = join(mkdtempSync(join(tmpdir(), 'mlmf-messages-')), 'out');
  const r = spawnSync(
    process.execPath,
    [bin, 'filter', '--input', input, '--out', out, '--model', model, '--progress', 'log', ...args],
    { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', ...env } },
  );
  // The development checkout's note when it runs the sources instead of dist/ is not the run's output.
  const stderr = r.stderr.replace(/^mlm-filter: running the TypeScript sources through tsx .*\n/, '');
  return { out, status: r.status, stdout: r.stdout, stderr };
}

test('--execution-provider cuda without CUDA: one coded line, no colour, nothing written', { skip }, () => {
  const r = filter(['--execution-provider', 'cuda']);
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stdout, '');
  const lines = r.stderr.split('\n').filter(Boolean);
  assert.equal(lines.length, 1, r.stderr);
  assert.match(
    lines[0]!,
    /^mlm-filter: error \[execution_provider_unavailable\]: execution provider 'cuda' is unavailable/,
  );
  assert.match(lines[0]!, /Fix: run scripts\/cuda-provider\.sh/);
  assert.doesNotMatch(r.stderr, /\x1b/); // eslint-disable-line no-control-regex
  assert.equal(existsSync(r.out), false, '--out is not created');
});

test('--cpu-fallback: runs on cpu after one warning line; summary.json records the provider', { skip }, () => {
  const r = filter(['--execution-provider', 'cuda', '--cpu-fallback']);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr + r.stdout, /\x1b/); // eslint-disable-line no-control-regex
  const warnings = r.stderr.split('\n').filter((l) => /unavailable/.test(l));
  assert.equal(warnings.length, 1, r.stderr);
  assert.match(warnings[0]!, /"level":"warn".*execution provider 'cuda' is unavailable here, falling back to cpu/);
  assert.deepEqual(readRun(r.out).summary.executionProvider, { requested: 'cuda', used: 'cpu' });
});

test("MLMF_ORT_LOG_LEVEL=error shows onnxruntime's own report; a bad value is bad_config", { skip }, () => {
  const r = filter(['--execution-provider', 'cuda'], { MLMF_ORT_LOG_LEVEL: 'error' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /\[E:onnxruntime:/, 'the level reaches onnxruntime');
  const bad = filter([], { MLMF_ORT_LOG_LEVEL: 'loud' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^mlm-filter: error \[bad_config\]: MLMF_ORT_LOG_LEVEL must be one of verbose, info/);
});

test('a cpu run records the provider too', () => {
  const r = filter([]);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr + r.stdout, /\x1b/); // eslint-disable-line no-control-regex
  assert.deepEqual(readRun(r.out).summary.executionProvider, { requested: 'cpu', used: 'cpu' });
});
