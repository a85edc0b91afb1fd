import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const bin = new URL('../../bin/mlm-filter.js', import.meta.url).pathname;
const reference = JSON.parse(
  readFileSync(new URL('../../lib/model/mlm-filter-prompts.json', import.meta.url), 'utf8'),
) as {
  instruction_template: string;
  criteria: Record<string, string>;
  user_turn: string;
  conversation_formats: Record<string, { prompt: string }>;
};

function cli(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', input, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The reference's own construction: str.format-style substitution, then the conversation template. */
function referencePrompt(format: string, key: string, caption: string): string {
  const instruction = reference.instruction_template
    .replace('{criteria}', () => reference.criteria[key]!)
    .replace('{aspect}', () => key.replace(/_/g, ' '))
    .replace('{caption}', () => caption);
  const unescape = (s: string) => s.replace(/\\n/g, '\n');
  const user = unescape(reference.user_turn).replace('{instruction}', () => instruction);
  return unescape(reference.conversation_formats[format]!.prompt).replace('{user_turn}', () => user);
}

test('prompt prints the exact reference prompt, for awkward captions too', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-cli-'));
  const captions = [
    'A dog on a beach.',
    'Ünïcödé 日本語 🐕 émoji',
    'quotes "double" and \'single\' and {caption} {aspect} {criteria} braces',
    'line one\nline two\r\nline three\n',
    'a <image> tag inside the caption',
    'long '.repeat(2000),
  ];
  for (const format of ['qwen_instruct', 'llava_v1']) {
    for (const [short, key] of [
      ['itm', 'image_text_matching'],
      ['su', 'semantic_understanding'],
    ]) {
      for (const caption of captions) {
        const file = join(dir, 'caption.txt');
        writeFileSync(file, caption);
        const r = cli(['prompt', '--format', format, '--metric', short!, '--caption-file', file]);
        assert.equal(r.code, 0, r.err);
        assert.equal(r.out, referencePrompt(format, key!, caption));
      }
    }
  }
  const r = cli(['prompt', '--format', 'qwen_instruct', '--metric', 'ctq', '--caption', 'plain']);
  assert.equal(r.out, referencePrompt('qwen_instruct', 'caption_text_quality', 'plain'));
});

test('bad flags exit 2 with a message', () => {
  let r = cli(['filter', '--input', 'x.jsonl', '--out', 'o']);
  assert.equal(r.code, 2);
  assert.match(r.err, /--model/);
  r = cli(['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--threshold', 'itm=>66']);
  assert.equal(r.code, 2);
  assert.match(r.err, /cannot read threshold/);
  r = cli(['prompt', '--format', 'vicuna', '--metric', 'itm', '--caption', 'x']);
  assert.equal(r.code, 2);
  r = cli(['prompt', '--format', 'llava_v1', '--metric', 'beauty', '--caption', 'x']);
  assert.equal(r.code, 2);
  assert.match(r.err, /metric must be one of/);
  r = cli(['nonsense']);
  assert.equal(r.code, 2);
  r = cli(['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--jpeg-decoder', 'turbo']);
  assert.equal(r.code, 2);
  assert.match(r.err, /--jpeg-decoder/);
});

test('--jpeg-decoder, the full-decode default and --jpeg-fast-decode reach the intake (summary.json names it)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-cli-'));
  const model = 'test/fixtures/models/tiny-llava-qwen';
  for (const [flags, decoder] of [
    [['--jpeg-decoder', 'sharp'], /^sharp \(jpegDecoder is sharp\)$/],
    [[], /^native \(libjpeg-turbo .*, DCT scaling off\)$/],
    [['--jpeg-full-decode'], /^native \(libjpeg-turbo .*, DCT scaling off\)$/],
    [['--jpeg-fast-decode'], /^native \(libjpeg-turbo .*, DCT scaling on\)$/],
  ] as const) {
    const out = join(dir, flags[0] ?? 'default');
    const r = cli([
      'filter',
      '--input',
      'sample/pairs.jsonl',
      '--out',
      out,
      '--model',
      model,
      '--progress',
      'none',
      ...flags,
    ]);
    assert.equal(r.code, 0, r.err);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    assert.match(summary.intake.jpegDecoder, decoder);
  }
});

test('--jpeg-fast-decode with --jpeg-full-decode is a usage error', () => {
  const r = cli(['filter', '--input', 'x', '--out', 'o', '--model', 'm', '--jpeg-fast-decode', '--jpeg-full-decode']);
  assert.equal(r.code, 2);
  assert.match(r.err, /--jpeg-full-decode.*--jpeg-fast-decode|--jpeg-fast-decode.*--jpeg-full-decode/);
});

test('a missing model dir and an unreadable input exit 2 and say what to do', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlmf-cli-'));
  let r = cli(['filter', '--input', 'sample/pairs.jsonl', '--out', dir, '--model', join(dir, 'no-such-model')]);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /model/i);
  r = cli(['filter', '--input', join(dir, 'missing.jsonl'), '--out', dir, '--model', join(dir, 'no-such-model')]);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /input_unreadable|model/);
});
