import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Admin, Consumer } from 'kafkajs';
import { createKafka, type KafkaConnectionOptions } from '../kafka/client.ts';
import { FilterError } from '../types.ts';
import type { EventKind } from './aggregate.ts';

/** One message as the tail hands it over. */
export interface TailMessage {
  readonly kind: EventKind;
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  /** Kafka message timestamp, ms. */
  readonly timestamp: number;
}

/** Options of {@link tailTopics}. */
export interface TailOptions {
  readonly connection: KafkaConnectionOptions;
  readonly topics: readonly { readonly topic: string; readonly kind: EventKind }[];
  /** Where to start: `latest` (new messages only, the default), `earliest`, or a time in ms since the epoch. */
  readonly from?: 'latest' | 'earliest' | number;
  /**
   * Stop once every partition has delivered the messages it held when the tail started (the report reads a topic
   * this way). Partitions whose last offsets never arrive (transaction markers) end after `idleMs` without messages.
   */
  readonly untilEnd?: boolean;
  /** With `untilEnd`: give up waiting for a quiet partition after this long without messages, ms. Default 10000. */
  readonly idleMs?: number;
  readonly signal?: AbortSignal;
  onMessage(message: TailMessage): void;
}

export interface TailResult {
  /** The throwaway consumer group used (deleted again at the end). */
  readonly groupId: string;
  readonly messages: number;
  /** With `untilEnd`: true when every partition reached its end offset (false when the idle timeout ended it). */
  readonly complete: boolean;
}

/** Start and end offsets per partition, as `topic/partition` -> offsets. */
async function positions(admin: Admin, topic: string, from: TailOptions['from']) {
  let offsets: { partition: number; offset: string; high: string; low: string }[];
  try {
    offsets = await admin.fetchTopicOffsets(topic);
  } catch (err) {
    throw new FilterError('kafka_topic_unavailable', `cannot read topic ${topic}: ${(err as Error).message}`, {
      topic,
    });
  }
  const byTime = typeof from === 'number' ? await admin.fetchTopicOffsetsByTimestamp(topic, from) : [];
  return offsets.map((p) => {
    let start = from === 'earliest' ? p.low : p.high;
    if (typeof from === 'number') {
      const hit = byTime.find((t) => t.partition === p.partition)?.offset;
      // -1: no message at or after that time, start at the end.
      start = hit === undefined || hit === '-1' ? p.high : hit;
      if (BigInt(start) < BigInt(p.low)) start = p.low;
    }
    return { partition: p.partition, start, end: p.high };
  });
}

/**
 * Reads topics without touching any other consumer group: a fresh group id per run, explicit seeks, no offset
 * commits, and the group deleted at the end. The worker's group, its offsets and its partition assignment are never
 * involved (Kafka consumer groups are independent of each other).
 */
export async function tailTopics(options: TailOptions): Promise<TailResult> {
  const kafka = await createKafka({ clientId: 'mlm-filter-monitor', ...options.connection });
  const groupId = `mlm-filter-monitor-${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  const admin = kafka.admin();
  let consumer: Consumer | undefined;
  let messages = 0;
  try {
    try {
      await admin.connect();
    } catch (err) {
      throw new FilterError(
        'kafka_unavailable',
        `cannot reach Kafka at ${options.connection.brokers.join(',')}: ${(err as Error).message}`,
        {
          brokers: options.connection.brokers,
        },
      );
    }
    const plan = new Map<string, { kind: EventKind; partitions: Awaited<ReturnType<typeof positions>> }>();
    for (const { topic, kind } of options.topics)
      plan.set(topic, { kind, partitions: await positions(admin, topic, options.from) });

    const pending = new Set<string>();
    const ends = new Map<string, bigint>();
    for (const [topic, { partitions }] of plan) {
      for (const p of partitions) {
        ends.set(`${topic}/${p.partition}`, BigInt(p.end));
        if (BigInt(p.start) < BigInt(p.end)) pending.add(`${topic}/${p.partition}`);
      }
    }
    if (options.untilEnd && pending.size === 0) return { groupId, messages: 0, complete: true };

    consumer = kafka.consumer({
      groupId,
      allowAutoTopicCreation: false,
      sessionTimeout: 30_000,
      heartbeatInterval: 3000,
    });
    await consumer.connect();
    for (const topic of plan.keys()) await consumer.subscribe({ topic, fromBeginning: false });

    let finish!: (complete: boolean) => void;
    const finished = new Promise<boolean>((resolve) => (finish = resolve));
    let lastMessageAt = Date.now();
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ topic, partition, message }) => {
        const entry = plan.get(topic);
        if (!entry) return;
        messages++;
        lastMessageAt = Date.now();
        options.onMessage({
          kind: entry.kind,
          topic,
          partition,
          offset: message.offset,
          key: message.key,
          value: message.value,
          timestamp: Number(message.timestamp),
        });
        if (options.untilEnd) {
          const id = `${topic}/${partition}`;
          if (BigInt(message.offset) + 1n >= ends.get(id)!) pending.delete(id);
          if (pending.size === 0) finish(true);
        }
      },
    });
    for (const [topic, { partitions }] of plan) {
      for (const p of partitions) consumer.seek({ topic, partition: p.partition, offset: p.start });
    }

    const onAbort = () => finish(false);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) finish(false);
    const idleMs = options.idleMs ?? 10_000;
    const idle = options.untilEnd
      ? setInterval(
          () => {
            if (Date.now() - lastMessageAt > idleMs) finish(false);
          },
          Math.min(1000, idleMs),
        )
      : undefined;
    const complete = await finished;
    clearInterval(idle);
    options.signal?.removeEventListener('abort', onAbort);
    return { groupId, messages, complete: options.untilEnd ? complete : false };
  } finally {
    await consumer?.disconnect().catch(() => undefined);
    // Best effort: an empty group without offsets would expire anyway; deleting keeps the group list clean.
    if (consumer) await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}
