/**
 * Integration: `runMonitor` against the real local Kafka (scripts/services.sh up kafka). Skipped with a message when
 * 127.0.0.1:9092 is closed, except under CI=true where a missing broker is a failure.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { runMonitor, type MonitorSnapshot } from '../../lib/monitor/index.ts';
import { silentLogger } from '../../lib/support/logger.ts';

const BROKER = '127.0.0.1:9092';

async function brokerOpen(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port: 9092, timeout: 1000 });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

const open = await brokerOpen();
if (!open && process.env.CI === 'true')
  throw new Error(`Kafka is not listening on ${BROKER} (CI=true): run scripts/services.sh up kafka`);
const skip = open ? false : `Kafka not listening on ${BROKER}: start it with "bash scripts/services.sh up kafka"`;

const event = (id: string, decision: 'accept' | 'reject', itm: number, reasons: unknown[] = []) =>
  JSON.stringify({
    v: 1,
    id,
    decision,
    reasons,
    scores: { itm, odf: 50, ctq: null, su: null },
    caption: 'a caption',
    url: `https://example.com/${id}.jpg`,
    model: { name: 'm', revision: 'r' },
    source: { kind: 'kafka', topic: 'crawl', partition: 0, offset: '0' },
    ts: new Date().toISOString(),
  });

test(
  'monitor tails audit + accepted topics, dedupes, seeks by time, and leaves the worker group alone',
  { skip, timeout: 90_000 },
  async () => {
    const kafka = new Kafka({ clientId: 'ops-test', brokers: [BROKER], logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    const tag = randomUUID().slice(0, 8);
    const audit = `ops-audit-${tag}`;
    const accepted = `ops-accepted-${tag}`;
    const workerGroup = `ops-worker-${tag}`;
    const producer = kafka.producer();
    try {
      await admin.createTopics({
        topics: [
          { topic: audit, numPartitions: 2 },
          { topic: accepted, numPartitions: 1 },
        ],
        waitForLeaders: true,
      });
      await producer.connect();
      // An old batch that --from must skip, then the batch the monitor must count.
      const old = Date.now() - 3_600_000;
      await producer.send({
        topic: audit,
        messages: [{ key: 'old', value: event('old', 'reject', 1, [{ code: 'duplicate' }]), timestamp: String(old) }],
      });
      const from = Date.now() - 60_000;
      const below = {
        code: 'below_threshold',
        message: 'itm < 66',
        detail: { metric: 'itm', score: 10, threshold: 66 },
      };
      await producer.send({
        topic: audit,
        messages: [
          { key: 'r1', value: event('r1', 'reject', 10, [below]), partition: 0 },
          { key: 'r2', value: event('r2', 'reject', 20, [below]), partition: 1 },
          { key: 'r3', value: event('r3', 'reject', 30, [{ code: 'fetch_failed', message: '404' }]), partition: 1 },
          { key: 'a1', value: event('a1', 'accept', 90), partition: 0 },
          { key: 'bad', value: 'not json', partition: 0 },
        ],
      });
      await producer.send({
        topic: accepted,
        messages: [
          { key: 'a1', value: event('a1', 'accept', 90) },
          { key: 'a2', value: event('a2', 'accept', 80) },
          { key: 'a3', value: event('a3', 'accept', 70) },
        ],
      });
      // The "worker" has a committed position on the audit topic; the monitor must not move it.
      await admin.setOffsets({
        groupId: workerGroup,
        topic: audit,
        partitions: [
          { partition: 0, offset: '1' },
          { partition: 1, offset: '0' },
        ],
      });
      const before = await admin.fetchOffsets({ groupId: workerGroup, topics: [audit] });

      const lines: string[] = [];
      const stop = new AbortController();
      const done = runMonitor({
        connection: { brokers: [BROKER], logger: silentLogger },
        auditTopic: audit,
        acceptedTopic: accepted,
        from,
        json: true,
        intervalMs: 200,
        signal: stop.signal,
        durationMs: 60_000,
        out: {
          write: (s: string) => {
            lines.push(s);
            const snap = JSON.parse(s) as MonitorSnapshot;
            if (snap.events + snap.duplicates + snap.malformed >= 8) stop.abort();
          },
        },
      });
      const final = await done;
      assert.equal(final.events, 6, JSON.stringify(final));
      assert.equal(final.accepted, 3);
      assert.equal(final.rejected, 3);
      assert.equal(final.duplicates, 1, 'a1 is on both topics');
      assert.equal(final.malformed, 1);
      assert.equal(final.acceptRate, 0.5);
      assert.deepEqual(
        final.reasons.map((r) => [r.code, r.count]),
        [
          ['below_threshold', 2],
          ['fetch_failed', 1],
        ],
      );
      assert.deepEqual(final.belowThresholdByMetric, { itm: 2 });
      assert.deepEqual(final.scores.itm.bins, [0, 1, 1, 1, 0, 0, 0, 1, 1, 1]);
      assert.equal(final.window.events, 6);
      assert.ok(lines.length >= 2, 'one JSON snapshot per interval');

      const after = await admin.fetchOffsets({ groupId: workerGroup, topics: [audit] });
      assert.deepEqual(after, before, "the worker group's offsets are untouched");
      const groups = (await admin.listGroups()).groups.map((g) => g.groupId);
      assert.deepEqual(
        groups.filter((g) => g.startsWith('mlm-filter-monitor-')).filter((g) => g.includes(String(process.pid))),
        [],
        'the throwaway monitor group is deleted',
      );
    } finally {
      await producer.disconnect().catch(() => undefined);
      await admin.deleteTopics({ topics: [audit, accepted] }).catch(() => undefined);
      await admin.deleteGroups([workerGroup]).catch(() => undefined);
      await admin.disconnect();
    }
  },
);

test(
  'report --topic reads the audit and accepted topics up to their end offsets',
  { skip, timeout: 60_000 },
  async () => {
    const { writeReport } = await import('../../lib/report/index.ts');
    const { mkdtemp, readFile, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const kafka = new Kafka({ clientId: 'ops-test', brokers: [BROKER], logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    const tag = randomUUID().slice(0, 8);
    const audit = `ops-report-audit-${tag}`;
    const accepted = `ops-report-accepted-${tag}`;
    const producer = kafka.producer();
    const dir = await mkdtemp(join(tmpdir(), 'mlmf-ops-kafka-'));
    try {
      await admin.createTopics({
        topics: [{ topic: audit, numPartitions: 2 }, { topic: accepted }],
        waitForLeaders: true,
      });
      await producer.connect();
      const below = {
        code: 'below_threshold',
        message: 'itm < 66',
        detail: { metric: 'itm', score: 5, threshold: 66 },
      };
      await producer.send({
        topic: audit,
        messages: Array.from({ length: 30 }, (_, i) => ({ key: `r${i}`, value: event(`r${i}`, 'reject', 5, [below]) })),
      });
      await producer.send({
        topic: accepted,
        messages: Array.from({ length: 10 }, (_, i) => ({ key: `a${i}`, value: event(`a${i}`, 'accept', 95) })),
      });
      // An audit topic that logs accepts too (MLMF audit decisions incl. 'accept'): the accepted topic counts them.
      await producer.send({ topic: audit, messages: [{ key: 'a0', value: event('a0', 'accept', 95) }] });
      const out = join(dir, 'r.html');
      const data = await writeReport({
        input: {
          kind: 'kafka',
          connection: { brokers: [BROKER], logger: silentLogger },
          topic: audit,
          acceptedTopic: accepted,
        },
        out,
      });
      assert.equal(data.totals.rejected, 30);
      assert.equal(data.totals.accepted, 10);
      assert.equal(data.acceptRate, 0.25);
      assert.deepEqual(data.histograms.itm.rejected, [30, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      assert.deepEqual(data.histograms.itm.accepted, [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
      assert.equal(data.timeline.axis, 'time');
      assert.deepEqual(data.notes, []);
      assert.match(await readFile(out, 'utf8'), /data-kpi="accept-rate">25\.0%/);
    } finally {
      await producer.disconnect().catch(() => undefined);
      await admin.deleteTopics({ topics: [audit, accepted] }).catch(() => undefined);
      await admin.disconnect();
      await rm(dir, { recursive: true, force: true });
    }
  },
);
