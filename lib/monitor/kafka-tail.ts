import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Admin, Consumer, EachMessagePayload } from 'kafkajs';
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

/** One partition of a tailed topic: read from `start`; with `untilEnd`, done once `end` (exclusive) is reached. */
interface PartitionSpan {
  readonly topic: string;
  readonly partition: number;
  readonly start: string;
  readonly end: string;
}

/** Every partition of the tailed topics, with where the tail starts and ends in it. */
async function planTail(admin: Admin, options: TailOptions): Promise<PartitionSpan[]> {
  const spans: PartitionSpan[] = [];
  for (const { topic } of options.topics) {
    for (const p of await positions(admin, topic, options.from)) spans.push({ topic, ...p });
  }
  return spans;
}

async function connectAdmin(admin: Admin, connection: KafkaConnectionOptions): Promise<void> {
  try {
    await admin.connect();
  } catch (err) {
    throw new FilterError(
      'kafka_unavailable',
      `cannot reach Kafka at ${connection.brokers.join(',')}: ${(err as Error).message}`,
      {
        brokers: connection.brokers,
      },
    );
  }
}

/** The partitions still short of the end offset they had when the tail started. */
class EndWatch {
  private readonly ends = new Map<string, bigint>();
  private readonly pending = new Set<string>();

  constructor(spans: readonly PartitionSpan[]) {
    for (const s of spans) {
      const id = `${s.topic}/${s.partition}`;
      this.ends.set(id, BigInt(s.end));
      if (BigInt(s.start) < BigInt(s.end)) this.pending.add(id);
    }
  }

  get reached(): boolean {
    return this.pending.size === 0;
  }

  /** A message arrived; true once every partition has reached its end. */
  delivered(topic: string, partition: number, offset: string): boolean {
    const id = `${topic}/${partition}`;
    if (BigInt(offset) + 1n >= this.ends.get(id)!) this.pending.delete(id);
    return this.reached;
  }
}

/**
 * One run of the tail's consumer: hands each message over, and ends on abort or, with `untilEnd`, once every
 * partition reached its end (complete) or none delivered anything for `idleMs` (incomplete).
 */
class TailRun {
  messages = 0;
  private readonly kinds: Map<string, EventKind>;
  private readonly ends: EndWatch;
  private finish!: (complete: boolean) => void;
  private readonly finished = new Promise<boolean>((resolve) => (this.finish = resolve));
  private idle: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: TailOptions,
    private readonly spans: readonly PartitionSpan[],
  ) {
    this.kinds = new Map(options.topics.map((t) => [t.topic, t.kind]));
    this.ends = new EndWatch(spans);
  }

  /** True when there is nothing to wait for: `untilEnd` and every partition is at its end already. */
  get empty(): boolean {
    return this.options.untilEnd === true && this.ends.reached;
  }

  /** Runs the consumer from each partition's start; resolves with whether every partition reached its end. */
  async run(consumer: Consumer): Promise<boolean> {
    for (const topic of this.kinds.keys()) await consumer.subscribe({ topic, fromBeginning: false });
    await consumer.run({ autoCommit: false, eachMessage: async (p) => this.onMessage(p) });
    for (const s of this.spans) consumer.seek({ topic: s.topic, partition: s.partition, offset: s.start });
    const { signal } = this.options;
    const onAbort = () => this.finish(false);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) this.finish(false);
    if (this.options.untilEnd) {
      // Re-armed by every message (refresh): it fires only after idleMs without any.
      this.idle = setTimeout(() => this.finish(false), this.options.idleMs ?? 10_000);
    }
    try {
      return await this.finished;
    } finally {
      clearTimeout(this.idle);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  private onMessage({ topic, partition, message }: EachMessagePayload): void {
    const kind = this.kinds.get(topic);
    if (!kind) return;
    this.messages++;
    this.idle?.refresh();
    this.options.onMessage({
      kind,
      topic,
      partition,
      offset: message.offset,
      key: message.key,
      value: message.value,
      timestamp: Number(message.timestamp),
    });
    if (this.options.untilEnd && this.ends.delivered(topic, partition, message.offset)) this.finish(true);
  }
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
  try {
    await connectAdmin(admin, options.connection);
    const tail = new TailRun(options, await planTail(admin, options));
    if (tail.empty) return { groupId, messages: 0, complete: true };
    consumer = kafka.consumer({
      groupId,
      allowAutoTopicCreation: false,
      sessionTimeout: 30_000,
      heartbeatInterval: 3000,
    });
    await consumer.connect();
    const complete = await tail.run(consumer);
    return { groupId, messages: tail.messages, complete: options.untilEnd ? complete : false };
  } finally {
    await consumer?.disconnect().catch(() => undefined);
    // Best effort: an empty group without offsets would expire anyway; deleting keeps the group list clean.
    if (consumer) await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}
