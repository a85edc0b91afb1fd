/**
 * Unit tests of top-fraction selection (lib/policy/ranking.ts): the run-wide cutoff (ties, fraction 0 and 1, an empty
 * run), how a staged pair is routed by it, the float32 ranking values, and the first pass's RankingPolicy.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  RankingPolicy,
  RankingValues,
  routeByCutoff,
  topFractionCutoff,
  type Cutoff,
  type TopFractionOptions,
} from '../../lib/policy/ranking.ts';
import type { Outcome, Scores } from '../../lib/types.ts';
import { jsonRecord } from '../helpers/doubles.ts';
import { thrownCode } from '../helpers/thrown-code.ts';

const ranked = (...scores: number[]) => scores.map((score) => ({ score }));

/** An accepted (staged) outcome with these scores on itm. */
function staged(id: string, itm: number, expected?: number): Outcome {
  const scores: Scores = { itm, odf: 50 };
  return {
    record: jsonRecord({ id }),
    id,
    decision: 'accept',
    reasons: [],
    scores,
    ...(expected !== undefined ? { expected: { itm: expected } } : {}),
  };
}

/** Routes every value through the cutoff of `fraction`, as a top-fraction run does; returns the kept ids. */
function kept(values: { id: string; itm: number; expected?: number }[], fraction: number): string[] {
  const ranking = new RankingValues();
  for (const v of values) ranking.add(v.itm, v.expected);
  const cutoff = ranking.cutoff(fraction);
  if (!cutoff) return [];
  const top: TopFractionOptions = { fraction, metric: 'itm' };
  return values
    .map((v) => routeByCutoff(staged(v.id, v.itm, v.expected), top, cutoff))
    .filter((o) => o.decision === 'accept')
    .map((o) => o.id);
}

test('the cutoff is the last kept value: ceil(fraction x pairs), at least one', () => {
  const values = ranked(10, 90, 30, 70, 50);
  assert.equal(topFractionCutoff(values, 0.4)?.score, 70, '2 of 5');
  assert.equal(topFractionCutoff(values, 0.5)?.score, 50, 'ceil(2.5) = 3 of 5');
  assert.equal(topFractionCutoff(values, 0.01)?.score, 90, 'a tiny fraction still keeps the best pair');
  assert.equal(topFractionCutoff(ranked(42), 0.3)?.score, 42, 'a run of one pair keeps it');
});

test('fraction 1 keeps every pair: the cutoff is the lowest value', () => {
  assert.deepEqual(topFractionCutoff(ranked(10, 90, 30), 1), { score: 10, expected: 10 });
  const all = [
    { id: 'a', itm: 10 },
    { id: 'b', itm: 90 },
    { id: 'c', itm: 30 },
  ];
  assert.deepEqual(kept(all, 1), ['a', 'b', 'c']);
});

test('a fraction outside (0, 1] is bad_top_fraction, even over an empty run', () => {
  for (const fraction of [0, -0.5, 1.01, 2, NaN, Infinity]) {
    assert.equal(
      thrownCode(() => topFractionCutoff(ranked(1, 2), fraction)),
      'bad_top_fraction',
      String(fraction),
    );
    assert.equal(
      thrownCode(() => topFractionCutoff([], fraction)),
      'bad_top_fraction',
      `${fraction}, empty`,
    );
    assert.equal(
      thrownCode(() => new RankingValues().cutoff(fraction)),
      'bad_top_fraction',
      `${fraction}, values`,
    );
  }
});

test('an empty run has no cutoff', () => {
  assert.equal(topFractionCutoff([], 0.5), undefined);
  assert.equal(topFractionCutoff([], 1), undefined);
  assert.equal(new RankingValues().cutoff(0.3), undefined);
  assert.deepEqual(kept([], 0.5), []);
});

test('ties on the score are broken by the expected score', () => {
  const cutoff = topFractionCutoff(
    [
      { score: 70, expected: 69.6 },
      { score: 70, expected: 70.4 },
      { score: 70, expected: 70.1 },
      { score: 20, expected: 20 },
    ],
    0.5,
  );
  assert.deepEqual(cutoff, { score: 70, expected: 70.1 });
  const values = [
    { id: 'low', itm: 70, expected: 69.6 },
    { id: 'high', itm: 70, expected: 70.4 },
    { id: 'mid', itm: 70, expected: 70.1 },
    { id: 'worst', itm: 20, expected: 20 },
  ];
  assert.deepEqual(kept(values, 0.5), ['high', 'mid'], 'exactly half: the tie on itm is split by expected');
});

test('a pair without an expected score ranks by its score alone', () => {
  assert.deepEqual(topFractionCutoff(ranked(80, 60, 40), 0.5), { score: 60, expected: 60 });
  const values = [
    { id: 'a', itm: 60, expected: 60.2 },
    { id: 'b', itm: 60 },
    { id: 'c', itm: 60, expected: 59.8 },
  ];
  assert.deepEqual(topFractionCutoff([{ score: 60, expected: 60.2 }, { score: 60 }], 0.5)?.expected, 60.2);
  assert.deepEqual(kept(values, 0.6), ['a', 'b'], 'b, without one, ranks as 60 between 60.2 and 59.8');
});

test('pairs tied on both values with the last kept one are all kept: no arbitrary pick between equals', () => {
  const values = ['a', 'b', 'c', 'd'].map((id, i) => ({ id, itm: i === 3 ? 10 : 70, expected: i === 3 ? 10 : 70 }));
  assert.deepEqual(kept(values, 0.25), ['a', 'b', 'c'], 'a quarter of 4 asks for 1; three are equal at the top');
  const allEqual = ['a', 'b', 'c', 'd'].map((id) => ({ id, itm: 50, expected: 50.5 }));
  assert.deepEqual(kept(allEqual, 0.5), ['a', 'b', 'c', 'd']);
});

