import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DigitVocab, NumberReader, digitProbabilities, pythonIntOfFirstLine } from '../../lib/model/digits.ts';

// A toy vocabulary: ids 0..9 are the digits, 10 = "\n", 11 = " ", 12 = "ab", 13 = "42" (a multi-digit token).
const TEXT = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '\n', ' ', 'ab', '42'];
const vocab = new DigitVocab(TEXT.length, (id) => TEXT[id] as string);
const reader = () => new NumberReader(vocab, (id) => TEXT[id] as string, 4);

function feed(ids: number[]) {
  const r = reader();
  for (const id of ids) r.push(id);
  return r;
}

test('greedy digits stop as soon as the number is complete: two digits, or 100', () => {
  assert.equal(feed([8, 5, 10, 3]).score, 85);
  assert.deepEqual(feed([8, 5, 10, 3]).tokens, [8, 5], 'no step for a third token after two digits');
  assert.equal(feed([1, 0, 0, 7]).score, 100);
  assert.deepEqual(feed([1, 0, 0, 7]).tokens, [1, 0, 0]);
  assert.equal(feed([1, 0, 5]).score, 10, '"105" is 10 then a stray digit, as the 2-token reference reads it');
  assert.deepEqual(feed([1, 0, 10]).tokens, [1, 0, 10]);
  assert.equal(feed([1, 0, 10]).score, 10);
  assert.equal(feed([7, 12]).score, 7);
  assert.equal(feed([9, 9, 9]).score, 99, 'a third digit is not read');
  assert.deepEqual(feed([9, 9, 9]).tokens, [9, 9]);
  assert.equal(feed([0, 5, 10]).score, 5);
  assert.equal(feed([13, 10]).score, 42, 'multi-digit token');
  assert.deepEqual(feed([13, 10]).tokens, [13]);
  assert.equal(feed([4, 13]).score, 44, 'digits past the second are dropped');
});

test('one leading space token is skipped, anything else before a digit is no score', () => {
  assert.equal(feed([11, 6, 1, 10]).score, 61);
  assert.equal(feed([11, 11, 6]).score, undefined);
  assert.equal(feed([12, 5]).score, undefined);
  assert.equal(feed([10]).score, undefined);
  assert.equal(feed([10]).expected, undefined);
});

test('stops at maxNewTokens', () => {
  const r = new NumberReader(vocab, (id) => TEXT[id] as string, 2);
  r.push(11);
  r.push(4);
  assert.equal(r.done, true);
  assert.equal(r.score, 4);
});

const onehot = (d: number) => Array.from({ length: 10 }, (_, i) => (i === d ? 1 : 0));

test('expected score follows the documented two-level formula', () => {
  // Certain "8","5" then stop: expected = 85.
  const r = reader();
  r.push(8, onehot(8));
  r.push(5, onehot(5));
  r.push(10, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.ok(Math.abs((r.expected as number) - 85) < 1e-9);

  // First digit 50/50 between 6 and 7; second step: 0.5 stop, 0.5 digit "2".
  const q = onehot(6).map((x, i) => (i === 7 ? 0.5 : x * 0.5));
  const second = onehot(2).map((x) => x * 0.5);
  const r2 = reader();
  r2.push(6, q);
  r2.push(10, second);
  // E = 0.5*(0.5*6 + 0.5*62) + 0.5*(0.5*7 + 0.5*72) = 0.5*34 + 0.5*39.5 = 36.75
  assert.ok(Math.abs((r2.expected as number) - 36.75) < 1e-9, String(r2.expected));
  assert.equal(r2.score, 6);
});

test('expected credits 100 when the greedy path is 1,0 and a third 0 is likely', () => {
  const r = reader();
  r.push(1, onehot(1));
  r.push(0, onehot(0));
  r.push(
    0,
    onehot(0).map((x) => x * 0.8),
  );
  assert.equal(r.score, 100);
  // 0.8 * 100 + 0.2 * 10
  assert.ok(Math.abs((r.expected as number) - 82) < 1e-9, String(r.expected));
});

test('digit probabilities are a softmax restricted to digit tokens', () => {
  const logits = new Float32Array(TEXT.length).fill(0);
  logits[3] = Math.log(4);
  const p = digitProbabilities(logits, 0, TEXT.length, vocab);
  const z = TEXT.length - 1 + 4;
  assert.ok(Math.abs((p[3] as number) - 4 / z) < 1e-6);
  assert.ok(Math.abs((p[0] as number) - 1 / z) < 1e-6);
});

test('pythonIntOfFirstLine behaves like int(text.split("\\n")[0])', () => {
  assert.equal(pythonIntOfFirstLine('85'), 85);
  assert.equal(pythonIntOfFirstLine(' 8'), 8);
  assert.equal(pythonIntOfFirstLine('8\n'), 8);
  assert.equal(pythonIntOfFirstLine('07'), 7);
  assert.equal(pythonIntOfFirstLine('1_0'), 10);
  assert.equal(pythonIntOfFirstLine('-3'), -3);
  assert.equal(pythonIntOfFirstLine(''), undefined);
  assert.equal(pythonIntOfFirstLine('\n5'), undefined);
  assert.equal(pythonIntOfFirstLine('8.'), undefined);
  assert.equal(pythonIntOfFirstLine('The'), undefined);
});
