/**
 * Slow (about 1-2 minutes; runs with MLMF_SLOW=1): exactly-once on the audit topic when a partition changes owner
 * while its old owner still has a commit to make. Two worker processes (worker-process.ts, FastScorer) on the shared
 * broker, every record a reject (so every record is one audit event), the audit topic read with read_committed:
 *  - a member frozen past its session timeout (SIGSTOP for longer than MLMF_SESSION_TIMEOUT_MS, then SIGCONT): its
 *    partitions move to the other worker while it is frozen, and whatever it commits when it resumes must be fenced;
 *  - a commit racing a revocation: a second worker joins and leaves again and again while the first one commits.
 * Each asserts zero duplicates, no loss, and committed offsets that never go backwards (sampled throughout). CI runs
 * the short form (MLMF_ZOMBIE_ROUNDS=1).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as pause } from 'node:timers/promises';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Admin, Kafka } from 'kafkajs';
import {
  BROKERS,
  S3_ENDPOINT,
  createBucket,
  createTopics,
  makeRecords,
  needServices,
  produce,
  readTopicToEnd,
  tally,
  uniq,
  useServiceClients,
} from './helpers.ts';
import { waitFor } from '../helpers/poll.ts';
import { WorkerProcess } from './worker-driver.ts';

const skip = process.env.MLMF_SLOW === '1' ? await needServices('kafka', 's3') : 'slow suite: set MLMF_SLOW=1';
/** Freezes (a) and join/leave cycles (b) per run. */
const ROUNDS = Number(process.env.MLMF_ZOMBIE_ROUNDS ?? 3);
const SESSION_MS = 6000;

