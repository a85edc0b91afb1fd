import type { Decision, ModelInfo, Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';
import { toAuditEvent } from './audit-event.ts';
import type { DeadLetterSink } from './dead-letter.ts';
import { KafkaProducerHub, type TopicMessage } from './kafka-transaction.ts';

/** Options of the audit topic sink. */
export interface KafkaAuditSinkOptions {
  readonly hub: KafkaProducerHub;
  readonly topic: string;
  readonly model: ModelInfo;
  /** Decisions written. Default: rejects only (DESIGN.md); add 'accept' for a full decision log. */
  readonly decisions?: readonly Decision[];
  /** Where an event the topic cannot take (over the size limit) goes instead of blocking its partition. */
  readonly deadLetter?: DeadLetterSink;
}

/**
 * Audit events (DESIGN.md's fixed shape, toAuditEvent) on a Kafka topic, keyed by pair id so compaction and
 * consumers can join on it. Through the hub: transactional with the source offsets, or idempotent acks=all.
 */
export class KafkaAuditSink implements Sink {
  readonly name = 'kafka-audit';
  constructor(private readonly options: KafkaAuditSinkOptions) {}

  async write(outcomes: readonly Outcome[]): Promise<void> {
    const wanted = this.options.decisions ?? ['reject'];
    const { hub, topic } = this.options;
    const direct: TopicMessage[] = [];
    for (const o of outcomes) {
      if (!wanted.includes(o.decision)) continue;
      const message: TopicMessage = {
        topic,
        key: o.id,
        value: JSON.stringify(toAuditEvent(o, this.options.model)),
        headers: { decision: o.decision },
      };
      if (KafkaProducerHub.size(message) > hub.maxMessageBytes) {
        // A caption or metadata this large cannot go to the topic; the DLQ keeps a bounded copy and the reason.
        if (!this.options.deadLetter) {
          throw new FilterError('message_too_large', `audit event for ${o.id} is too large and no DLQ is set`, {
            id: o.id,
            topic,
          });
        }
        await this.options.deadLetter.send(o, 'audit_event_too_large', `audit event over ${hub.maxMessageBytes} bytes`);
        continue;
      }
      if (hub.transactional) await hub.publish(this.name, o.record.origin, [message]);
      else direct.push(message);
    }
    if (direct.length > 0) await hub.publish(this.name, outcomes[0]!.record.origin, direct);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
