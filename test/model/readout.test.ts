/**
 * The readout's arithmetic on hand-made graph outputs (no model): row layout of the candidate chains, the exact
 * distribution, the greedy integer, the reference's 2-token int() and the whitespace-lead branch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  candidateChains,
  pythonIntOfFirstLine,
  Readout,
  readoutTokenIds,
  type ScoreVocab,
} from '../../lib/model/readout.ts';

// Toy vocabulary: ids 10..19 are the digits 0..9, 5 = ' ', 6 = '\n', 7 = EOS, 8 = 'ab'.
const TEXT: Record<number, string> = { 5: ' ', 6: '\n', 7: '', 8: 'ab' };
for (let d = 0; d < 10; d++) TEXT[10 + d] = String(d);
const digitIds = Array.from({ length: 10 }, (_, d) => 10 + d);
const vocab = (lead?: number): ScoreVocab => ({
  digitIds,
  whitespaceLeadId: lead,
  eosIds: new Set([7]),
  decode: (ids) => ids.map((id) => TEXT[id] ?? '?').join(''),
});

/** Outputs for one metric: each row's digit (and lead) probabilities and its argmax token. */
function outputs(rows: { p: number[]; top: number }[], k: number) {
  const logprobs = new Float32Array(rows.length * k);
  const top = new BigInt64Array(rows.length);
  rows.forEach((r, i) => {
    for (let j = 0; j < k; j++) logprobs[i * k + j] = Math.log(r.p[j] ?? 1e-30);
    top[i] = BigInt(r.top);
  });
  return { logprobs, top };
}

const uniform = (mass: number) => Array.from({ length: 10 }, () => mass / 10);
const onehot = (d: number, mass = 1) => Array.from({ length: 10 }, (_, i) => (i === d ? mass : 0));

test('chains and readout ids: 0, 1 0, 2..9 (then the same behind the lead)', () => {
  assert.deepEqual(candidateChains(vocab()), [[10], [11, 10], [12], [13], [14], [15], [16], [17], [18], [19]]);
  assert.deepEqual(readoutTokenIds(vocab()), digitIds);
  assert.equal(new Readout(vocab()).rowsPerMetric, 12);
  assert.equal(candidateChains(vocab(5))[10]?.[0], 5);
  assert.deepEqual(readoutTokenIds(vocab(5)), [...digitIds, 5]);
  assert.equal(new Readout(vocab(5)).rowsPerMetric, 12 + 21, 'the lead chains: 9 of 2 tokens and one of 3');
});

test('a model sure of "87": distribution, expected, greedy and reference all read 87', () => {
  // rows: prompt, r_0, r_1, t (the 0 after 1), r_2..r_9
  const rows = [
    { p: onehot(8), top: 18 },
    { p: uniform(1), top: 10 },
    { p: uniform(1), top: 10 },
    { p: uniform(1), top: 10 },
    ...Array.from({ length: 8 }, (_, i) => (i + 2 === 8 ? { p: onehot(7), top: 17 } : { p: uniform(1), top: 10 })),
  ];
  const { logprobs, top } = outputs(rows, 10);
  const r = new Readout(vocab()).metric(logprobs, top, 0);
  assert.equal(r.greedy, 87);
  assert.equal(r.reference, 87);
  assert.ok(Math.abs((r.expected as number) - 87) < 1e-6);
  assert.ok(Math.abs((r.distribution[87] as number) - 1) < 1e-6);
});

