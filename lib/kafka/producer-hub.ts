import { setTimeout as sleep } from 'node:timers/promises';
import { CompressionTypes, type Kafka, type Message, type Producer, type Transaction } from 'kafkajs';
import { DEFAULT_KAFKA_RETRY_BUDGET_MS, isPermanentKafkaError, kafkaErrorType, OutageClock } from './client.ts';
import type { SourceOrigin } from '../types.ts';
import { FilterError } from '../types.ts';

/**
 * The one Kafka producer behind the audit, accepted and dead-letter topic sinks.
 *
 * Direct mode (SQS source, or no transactions): `publish` sends at once with an idempotent producer (acks=all) and
 * resolves when the brokers have the messages: at-least-once, duplicates carry the pair id as key.
 *
 * Transactional mode (Kafka source): `publish` stages the messages under the source offset they came from, and the
 * Kafka source's commit calls `commit`, which sends the staged messages of the committed offsets and commits the
 * consumed offsets in ONE Kafka transaction (sendOffsets). A crash before the commit aborts both, so `read_committed`
 * readers of the audit topic see every event exactly once, however often the worker is killed and replays. This is
 * stronger than "durable before commit": the commit itself makes them durable, atomically.
 *
 * A broker restart or a coordinator move does not end the worker: a failed transaction is aborted and tried again,
 * with backoff, for up to `commitRetryBudgetMs`; only an outage that outlasts the budget fails the commit.
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
  /**
   * How long a transactional commit keeps retrying through a broker or coordinator outage, ms, before it fails with
   * `kafka_commit_failed`. Default 120000.
   */
  readonly commitRetryBudgetMs?: number;
  /**
   * Transaction timeout, ms: an abandoned transaction blocks read_committed readers at most this long (a restarted
   * worker with the same transactional id aborts it at once). Default: the retry budget + 30 s, at least 60 s, so
   * the coordinator does not abort (and fence) a transaction that an outage holds open while the hub still retries.
   * The brokers' transaction.max.timeout.ms must allow it (Kafka's default is 15 minutes).
   */
  readonly transactionTimeoutMs?: number;
  /** Where commit retries are reported. Default: nowhere. */
  readonly logger?: { warn(msg: string, ctx?: Record<string, unknown>): void };
}

export interface TopicMessage {
  readonly topic: string;
  readonly key: string;
  readonly value: string;
  readonly headers?: Record<string, string>;
}

const partitionKey = (topic: string, partition: number) => `${topic}\u0000${partition}`;

/** One commit request: the offsets it commits, and whether the partition was discarded since it was made. */
interface CommitTarget {
  readonly groupId: string;
  readonly topic: string;
  readonly partition: number;
  readonly last: bigint;
  readonly lastOffset: string;
  readonly discarded: () => boolean;
}

/** What an attempt found: committed now, already committed by an attempt whose answer was lost, or revoked. */
type AttemptResult = 'committed' | 'already-committed' | 'revoked';

/** Across the attempts of one commit: an earlier attempt sent its commit but no answer came back. */
interface CommitProgress {
  outcomeUnknown: boolean;
}

/** The remaining budget ran out while an attempt was still waiting on the brokers. */
class BudgetSpent extends Error {}

export class KafkaProducerHub {
  /** partition -> offset -> sink name -> messages (a retried sink write replaces, never duplicates). */
  private readonly staged = new Map<string, Map<string, Map<string, TopicMessage[]>>>();
  /** partition -> times discarded: a commit requested before a discard must not commit (those records come again). */
  private readonly discards = new Map<string, number>();
  private txnChain: Promise<unknown> = Promise.resolve();
  private producer: Producer;
  private connected = false;
  /**
   * The producer's transaction state is unknown (an abort or a commit failed half-way, or an attempt ran out of
   * budget): kafkajs cannot start another transaction on it, so the next attempt replaces it. The replacement's
   * InitProducerId makes the coordinator finish this id's open transaction first: commit it if its commit was
   * logged, else abort it.
   */
  private stale = false;
  readonly maxMessageBytes: number;
  readonly commitRetryBudgetMs: number;

