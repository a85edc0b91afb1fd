/**
 * ScoreBatcher (batching, poison verdicts, broken-scorer verdicts) and Semaphore, as units: the scorer is a test
 * double here because what is under test is the batcher's rule, not the model (the model's own tests are in
 * test/model/).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PoisonInputError, ScorerBrokenError } from '../../lib/errors.ts';
import { ScoreBatcher } from '../../lib/pipeline/batcher.ts';
import { Semaphore } from '../../lib/pipeline/semaphore.ts';
import type { ScoreInput, ScoreResult, Scorer } from '../../lib/types.ts';

/** A scorer that fails on captions in `poison` (or on everything once `broken`), recording the batches it saw. */
function fakeScorer(maxBatch: number, poison: Set<string>) {
  const calls: string[][] = [];
  const state = { broken: false, closed: false };
  const scorer: Scorer & typeof state = Object.assign(state, {
    model: { name: 'fake', revision: '0' },
    preprocess: {
      size: 2,
      mean: [0, 0, 0],
      std: [1, 1, 1],
      rescale: 1,
      padToSquare: false,
      centerCrop: false,
      resample: 'bicubic',
    } as Scorer['preprocess'],
    metrics: ['itm'] as Scorer['metrics'],
    maxBatch,
    async score(batch: readonly ScoreInput[]): Promise<ScoreResult[]> {
      calls.push(batch.map((b) => b.caption));
      await new Promise((r) => setImmediate(r));
      if (state.closed) throw Object.assign(new Error('scorer closed'), { code: 'scorer_closed' });
      if (state.broken) throw new Error('CUDA error: device lost');
      const bad = batch.find((b) => poison.has(b.caption));
      if (bad) throw new Error(`cannot score ${bad.caption}`);
      return batch.map((b) => ({ scores: { itm: b.caption.length } }));
    },
    async close() {},
  });
  return { scorer, calls };
}

const input = (caption: string): ScoreInput => ({ id: caption, caption, pixelValues: new Float32Array(12) });

test('pairs are batched up to maxBatch; a partial batch goes after maxWaitMs', async () => {
  const { scorer, calls } = fakeScorer(3, new Set());
  const b = new ScoreBatcher(scorer, 20);
  const res = await Promise.all(['a', 'bb', 'ccc', 'dddd'].map((c) => b.score(input(c))));
  assert.deepEqual(
    res.map((r) => r.scores.itm),
    [1, 2, 3, 4],
  );
  assert.deepEqual(calls, [['a', 'bb', 'ccc'], ['dddd']]);
  assert.equal(b.batches, 2);
});

test('a poison pair alone in its batch (low traffic) is retried once alone, then is poison; the next pairs flow', async () => {
  const { scorer, calls } = fakeScorer(8, new Set(['bad']));
  const b = new ScoreBatcher(scorer, 1);
  await assert.rejects(b.score(input('bad')), PoisonInputError);
  assert.deepEqual(calls, [['bad'], ['bad']], 'one batch, one retry alone');
  const ok = await b.score(input('good'));
  assert.equal(ok.scores.itm, 4);
  assert.equal(b.poisonPairs, 1);
});

test('a poison pair in a full batch: only it is poison, its batch-mates are scored', async () => {
  const { scorer } = fakeScorer(3, new Set(['bad']));
  const b = new ScoreBatcher(scorer, 1);
  const settled = await Promise.allSettled(['x', 'bad', 'yy'].map((c) => b.score(input(c))));
  assert.equal(settled[0]?.status, 'fulfilled');
  assert.equal(settled[2]?.status, 'fulfilled');
  assert.ok(settled[1]?.status === 'rejected' && settled[1].reason instanceof PoisonInputError);
});

test('a scorer that fails on every pair of a batch is broken, not the pairs', async () => {
  const { scorer } = fakeScorer(3, new Set());
  scorer.broken = true;
  const b = new ScoreBatcher(scorer, 1);
  const settled = await Promise.allSettled(['a', 'b', 'c'].map((c) => b.score(input(c))));
  for (const s of settled) assert.ok(s.status === 'rejected' && s.reason instanceof ScorerBrokenError);
});

test('at low traffic a broken scorer is recognised after brokenAfter pairs in a row fail alone', async () => {
  const { scorer } = fakeScorer(8, new Set());
  scorer.broken = true;
  const b = new ScoreBatcher(scorer, 1, 2, 3);
  await assert.rejects(b.score(input('p1')), PoisonInputError);
  await assert.rejects(b.score(input('p2')), PoisonInputError);
  await assert.rejects(b.score(input('p3')), ScorerBrokenError);
  // A success in between resets the count: poison pairs spread over healthy traffic never look like a broken scorer.
  scorer.broken = false;
  const { scorer: s2 } = fakeScorer(8, new Set(['bad']));
  const b2 = new ScoreBatcher(s2, 1, 2, 2);
  for (let i = 0; i < 4; i++) {
    await assert.rejects(b2.score(input('bad')), PoisonInputError);
    await b2.score(input('ok'));
  }
});

test('a closed scorer is not retried and not poison', async () => {
  const { scorer, calls } = fakeScorer(8, new Set());
  scorer.closed = true;
  const b = new ScoreBatcher(scorer, 1);
  await assert.rejects(b.score(input('a')), { code: 'scorer_closed' });
  assert.equal(calls.length, 1);
});

test('Semaphore: bounded, FIFO, weighted, abortable', async () => {
  const s = new Semaphore(2);
  await s.acquire();
  await s.acquire();
  assert.equal(s.inUse, 2);
  const order: string[] = [];
  const w1 = s.acquire().then(() => order.push('w1'));
  const ctl = new AbortController();
  const w2 = s.acquire(1, ctl.signal).catch((e: unknown) => order.push(`w2 ${String((e as Error).message)}`));
  const w3 = s.acquire().then(() => order.push('w3'));
  assert.equal(s.waiting, 3);
  ctl.abort(new Error('aborted'));
  await w2;
  s.release();
  await w1;
  s.release();
  await w3;
  assert.deepEqual(order, ['w2 aborted', 'w1', 'w3']);
  assert.equal(s.inUse, 2);
  // An oversized request is capped at the capacity and runs alone.
  s.release(2);
  await s.acquire(5);
  assert.equal(s.inUse, 2);
  assert.throws(() => new Semaphore(0), RangeError);
});
