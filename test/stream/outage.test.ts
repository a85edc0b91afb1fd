/**
 * S3 outage: the S3 server is frozen (SIGSTOP: it keeps its objects, answers nothing) while records keep arriving.
 * Nothing may be committed for them while it is down, nothing lost, and the work completes once it is back, each id
 * exactly once across the curated shards and the audit topic. Needs the services from scripts/services.sh (it
 * freezes the S3 server whose pid is in .services/moto/pid).
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Admin, Kafka } from 'kafkajs';
import { runWorker } from '../../lib/worker/run.ts';
import {
  BROKERS,
  FastScorer,
  S3_ENDPOINT,
  committedTotal,
  createBucket,
  createTopics,
  curatedIds,
  makeRecords,
  needServices,
  produce,
  readTopic,
  tally,
  uniq,
  useServiceClients,
} from './helpers.ts';
import { Logger } from '../../lib/support/logger.ts';
import { waitFor } from '../helpers/poll.ts';

const PID_FILE = new URL('../../.services/moto/pid', import.meta.url);
const skip =
  (await needServices('kafka', 's3')) ||
  (existsSync(PID_FILE) ? false : 'the S3 server was not started by scripts/services.sh (no .services/moto/pid)');

describe('S3 outage', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  let s3: S3Client;
  useServiceClients((c) => ({ kafka, admin, s3 } = c));

  it('commits nothing while S3 is down, loses nothing, resumes when it is back', async () => {
    const t = uniq('outage');
    const audit = `${t}-audit`;
    const bucket = uniq('curated');
    const groupId = `${t}-group`;
    await createTopics(admin, [{ topic: t }, { topic: audit }]);
    await createBucket(s3, bucket);
    const first = await makeRecords(`${t}-a`, 40);
    const second = await makeRecords(`${t}-b`, 40);
    await produce(kafka, t, first);

    const stop = new AbortController();
    const errors: string[] = [];
    const run = runWorker(
      {
        source: 'kafka',
        brokers: [BROKERS],
        sourceTopic: t,
        groupId,
        bucket,
        auditTopic: audit,
        s3Endpoint: S3_ENDPOINT,
        s3RequestTimeoutMs: 1000,
        healthPort: 0,
        transactionalIdPrefix: `${t}-tx`,
        sourceBatch: 10,
        idleFlushMs: 100,
        thresholds: 'itm>=50',
        scorer: new FastScorer(8),
      },
      {
        signal: stop.signal,
        logger: new Logger(({ level, msg, ctx }) => {
          if (process.env.DEBUG_OUTAGE) console.error(level, msg, JSON.stringify(ctx));
          if (level === 'error') errors.push(msg);
        }),
        metricsOut: null,
      },
    );
    const pid = Number(readFileSync(PID_FILE, 'utf8').trim());
    let frozen = false;
    try {
      await waitFor('first part committed', async () => (await committedTotal(admin, groupId, t)) === 40, 30_000);
      const s3Failures = () => errors.filter((m) => /S3 request failed/.test(m)).length;
      const failuresBefore = s3Failures();
      process.kill(pid, 'SIGSTOP');
      frozen = true;
      await produce(kafka, t, second);
      // The second part has reached the sink when its uploads start failing (and being retried).
      await waitFor('the sink reporting failed S3 uploads', async () => s3Failures() > failuresBefore, 30_000);
      assert.equal(await committedTotal(admin, groupId, t), 40, 'no offset committed while S3 is down');
      process.kill(pid, 'SIGCONT');
      frozen = false;
      await waitFor(
        'all committed after S3 is back',
        async () => (await committedTotal(admin, groupId, t)) === 80,
        60_000,
      );
    } finally {
      if (frozen) process.kill(pid, 'SIGCONT');
      stop.abort();
    }
    await run;
    const all = [...first, ...second];
    const accepts = all.filter((r) => /score=90/.test(r.caption));
    const { ids } = await curatedIds(s3, bucket);
    assert.deepEqual(
      [...tally(ids).entries()].filter(([, n]) => n > 1),
      [],
      'no duplicate sample after the retries',
    );
    assert.deepEqual(new Set(ids), new Set(accepts.map((r) => r.id)));
    const rejects = all.length - accepts.length;
    const events = await readTopic(kafka, audit, (m) => m.length >= rejects, 15_000);
    assert.equal(events.length, rejects);
    assert.equal(new Set(events.map((e) => e.key)).size, rejects);
  });
});
