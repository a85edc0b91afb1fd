/**
 * The producer hub's fencing on the real broker: each input partition's transactional id
 * (`<prefix>-<group>-<topic>-<partition>`) is taken over by the partition's next owner before it reads the committed
 * offset, so the previous owner's open transaction is settled first (the offset read is stable) and anything it
 * commits afterwards fails. The old owner is played by a raw kafkajs producer under the same id (a zombie worker's
 * hub does exactly that) or by a second hub.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Admin, Kafka, Producer } from 'kafkajs';
import { kafkaErrorType } from '../../lib/kafka/client.ts';
import { KafkaProducerHub, type TopicMessage } from '../../lib/kafka/producer-hub.ts';
import { createTopics, needServices, readTopicToEnd, uniq, useServiceClients } from './helpers.ts';

const skip = await needServices('kafka');

async function committed(admin: Admin, groupId: string, topic: string): Promise<string | undefined> {
  const res = await admin.fetchOffsets({ groupId, topics: [topic] });
  return res[0]?.partitions.find((p) => p.partition === 0)?.offset;
}

/** Stages one audit message per offset of `topic`[0], as the audit sink does. */
async function stage(hub: KafkaProducerHub, topic: string, audit: string, offsets: number[]): Promise<void> {
  for (const offset of offsets) {
    const message: TopicMessage = { topic: audit, key: `${topic}-${offset}`, value: JSON.stringify({ offset }) };
    await hub.publish('audit', { kind: 'kafka', topic, partition: 0, offset: String(offset) }, [message]);
  }
}

/** An old owner with a transaction open: its event sent and its offset added, the commit not yet sent. */
async function pendingTransaction(
  kafka: Kafka,
  transactionalId: string,
  opts: { groupId: string; topic: string; audit: string; offset: number },
) {
  const producer: Producer = kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const txn = await producer.transaction();
  await txn.send({ topic: opts.audit, messages: [{ key: `zombie-${opts.offset}`, value: '{}' }] });
  await txn.sendOffsets({
    consumerGroupId: opts.groupId,
    topics: [{ topic: opts.topic, partitions: [{ partition: 0, offset: String(opts.offset + 1) }] }],
  });
  return { producer, txn };
}

const FENCED = ['PRODUCER_FENCED', 'INVALID_PRODUCER_EPOCH'];

