/**
 * The README's model guide: every released MLM-filter checkpoint it lists resolves, as `--model owner/name`, to the
 * cached export its export command writes; and the guide lists exactly those four with such a command.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheDirFor, resolveModelDir } from '../../lib/model/model-dir.ts';
import { FilterError } from '../../lib/types.ts';

const RELEASED = [
  'weizhiwang/mlm-filter-qwen2.5-1.5b-gpt4o',
  'weizhiwang/mlm-filter-llama-3-8b',
  'weizhiwang/mlm-filter-llama-3.2-3b',
  'weizhiwang/mlm-filter-llava-13b-gpt4v',
];

test('--model owner/name resolves each released checkpoint to its cached export, else says what to run', () => {
  const cache = mkdtempSync(join(tmpdir(), 'mlmf-guide-'));
  const env = { MLMF_MODEL_CACHE: cache };
  for (const id of RELEASED) {
    const dir = cacheDirFor(id, env);
    assert.equal(dir, join(cache, id.replace('/', '--')));
    assert.throws(
      () => resolveModelDir(id, env),
      (e: unknown) => e instanceof FilterError && e.code === 'model_not_exported' && e.message.includes(`--out ${dir}`),
      id,
    );
    mkdirSync(dir);
    assert.equal(resolveModelDir(id, env), dir, id);
  }
  // Without MLMF_MODEL_CACHE the default root is under the home directory.
  assert.match(
    cacheDirFor(RELEASED[2] as string, {}),
    /\.cache\/mlm-filter\/models\/weizhiwang--mlm-filter-llama-3\.2-3b$/,
  );
});

test("the README's model guide gives each released checkpoint an export command into that cache", () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const start = readme.indexOf('### Released checkpoints');
  assert.ok(start > 0, 'README has the model guide');
  const guide = readme.slice(start, readme.indexOf('\n## ', start));
  for (const id of RELEASED) {
    const out = `~/.cache/mlm-filter/models/${id.replace('/', '--')}`;
    const command = new RegExp(`tools/export/export\\.sh [^\\n]*\\\\?\\n?[^\\n]*--out ${out.replace(/[.]/g, '\\.')}`);
    assert.match(guide, command, `${id}: an export command with --out ${out}`);
    assert.ok(guide.includes(`--model ${id}`), `${id}: the --model line`);
  }
});
