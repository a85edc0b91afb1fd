/**
 * Unit tests of the score policy (lib/policy/index.ts): every comparison at, above and below its value, both combines
 * (`and`, `or`), scores the model gave no number for, and the thresholds it parses or refuses.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DEFAULT_THRESHOLDS,
  formatThreshold,
  parseThreshold,
  parseThresholds,
  Policy,
  type Comparison,
  type PolicyOptions,
  type Threshold,
} from '../../lib/policy/index.ts';
import type { Scores } from '../../lib/types.ts';
import { thrownCode } from '../helpers/thrown-code.ts';

const decide = (options: PolicyOptions, scores: Scores) => new Policy(options).decide(scores);
const only = (op: Comparison, value = 66): PolicyOptions => ({ thresholds: [{ metric: 'itm', op, value }] });

test('every comparison decides at, just below and just above its value', () => {
  const expected: Record<Comparison, [below: string, at: string, above: string]> = {
    '>=': ['reject', 'accept', 'accept'],
    '>': ['reject', 'reject', 'accept'],
    '<=': ['accept', 'accept', 'reject'],
    '<': ['accept', 'reject', 'reject'],
  };
  for (const [op, decisions] of Object.entries(expected) as [Comparison, string[]][]) {
    const got = [65, 66, 67].map((itm) => decide(only(op), { itm }).decision);
    assert.deepEqual(got, decisions, `itm${op}66 on 65, 66, 67`);
    // Continuous values (a caller's own scores) are compared as they are, not rounded.
    assert.deepEqual(
      [65.999, 66.001].map((itm) => decide(only(op), { itm }).decision),
      [decisions[0], decisions[2]],
      `itm${op}66 on 65.999, 66.001`,
    );
  }
});

test('the bounds of the scale: itm>=0 accepts 0, itm<=100 accepts 100, itm>100 accepts nothing', () => {
  assert.equal(decide(only('>=', 0), { itm: 0 }).decision, 'accept');
  assert.equal(decide(only('<=', 100), { itm: 100 }).decision, 'accept');
  assert.equal(decide(only('>', 100), { itm: 100 }).decision, 'reject');
  assert.equal(decide(only('<', 0), { itm: 0 }).decision, 'reject');
});

test('a failed comparison is a below_threshold reason naming the metric, the score and the threshold', () => {
  const verdict = decide(only('<', 30), { itm: 42 });
  assert.deepEqual(verdict, {
    decision: 'reject',
    reasons: [
      {
        code: 'below_threshold',
        message: 'itm 42 fails itm<30',
        detail: { metric: 'itm', score: 42, threshold: 30, op: '<' },
      },
    ],
  });
  assert.deepEqual(decide(only('<', 30), { itm: 12 }), { decision: 'accept', reasons: [] });
});

test("the default policy is the paper's itm>=66 and odf>=20", () => {
  const policy = new Policy();
  assert.deepEqual(policy.thresholds, DEFAULT_THRESHOLDS);
  assert.equal(policy.combine, 'and');
  assert.deepEqual(policy.metrics, ['itm', 'odf']);
  assert.equal(policy.decide({ itm: 66, odf: 20 }).decision, 'accept');
  assert.equal(policy.decide({ itm: 65, odf: 99 }).decision, 'reject');
  assert.equal(policy.decide({ itm: 99, odf: 19 }).decision, 'reject');
});

const two: readonly Threshold[] = [
  { metric: 'itm', op: '>=', value: 66 },
  { metric: 'odf', op: '>=', value: 20 },
];

test("combine 'and': every condition must hold, and every failed one is a reason", () => {
  const and = (scores: Scores) => decide({ thresholds: two, combine: 'and' }, scores);
  assert.equal(and({ itm: 70, odf: 30 }).decision, 'accept');
  const one = and({ itm: 70, odf: 10 });
  assert.equal(one.decision, 'reject');
  assert.deepEqual(
    one.reasons.map((r) => r.detail?.metric),
    ['odf'],
  );
  const both = and({ itm: 10, odf: 10 });
  assert.deepEqual(
    both.reasons.map((r) => [r.code, r.detail?.metric]),
    [
      ['below_threshold', 'itm'],
      ['below_threshold', 'odf'],
    ],
  );
});

test("combine 'or': one condition holding is enough; a reject names every condition", () => {
  const or = (scores: Scores) => decide({ thresholds: two, combine: 'or' }, scores);
  assert.deepEqual(or({ itm: 70, odf: 10 }), { decision: 'accept', reasons: [] });
  assert.deepEqual(or({ itm: 10, odf: 30 }), { decision: 'accept', reasons: [] });
  assert.deepEqual(or({ itm: 70, odf: 30 }), { decision: 'accept', reasons: [] });
  const none = or({ itm: 10, odf: 10 });
  assert.equal(none.decision, 'reject');
  assert.deepEqual(
    none.reasons.map((r) => [r.code, r.detail?.metric]),
    [
      ['below_threshold', 'itm'],
      ['below_threshold', 'odf'],
    ],
  );
});

test("combine 'or' over a single threshold decides as 'and' does", () => {
  for (const itm of [10, 66, 90]) {
    assert.deepEqual(decide({ ...only('>='), combine: 'or' }, { itm }), decide(only('>='), { itm }));
  }
});

test('two thresholds on one metric make a band with and, its outside with or', () => {
  const band: Threshold[] = [
    { metric: 'ctq', op: '>=', value: 40 },
    { metric: 'ctq', op: '<=', value: 60 },
  ];
  const outside: Threshold[] = [
    { metric: 'ctq', op: '<', value: 40 },
    { metric: 'ctq', op: '>', value: 60 },
  ];
  const inBand = [30, 40, 50, 60, 70].map((ctq) => decide({ thresholds: band, combine: 'and' }, { ctq }).decision);
  assert.deepEqual(inBand, ['reject', 'accept', 'accept', 'accept', 'reject']);
  const out = [30, 40, 50, 60, 70].map((ctq) => decide({ thresholds: outside, combine: 'or' }, { ctq }).decision);
  assert.deepEqual(out, ['accept', 'reject', 'reject', 'reject', 'accept']);
  assert.deepEqual(new Policy({ thresholds: band }).metrics, ['ctq'], 'a metric read twice is scored once');
});

test('a metric without a number (absent, NaN, infinite) is scoring_failed, never compared', () => {
  for (const itm of [undefined, NaN, Infinity, -Infinity]) {
    const scores: Scores = itm === undefined ? {} : { itm };
    // itm<=100 holds for -Infinity and itm>=0 for Infinity: neither must accept a pair the model gave no number for.
    for (const options of [only('>=', 0), only('<=', 100)]) {
      const verdict = decide(options, scores);
      assert.equal(verdict.decision, 'reject', `itm=${itm} under ${formatThreshold(options.thresholds![0]!)}`);
      assert.deepEqual(verdict.reasons, [
        { code: 'scoring_failed', message: 'the model gave no number for itm', detail: { metric: 'itm' } },
      ]);
    }
  }
});

test("missing metrics under both combines: 'and' rejects, 'or' accepts on the metric that has a number", () => {
  const and = decide({ thresholds: two, combine: 'and' }, { itm: 90 });
  assert.deepEqual(
    and.reasons.map((r) => [r.code, r.detail?.metric]),
    [['scoring_failed', 'odf']],
  );
  assert.equal(decide({ thresholds: two, combine: 'or' }, { itm: 90 }).decision, 'accept');
  const neither = decide({ thresholds: two, combine: 'or' }, { itm: 10 });
  assert.equal(neither.decision, 'reject');
  assert.deepEqual(
    neither.reasons.map((r) => r.code),
    ['below_threshold', 'scoring_failed'],
  );
  const nothing = decide({ thresholds: two, combine: 'or' }, {});
  assert.deepEqual(
    nothing.reasons.map((r) => r.code),
    ['scoring_failed', 'scoring_failed'],
  );
});

test('parseThreshold reads every operator, full metric keys, spaces and decimals', () => {
  assert.deepEqual(parseThreshold('itm>=66'), { metric: 'itm', op: '>=', value: 66 });
  assert.deepEqual(parseThreshold('odf>20'), { metric: 'odf', op: '>', value: 20 });
  assert.deepEqual(parseThreshold('ctq<=50.5'), { metric: 'ctq', op: '<=', value: 50.5 });
  assert.deepEqual(parseThreshold(' su < 85 '), { metric: 'su', op: '<', value: 85 });
  assert.deepEqual(parseThreshold('image_text_matching>=66'), { metric: 'itm', op: '>=', value: 66 });
  assert.deepEqual(parseThreshold('itm>=0'), { metric: 'itm', op: '>=', value: 0 });
  assert.deepEqual(parseThreshold('itm<=100'), { metric: 'itm', op: '<=', value: 100 });
  for (const text of ['itm>=66', 'odf>20', 'ctq<=50.5', 'su<85']) {
    assert.equal(formatThreshold(parseThreshold(text)), text, 'formatThreshold reads back what parseThreshold read');
  }
});

test('parseThreshold refuses what it cannot read with bad_threshold', () => {
  const refused = [
    'itm==66',
    'itm!=66',
    'itm=66',
    'itm=>66',
    'itm>=-1',
    'itm>=100.5',
    'itm>=101',
    'foo>=66',
    'ITM>=66',
    'itm>=',
    '>=66',
    'itm>=66,odf>=20',
    'itm>=1e2',
    '',
  ];
  for (const text of refused)
    assert.equal(
      thrownCode(() => parseThreshold(text)),
      'bad_threshold',
      text,
    );
});

test('parseThresholds reads a comma-separated list, skipping empty items', () => {
  assert.deepEqual(parseThresholds('itm>=66, odf>=20,'), two);
  assert.deepEqual(parseThresholds('su<10'), [{ metric: 'su', op: '<', value: 10 }]);
  assert.equal(
    thrownCode(() => parseThresholds('itm>=66,odf=20')),
    'bad_threshold',
  );
});

test('a policy refuses thresholds given as data that parseThreshold could not have made', () => {
  const bad: unknown[] = [
    { metric: 'itm', op: '==', value: 66 },
    { metric: 'itm', op: '!=', value: 66 },
    { metric: 'itm', op: '=>', value: 66 },
    { metric: 'image_text_matching', op: '>=', value: 66 },
    { metric: 'foo', op: '>=', value: 66 },
    { metric: 'itm', op: '>=', value: '66' },
    { metric: 'itm', op: '>=', value: NaN },
    { metric: 'itm', op: '>=', value: 101 },
    { metric: 'itm', op: '>=', value: -1 },
    { metric: 'toString', op: '>=', value: 1 },
    { metric: 'itm', op: 'toString', value: 1 },
    null,
  ];
  for (const t of bad) {
    assert.equal(
      thrownCode(() => new Policy({ thresholds: [t as Threshold] })),
      'bad_threshold',
      JSON.stringify(t),
    );
  }
  assert.equal(
    thrownCode(() => new Policy({ thresholds: [] })),
    'bad_threshold',
    'no threshold at all',
  );
});

test("a policy refuses a combine other than 'and' or 'or' instead of reading it as 'or'", () => {
  for (const combine of ['AND', 'nand', 'xor', '']) {
    const options = { combine } as unknown as PolicyOptions;
    assert.equal(
      thrownCode(() => new Policy(options)),
      'bad_threshold',
      combine,
    );
  }
});
