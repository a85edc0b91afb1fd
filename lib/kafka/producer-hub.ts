import { setTimeout as sleep } from 'node:timers/promises';
import { CompressionTypes, type Kafka, type Message, type Producer } from 'kafkajs';
import { kafkaErrorType } from './client.ts';
import type { SourceOrigin } from '../types.ts';
import { FilterError } from '../types.ts';

/**
 * The one Kafka producer behind the audit, accepted and dead-letter topic sinks.
 *
 * Direct mode (SQS source, or no transactions): `publish` sends at once with an idempotent producer (acks=all) and
 * resolves when the brokers have the messages: at-least-once, duplicates carry the pair id as key.
 *
 * Transactional mode (Kafka source): `publish` stages the messages under the source offset they came from, and the
 * Kafka source's `ack` calls `commit`, which sends the staged messages of the acked offsets and commits the consumed
 * offsets in ONE Kafka transaction (sendOffsets). A crash before the commit aborts both, so `read_committed` readers
 * of the audit topic see every event exactly once, however often the worker is killed and replays. This is stronger
 * than "durable before ack": the ack itself makes them durable, atomically.
 */
export interface KafkaProducerHubOptions {
  readonly kafka: Kafka;
  /**
   * Stable id per worker slot enables transactions; a restarted worker with the same id fences its predecessor and
   * aborts the transaction it left open. Leave undefined for direct mode.
   */
  readonly transactionalId?: string;
  /** Largest message (key + value) accepted, bytes. Default 1 000 000 (broker default message.max.bytes is 1 MiB). */
  readonly maxMessageBytes?: number;
  /** Transaction timeout, ms; an abandoned transaction blocks read_committed readers at most this long. Default 60000. */
  readonly transactionTimeoutMs?: number;
}

export interface TopicMessage {
  readonly topic: string;
  readonly key: string;
  readonly value: string;
  readonly headers?: Record<string, string>;
}

const RETRY_TXN = new Set([
  'CONCURRENT_TRANSACTIONS',
  'COORDINATOR_LOAD_IN_PROGRESS',
  'COORDINATOR_NOT_AVAILABLE',
  'NOT_COORDINATOR',
]);

const partitionKey = (topic: string, partition: number) => `${topic}\u0000${partition}`;

export class KafkaProducerHub {
  /** partition -> offset -> sink name -> messages (a retried sink write replaces, never duplicates). */
  private readonly staged = new Map<string, Map<string, Map<string, TopicMessage[]>>>();
  private txnChain: Promise<void> = Promise.resolve();
  readonly maxMessageBytes: number;

  private constructor(
    private readonly producer: Producer,
    readonly transactional: boolean,
    options: KafkaProducerHubOptions,
  ) {
    this.maxMessageBytes = options.maxMessageBytes ?? 1_000_000;
  }

