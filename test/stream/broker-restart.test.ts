/**
 * A Kafka broker restart must not end the worker (issue 12), against a private single-node broker that the tests stop
 * and start (private-broker.ts; the shared broker on 9092 stays up for the other suites):
 *  - the producer hub's transactional commit retries through the outage and lands exactly once when the broker is
 *    back; a commit whose outage outlasts its budget fails with kafka_commit_failed; a commit whose partition is
 *    discarded before it runs commits nothing;
 *  - the short form of broker-restart.slow.test.ts: the real worker rides out a clean restart of its broker.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import kafkajs, { type Admin, type Kafka } from 'kafkajs';
import { isPermanentKafkaError, OutageClock } from '../../lib/kafka/client.ts';
import { KafkaProducerHub, type TopicMessage } from '../../lib/kafka/producer-hub.ts';
import { FilterError } from '../../lib/types.ts';
import { assertRodeOutOutage, runOutageScenario, runShutdownScenario } from './broker-outage.ts';
import { needServices, readTopicToEnd, uniq } from './helpers.ts';
import { PrivateKafkaBroker, privateBrokerUnavailable } from './private-broker.ts';
import { Logger } from '../../lib/support/logger.ts';

const skip = privateBrokerUnavailable() || (await needServices('s3'));

// kafkajs's CommonJS exports do not name its error classes for ESM importers.
const {
  KafkaJSConnectionError,
  KafkaJSGroupCoordinatorNotFound,
  KafkaJSNumberOfRetriesExceeded,
  KafkaJSProtocolError,
} = kafkajs as unknown as Record<string, new (e: unknown, meta?: unknown) => Error>;
const protocolError = (type: string) => new KafkaJSProtocolError!({ message: type, type, code: 0, retriable: false });

describe('what a Kafka outage is', () => {
  it('fencing, permissions and oversized messages are permanent; a lost broker is not, however kafkajs words it', () => {
    for (const type of [
      'PRODUCER_FENCED',
      'INVALID_PRODUCER_EPOCH',
      'GROUP_AUTHORIZATION_FAILED',
      'MESSAGE_TOO_LARGE',
    ]) {
      assert.equal(isPermanentKafkaError(protocolError(type)), true, type);
    }
    const refused = new KafkaJSConnectionError!('connect ECONNREFUSED 127.0.0.1:19092');
    assert.equal(isPermanentKafkaError(refused), false);
    assert.equal(isPermanentKafkaError(new KafkaJSNumberOfRetriesExceeded!(refused, { retryCount: 8 })), false);
    assert.equal(
      isPermanentKafkaError(new KafkaJSGroupCoordinatorNotFound!('Failed to find group coordinator')),
      false,
    );
    assert.equal(isPermanentKafkaError(protocolError('COORDINATOR_LOAD_IN_PROGRESS')), false);
    // Wrapped, as kafkajs's retrier and our own errors wrap them.
    const fenced = new KafkaJSNumberOfRetriesExceeded!(protocolError('PRODUCER_FENCED'), { retryCount: 1 });
    assert.equal(isPermanentKafkaError(new FilterError('kafka_commit_failed', 'x', {}, { cause: fenced })), true);
  });

  it('the outage clock allows retries until the budget is spent, never for a permanent error', () => {
    const refused = new KafkaJSConnectionError!('connect ECONNREFUSED 127.0.0.1:19092');
    const clock = new OutageClock(60_000);
    assert.equal(clock.failed(refused), true);
    assert.equal(clock.failed(protocolError('PRODUCER_FENCED')), false);
    for (let i = 0; i < 10; i++) clock.failed(refused);
    assert.ok(clock.backoffMs() <= 6000 && clock.backoffMs() >= 4000, 'the backoff grows to its 5 s cap (+-20%)');
    clock.recovered();
    assert.ok(clock.backoffMs() <= 120, 'and starts over after a recovery');
    assert.equal(new OutageClock(0).failed(refused), false, 'an outage past the budget');
  });
});

/** Stages one audit message per offset for the source partition `topic`[0], as the audit sink does. */
async function stage(hub: KafkaProducerHub, topic: string, audit: string, offsets: number[]): Promise<void> {
  for (const offset of offsets) {
    const message: TopicMessage = { topic: audit, key: `${topic}-${offset}`, value: JSON.stringify({ offset }) };
    await hub.publish('audit', { kind: 'kafka', topic, partition: 0, offset: String(offset) }, [message]);
  }
}

async function committed(admin: Admin, groupId: string, topic: string): Promise<string | undefined> {
  const res = await admin.fetchOffsets({ groupId, topics: [topic] });
  return res[0]?.partitions.find((p) => p.partition === 0)?.offset;
}

