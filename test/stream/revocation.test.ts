/**
 * The producer hub hears of a revocation through the batch ledger's event (the topic sinks subscribed to it pass it
 * on): a transactional commit of the partition that is under way -- here held at its membership check, where a
 * member frozen past its session timeout waits -- commits nothing, and the staged audit event never appears.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Admin, Kafka } from 'kafkajs';
import { KafkaProducerHub } from '../../lib/kafka/producer-hub.ts';
import { BatchLedger } from '../../lib/pipeline/ledger.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import { RunFailure } from '../../lib/pipeline/run-failure.ts';
import { SinkWriter } from '../../lib/pipeline/sink-writer.ts';
import { KafkaAuditSink } from '../../lib/sinks/kafka-audit.ts';
import type { Committer, SourceBatch } from '../../lib/types.ts';
import { createTopics, needServices, readTopicToEnd, uniq, useServiceClients } from './helpers.ts';

const skip = await needServices('kafka');

describe('revocation reaches the producer hub through the ledger', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  useServiceClients((c) => ({ kafka, admin } = c));

  it('a commit waiting when the batch is revoked ends as revoked and publishes nothing', async () => {
    const t = uniq('revoke');
    const groupId = `${t}-g`;
    await createTopics(admin, [{ topic: t }, { topic: `${t}-audit` }]);
    const hub = await KafkaProducerHub.open({ kafka, transactions: { groupId, idPrefix: t } });
    const audit = new KafkaAuditSink({ hub, topic: `${t}-audit`, model: { name: 'm', revision: 'r' } });
    const failure = new RunFailure();
    const ledger = new BatchLedger({
      writer: new SinkWriter({ sinks: [audit], retryBaseMs: 5, retryMaxMs: 20, logger: silentLogger }),
      maxPendingRecords: 10,
      dedupe: false,
      hard: new AbortController().signal,
      failure,
      logger: silentLogger,
      onCommitted: () => {},
    });
    // What runPipeline does for every sink with a revoked hook.
    ledger.onRevoked((partitions) => audit.revoked(partitions));

    let reached!: () => void;
    const atMembership = new Promise<void>((r) => (reached = r));
    let letGo!: () => void;
    const gate = new Promise<void>((r) => (letGo = r));
    const results: string[] = [];
    const committer: Committer = {
      kind: 'kafka-transaction',
      commit: async () => {
        const result = await hub.commit(t, 0, '1', async () => {
          reached();
          await gate;
        });
        results.push(result);
      },
      release: async () => {},
    };
    const revoke = new AbortController();
    const batch: SourceBatch = {
      records: [0, 1].map((offset) => ({
        raw: '{}',
        origin: { kind: 'kafka', topic: t, partition: 0, offset: `${offset}` },
      })),
      committer,
      revoked: revoke.signal,
    };
    const entry = await ledger.admit(batch);
    batch.records.forEach((record, i) =>
      entry.settle(i, {
        record,
        id: `${t}-${i}`,
        decision: 'reject',
        reasons: [{ code: 'below_threshold', message: 'itm 1 fails itm>=66' }],
        scores: { itm: 1 },
      }),
    );
    await atMembership;
    assert.equal(hub.stagedCount, 2, 'the audit events are staged for the commit');
    revoke.abort();
    assert.equal(hub.stagedCount, 0, 'dropped in the same turn as the revocation');
    letGo();
    await ledger.drain();
    assert.deepEqual(results, ['revoked']);
    assert.equal(ledger.counts.committed, 0);
    assert.equal(failure.failed, false);
    assert.deepEqual(await readTopicToEnd(kafka, `${t}-audit`), [], 'nothing of the revoked batch on the topic');
    const [offsets] = await admin.fetchOffsets({ groupId, topics: [t] });
    assert.equal(offsets!.partitions[0]!.offset, '-1', 'no offset committed');
    await hub.close();
  });
});