  static async open(options: KafkaProducerHubOptions): Promise<KafkaProducerHub> {
    const transactional = options.transactionalId !== undefined;
    const producer = options.kafka.producer({
      idempotent: true,
      maxInFlightRequests: transactional ? 1 : 5,
      // kafkajs's idempotence needs unbounded retries; a send that cannot land holds its batch unacked meanwhile.
      retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 200, maxRetryTime: 5000 },
      ...(transactional
        ? { transactionalId: options.transactionalId, transactionTimeout: options.transactionTimeoutMs ?? 60_000 }
        : {}),
    });
    try {
      await producer.connect();
    } catch (err) {
      throw new FilterError('kafka_unavailable', `cannot connect the Kafka producer: ${(err as Error).message}`, {
        transactionalId: options.transactionalId,
      });
    }
    return new KafkaProducerHub(producer, transactional, options);
  }

  /** Serialized size as the broker counts it, near enough for the size guard. */
  static size(m: TopicMessage): number {
    let n = Buffer.byteLength(m.key) + Buffer.byteLength(m.value) + 64;
    for (const [k, v] of Object.entries(m.headers ?? {})) n += Buffer.byteLength(k) + Buffer.byteLength(v);
    return n;
  }

  /**
   * Direct mode: sends now. Transactional mode: stages `messages` for the record at `origin` on behalf of `sink`
   * (replacing what that sink staged for it before), to be sent by `commit`.
   */
  async publish(sink: string, origin: SourceOrigin, messages: readonly TopicMessage[]): Promise<void> {
    for (const m of messages) {
      if (KafkaProducerHub.size(m) > this.maxMessageBytes) {
        throw new FilterError('message_too_large', `message for ${m.topic} is over ${this.maxMessageBytes} bytes`, {
          topic: m.topic,
          key: m.key,
        });
      }
    }
    if (!this.transactional) {
      if (messages.length > 0) await this.send(this.producer, messages);
      return;
    }
    if (origin.kind !== 'kafka') {
      throw new FilterError('kafka_config', 'transactional topic sinks need a Kafka source (origin has no offset)', {
        origin: origin.kind,
      });
    }
    const pk = partitionKey(origin.topic, origin.partition);
    let byOffset = this.staged.get(pk);
    if (!byOffset) this.staged.set(pk, (byOffset = new Map()));
    let bySink = byOffset.get(origin.offset);
    if (!bySink) byOffset.set(origin.offset, (bySink = new Map()));
    bySink.set(sink, [...messages]);
  }

  private async send(target: Pick<Producer, 'sendBatch'>, messages: readonly TopicMessage[]): Promise<void> {
    const byTopic = new Map<string, Message[]>();
    for (const m of messages) {
      let list = byTopic.get(m.topic);
      if (!list) byTopic.set(m.topic, (list = []));
      list.push({ key: m.key, value: m.value, headers: m.headers });
    }
    await target.sendBatch({
      acks: -1,
      compression: CompressionTypes.GZIP,
      topicMessages: [...byTopic].map(([topic, msgs]) => ({ topic, messages: msgs })),
    });
  }

  /**
   * Transactional mode: in one transaction, sends every message staged for `topic`/`partition` at offsets up to
   * `lastOffset` and commits `lastOffset + 1` for `groupId`. Serialized: one transaction at a time.
   */
  commit(groupId: string, topic: string, partition: number, lastOffset: string): Promise<void> {
    const run = this.txnChain.then(async () => {
      const pk = partitionKey(topic, partition);
      const byOffset = this.staged.get(pk);
      const last = BigInt(lastOffset);
      const taken: string[] = [];
      const messages: TopicMessage[] = [];
      for (const [offset, bySink] of byOffset ?? []) {
        if (BigInt(offset) > last) continue;
        taken.push(offset);
        for (const list of bySink.values()) messages.push(...list);
      }
      for (let attempt = 1; ; attempt++) {
        try {
          await this.runTransaction(groupId, topic, partition, last, messages);
          break;
        } catch (err) {
          // The coordinator may still be writing the previous transaction's markers (CONCURRENT_TRANSACTIONS, which
          // kafkajs does not retry on AddOffsetsToTxn) or be moving: retry the whole transaction, it was aborted.
          const type = kafkaErrorType(err) ?? '';
          const retriable = (err as { retriable?: boolean }).retriable === true || RETRY_TXN.has(type);
          if (!retriable || attempt >= 8) {
            throw new FilterError(
              'kafka_commit_failed',
              `transaction for ${topic}[${partition}] failed: ${(err as Error).message}`,
              { topic, partition, lastOffset, messages: messages.length, attempts: attempt, type },
              { cause: err },
            );
          }
          await sleep(Math.min(2000, 25 * 2 ** attempt));
        }
      }
      // Dropped only once committed: a failed commit leaves them staged for the replay of the same offsets.
      for (const o of taken) byOffset?.delete(o);
    });
    this.txnChain = run.catch(() => undefined);
    return run;
  }

  private async runTransaction(
    groupId: string,
    topic: string,
    partition: number,
    last: bigint,
    messages: readonly TopicMessage[],
  ): Promise<void> {
    const txn = await this.producer.transaction();
    try {
      if (messages.length > 0) await this.send(txn, messages);
      await txn.sendOffsets({
        consumerGroupId: groupId,
        topics: [{ topic, partitions: [{ partition, offset: (last + 1n).toString() }] }],
      });
      await txn.commit();
    } catch (err) {
      await txn.abort().catch(() => undefined);
      throw err;
    }
  }

  /** The partition was revoked: what was staged for it will be replayed (by whichever worker owns it next). */
  discard(topic: string, partition: number): void {
    this.staged.delete(partitionKey(topic, partition));
  }

  /** Messages staged and not yet committed (for tests and metrics). */
  get stagedCount(): number {
    let n = 0;
    for (const byOffset of this.staged.values())
      for (const bySink of byOffset.values()) for (const l of bySink.values()) n += l.length;
    return n;
  }

  async close(): Promise<void> {
    await this.txnChain;
    await this.producer.disconnect();
  }
}
