/**
 * The reference's decoding settings (lib/model/generation.ts): transformers' repetition penalty on the tokens
 * generated so far, reproduced from the scoring graph's raw logits; generation settings read from mlm_filter.json.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  chainHistories,
  generationSettings,
  penalise,
  penalisedArgmax,
  penalisedTops,
  referencePenalty,
  type RawLogits,
} from '../../lib/model/generation.ts';
import { FilterError } from '../../lib/types.ts';

// A vocabulary where the digits "0".."9" are ids 10..19 and the readout tokens are exactly the digits.
const DIGIT = (d: number) => 10 + d;
const readoutIndex = new Map(Array.from({ length: 10 }, (_, d) => [DIGIT(d), d]));

/** One readout row: every digit's raw logit, and the top-4 of a vocabulary in which `others` are the non-digits. */
function row(digitLogits: number[], others: Record<number, number> = {}): RawLogits {
  const all = new Map<number, number>([...digitLogits.map((v, d) => [DIGIT(d), v] as const)]);
  for (const [id, v] of Object.entries(others)) all.set(Number(id), v);
  const top = [...all].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, 4);
  return {
    tokenLogits: Float32Array.from(digitLogits),
    topLogits: Float32Array.from(top.map(([, v]) => v)),
    topIds: BigInt64Array.from(top.map(([id]) => BigInt(id))),
    topK: 4,
    readoutIndex,
  };
}

test('the penalty flips the second digit: "88" becomes "82" when 8 was generated first', () => {
  // After the prompt + "8" the model's own argmax is "8" again (10.0 > 9.5); 10.0 / 1.1 = 9.09 falls under "2".
  const r = row([0, 1, 9.5, 2, 3, 4, 5, 6, 10.0, 7]);
  assert.equal(penalisedArgmax(r, 0, [], 1.1), DIGIT(8), 'no history: the plain argmax');
  assert.equal(penalisedArgmax(r, 0, [DIGIT(8)], 1), DIGIT(8), 'penalty 1: unchanged');
  assert.equal(penalisedArgmax(r, 0, [DIGIT(8)], 1.1), DIGIT(2));
  // A penalty too small to cross the gap leaves it: 10.0 / 1.05 = 9.52 > 9.5.
  assert.equal(penalisedArgmax(r, 0, [DIGIT(8)], 1.05), DIGIT(8));
});

test('negative logits are multiplied, as transformers does', () => {
  const r = row([-9, -8, -1.05, -7, -6, -5, -4, -3, -1.0, -2]);
  assert.equal(penalise(-1.0, 1.1), Math.fround(-1.0 * Math.fround(1.1)));
  assert.equal(penalisedArgmax(r, 0, [DIGIT(8)], 1.1), DIGIT(2), '-1.0 x 1.1 = -1.1 < -1.05');
});

test('a non-digit can win the second step, and a penalty below 1 lifts a token from outside the top-K', () => {
  // A word (id 500) second: the reference's text then is "8<word>", whose int() fails.
  const word = row([0, 0, 0, 0, 0, 0, 0, 0, 10, 0], { 500: 9.8, 501: 9.7, 502: 9.6 });
  assert.equal(penalisedArgmax(word, 0, [DIGIT(8)], 1.1), 500);
  // "3" is not among the top-4 (words 600..603 at 6..6.3) but 5.0 / 0.5 = 10 beats them all.
  const lifted = row([0, 0, 0, 5, 0, 0, 0, 0, 0, 0], { 600: 6, 601: 6.1, 602: 6.2, 603: 6.3 });
  assert.equal(penalisedArgmax(lifted, 0, [DIGIT(3)], 0.5), DIGIT(3));
});

test('ties go to the lower id, as torch.argmax', () => {
  // "8" at 11 penalised by 1.1 lands exactly on 10 (in float32), the logit of "2": id 12 < 18.
  const v = penalise(11, 1.1);
  const r = row([0, 0, v, 0, 0, 0, 0, 0, 11, 0]);
  assert.equal(penalisedArgmax(r, 0, [DIGIT(8)], 1.1), DIGIT(2));
});

test('histories follow the candidate chains; a history covering the top-K is refused, not guessed', () => {
  const chains = [[DIGIT(0)], [DIGIT(1), DIGIT(0)], [DIGIT(2)]];
  assert.deepEqual(chainHistories(chains), [[], [DIGIT(0)], [DIGIT(1)], [DIGIT(1), DIGIT(0)], [DIGIT(2)]]);
  // Two rows: the prompt row (no history) and the row after "8".
  const a = row([0, 1, 9.5, 2, 3, 4, 5, 6, 10.0, 7]);
  const two: RawLogits = {
    ...a,
    tokenLogits: Float32Array.from([...a.tokenLogits, ...a.tokenLogits]),
    topLogits: Float32Array.from([...a.topLogits, ...a.topLogits]),
    topIds: BigInt64Array.from([...a.topIds, ...a.topIds]),
  };
  assert.deepEqual([...penalisedTops(two, 2, [[], [DIGIT(8)]], 1.1)], [BigInt(DIGIT(8)), BigInt(DIGIT(2))]);
  const top4 = [8, 2, 9, 7].map(DIGIT);
  assert.throws(
    () => penalisedArgmax(a, 0, top4, 1.1),
    (e: unknown) => e instanceof FilterError && e.code === 'model_invalid',
  );
});

test('generation settings from mlm_filter.json; older exports mean no penalty', () => {
  const generation = { repetition_penalty: 1.1, eos_token_ids: [151645, 151643] };
  const qwen = generationSettings({ max_new_tokens_in_reference: 2, generation });
  assert.deepEqual(qwen, { repetitionPenalty: 1.1, eosTokenIds: [151645, 151643], maxNewTokens: 2 });
  assert.equal(referencePenalty(qwen), 1.1);
  // One new token (llama_3): nothing is generated before it, so nothing is penalised.
  assert.equal(referencePenalty(generationSettings({ max_new_tokens_in_reference: 1, generation })), 1);
  assert.deepEqual(generationSettings({}), { repetitionPenalty: 1, eosTokenIds: undefined, maxNewTokens: 2 });
  for (const bad of [0, -1, 'x', Number.NaN]) {
    assert.throws(
      () => generationSettings({ generation: { repetition_penalty: bad } }),
      (e: unknown) => e instanceof FilterError && e.code === 'model_invalid',
    );
  }
});
