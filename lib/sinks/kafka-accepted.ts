import type { ModelInfo, Outcome, PartitionRef, Sink, SinkDurability } from '../types.ts';
import { encodeAcceptedEvent, type AcceptedEvent } from '../formats/accepted-event.ts';
import { fullScores } from '../formats/audit-event.ts';
import type { KafkaProducerHub, TopicMessage } from '../kafka/producer-hub.ts';
import type { S3CuratedSink } from './s3-curated.ts';

export interface KafkaAcceptedSinkOptions {
  readonly hub: KafkaProducerHub;
  readonly topic: string;
  readonly model: ModelInfo;
  /** The curated sink whose shard placement each message reports. */
  readonly curated: S3CuratedSink;
}

/**
 * The optional accepted topic: one message per accepted pair, keyed by id, with its curated location (bucket, shard
 * key, sample key). A message is produced once the shard holding the sample is durable, so a consumer that reads it
 * can fetch the shard.
 */
export class KafkaAcceptedSink implements Sink {
  readonly name = 'kafka-accepted';
  constructor(private readonly options: KafkaAcceptedSinkOptions) {}

  /** Transactional hub: staged until the batch's offsets commit with it. */
  get durability(): SinkDurability {
    return this.options.hub.transactional ? 'staged' : 'durable';
  }

  async write(outcomes: readonly Outcome[]): Promise<void> {
    const accepted = outcomes.filter((o) => o.decision === 'accept');
    if (accepted.length === 0) return;
    const { hub, topic, curated, model } = this.options;
    const locations = await Promise.all(accepted.map((o) => curated.location(o)));
    const messages: TopicMessage[] = accepted.map((o, i) => {
      const event: AcceptedEvent = {
        v: 1,
        id: o.id,
        scores: fullScores(o.scores),
        caption: o.pair?.caption ?? null,
        url: o.pair?.url ?? null,
        model,
        location: locations[i] ?? null,
        ts: new Date().toISOString(),
      };
      return { topic, key: o.id, value: encodeAcceptedEvent(event) };
    });
    if (hub.transactional) {
      for (let i = 0; i < accepted.length; i++)
        await hub.publish(this.name, accepted[i]!.record.origin, [messages[i]!]);
    } else {
      await hub.publish(this.name, accepted[0]!.record.origin, messages);
    }
  }

  /** What this sink staged for revoked partitions goes with the rest of the hub's staging for them. */
  revoked(partitions: readonly PartitionRef[]): void {
    this.options.hub.revoked(partitions);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
