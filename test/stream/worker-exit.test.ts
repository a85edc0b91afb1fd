/** The worker container's exit code comes from the error catalog (exitCodeOf), as the CLI's does. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { exitCodeOf } from '../../lib/errors.ts';

const entry = fileURLToPath(new URL('../../functions/worker/main.ts', import.meta.url));

test('a configuration the worker cannot run with exits 2 and logs its catalogued code', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', entry], {
    env: { PATH: process.env.PATH, AWS_EC2_METADATA_DISABLED: 'true', MLMF_SOURCE: 'bogus' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  const output = `${r.stdout}${r.stderr}`;
  const codes = output
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => (JSON.parse(l) as { code?: string }).code);
  assert.ok(codes.includes('worker_config'), output);
  assert.equal(r.status, exitCodeOf('worker_config'));
  assert.equal(r.status, 2);
});