  private constructor(
    private readonly options: KafkaProducerHubOptions,
    readonly transactional: boolean,
  ) {
    this.maxMessageBytes = options.maxMessageBytes ?? 1_000_000;
    this.commitRetryBudgetMs = options.commitRetryBudgetMs ?? DEFAULT_KAFKA_RETRY_BUDGET_MS;
    this.producer = this.newProducer();
  }

  static async open(options: KafkaProducerHubOptions): Promise<KafkaProducerHub> {
    const hub = new KafkaProducerHub(options, options.transactionalId !== undefined);
    try {
      await hub.connect();
    } catch (err) {
      throw new FilterError('kafka_unavailable', `cannot connect the Kafka producer: ${(err as Error).message}`, {
        transactionalId: options.transactionalId,
      });
    }
    return hub;
  }

  private newProducer(): Producer {
    const { kafka, transactionalId } = this.options;
    const timeout = this.options.transactionTimeoutMs ?? Math.max(60_000, this.commitRetryBudgetMs + 30_000);
    return kafka.producer({
      idempotent: true,
      maxInFlightRequests: this.transactional ? 1 : 5,
      // kafkajs's idempotence needs unbounded retries; a send that cannot land holds its batch uncommitted meanwhile
      // (a transactional one only until the commit's retry budget is spent).
      retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 200, maxRetryTime: 5000 },
      ...(this.transactional ? { transactionalId, transactionTimeout: timeout } : {}),
    });
  }

  private async connect(): Promise<void> {
    await this.producer.connect();
    this.connected = true;
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
   * `lastOffset` and commits `lastOffset + 1` for `groupId`. Serialized: one transaction at a time. Resolves true
   * once committed; false, committing nothing, when the partition was discarded (revoked) after this call, since
   * its records are redelivered. Rejects with `kafka_commit_failed` on a permanent error or once the retry budget
   * is spent.
   */
  commit(groupId: string, topic: string, partition: number, lastOffset: string): Promise<boolean> {
    const pk = partitionKey(topic, partition);
    const discardsAtRequest = this.discards.get(pk) ?? 0;
    const target: CommitTarget = {
      groupId,
      topic,
      partition,
      last: BigInt(lastOffset),
      lastOffset,
      discarded: () => (this.discards.get(pk) ?? 0) !== discardsAtRequest,
    };
    const run = this.txnChain.then(() => this.commitWithRetry(target));
    this.txnChain = run.catch(() => undefined);
    return run;
  }

  private async commitWithRetry(target: CommitTarget): Promise<boolean> {
    if (target.discarded()) return false;
    const byOffset = this.staged.get(partitionKey(target.topic, target.partition));
    const taken: string[] = [];
    const messages: TopicMessage[] = [];
    for (const [offset, bySink] of byOffset ?? []) {
      if (BigInt(offset) > target.last) continue;
      taken.push(offset);
      for (const list of bySink.values()) messages.push(...list);
    }
    // The budget runs from the commit's start: a first attempt that hangs on a dead broker counts too.
    const clock = new OutageClock(this.commitRetryBudgetMs);
    clock.start();
    const progress: CommitProgress = { outcomeUnknown: false };
    let lastError: unknown;
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await this.withinBudget(this.attempt(target, messages, progress), clock);
        if (result === 'revoked') return false;
        break;
      } catch (err) {
        if (err instanceof BudgetSpent) throw this.commitFailed(lastError ?? err, target, attempt, messages.length);
        if (!clock.failed(err)) throw this.commitFailed(err, target, attempt, messages.length);
        lastError = err;
        const wait = Math.min(clock.backoffMs(), clock.leftMs);
        this.options.logger?.warn('Kafka transaction failed; retrying', {
          topic: target.topic,
          partition: target.partition,
          lastOffset: target.lastOffset,
          attempt,
          retryInMs: Math.round(wait),
          error: String(err),
          type: kafkaErrorType(err),
        });
        await sleep(wait);
        // A commit whose answer was lost is settled first (the next attempt does), so none lands after we give up.
        if (target.discarded() && !progress.outcomeUnknown) return false;
      }
    }
    // Dropped only once committed: a failed commit leaves them staged for the replay of the same offsets.
    for (const o of taken) byOffset?.delete(o);
    return true;
  }

  private commitFailed(err: unknown, target: CommitTarget, attempts: number, messages: number): FilterError {
    const permanent = isPermanentKafkaError(err);
    const budget = `${this.commitRetryBudgetMs} ms retry budget`;
    const why =
      err instanceof BudgetSpent
        ? `no answer from the brokers within the ${budget}`
        : `${(err as Error).message}${permanent ? '' : ` (still failing after the ${budget})`}`;
    return new FilterError(
      'kafka_commit_failed',
      `transaction for ${target.topic}[${target.partition}] failed: ${why}`,
      {
        topic: target.topic,
        partition: target.partition,
        lastOffset: target.lastOffset,
        messages,
        attempts,
        type: kafkaErrorType(err) ?? '',
        permanent,
        budgetMs: this.commitRetryBudgetMs,
      },
      { cause: err },
    );
  }

  /** Races an attempt against the budget; an attempt left behind may still hold a transaction, so it is stale. */
  private async withinBudget<T>(attempt: Promise<T>, clock: OutageClock): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const spent = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new BudgetSpent('retry budget spent')), Math.max(0, clock.leftMs));
    });
    try {
      return await Promise.race([attempt, spent]);
    } catch (err) {
      if (err instanceof BudgetSpent) {
        this.stale = true;
        attempt.catch(() => undefined);
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** One transaction: send the messages, add the offsets, commit -- after settling what a failed attempt left. */
  private async attempt(
    target: CommitTarget,
    messages: readonly TopicMessage[],
    progress: CommitProgress,
  ): Promise<AttemptResult> {
    if (this.stale) {
      const old = this.producer;
      this.producer = this.newProducer();
      this.connected = false;
      this.stale = false;
      await old.disconnect().catch(() => undefined);
    }
    if (!this.connected) await this.connect();
    let txn: Transaction;
    try {
      txn = await this.producer.transaction();
    } catch (err) {
      // InitProducerId did not get through: try again with a fresh producer.
      this.stale = true;
      throw err;
    }
    let commitSent = false;
    try {
      if (progress.outcomeUnknown) {
        // Beginning this transaction settled the earlier one (InitProducerId waits for it): the offsets tell.
        const done = (await this.committedOffset(target)) > target.last;
        progress.outcomeUnknown = false;
        if (done) {
          await txn.abort();
          return 'already-committed';
        }
      }
      if (target.discarded()) {
        await txn.abort();
        return 'revoked';
      }
      if (messages.length > 0) await this.send(txn, messages);
      await txn.sendOffsets({
        consumerGroupId: target.groupId,
        topics: [
          { topic: target.topic, partitions: [{ partition: target.partition, offset: String(target.last + 1n) }] },
        ],
      });
      if (target.discarded()) {
        await txn.abort();
        return 'revoked';
      }
      commitSent = true;
      await txn.commit();
      return 'committed';
    } catch (err) {
      if (commitSent) progress.outcomeUnknown = true;
      await this.afterFailure(txn, commitSent);
      throw err;
    }
  }

  /** Aborts what a failed attempt left open; when that cannot be done here, the next attempt replaces the producer. */
  private async afterFailure(txn: Transaction, commitSent: boolean): Promise<void> {
    if (commitSent) {
      // The coordinator may have logged the commit before the answer was lost: only the offsets can tell, later.
      this.stale = true;
      return;
    }
    try {
      await txn.abort();
    } catch {
      this.stale = true;
    }
  }

  /** The group's committed offset for the target partition (-1 when none). */
  private async committedOffset(target: CommitTarget): Promise<bigint> {
    const admin = this.options.kafka.admin();
    try {
      await admin.connect();
      const res = await admin.fetchOffsets({ groupId: target.groupId, topics: [target.topic] });
      const p = res[0]?.partitions.find((x) => x.partition === target.partition);
      return BigInt(p?.offset ?? '-1');
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /** The partition was revoked: what was staged for it will be replayed (by whichever worker owns it next). */
  discard(topic: string, partition: number): void {
    const pk = partitionKey(topic, partition);
    this.staged.delete(pk);
    this.discards.set(pk, (this.discards.get(pk) ?? 0) + 1);
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