test('distinct values keep exactly the fraction asked for', () => {
  const values = Array.from({ length: 10 }, (_, i) => ({ id: `p${i}`, itm: (i * 37) % 100, expected: (i * 37) % 100 }));
  const top30 = kept(values, 0.3);
  assert.equal(top30.length, 3);
  const best = [...values].sort((a, b) => b.itm - a.itm).slice(0, 3);
  assert.deepEqual(top30.sort(), best.map((v) => v.id).sort());
});

test('a routed-out pair is a below_threshold reject naming the cutoff and the fraction; a kept one is unchanged', () => {
  const cutoff: Cutoff = { score: 70, expected: 70 };
  const top: TopFractionOptions = { fraction: 0.3, metric: 'itm' };
  const keep = staged('k', 80);
  assert.equal(routeByCutoff(keep, top, cutoff), keep);
  const out = routeByCutoff(staged('r', 60, 61.5), top, cutoff);
  assert.equal(out.decision, 'reject');
  assert.equal(out.id, 'r');
  assert.deepEqual(out.scores, { itm: 60, odf: 50 }, 'the scores stay as scored');
  assert.deepEqual(out.reasons, [
    {
      code: 'below_threshold',
      message: "itm 60 is below the run's top-30% cutoff 70",
      detail: { metric: 'itm', score: 60, threshold: 70, op: '>=', mode: 'top_fraction', fraction: 0.3 },
    },
  ]);
  // Same score, lower expected: ranked below the cutoff pair.
  assert.equal(routeByCutoff(staged('t', 70, 69.9), top, cutoff).decision, 'reject');
});

test('the pair at the cutoff is kept although its values were ranked as float32', () => {
  // 70.3 is not a float32: the ranking holds Math.fround(70.3), a hair above it. The pair must still be kept.
  const values = [
    { id: 'a', itm: 70.3, expected: 70.3 },
    { id: 'b', itm: 90, expected: 90.3 },
    { id: 'c', itm: 10, expected: 0.1 + 0.2 },
    { id: 'd', itm: 10, expected: 0.3 },
  ];
  assert.deepEqual(kept(values, 0.5), ['a', 'b']);
  assert.deepEqual(kept(values, 1), ['a', 'b', 'c', 'd']);
});

test('RankingValues grows past its first block and keeps every value', () => {
  const ranking = new RankingValues();
  for (let i = 0; i < 5000; i++) ranking.add(i % 101, i % 2 ? undefined : (i % 101) + 0.25);
  assert.equal(ranking.length, 5000);
  assert.deepEqual(ranking.cutoff(1), { score: 0, expected: 0 }, 'the lowest: score 0 without an expected score');
  // 49 of the 5000 values score 100: the best 1% (50) reach the best 99, one with an expected score of 99.25.
  assert.deepEqual(ranking.cutoff(0.01), { score: 99, expected: 99.25 });
  assert.deepEqual(ranking.cutoff(0.0001), { score: 100, expected: 100.25 });
});

test('RankingPolicy without thresholds stages every pair with a number on the ranked metric', () => {
  const policy = new RankingPolicy({ fraction: 0.3, metric: 'ctq' });
  assert.equal(policy.thresholded, false);
  assert.deepEqual(policy.metrics, ['ctq']);
  for (const ctq of [0, 1, 50, 100]) assert.equal(policy.decide({ ctq }).decision, 'accept', `ctq=${ctq}`);
  for (const ctq of [undefined, NaN]) {
    const verdict = policy.decide(ctq === undefined ? { itm: 90 } : { ctq });
    assert.equal(verdict.decision, 'reject');
    assert.deepEqual(
      verdict.reasons.map((r) => [r.code, r.detail?.metric]),
      [['scoring_failed', 'ctq']],
    );
  }
});

test('RankingPolicy with thresholds applies them first, then asks for a number on the ranked metric', () => {
  const policy = new RankingPolicy(
    { fraction: 0.5, metric: 'su' },
    { thresholds: [{ metric: 'itm', op: '>=', value: 50 }] },
  );
  assert.equal(policy.thresholded, true);
  assert.deepEqual(policy.metrics, ['itm', 'su']);
  assert.equal(policy.decide({ itm: 60, su: 5 }).decision, 'accept');
  const below = policy.decide({ itm: 40, su: 90 });
  assert.deepEqual(
    below.reasons.map((r) => r.code),
    ['below_threshold'],
  );
  const unranked = policy.decide({ itm: 60 });
  assert.deepEqual(
    unranked.reasons.map((r) => [r.code, r.detail?.metric]),
    [['scoring_failed', 'su']],
  );
});

test("RankingPolicy keeps the thresholds' combine: 'or' stages a pair that passes one of them", () => {
  const policy = new RankingPolicy(
    { fraction: 0.5, metric: 'itm' },
    {
      thresholds: [
        { metric: 'odf', op: '>=', value: 50 },
        { metric: 'ctq', op: '>=', value: 50 },
      ],
      combine: 'or',
    },
  );
  assert.equal(policy.combine, 'or');
  assert.equal(policy.decide({ itm: 1, odf: 60, ctq: 0 }).decision, 'accept');
  assert.equal(policy.decide({ itm: 1, odf: 0, ctq: 60 }).decision, 'accept');
  assert.equal(policy.decide({ itm: 1, odf: 0, ctq: 0 }).decision, 'reject');
  assert.equal(policy.decide({ odf: 60, ctq: 60 }).decision, 'reject', 'no number on the ranked metric');
});
