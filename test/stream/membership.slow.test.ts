/**
 * Slow (about 25 s; runs with MLMF_SLOW=1): the worker keeps its consumer-group membership while batches score for
 * longer than the session timeout, with the fetch loop held at the in-flight bound (heartbeats go on).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runWorker } from '../../lib/worker/run.ts';
import {
  BROKERS,
  FastScorer,
  S3_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  makeRecords,
  needServices,
  produce,
  uniq,
  openServiceClients,
  closeServiceClients,
} from './helpers.ts';
import { Logger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = process.env.MLMF_SLOW === '1' ? await needServices('kafka', 's3') : 'slow suite: set MLMF_SLOW=1';

describe('long scoring', { skip }, () => {
  it('keeps its membership while a batch scores for longer than the session timeout (heartbeats go on)', async () => {
    const clients = await openServiceClients();
    const { kafka, admin, s3 } = clients;
    const t = uniq('slowscore');
    const bucket = uniq('curated');
    const groupId = `${t}-group`;
    await createTopics(admin, [{ topic: t }, { topic: `${t}-audit` }]);
    await createBucket(s3, bucket);
    // 24 one-record batches: more than the 16 the source hands out at once, so it also pauses the partition.
    await produce(kafka, t, await makeRecords(t, 24));
    const warnings: string[] = [];
    const stop = new AbortController();
    const started = Date.now();
    const run = runWorker(
      {
        source: 'kafka',
        brokers: [BROKERS],
        sourceTopic: t,
        groupId,
        bucket,
        auditTopic: `${t}-audit`,
        s3Endpoint: S3_ENDPOINT,
        healthPort: 0,
        sessionTimeoutMs: 6000,
        sourceBatch: 1,
        transactionalIdPrefix: `${t}-tx`,
        thresholds: 'itm>=50',
        scorer: new FastScorer(8, 7000),
      },
      {
        signal: stop.signal,
        logger: new Logger(({ level, msg, ctx }) =>
          level === 'warn' ? warnings.push(`${msg} ${JSON.stringify(ctx)}`) : undefined,
        ),
        metricsOut: null,
      },
    );
    try {
      await waitFor('committed', async () => (await committedTotal(admin, groupId, t)) === 24, 60_000);
    } finally {
      stop.abort();
    }
    const result = await run;
    assert.ok(Date.now() - started > 14_000, 'scoring took longer than the session timeout, twice');
    assert.equal(result.stats.records, 24);
    assert.deepEqual(
      warnings.filter((w) => /revoked|rebalanc/i.test(w)),
      [],
      'no rebalance: the member stayed in the group',
    );
    await closeServiceClients(clients);
  });
});
