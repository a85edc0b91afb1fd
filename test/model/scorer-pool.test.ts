/**
 * The scorer's worker pool on a real tiny model: chunks queue for the one thread, a chunk aborted while it waits never
 * runs, and close() fails what waits.
 */
import { silentLogger } from '../../lib/support/logger.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadScorer } from '../../lib/model/scorer.ts';
import { loadReference } from './reference.ts';

const quiet = silentLogger;

async function oneThreadPerPair() {
  const { dir, inputs } = loadReference('tiny-llava-qwen');
  const scorer = await loadScorer(dir, {
    batchSize: 1,
    workers: 1,
    intraOpThreads: 1,
    metrics: ['itm'],
    logger: quiet,
  });
  const pair = { id: 'a', ...inputs[0]! };
  return { scorer, pairs: (n: number) => Array.from({ length: n }, (_, i) => ({ ...pair, id: String(i) })) };
}

test('a chunk aborted while it waits for the thread never runs; the pool goes on', async () => {
  const { scorer, pairs } = await oneThreadPerPair();
  try {
    const ctl = new AbortController();
    // Chunk 0 goes to the idle thread at once, chunks 1-2 wait: the abort reaches only those.
    const aborted = scorer.score(pairs(3), ctl.signal);
    ctl.abort(new Error('stop'));
    await assert.rejects(aborted, /stop/);
    assert.equal(scorer.stats().pairs, 1, 'only the chunk already on the thread was scored');
    const res = await scorer.score(pairs(2));
    assert.equal(res.length, 2);
    assert.equal(scorer.stats().pairs, 3);
  } finally {
    await scorer.close();
  }
});

test('close() fails the chunks still waiting with scorer_closed, and later work too', async () => {
  const { scorer, pairs } = await oneThreadPerPair();
  const pending = scorer.score(pairs(3));
  const closed = scorer.close();
  await assert.rejects(pending, { code: 'scorer_closed' });
  await closed;
  await scorer.close(); // twice is fine
  await assert.rejects(scorer.score(pairs(1)), { code: 'scorer_closed' });
});
