import type { Decision, ModelInfo, Outcome, PartitionRef, Sink, SinkDurability } from '../types.ts';
import { FilterError } from '../types.ts';
import { encodeAuditEvent, toAuditEvent, type AuditEvent } from '../formats/audit-event.ts';
import type { DeadLetterSink } from './dead-letter.ts';
import { KafkaProducerHub, type TopicMessage } from '../kafka/producer-hub.ts';

/** Options of the audit topic sink. */
export interface KafkaAuditSinkOptions {
  readonly hub: KafkaProducerHub;
  readonly topic: string;
  readonly model: ModelInfo;
  /** Decisions written. Default: rejects only (DESIGN.md); add 'accept' for a full decision log. */
  readonly decisions?: readonly Decision[];
  /** Where a bounded copy of an event the topic cannot take whole goes (besides its trimmed event). */
  readonly deadLetter?: DeadLetterSink;
  /**
   * The audit topic's own limit (`max.message.bytes`, see topicMaxMessageBytes); the producer's limit applies too.
   * @default the hub's maxMessageBytes
   */
  readonly topicMaxMessageBytes?: number;
}

/** Room left for the record batch's own framing and headers under the topic's `max.message.bytes`. */
const BATCH_OVERHEAD = 512;

/**
 * Audit events (DESIGN.md's fixed shape, toAuditEvent) on a Kafka topic, keyed by pair id so compaction and
 * consumers can join on it. Through the hub: transactional with the source offsets, or idempotent acks=all.
 */
export class KafkaAuditSink implements Sink {
  readonly name = 'kafka-audit';
  constructor(private readonly options: KafkaAuditSinkOptions) {}

  /** Transactional hub: staged until the batch's offsets commit with it. */
  get durability(): SinkDurability {
    return this.options.hub.transactional ? 'staged' : 'durable';
  }

  async write(outcomes: readonly Outcome[]): Promise<void> {
    const wanted = this.options.decisions ?? ['reject'];
    const { hub } = this.options;
    const direct: TopicMessage[] = [];
    for (const o of outcomes) {
      if (!wanted.includes(o.decision)) continue;
      const event = toAuditEvent(o, this.options.model);
      let message = this.message(o, event);
      if (KafkaProducerHub.size(message) > this.limit) {
        // Over the topic's limit: the audit topic still gets the event, trimmed and saying so (a partition must not
        // stall on one long caption); the DLQ, when there is one, keeps a bounded copy of the whole outcome.
        message = this.message(o, this.trimmed(event, o.id));
        if (this.options.deadLetter) {
          await this.options.deadLetter.send(o, 'audit_event_too_large', `audit event over ${this.limit} bytes`);
        }
      }
      if (hub.transactional) await hub.publish(this.name, o.record.origin, [message]);
      else direct.push(message);
    }
    if (direct.length > 0) await hub.publish(this.name, outcomes[0]!.record.origin, direct);
  }

  /** The smaller of the producer's and the topic's limits. */
  private get limit(): number {
    const topic = this.options.topicMaxMessageBytes;
    const hub = this.options.hub.maxMessageBytes;
    return topic === undefined ? hub : Math.min(hub, Math.max(1024, topic - BATCH_OVERHEAD));
  }

  private message(o: Outcome, event: AuditEvent): TopicMessage {
    return { topic: this.options.topic, key: o.id, value: encodeAuditEvent(event), headers: { decision: o.decision } };
  }

  /** The event with its caption, then its url, shortened to fit, and `trimmed` naming what was cut and how long it was. */
  private trimmed(event: AuditEvent, id: string): AuditEvent {
    const fits = (e: AuditEvent) =>
      KafkaProducerHub.size({ topic: this.options.topic, key: id, value: encodeAuditEvent(e) }) <= this.limit - 64;
    const trimmed: Record<string, number> = {};
    let out: AuditEvent = { ...event };
    for (const field of ['caption', 'url'] as const) {
      const text = out[field];
      if (fits({ ...out, trimmed }) || !text) continue;
      trimmed[`${field}_chars`] = text.length;
      const chars = [...text];
      let lo = 0;
      let hi = chars.length;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (fits({ ...out, [field]: chars.slice(0, mid).join(''), trimmed })) lo = mid;
        else hi = mid - 1;
      }
      out = { ...out, [field]: chars.slice(0, lo).join('') };
    }
    out = { ...out, trimmed };
    if (!fits(out)) {
      throw new FilterError(
        'message_too_large',
        `audit event for ${id} does not fit ${this.limit} bytes even trimmed`,
        {
          id,
          topic: this.options.topic,
        },
      );
    }
    return out;
  }

  /** What this sink staged for revoked partitions goes with the rest of the hub's staging for them. */
  revoked(partitions: readonly PartitionRef[]): void {
    this.options.hub.revoked(partitions);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