test('the exact expected value mixes every first digit with its own second-digit distribution, and 100', () => {
  // q: half "1", half "5"; after "1": "0" for sure; after "1","0": "0" with t = 0.25; after "5": stop for sure.
  const rows = [
    { p: [0, 0.5, 0, 0, 0, 0.5, 0, 0, 0, 0], top: 11 },
    { p: uniform(1), top: 10 }, // r_0 (q(0) = 0: irrelevant)
    { p: onehot(0), top: 10 }, // r_1
    { p: onehot(0, 0.25), top: 6 }, // t: P("0") = 0.25, greedy "\n"
    ...Array.from({ length: 8 }, (_, i) => (i + 2 === 5 ? { p: onehot(0, 0), top: 6 } : { p: uniform(1), top: 10 })),
  ];
  const { logprobs, top } = outputs(rows, 10);
  const r = new Readout(vocab()).metric(logprobs, top, 0);
  // P(10) = 0.5 * 0.75, P(100) = 0.5 * 0.25, P(5) = 0.5
  assert.ok(Math.abs((r.distribution[10] as number) - 0.375) < 1e-6);
  assert.ok(Math.abs((r.distribution[100] as number) - 0.125) < 1e-6);
  assert.ok(Math.abs((r.distribution[5] as number) - 0.5) < 1e-6);
  assert.ok(Math.abs((r.expected as number) - (0.375 * 10 + 0.125 * 100 + 0.5 * 5)) < 1e-4);
  assert.equal(r.greedy, 10, 'greedy: "1", "0", then not "0"');
  assert.equal(r.reference, 10, 'int("10")');
  assert.ok(Math.abs(r.numberMass - 1) < 1e-6);
});

test('no digit first: no greedy score; EOS first: the reference reads nothing; "\\n" first is undetermined', () => {
  const rest = Array.from({ length: 11 }, () => ({ p: uniform(1), top: 10 }));
  const read = (first: number) => {
    const { logprobs, top } = outputs([{ p: uniform(0.1), top: first }, ...rest], 10);
    return new Readout(vocab()).metric(logprobs, top, 0);
  };
  assert.equal(read(8).greedy, undefined);
  assert.equal(read(8).reference, undefined);
  assert.equal(read(8).undetermined, false, "'ab' can never start an int");
  assert.equal(read(7).reference, undefined);
  assert.equal(read(7).undetermined, false);
  assert.equal(read(6).undetermined, true, 'strip() could drop the newline: the second token decides');
  // Only 10% of the first step's mass is digits: the expected value is conditional on a number. Uniform digits
  // everywhere: the mean of 10d+e (49.5), except "1","0", which is 100 with t = 0.1: 10 -> 19, i.e. +0.09.
  assert.ok(Math.abs((read(8).expected as number) - 49.59) < 1e-3);
});

test('with the whitespace lead, a model answering " 42" is read through the lead chains', () => {
  const k = 11;
  const plain = Array.from({ length: 12 }, (_, i) => ({ p: [...uniform(0), i === 0 ? 1 : 0], top: i === 0 ? 5 : 6 }));
  // Lead chains: [w 0] [w 1 0] [w 2] ... [w 9] -> rows: w,0 | w,1,0 | w,2 | ... each w row gives q after the lead.
  const lead: { p: number[]; top: number }[] = [];
  const wRow = { p: [...onehot(4), 0], top: 14 };
  for (let d = 0; d < 10; d++) {
    lead.push(wRow);
    lead.push(d === 4 ? { p: [...onehot(2), 0], top: 12 } : { p: [...uniform(1), 0], top: 10 });
    if (d === 1) lead.push({ p: [...uniform(1), 0], top: 10 });
  }
  const { logprobs, top } = outputs([...plain, ...lead], k);
  const r = new Readout(vocab(5)).metric(logprobs, top, 0);
  assert.equal(r.greedy, 42);
  assert.equal(r.reference, 4, "int(' 4'): the reference's 2 tokens are the space and the first digit");
  assert.ok(Math.abs((r.expected as number) - 42) < 1e-4);
});

test("pythonIntOfFirstLine follows Python's int(text.strip().split('\\n')[0])", () => {
  assert.equal(pythonIntOfFirstLine(' 87\nbecause'), 87);
  assert.equal(pythonIntOfFirstLine('\n8'), 8);
  assert.equal(pythonIntOfFirstLine('1_0'), 10);
  assert.equal(pythonIntOfFirstLine('-3'), -3);
  assert.equal(pythonIntOfFirstLine('8a'), undefined);
  assert.equal(pythonIntOfFirstLine(''), undefined);
});