describe('partition fencing', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  useServiceClients((c) => ({ kafka, admin } = c));

  async function setup() {
    const t = uniq('fence');
    const audit = `${t}-audit`;
    const groupId = `${t}-g`;
    await createTopics(admin, [{ topic: t }, { topic: audit }]);
    const hub = await KafkaProducerHub.open({ kafka, transactions: { groupId, idPrefix: 'test' } });
    return { t, audit, groupId, hub };
  }

  it('the transactional id is per input partition and names the group', async () => {
    const { t, hub } = await setup();
    assert.equal(hub.transactionalId(t, 3), `test-${t}-g-${t}-3`);
    await hub.close();
  });

  it("the new owner's fence aborts the old owner's open transaction; its commit then fails, nothing of it lands", async () => {
    const { t, audit, groupId, hub } = await setup();
    const zombie = await pendingTransaction(kafka, hub.transactionalId(t, 0), { groupId, topic: t, audit, offset: 5 });
    try {
      assert.equal(await hub.fence(t, 0), -1n, 'the offset read after the fence: none, the pending one was aborted');
      await assert.rejects(zombie.txn.commit(), (e: unknown) => FENCED.includes(kafkaErrorType(e) ?? ''));
      assert.equal(await committed(admin, groupId, t), '-1', 'the old owner committed no offset');
      assert.deepEqual(await readTopicToEnd(kafka, audit), [], 'and published nothing (read_committed)');
      await stage(hub, t, audit, [0, 1, 2, 3, 4, 5]);
      assert.equal(await hub.commit(t, 0, '5'), 'committed');
      assert.equal((await readTopicToEnd(kafka, audit)).length, 6);
      assert.equal(await committed(admin, groupId, t), '6');
    } finally {
      await zombie.producer.disconnect();
      await hub.close();
    }
  });

  it('a commit racing the fence either lands before the offset is read, or not at all', async () => {
    const { t, audit, groupId, hub } = await setup();
    const outcomes: string[] = [];
    try {
      let expected = -1n;
      for (let i = 0; i < 8; i++) {
        const zombie = await pendingTransaction(kafka, hub.transactionalId(t, 0), {
          groupId,
          topic: t,
          audit,
          offset: i,
        });
        // The fence starts first and the commit follows 0-80 ms later: it lands before the InitProducerId or not.
        const fence = hub.fence(t, 0);
        await new Promise((r) => setTimeout(r, (i * 10) % 80));
        const commit = zombie.txn.commit().then(
          () => true,
          (e: unknown) => {
            // An EndTxn that reaches the coordinator while it completes the fence's abort is refused as concurrent
            // (kafkajs's retries can run out first under load): refused all the same, which the checks below prove.
            const refused = [...FENCED, 'CONCURRENT_TRANSACTIONS'];
            assert.ok(refused.includes(kafkaErrorType(e) ?? ''), `a fencing error, not ${String(e)}`);
            return false;
          },
        );
        const [read, landed] = await Promise.all([fence, commit]);
        outcomes.push(landed ? 'landed' : 'fenced');
        if (landed) expected = BigInt(i + 1);
        assert.equal(read, expected, `round ${i}: the offset read after the fence includes the commit iff it landed`);
        await zombie.producer.disconnect();
      }
      const keys = (await readTopicToEnd(kafka, audit)).map((m) => m.key);
      const landedKeys = outcomes.flatMap((o, i) => (o === 'landed' ? [`zombie-${i}`] : []));
      assert.deepEqual(keys, landedKeys, 'exactly the commits that landed are on the topic');
      console.log(`# commit vs fence: ${outcomes.join(' ')}`);
    } finally {
      await hub.close();
    }
  });

  it("an old owner's commit after the take-over commits nothing and ends as revoked once the group moves on", async () => {
    const { t, audit, groupId, hub: owner } = await setup();
    const zombie = await KafkaProducerHub.open({ kafka, transactions: { groupId, idPrefix: 'test' } });
    try {
      assert.equal(await zombie.fence(t, 0), -1n);
      await stage(zombie, t, audit, [0, 1, 2]);
      assert.equal(await owner.fence(t, 0), -1n, 'the new owner takes the id over');
      // The zombie's send fails fenced; before it may take the id back, it asks about its membership -- and the
      // group has moved on (the rejoin revokes the partition).
      let asked = 0;
      const result = await zombie.commit(t, 0, '2', async () => {
        asked++;
        zombie.discard(t, 0);
      });
      assert.equal(result, 'revoked');
      assert.equal(asked, 1);
      await stage(owner, t, audit, [0, 1, 2, 3]);
      assert.equal(await owner.commit(t, 0, '3'), 'committed', "the new owner's commit is not disturbed");
      const keys = (await readTopicToEnd(kafka, audit)).map((m) => m.key);
      assert.deepEqual(
        keys,
        [0, 1, 2, 3].map((o) => `${t}-${o}`),
        'each offset once, from the new owner',
      );
      assert.equal(await committed(admin, groupId, t), '4');
    } finally {
      await zombie.close();
      await owner.close();
    }
  });

  it('a replay of committed offsets publishes nothing and never moves the offset back', async () => {
    const { t, audit, groupId, hub } = await setup();
    const other = await KafkaProducerHub.open({ kafka, transactions: { groupId, idPrefix: 'test' } });
    try {
      await stage(hub, t, audit, [0, 1, 2, 3]);
      assert.equal(await hub.commit(t, 0, '3'), 'committed');
      // Another owner replays 2..5 (it read an older offset, say): 2 and 3 are skipped, 4 and 5 published.
      assert.equal(await other.fence(t, 0), 4n);
      await stage(other, t, audit, [2, 3, 4, 5]);
      assert.equal(await other.commit(t, 0, '5'), 'committed');
      assert.equal(other.skippedReplayed, 2);
      // A replay wholly below the committed offset: nothing sent, the offset stays.
      await stage(other, t, audit, [1]);
      assert.equal(await other.commit(t, 0, '1'), 'committed');
      const keys = (await readTopicToEnd(kafka, audit)).map((m) => m.key);
      assert.deepEqual(
        keys,
        [0, 1, 2, 3, 4, 5].map((o) => `${t}-${o}`),
      );
      assert.equal(await committed(admin, groupId, t), '6');
    } finally {
      await other.close();
      await hub.close();
    }
  });
});