describe('Kafka broker restart', { skip }, () => {
  let broker: PrivateKafkaBroker | undefined;
  let kafka: Kafka;
  before(async () => {
    broker = await PrivateKafkaBroker.start();
    kafka = broker.client();
  });
  after(() => broker?.destroy());

  async function topics(): Promise<{ t: string; audit: string }> {
    const t = uniq('hub');
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({
      waitForLeaders: true,
      topics: [t, `${t}-audit`].map((topic) => ({ topic, numPartitions: 1, replicationFactor: 1 })),
    });
    await admin.disconnect();
    return { t, audit: `${t}-audit` };
  }

  it('a commit retries through the outage and lands once; one whose budget runs out fails', async () => {
    const { t, audit } = await topics();
    const warnings: string[] = [];
    const logger = new Logger(({ level, msg }) => (level === 'warn' ? warnings.push(msg) : undefined));
    const hub = await KafkaProducerHub.open({
      kafka,
      transactions: { groupId: `${t}-g`, idPrefix: t },
      commitRetryBudgetMs: 90_000,
      logger,
    });
    const brief = await KafkaProducerHub.open({
      kafka,
      transactions: { groupId: `${t}-g2`, idPrefix: t },
      commitRetryBudgetMs: 1500,
    });
    try {
      await stage(hub, t, audit, [0, 1, 2]);
      assert.equal(await hub.commit(t, 0, '0'), 'committed', 'a first transaction before the outage');
      await stage(brief, t, audit, [7]);
      await broker!.stop('SIGKILL');
      let landed = false;
      const riding = hub.commit(t, 0, '2').then((r) => (landed = r === 'committed'));
      riding.catch(() => undefined);
      await assert.rejects(
        brief.commit(t, 0, '7'),
        (e: unknown) =>
          e instanceof FilterError && e.code === 'kafka_commit_failed' && /1500 ms retry budget/.test(e.message),
      );
      assert.equal(landed, false, 'no commit while the broker is down');
      await broker!.resume();
      await riding;
      assert.equal(landed, true);
      assert.ok(warnings.includes('Kafka transaction failed; retrying'), 'the retries are logged');
      assert.equal(hub.stagedCount, 0);
      const events = await readTopicToEnd(kafka, audit);
      assert.deepEqual(
        events.map((e) => e.key),
        [`${t}-0`, `${t}-1`, `${t}-2`],
        'each staged event once, in order; nothing from the failed commit',
      );
      const admin = kafka.admin();
      await admin.connect();
      assert.equal(await committed(admin, `${t}-g`, t), '3', 'the offsets committed with them');
      assert.notEqual(await committed(admin, `${t}-g2`, t), '8', 'the failed commit committed nothing');
      await admin.disconnect();
    } finally {
      await broker!.resume(); // whatever failed, the next tests get their broker back
      await hub.close().catch(() => undefined);
      await brief.close().catch(() => undefined);
    }
  });

  it('commits requested before their partition is discarded commit nothing; the replay does', async () => {
    const { t, audit } = await topics();
    const hub = await KafkaProducerHub.open({ kafka, transactions: { groupId: `${t}-g`, idPrefix: t } });
    const admin = kafka.admin();
    await admin.connect();
    try {
      await stage(hub, t, audit, [0, 1]);
      const first = hub.commit(t, 0, '0');
      const second = hub.commit(t, 0, '1');
      // Revoked while both wait their turn: their records come again, so neither may commit.
      hub.discard(t, 0);
      assert.equal(await first, 'revoked');
      assert.equal(await second, 'revoked');
      assert.deepEqual(await readTopicToEnd(kafka, audit), []);
      assert.equal(await committed(admin, `${t}-g`, t), '-1', 'no offset committed');
      // The replay stages the same offsets again and commits them, once.
      await stage(hub, t, audit, [0, 1]);
      assert.equal(await hub.commit(t, 0, '1'), 'committed');
      const events = await readTopicToEnd(kafka, audit);
      assert.deepEqual(
        events.map((e) => e.key),
        [`${t}-0`, `${t}-1`],
      );
      assert.equal(await committed(admin, `${t}-g`, t), '2');
    } finally {
      await admin.disconnect();
      await hub.close();
    }
  });

  it('the worker rides out a clean broker restart: exactly once, offsets to the end (short form)', async () => {
    const scenario = { signal: 'SIGTERM', outageMs: 2000, before: 300, after: 60 } as const;
    const run = await runOutageScenario(broker!, scenario);
    assertRodeOutOutage(run, scenario.before);
  });

  it('mlm-filter worker exits on SIGTERM after a broker restart; a second SIGTERM exits at once', async () => {
    const run = await runShutdownScenario(broker!, 60_000);
    const tail = run.lines.slice(-10).join('\n');
    assert.deepEqual(run.drained, { code: 0, signal: null }, `one SIGTERM: drained, exit 0\n${tail}`);
    assert.deepEqual(run.twice, { code: 130, signal: null }, `two: stopped at once, exit 130 (interrupted)\n${tail}`);
  });
});
