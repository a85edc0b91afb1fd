/** The score-cache key: one per (image bytes, caption, model name + revision, prompts, metric set). */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { scopeDigest, scopeOfModel, scoreKey, type ScoreCacheScope } from '../../lib/cache/key.ts';
import { TINY_MODEL } from '../helpers/live-cli.ts';

const scope: ScoreCacheScope = {
  model: { name: 'tiny', revision: 'seed0' },
  prompt: '{"format":"qwen_instruct"}',
  metrics: ['itm', 'odf'],
};
const image = Buffer.from([0xff, 0xd8, 1, 2, 3]);
const key = (s: ScoreCacheScope, bytes = image, caption = 'a cat') => scoreKey(scopeDigest(s), bytes, caption);

test('a change of any part of the key gives another key; equal parts give the same key', () => {
  const base = key(scope);
  assert.equal(key({ ...scope, model: { ...scope.model } }), base);
  assert.equal(key({ ...scope, metrics: ['odf', 'itm'] }), base, 'the metrics are a set');
  const others = [
    key(scope, Buffer.from([0xff, 0xd8, 1, 2, 4])),
    key(scope, image, 'a cat '),
    key({ ...scope, model: { name: 'tiny2', revision: 'seed0' } }),
    key({ ...scope, model: { name: 'tiny', revision: 'seed1' } }),
    key({ ...scope, prompt: '{"format":"llama3"}' }),
    key({ ...scope, metrics: ['itm'] }),
  ];
  assert.equal(new Set([base, ...others]).size, others.length + 1);
});

test('parts cannot run into each other: the caption boundary is part of the key', () => {
  assert.notEqual(scoreKey('s', Buffer.from('ab'), 'c'), scoreKey('s', Buffer.from('a'), 'bc'));
});

test("a model's scope reads its revision and prompts; an export without a revision is named by its files", async () => {
  const info = { name: 'tiny-random-llava-qwen', revision: 'seed0' };
  const a = await scopeOfModel(TINY_MODEL, info, ['itm']);
  assert.equal(a.model.revision, 'seed0');
  assert.match(a.prompt, /qwen_instruct/);
  const copy = join(mkdtempSync(join(tmpdir(), 'mlmf-key-')), 'model');
  cpSync(TINY_MODEL, copy, { recursive: true });
  const mlm = JSON.parse(readFileSync(join(copy, 'mlm_filter.json'), 'utf8'));
  mlm.prompts.instruction_template = mlm.prompts.instruction_template + ' ';
  writeFileSync(join(copy, 'mlm_filter.json'), JSON.stringify(mlm));
  const b = await scopeOfModel(copy, info, ['itm']);
  assert.notEqual(scopeDigest(b), scopeDigest(a), 'a prompt change is another scope');
  const unnamed = await scopeOfModel(copy, { ...info, revision: 'unknown' }, ['itm']);
  assert.match(unnamed.model.revision, /^files:[0-9a-f]{64}$/);
});