/** Samples the group's committed offsets until stopped; every decrease of a partition's offset is recorded. */
function watchOffsets(admin: Admin, groupId: string, topic: string) {
  const last = new Map<number, bigint>();
  const backwards: string[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const res = await admin.fetchOffsets({ groupId, topics: [topic] }).catch(() => undefined);
      for (const p of res?.[0]?.partitions ?? []) {
        const o = BigInt(p.offset);
        const before = last.get(p.partition);
        if (before !== undefined && o < before) backwards.push(`partition ${p.partition}: ${before} -> ${o}`);
        last.set(p.partition, o);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    backwards,
    total: () => [...last.values()].reduce((n, o) => n + (o > 0n ? Number(o) : 0), 0),
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

interface Stage {
  readonly t: string;
  readonly audit: string;
  readonly groupId: string;
  readonly ids: string[];
  readonly env: Record<string, string>;
  /** Produces `n` more records (every one a reject: exactly one audit event each). */
  readonly more: (n: number) => Promise<void>;
}

async function setStage(kafka: Kafka, admin: Admin, s3: S3Client): Promise<Stage> {
  const t = uniq('zombie');
  const audit = `${t}-audit`;
  const bucket = uniq('curated');
  const groupId = `${t}-group`;
  await createTopics(admin, [{ topic: t, partitions: 4 }, { topic: audit }]);
  await createBucket(s3, bucket);
  const ids: string[] = [];
  const more = async (n: number) => {
    const records = await makeRecords(`${t}-${ids.length}`, n, (i) => ({ caption: `pair ${i} score=10` }));
    await produce(kafka, t, records, 4);
    ids.push(...records.map((r) => r.id));
  };
  const env = {
    MLMF_SOURCE: 'kafka',
    MLMF_BROKERS: BROKERS,
    MLMF_SOURCE_TOPIC: t,
    MLMF_GROUP_ID: groupId,
    MLMF_BUCKET: bucket,
    MLMF_S3_ENDPOINT: S3_ENDPOINT,
    MLMF_AUDIT_TOPIC: audit,
    MLMF_TRANSACTIONAL_ID_PREFIX: `${t}-tx`,
    MLMF_SESSION_TIMEOUT_MS: String(SESSION_MS),
    MLMF_SOURCE_BATCH: '10',
    MLMF_THRESHOLDS: 'itm>=50',
    MLMF_TEST_SCORER_DELAY_MS: '60',
  };
  return { t, audit, groupId, ids, env, more };
}

/** Duplicates and missing ids on the audit topic (read_committed, to its end). */
async function auditOutcome(kafka: Kafka, stage: Stage) {
  const keys = (await readTopicToEnd(kafka, stage.audit)).map((m) => m.key);
  const seen = tally(keys);
  const duplicates = [...seen.values()].reduce((n, c) => n + c - 1, 0);
  const missing = stage.ids.filter((id) => !seen.has(id)).length;
  return { events: keys.length, duplicates, missing };
}

describe('partition owners fence each other (audit topic, read_committed)', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  let s3: S3Client;
  useServiceClients((c) => ({ kafka, admin, s3 } = c));

  it('a member frozen past its session timeout, then resumed: no duplicate, no loss, offsets never back', async () => {
    const stage = await setStage(kafka, admin, s3);
    await stage.more(200);
    const offsets = watchOffsets(admin, stage.groupId, stage.t);
    const a = new WorkerProcess(stage.env, { name: 'A' });
    const b = new WorkerProcess(stage.env, { name: 'B' });
    const alive = () => {
      for (const w of [a, b]) if (w.exited) throw new Error(`worker ${w.name} exited\n${w.tail()}`);
    };
    const progress = async (what: string, records: number) => {
      const from = offsets.total();
      await waitFor(what, async () => (alive(), offsets.total() >= Math.min(from + records, stage.ids.length)), 90_000);
    };
    try {
      await waitFor('both members joined', async () => (alive(), b.count(/joined consumer group/) > 0), 60_000);
      for (let round = 0; round < ROUNDS; round++) {
        await stage.more(600);
        await progress('progress before the freeze', 40);
        // A freezes with batches in flight; its partitions move to B after the session timeout.
        a.signal('SIGSTOP');
        await pause(SESSION_MS + 4000);
        a.signal('SIGCONT');
        await progress('progress after the resume', 40);
      }
      await progress('everything committed', stage.ids.length);
      assert.deepEqual(await Promise.all([a.stop(), b.stop()]), [0, 0], 'both drain and exit 0');
    } catch (err) {
      (err as Error).message += `\ncommitted ${offsets.total()} of ${stage.ids.length}\n${a.tail()}\n${b.tail()}`;
      throw err;
    } finally {
      await offsets.stop();
      for (const w of [a, b]) {
        w.signal('SIGCONT');
        w.signal('SIGKILL');
      }
    }
    const out = await auditOutcome(kafka, stage);
    console.log(
      `# frozen member: ${ROUNDS} freezes of ${SESSION_MS + 4000} ms, ${stage.ids.length} records: ` +
        `${out.duplicates} duplicates, ${out.missing} missing, ${offsets.backwards.length} backward offsets ` +
        `${JSON.stringify(offsets.backwards.slice(0, 3))}; A's take-over/revoke lines: ${a.count(/taken over|revoked/)}`,
    );
    assert.deepEqual(offsets.backwards, [], 'committed offsets never go backwards');
    assert.equal(out.missing, 0, 'no record lost');
    assert.equal(out.duplicates, 0, 'no audit event twice');
  });

  it('a commit racing a revocation (a second worker joining and leaving while the first commits): no duplicate', async () => {
    const stage = await setStage(kafka, admin, s3);
    await stage.more(600 + 500 * ROUNDS);
    const offsets = watchOffsets(admin, stage.groupId, stage.t);
    const a = new WorkerProcess({ ...stage.env, MLMF_TEST_SCORER_DELAY_MS: '20' }, { name: 'A' });
    const others: WorkerProcess[] = [];
    const alive = () => {
      if (a.exited) throw new Error(`worker A exited\n${a.tail()}`);
    };
    try {
      await waitFor('A committing', async () => (alive(), offsets.total() > 0), 60_000);
      for (let round = 0; round < ROUNDS * 2; round++) {
        const b = new WorkerProcess(stage.env, { name: `B${round}` });
        others.push(b);
        await waitFor('B joining', async () => (alive(), b.count(/joined consumer group/) > 0 || !!b.exited), 60_000);
        await pause(200 + Math.floor(Math.random() * 800));
        assert.equal(await b.stop(), 0, `B${round} drains and exits 0\n${b.tail()}`);
      }
      const n = stage.ids.length;
      await waitFor('everything committed', async () => (alive(), offsets.total() === n), 120_000);
      assert.equal(await a.stop(), 0, 'A drains and exits 0');
    } catch (err) {
      (err as Error).message +=
        `\ncommitted ${offsets.total()} of ${stage.ids.length}\n${a.tail()}\n${others.map((b) => b.tail(5)).join('\n')}`;
      throw err;
    } finally {
      await offsets.stop();
      for (const w of [a, ...others]) w.signal('SIGKILL');
    }
    const out = await auditOutcome(kafka, stage);
    console.log(
      `# commit racing revocation: ${others.length} joins+leaves, ${stage.ids.length} records: ` +
        `${out.duplicates} duplicates, ${out.missing} missing, ${offsets.backwards.length} backward offsets`,
    );
    assert.deepEqual(offsets.backwards, [], 'committed offsets never go backwards');
    assert.equal(out.missing, 0, 'no record lost');
    assert.equal(out.duplicates, 0, 'no audit event twice');
  });
});
