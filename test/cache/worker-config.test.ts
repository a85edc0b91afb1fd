/**
 * The worker's score cache settings: MLMF_SCORE_CACHE_TABLE / _TTL_DAYS / MLMF_DEDUPE_IMAGES parsed and checked, and
 * a table that does not exist stops the worker at start (before it takes any work) with score_cache_unusable.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FilterError } from '../../lib/errors.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import { configFromEnv, runWorker, validateConfig } from '../../lib/worker/run.ts';
import { FastScorer, needServices } from '../stream/helpers.ts';
import { DYNAMODB_ENDPOINT } from './dynamo-helpers.ts';

const base = { MLMF_SOURCE: 'sqs-shards', MLMF_SQS_QUEUE_URL: 'http://127.0.0.1:9324/000000000000/never-used' };
const workerConfig = (name: string) => (e: unknown) =>
  e instanceof FilterError && e.code === 'worker_config' && e.message.includes(name);

test('score cache settings from the environment', () => {
  const c = configFromEnv({ ...base, MLMF_SCORE_CACHE_TABLE: 'mlmf-scores', MLMF_SCORE_CACHE_TTL_DAYS: '0.5' });
  assert.equal(c.scoreCacheTable, 'mlmf-scores');
  assert.equal(c.scoreCacheTtlDays, 0.5);
  assert.equal(configFromEnv(base).scoreCacheTable, undefined);
  for (const bad of ['0', '-3', 'ten', 'Infinity']) {
    assert.throws(
      () => configFromEnv({ ...base, MLMF_SCORE_CACHE_TTL_DAYS: bad }),
      workerConfig('MLMF_SCORE_CACHE_TTL_DAYS'),
    );
  }
});

test('MLMF_DEDUPE_IMAGES: its form is checked, and it needs MLMF_SCORE_CACHE_TABLE', () => {
  assert.deepEqual(configFromEnv({ ...base, MLMF_DEDUPE_IMAGES: 'near:6' }).dedupeImages, {
    mode: 'near',
    distance: 6,
  });
  assert.deepEqual(configFromEnv({ ...base, MLMF_DEDUPE_IMAGES: 'exact' }).dedupeImages, { mode: 'exact' });
  validateConfig(configFromEnv({ ...base, MLMF_DEDUPE_IMAGES: 'off' }));
  for (const bad of ['near:33', 'exact:2', 'fuzzy', 'near:']) {
    assert.throws(() => configFromEnv({ ...base, MLMF_DEDUPE_IMAGES: bad }), workerConfig('MLMF_DEDUPE_IMAGES'));
  }
  validateConfig(configFromEnv({ ...base, MLMF_DEDUPE_IMAGES: 'exact', MLMF_SCORE_CACHE_TABLE: 't' }));
  // The images are remembered in the score cache table: without one the dedupe has nowhere to look.
  const alone = configFromEnv({ ...base, MLMF_DEDUPE_IMAGES: 'near' });
  assert.throws(() => validateConfig(alone), workerConfig('MLMF_SCORE_CACHE_TABLE'));
});

test(
  'a score cache table that does not exist stops the worker at start',
  { skip: await needServices('dynamodb') },
  async () => {
    const config = {
      ...configFromEnv({
        ...base,
        MLMF_SCORE_CACHE_TABLE: 'mlmf-no-such-table',
        MLMF_DYNAMODB_ENDPOINT: DYNAMODB_ENDPOINT,
      }),
      healthPort: 0,
      scorer: new FastScorer(),
    };
    let ready = false;
    await assert.rejects(
      runWorker(config, { metricsOut: null, logger: silentLogger, onReady: () => (ready = true) }),
      (e: unknown) =>
        e instanceof FilterError &&
        e.code === 'score_cache_unusable' &&
        /mlmf-no-such-table does not exist/.test(e.message),
    );
    assert.equal(ready, false, 'the worker never took work');
  },
);
