import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { buildPrompt, promptPieces, IMAGE_TOKEN, CONVERSATION_FORMATS } from '../../lib/model/prompt.ts';
import { METRICS, type MetricKey } from '../../lib/types.ts';

const CAPTIONS = [
  'A red bicycle leaning against a brick wall.',
  '',
  'Ünïcödé café — naïve 東京タワー 🚲👍🏽 ﷽',
  'He said "hi" and \'bye\' \\ backslash',
  'braces {aspect} {caption} {criteria} {0} {} { }} {{x}} %s $& $1',
  'line one\nline two\r\n\ttabbed\n\n',
  'a caption with <image> inside and <image>\n twice',
  '<|im_start|>user\nnot really<|im_end|> USER: ASSISTANT: </s>',
  'long '.repeat(20000),
];

/**
 * The reference's own semantics, re-derived in Python: str.format of the instruction template, "<image>\n" + text,
 * then LLaVA-Unified's Conversation.get_prompt for qwen_instruct (MPT style), llava_v1 and llama_3 (TWO style, sep " ",
 * the empty assistant message ending in "ASSISTANT:"). The system strings and separators are written here literally
 * from llava/conversation.py (conv_qwen_instruct, conv_vicuna_v1, conv_llama_3), not taken from the vendored JSON.
 */
const PY = String.raw`
import json, sys
data = json.load(sys.stdin)
ref = json.load(open(data["prompts"]))
out = []
for c in data["cases"]:
    text = ref["instruction_template"].format(caption=c["caption"], criteria=ref["criteria"][c["metric"]], aspect=c["metric"].replace("_", " "))
    text = "<image>" + "\n" + text
    if c["format"] == "qwen_instruct":
        system, roles, sep = "<|im_start|>system\nYou are a helpful assistant", ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"
        ret = system + sep + roles[0] + text + sep + roles[1]
    else:
        who = "user" if c["format"] == "llama_3" else "human"
        system = ("A chat between a curious " + who + " and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the " + who + "'s questions.")
        # SeparatorStyle.TWO: system + sep, then "role: message" + sep (user turn), then "role:" (empty reply).
        seps = [" ", "</s>" if c["format"] == "llava_v1" else "<|end_of_text|>"]
        ret = system + seps[0] + "USER" + ": " + text + seps[0] + "ASSISTANT" + ":"
    out.append(ret)
json.dump(out, sys.stdout)
`;

/** The paper code's prompt file, committed verbatim with its licence (docs/reference/). */
const REFERENCE_PROMPTS = new URL('../../docs/reference/mlm-filter-prompts.json', import.meta.url).pathname;

function python(): string | undefined {
  for (const bin of ['python3', 'python']) {
    if (spawnSync(bin, ['--version']).status === 0) return bin;
  }
  return undefined;
}

// Python is a tool, not a fixture: without it this one check skips, saying so.
const noPython = python() ? false : 'python3 (or python) is not on PATH: the reference prompt builder runs in Python';

test('prompts are byte-identical to the reference semantics for any caption', { skip: noPython }, () => {
  const cases = CONVERSATION_FORMATS.flatMap((format) =>
    METRICS.flatMap((m) => CAPTIONS.map((caption) => ({ format, metric: m.key, caption }))),
  );
  const res = spawnSync(python() as string, ['-c', PY], {
    input: JSON.stringify({ prompts: REFERENCE_PROMPTS, cases }),
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  });
  assert.equal(res.status, 0, res.stderr);
  const expected = JSON.parse(res.stdout) as string[];
  cases.forEach((c, i) => {
    assert.equal(
      buildPrompt(c.format, c.metric, c.caption),
      expected[i],
      `${c.format}/${c.metric}/${JSON.stringify(c.caption.slice(0, 40))}`,
    );
  });
});

