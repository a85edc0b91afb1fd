/**
 * Topic sinks against the local Kafka: an audit event over the size limit goes to the dead-letter topic instead of
 * blocking its partition; transactional staging commits only the acked offsets' messages, and a revoked partition's
 * staged messages never appear (read_committed).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Admin, Kafka } from 'kafkajs';
import { DeadLetterSink } from '../../lib/sinks/dead-letter.ts';
import { KafkaAuditSink } from '../../lib/sinks/kafka-audit.ts';
import { KafkaProducerHub } from '../../lib/kafka/producer-hub.ts';
import type { Outcome } from '../../lib/types.ts';
import { createTopics, needServices, readTopic, readTopicToEnd, uniq, useServiceClients } from './helpers.ts';

const skip = await needServices('kafka');
const model = { name: 'm', revision: 'r' };

const reject = (topic: string, offset: number, caption: string): Outcome => ({
  record: { raw: JSON.stringify({ caption }), origin: { kind: 'kafka', topic, partition: 0, offset: String(offset) } },
  id: `${topic}-${offset}`,
  pair: { id: `${topic}-${offset}`, caption, image: { kind: 'url', url: 'http://x.test/a.jpg' }, metadata: {} },
  decision: 'reject',
  reasons: [{ code: 'below_threshold', message: 'itm 1 fails itm>=66' }],
  scores: { itm: 1 },
});

describe('Kafka topic sinks', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  useServiceClients((c) => ({ kafka, admin } = c));

  it('an audit event over the size limit goes to the audit topic trimmed (saying so) and whole-ish to the DLQ', async () => {
    const t = uniq('big');
    await createTopics(admin, [{ topic: `${t}-audit` }, { topic: `${t}-dlq` }]);
    const hub = await KafkaProducerHub.open({ kafka, maxMessageBytes: 4000 });
    const dlq = new DeadLetterSink({ target: { kind: 'kafka', hub, topic: `${t}-dlq` }, maxRawBytes: 1000 });
    const audit = new KafkaAuditSink({ hub, topic: `${t}-audit`, model, deadLetter: dlq });
    await audit.write([reject(t, 0, 'short'), reject(t, 1, 'x'.repeat(5000)), reject(t, 2, 'short too')]);
    const events = await readTopic(kafka, `${t}-audit`, (m) => m.length >= 3, 10_000);
    assert.deepEqual(events.map((e) => e.key).sort(), [`${t}-0`, `${t}-1`, `${t}-2`]);
    const big = events.find((e) => e.key === `${t}-1`)!;
    assert.deepEqual(big.value.trimmed, { caption_chars: 5000 });
    assert.match(String(big.value.caption), /^x+$/);
    assert.ok(events.every((e) => e.key === `${t}-1` || e.value.trimmed === undefined));
    const letters = await readTopicToEnd(kafka, `${t}-dlq`);
    assert.equal(letters.length, 1, 'one dead letter, for the oversized event only');
    assert.equal(letters[0]!.value.code, 'audit_event_too_large');
    assert.equal(letters[0]!.value.raw_truncated, true);
    assert.equal(letters[0]!.value.raw_bytes, JSON.stringify({ caption: 'x'.repeat(5000) }).length);
    await hub.close();
  });

  it('transactions: commit publishes only the acked offsets; a revoked partition publishes nothing', async () => {
    const t = uniq('txn');
    const group = `${t}-g`;
    await createTopics(admin, [{ topic: t }, { topic: `${t}-audit` }]);
    const hub = await KafkaProducerHub.open({ kafka, transactions: { groupId: group, idPrefix: t } });
    const audit = new KafkaAuditSink({ hub, topic: `${t}-audit`, model });
    await audit.write([reject(t, 0, 'a'), reject(t, 1, 'b'), reject(t, 2, 'c')]);
    await audit.write([reject(t, 1, 'b')]); // a retried write stages once, not twice
    assert.equal(hub.stagedCount, 3);
    await hub.commit(t, 0, '1');
    assert.equal(hub.stagedCount, 1);
    hub.discard(t, 0);
    assert.equal(hub.stagedCount, 0);
    // To the topic's end: the discarded offset's event must not be there at all, not merely late.
    const events = await readTopicToEnd(kafka, `${t}-audit`);
    assert.deepEqual(events.map((e) => e.key).sort(), [`${t}-0`, `${t}-1`]);
    const offsets = await admin.fetchOffsets({ groupId: group, topics: [t] });
    assert.equal(offsets[0]!.partitions[0]!.offset, '2', 'offsets committed in the same transaction');
    await hub.close();
  });
});