// Single-token numbers (llama_3): ids 100..200 are the tokens "0".."100"; 7 = EOS, 8 = 'ab', 300 = "087", 301 = "250",
// 302 = " 42".
const NUMBER_TEXT: Record<number, string> = { ...TEXT, 300: '087', 301: '250', 302: ' 42' };
for (let v = 0; v <= 100; v++) NUMBER_TEXT[100 + v] = String(v);
const numberIds = Array.from({ length: 101 }, (_, v) => 100 + v);
const numberVocab: ScoreVocab = {
  digitIds,
  numberIds,
  eosIds: new Set([7]),
  decode: (ids) => ids.map((id) => NUMBER_TEXT[id] ?? '?').join(''),
};

/** One metric's single row: probabilities of "0".."100" and the argmax token. */
function numberRow(p: (v: number) => number, top: number) {
  return outputs([{ p: Array.from({ length: 101 }, (_, v) => p(v)), top }], 101);
}

test('single-token numbers: no chains, one row per metric, the readout ids are "0".."100"', () => {
  assert.deepEqual(candidateChains(numberVocab), []);
  assert.deepEqual(readoutTokenIds(numberVocab), numberIds);
  assert.equal(new Readout(numberVocab).rowsPerMetric, 1);
  assert.throws(() => new Readout({ ...numberVocab, numberIds: numberIds.slice(1) }), { code: 'model_invalid' });
  assert.throws(() => new Readout({ ...numberVocab, numberIds: [...numberIds.slice(1), 101] }), {
    code: 'model_invalid',
  });
});

test('single-token numbers: the exact distribution over 0..100 and its mean over numeric answers', () => {
  // 0.3 on "100", 0.2 on "7", the rest (0.5) on tokens that are not numbers.
  const { logprobs, top } = numberRow((v) => (v === 100 ? 0.3 : v === 7 ? 0.2 : 1e-30), 8);
  const r = new Readout(numberVocab).metric(logprobs, top, 0);
  assert.ok(Math.abs(r.numberMass - 0.5) < 1e-6);
  assert.ok(Math.abs((r.distribution[100] as number) - 0.6) < 1e-6);
  assert.ok(Math.abs((r.distribution[7] as number) - 0.4) < 1e-6);
  assert.ok(Math.abs((r.expected as number) - (0.6 * 100 + 0.4 * 7)) < 1e-4);
  assert.equal(r.q.length, 101);
  assert.deepEqual([r.r, r.stop], [[], []]);
});

test('single-token numbers: greedy and reference integers for every kind of argmax token', () => {
  const read = (topToken: number) => {
    const { logprobs, top } = numberRow((v) => (v === 50 ? 0.4 : 1e-6), topToken);
    return new Readout(numberVocab).metric(logprobs, top, 0);
  };
  // A number token: both read it ("100" included: one token, no third-digit question).
  assert.deepEqual([read(187).greedy, read(187).reference], [87, 87]);
  assert.deepEqual([read(200).greedy, read(200).reference], [100, 100]);
  assert.deepEqual([read(100).greedy, read(100).reference], [0, 0]);
  // "087": int('087') is 87 in Python, so the reference reads 87; it is not the canonical "87" token: no greedy score.
  assert.deepEqual([read(300).greedy, read(300).reference], [undefined, 87]);
  // "250": int() reads 250, clamped into 0..100 as every reference-mode integer; not a score 0..100 for greedy.
  assert.deepEqual([read(301).greedy, read(301).reference], [undefined, 100]);
  // " 42": int() strips whitespace.
  assert.deepEqual([read(302).greedy, read(302).reference], [undefined, 42]);
  // A word, or EOS (decodes to ''): int() raises, no score in either mode; the expected score still exists.
  for (const id of [8, 7]) {
    const r = read(id);
    assert.deepEqual([r.greedy, r.reference, r.undetermined], [undefined, undefined, false]);
    assert.ok(Math.abs((r.expected as number) - 50) < 0.01);
  }
  // Without the reference reading (default mode, no diagnostics) nothing is decoded.
  const { logprobs, top } = numberRow(() => 0.001, 300);
  assert.equal(new Readout(numberVocab).metric(logprobs, top, 0, false).reference, undefined);
});