test('vendored prompt text equals the committed reference (docs/reference) and keeps its source and licence', () => {
  const vendored = JSON.parse(
    readFileSync(new URL('../../lib/model/mlm-filter-prompts.json', import.meta.url), 'utf8'),
  );
  assert.match(vendored.source, /Victorwz\/MLM_Filter/);
  assert.equal(vendored.license, 'MIT');
  assert.match(vendored.license_text, /Copyright \(c\) 2025 Weizhi Wang/);
  const shared = JSON.parse(readFileSync(REFERENCE_PROMPTS, 'utf8')) as Record<string, unknown>;
  assert.ok(Object.keys(shared).length >= 5, 'the reference file holds the prompt set');
  for (const [k, v] of Object.entries(shared)) assert.deepEqual(vendored[k], v, k);
});

test('qwen_instruct prompt has the exact frame, real newlines and the caption verbatim', () => {
  const caption = 'x {aspect} <image> y';
  const p = buildPrompt('qwen_instruct', 'image_text_matching', caption);
  assert.ok(
    p.startsWith(
      '<|im_start|>system\nYou are a helpful assistant<|im_end|><|im_start|>user\n<image>\nText Caption: x {aspect} <image> y\n\nPlease evaluate if',
    ),
  );
  assert.ok(p.endsWith('avoiding any potential bias.<|im_end|><|im_start|>assistant\n'));
  assert.ok(p.includes('A higher score indicates higher level of image text matching.'));
  assert.ok(!p.includes('\\n'));
});

test('llava_v1 prompt frame', () => {
  const p = buildPrompt('llava_v1', 'caption_text_quality', 'c');
  assert.ok(
    p.startsWith(
      "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. USER: <image>\nText Caption: c\n\nPlease evaluate the text caption based on",
    ),
  );
  assert.ok(p.endsWith('avoiding any potential bias. ASSISTANT:'));
});

test('llama_3 prompt frame: the llava_v1 frame with "user" for "human" (conv_llama_3)', () => {
  const p = buildPrompt('llama_3', 'caption_text_quality', 'c');
  assert.ok(
    p.startsWith(
      "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nText Caption: c\n\nPlease evaluate the text caption based on",
    ),
  );
  assert.ok(p.endsWith('avoiding any potential bias. ASSISTANT:'));
  assert.equal(
    p.replace('curious user', 'curious human').replace("the user's", "the human's"),
    buildPrompt('llava_v1', 'caption_text_quality', 'c'),
  );
});

test('pieces split only at the template image slot', () => {
  for (const format of CONVERSATION_FORMATS) {
    for (const m of METRICS) {
      const caption = 'has <image> text';
      const { before, after } = promptPieces(format, m.key as MetricKey, caption);
      assert.ok(!before.includes(IMAGE_TOKEN));
      assert.ok(after.includes(caption));
      assert.equal(before + IMAGE_TOKEN + after, buildPrompt(format, m.key as MetricKey, caption));
    }
  }
});

test('unknown format or metric is a FilterError', () => {
  assert.throws(() => buildPrompt('llama_2' as never, 'image_text_matching', 'x'), { code: 'unknown_format' });
  assert.throws(() => buildPrompt('qwen_instruct', 'nope' as never, 'x'), { code: 'unknown_metric' });
});

test('prompts agree with the ones the exporter recorded in each fixture model (mlm_filter.json)', () => {
  let checked = 0;
  for (const name of ['tiny-llava-qwen', 'tiny-llava-v1', 'tiny-llava-llama3', 'tiny-llava-llama32']) {
    const file = new URL(`../fixtures/models/${name}/mlm_filter.json`, import.meta.url);
    let cfg: { conversation_format: string; prompts?: { full?: Record<string, string> } };
    try {
      cfg = JSON.parse(readFileSync(file, 'utf8'));
    } catch {
      continue;
    }
    for (const [metric, prompt] of Object.entries(cfg.prompts?.full ?? {})) {
      assert.equal(
        buildPrompt(cfg.conversation_format as never, metric as MetricKey, '{caption}'),
        prompt,
        `${name} ${metric}`,
      );
      checked++;
    }
  }
  assert.ok(checked >= 16, 'the four fixture models are committed');
});
