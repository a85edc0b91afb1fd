import { setTimeout as sleep } from 'node:timers/promises';
import { CompressionTypes, type Admin, type Kafka, type Message, type Producer, type Transaction } from 'kafkajs';
import { DEFAULT_KAFKA_RETRY_BUDGET_MS, isPermanentKafkaError, kafkaErrorType, OutageClock } from './client.ts';
import type { PartitionRef, SourceOrigin } from '../types.ts';
import { CommitBudgetSpentError as BudgetSpent, FilterError } from '../errors.ts';
import type { Logger } from '../support/logger.ts';

/**
 * The Kafka producers behind the audit, accepted and dead-letter topic sinks.
 *
 * Direct mode (SQS source, or no transactions): `publish` sends at once with one idempotent producer (acks=all) and
 * resolves when the brokers have the messages: at-least-once, duplicates carry the pair id as key.
 *
 * Transactional mode (Kafka source): `publish` stages the messages under the source offset they came from, and the
 * Kafka source's commit calls `commit`, which sends the staged messages of the committed offsets and commits the
 * consumed offsets in ONE Kafka transaction (sendOffsets). A crash before the commit aborts both, so `read_committed`
 * readers of the audit topic see every event exactly once, however often the worker is killed and replays.
 *
 * Fencing (KIP-98's way, which kafkajs supports): each INPUT PARTITION has its own transactional producer, with the
 * id `<prefix>-<group>-<topic>-<partition>` -- the same on every worker. Whoever owns the partition next initialises
 * that id (`fence`) before it reads the partition's committed offset: InitProducerId bumps the id's epoch, which
 * fences the previous owner (a worker frozen past its session timeout, a commit racing a rebalance: its next
 * transactional request fails with PRODUCER_FENCED / INVALID_PRODUCER_EPOCH, nothing of it lands), and the
 * coordinator first finishes the id's open transaction (commits it if its commit was logged, else aborts it), so the
 * committed offset read afterwards is stable: no transaction of the old owner is pending on it.
 *
 * Replay skip (the topics' counterpart of the curated S3 sink's): every (re)initialisation is followed by reading the
 * committed offset, and a commit publishes only the staged messages at or above it. Since messages and offsets
 * commit atomically, everything below the committed offset is on the topics already; a replay of it publishes
 * nothing, whoever replays it. That also keeps the committed offset from ever going backwards.
 *
 * A broker restart or a coordinator move does not end the worker: a failed transaction is aborted and tried again,
 * with backoff, for up to `commitRetryBudgetMs`; only an outage that outlasts the budget fails the commit.
 */
export interface KafkaProducerHubOptions {
  readonly kafka: Kafka;
  /** Transactional mode: the consumer group whose offsets commit with the messages. Leave undefined for direct mode. */
  readonly transactions?: {
    readonly groupId: string;
    /** First part of every transactional id (`<prefix>-<group>-<topic>-<partition>`). Default `mlmf`. */
    readonly idPrefix?: string;
  };
  /** Largest message (key + value) accepted, bytes. Default 1 000 000 (broker default message.max.bytes is 1 MiB). */
  readonly maxMessageBytes?: number;
  /**
   * How long a transactional commit keeps retrying through a broker or coordinator outage, ms, before it fails with
   * `kafka_commit_failed`. Default 120000.
   */
  readonly commitRetryBudgetMs?: number;
  /**
   * Transaction timeout, ms: an abandoned transaction blocks read_committed readers at most this long (the next owner
   * of its partition aborts it at once). Default: the retry budget + 30 s, at least 60 s, so the coordinator does not
   * abort (and fence) a transaction that an outage holds open while the hub still retries. The brokers'
   * transaction.max.timeout.ms must allow it (Kafka's default is 15 minutes).
   */
  readonly transactionTimeoutMs?: number;
  /** Where commit retries and take-overs are reported. Default: nowhere. */
  readonly logger?: Logger;
}

/** What a commit did: committed (now, or before by whoever replayed it), or nothing because the batch was revoked. */
export type CommitResult = 'committed' | 'revoked';

/**
 * Membership check of the caller (the Kafka source): resolves once this worker may still act for the partition --
 * at once while its group session is known good, else once a heartbeat got through or the group moved on (which
 * revokes, see `revoked`). Awaited before a transactional id is initialised and before a transaction commits, so a
 * member resumed from a freeze neither commits nor fences the partition's new owner before it learns it lost it.
 */
export type MembershipCheck = () => Promise<void>;

export interface TopicMessage {
  readonly topic: string;
  readonly key: string;
  readonly value: string;
  readonly headers?: Record<string, string>;
}

const partitionKey = (topic: string, partition: number) => `${topic}\u0000${partition}`;

/** Errors saying that a newer producer initialised this transactional id: the partition has another owner now. */
const FENCED = new Set(['PRODUCER_FENCED', 'INVALID_PRODUCER_EPOCH']);
/** Take-overs one commit rides through (re-initialising, re-reading the offset) before it gives up. */
const MAX_TAKEOVERS = 5;

/** One input partition's transactional producer and what is staged for its offsets. */
interface PartitionTxn {
  readonly topic: string;
  readonly partition: number;
  readonly transactionalId: string;
  /** Undefined until initialised, and while closed (released). */
  producer?: Producer;
  /**
   * The producer must be (re)initialised before its next transaction: never initialised, its state is unknown (an
   * abort or a commit failed half-way, an attempt ran out of budget), or another producer took the id. The new
   * InitProducerId makes the coordinator finish the id's open transaction first; the offset is read again after it.
   */
  needsInit: boolean;
  /** The group's committed offset (the next offset to commit), read after the last initialisation; -1n for none. */
  committed: bigint;
  /** offset -> sink name -> messages (a retried sink write replaces, never duplicates). */
  readonly staged: Map<string, Map<string, TopicMessage[]>>;
  /** Times discarded (revoked): a commit requested before a discard must not commit (those records come again). */
  discards: number;
  /** Fences, commits and releases of this partition, one at a time. */
  chain: Promise<unknown>;
}

/** One commit request: the offsets it commits, and whether the partition was discarded since it was made. */
interface CommitTarget {
  readonly txn: PartitionTxn;
  readonly last: bigint;
  readonly lastOffset: string;
  readonly discarded: () => boolean;
  readonly membership?: MembershipCheck;
}

/** What an attempt found: committed now, already committed (by us or a previous owner), or revoked. */
type AttemptResult = 'committed' | 'already-committed' | 'revoked';

export class KafkaProducerHub {
  private readonly partitions = new Map<string, PartitionTxn>();
  /** Direct mode's producer. */
  private direct: Producer | undefined;
  private admin: Admin | undefined;
  readonly maxMessageBytes: number;
  readonly commitRetryBudgetMs: number;
  /** Staged messages not published because their offsets were committed already (a replay), for logs and tests. */
  skippedReplayed = 0;

  private constructor(private readonly options: KafkaProducerHubOptions) {
    this.maxMessageBytes = options.maxMessageBytes ?? 1_000_000;
    this.commitRetryBudgetMs = options.commitRetryBudgetMs ?? DEFAULT_KAFKA_RETRY_BUDGET_MS;
  }

  get transactional(): boolean {
    return this.options.transactions !== undefined;
  }

  static async open(options: KafkaProducerHubOptions): Promise<KafkaProducerHub> {
    const hub = new KafkaProducerHub(options);
    try {
      if (hub.transactional) await hub.offsetAdmin();
      else {
        hub.direct = hub.newProducer();
        await hub.direct.connect();
      }
    } catch (err) {
      await hub.close().catch(() => undefined);
      throw new FilterError('kafka_unavailable', `cannot connect the Kafka producer: ${(err as Error).message}`, {
        groupId: options.transactions?.groupId,
      });
    }
    return hub;
  }

  /** The transactional id of an input partition: the same on every worker of the group, so owners fence each other. */
  transactionalId(topic: string, partition: number): string {
    const t = this.options.transactions!;
    return `${t.idPrefix ?? 'mlmf'}-${t.groupId}-${topic}-${partition}`;
  }

  private newProducer(transactionalId?: string): Producer {
    const timeout = this.options.transactionTimeoutMs ?? Math.max(60_000, this.commitRetryBudgetMs + 30_000);
    return this.options.kafka.producer({
      idempotent: true,
      maxInFlightRequests: transactionalId ? 1 : 5,
      // kafkajs's idempotence needs unbounded retries; a send that cannot land holds its batch uncommitted meanwhile
      // (a transactional one only until the commit's retry budget is spent).
      retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 200, maxRetryTime: 5000 },
      ...(transactionalId ? { transactionalId, transactionTimeout: timeout } : {}),
    });
  }

  private txn(topic: string, partition: number): PartitionTxn {
    const key = partitionKey(topic, partition);
    let t = this.partitions.get(key);
    if (!t) {
      t = {
        topic,
        partition,
        transactionalId: this.transactionalId(topic, partition),
        needsInit: true,
        committed: -1n,
        staged: new Map(),
        discards: 0,
        chain: Promise.resolve(),
      };
      this.partitions.set(key, t);
    }
    return t;
  }

  /** Runs `step` after everything queued on the partition; later steps run whatever this one's outcome. */
  private queue<T>(t: PartitionTxn, step: () => Promise<T>): Promise<T> {
    const run = t.chain.then(step);
    t.chain = run.catch(() => undefined);
    return run;
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
      if (messages.length > 0) await this.send(this.direct!, messages);
      return;
    }
    if (origin.kind !== 'kafka') {
      throw new FilterError('kafka_config', 'transactional topic sinks need a Kafka source (origin has no offset)', {
        origin: origin.kind,
      });
    }
    const { staged } = this.txn(origin.topic, origin.partition);
    let bySink = staged.get(origin.offset);
    if (!bySink) staged.set(origin.offset, (bySink = new Map()));
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
   * Transactional mode: takes over the partition's transactional id for a new ownership (a group assignment) --
   * fencing its previous owner and settling the id's open transaction -- then reads the committed offset, which is
   * stable from then on. Resolves with that offset (-1n when the group has none): the new owner starts there, and
   * records below it are done. Rejects with `kafka_commit_failed` on a permanent error or once the budget is spent.
   */
  fence(topic: string, partition: number): Promise<bigint> {
    const t = this.txn(topic, partition);
    return this.queue(t, async () => {
      // What was staged belongs to batches of an earlier ownership (revoked): their records come again.
      t.staged.clear();
      t.needsInit = true;
      const clock = new OutageClock(this.commitRetryBudgetMs);
      clock.start();
      for (let attempt = 1; ; attempt++) {
        try {
          await this.withinBudget(t, this.init(t), clock);
          return t.committed;
        } catch (err) {
          if (err instanceof BudgetSpent || !clock.failed(err)) {
            throw this.failed('taking over the transactional id', err, t, attempt, 0);
          }
          await this.backoff('Kafka fence failed; retrying', t, err, attempt, clock);
        }
      }
    });
  }

  /** A fresh producer under the partition's transactional id, initialised; then the committed offset, read after. */
  private async init(t: PartitionTxn): Promise<void> {
    const old = t.producer;
    t.producer = undefined;
    await old?.disconnect().catch(() => undefined);
    const producer = this.newProducer(t.transactionalId);
    t.producer = producer;
    await producer.connect();
    // The first transaction sends InitProducerId (retried by kafkajs while the coordinator settles the open one);
    // nothing was sent in it, so its abort is local.
    await (await producer.transaction()).abort();
    t.committed = await this.committedOffset(t);
    t.needsInit = false;
  }

  /**
   * Transactional mode: in one transaction, sends every message staged for `topic`/`partition` at offsets from the
   * committed offset up to `lastOffset` and commits `lastOffset + 1` for the group. One transaction at a time per
   * partition. Resolves 'committed' once those offsets are committed (by this call, or already); 'revoked', committing
   * nothing, when the partition was discarded (revoked) after this call, since its records are redelivered.
   * `membership` is awaited before the id is (re)initialised and before the transaction commits. Rejects with
   * `kafka_commit_failed` on a permanent error or once the retry budget is spent.
   */
  commit(topic: string, partition: number, lastOffset: string, membership?: MembershipCheck): Promise<CommitResult> {
    const t = this.txn(topic, partition);
    const discardsAtRequest = t.discards;
    const target: CommitTarget = {
      txn: t,
      last: BigInt(lastOffset),
      lastOffset,
      discarded: () => t.discards !== discardsAtRequest,
      membership,
    };
    return this.queue(t, () => this.commitWithRetry(target));
  }

  private async commitWithRetry(target: CommitTarget): Promise<CommitResult> {
    const t = target.txn;
    if (target.discarded()) return 'revoked';
    const taken = [...t.staged].filter(([offset]) => BigInt(offset) <= target.last);
    // The budget runs from the commit's start: a first attempt that hangs on a dead broker counts too.
    const clock = new OutageClock(this.commitRetryBudgetMs);
    clock.start();
    let lastError: unknown;
    let takeovers = 0;
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await this.withinBudget(t, this.attempt(target, taken), clock);
        if (result === 'revoked') return 'revoked';
        break;
      } catch (err) {
        const messages = taken.length;
        if (err instanceof BudgetSpent) throw this.failed('transaction', lastError ?? err, t, attempt, messages);
        if (FENCED.has(kafkaErrorType(err) ?? '') && ++takeovers <= MAX_TAKEOVERS) {
          // Another producer initialised the id: the partition's new owner (this worker is the zombie -- the
          // membership check before re-initialising finds that out and revokes), or a zombie that re-initialised it.
          // Nothing of this transaction landed; re-initialise and re-read the offset, skipping what the other
          // committed.
          t.needsInit = true;
          this.options.logger?.warn('transactional id taken over by another producer; nothing of ours committed', {
            transactionalId: t.transactionalId,
            lastOffset: target.lastOffset,
            error: String(err),
          });
          if (target.discarded()) return 'revoked';
          continue;
        }
        if (!clock.failed(err)) throw this.failed('transaction', err, t, attempt, messages);
        lastError = err;
        await this.backoff('Kafka transaction failed; retrying', t, err, attempt, clock, target.lastOffset);
        // A commit whose answer was lost is settled first (the next attempt's initialisation does), so none lands
        // after we give up.
        if (target.discarded() && !t.needsInit) return 'revoked';
      }
    }
    // Dropped only once committed: a failed commit leaves them staged for the replay of the same offsets.
    for (const [o] of taken) t.staged.delete(o);
    return 'committed';
  }

  private async backoff(
    msg: string,
    t: PartitionTxn,
    err: unknown,
    attempt: number,
    clock: OutageClock,
    lastOffset?: string,
  ): Promise<void> {
    const wait = Math.min(clock.backoffMs(), clock.leftMs);
    this.options.logger?.warn(msg, {
      topic: t.topic,
      partition: t.partition,
      ...(lastOffset === undefined ? {} : { lastOffset }),
      attempt,
      retryInMs: Math.round(wait),
      error: String(err),
      type: kafkaErrorType(err),
    });
    await sleep(wait);
  }

  private failed(what: string, err: unknown, t: PartitionTxn, attempts: number, messages: number): FilterError {
    const permanent = isPermanentKafkaError(err);
    const budget = `${this.commitRetryBudgetMs} ms retry budget`;
    const why =
      err instanceof BudgetSpent
        ? `no answer from the brokers within the ${budget}`
        : `${(err as Error).message}${permanent ? '' : ` (still failing after the ${budget})`}`;
    return new FilterError(
      'kafka_commit_failed',
      `${what} for ${t.topic}[${t.partition}] failed: ${why}`,
      {
        topic: t.topic,
        partition: t.partition,
        transactionalId: t.transactionalId,
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
  private async withinBudget<T>(t: PartitionTxn, attempt: Promise<T>, clock: OutageClock): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const spent = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new BudgetSpent('retry budget spent')), Math.max(0, clock.leftMs));
    });
    try {
      return await Promise.race([attempt, spent]);
    } catch (err) {
      if (err instanceof BudgetSpent) {
        t.needsInit = true;
        attempt.catch(() => undefined);
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * One transaction: send the messages of offsets not committed yet, add the offsets, commit -- after settling what
   * a failed attempt left (re-initialising, which re-reads the committed offset).
   */
  private async attempt(
    target: CommitTarget,
    taken: readonly [string, Map<string, TopicMessage[]>][],
  ): Promise<AttemptResult> {
    const t = target.txn;
    if (t.needsInit) {
      // A member that lost the group must not take the id back from the partition's new owner.
      await target.membership?.();
      if (target.discarded()) return 'revoked';
      await this.init(t);
    }
    if (target.discarded()) return 'revoked';
    // Replay skip: offsets below the committed one were published with the transaction that committed them.
    if (target.last < t.committed) {
      this.skippedReplayed += taken.reduce((n, [, bySink]) => n + [...bySink.values()].flat().length, 0);
      return 'already-committed';
    }
    const messages: TopicMessage[] = [];
    for (const [offset, bySink] of taken) {
      const list = [...bySink.values()].flat();
      if (BigInt(offset) < t.committed) this.skippedReplayed += list.length;
      else messages.push(...list);
    }
    let txn: Transaction;
    try {
      txn = await t.producer!.transaction();
    } catch (err) {
      t.needsInit = true;
      throw err;
    }
    let commitSent = false;
    try {
      if (messages.length > 0) await this.send(txn, messages);
      await txn.sendOffsets({
        consumerGroupId: this.options.transactions!.groupId,
        topics: [{ topic: t.topic, partitions: [{ partition: t.partition, offset: String(target.last + 1n) }] }],
      });
      // The commit is prepared: commit only while still a member (a freeze past the session timeout ends here).
      await target.membership?.();
      if (target.discarded()) {
        await txn.abort();
        return 'revoked';
      }
      commitSent = true;
      await txn.commit();
      t.committed = target.last + 1n;
      return 'committed';
    } catch (err) {
      await this.afterFailure(t, txn, commitSent);
      throw err;
    }
  }

  /** Aborts what a failed attempt left open; when that cannot be done here, the next attempt re-initialises. */
  private async afterFailure(t: PartitionTxn, txn: Transaction, commitSent: boolean): Promise<void> {
    if (commitSent) {
      // The coordinator may have logged the commit before the answer was lost: the re-initialisation settles it and
      // the offset read after it tells.
      t.needsInit = true;
      return;
    }
    try {
      await txn.abort();
    } catch {
      t.needsInit = true;
    }
  }

  private async offsetAdmin(): Promise<Admin> {
    if (!this.admin) {
      const admin = this.options.kafka.admin();
      try {
        await admin.connect();
      } catch (err) {
        await admin.disconnect().catch(() => undefined);
        throw err;
      }
      this.admin = admin;
    }
    return this.admin;
  }

  /** The group's committed offset for the partition (-1n when none). */
  private async committedOffset(t: PartitionTxn): Promise<bigint> {
    const admin = await this.offsetAdmin();
    const res = await admin.fetchOffsets({ groupId: this.options.transactions!.groupId, topics: [t.topic] });
    const p = res[0]?.partitions.find((x) => x.partition === t.partition);
    return BigInt(p?.offset ?? '-1');
  }

  /**
   * The pipeline revoked batches of these partitions (the topic sinks pass the batch ledger's revocation on): what
   * was staged for them is dropped, and a commit requested before now commits nothing. Direct mode stages nothing.
   */
  revoked(partitions: readonly PartitionRef[]): void {
    if (!this.transactional) return;
    for (const { topic, partition } of partitions) this.discard(topic, partition);
  }

  /** The partition was revoked: what was staged for it will be replayed (by whichever worker owns it next). */
  discard(topic: string, partition: number): void {
    const t = this.txn(topic, partition);
    t.staged.clear();
    t.discards++;
  }

  /**
   * The partition is no longer this worker's: discards it and closes its producer once its queued work is done (the
   * next ownership initialises a new one). Open producers stay bounded by the partitions this worker owns.
   */
  release(topic: string, partition: number): Promise<void> {
    this.discard(topic, partition);
    const t = this.txn(topic, partition);
    return this.queue(t, async () => {
      const producer = t.producer;
      t.producer = undefined;
      t.needsInit = true;
      await producer?.disconnect().catch(() => undefined);
    });
  }

  /** Transactional producers open now (one per partition owned). */
  get openProducers(): number {
    return [...this.partitions.values()].filter((t) => t.producer).length;
  }

  /** Messages staged and not yet committed (for tests and metrics). */
  get stagedCount(): number {
    let n = 0;
    for (const t of this.partitions.values())
      for (const bySink of t.staged.values()) for (const l of bySink.values()) n += l.length;
    return n;
  }

  async close(): Promise<void> {
    await Promise.all([...this.partitions.values()].map((t) => t.chain));
    await Promise.all(
      [...this.partitions.values()].map(async (t) => {
        const producer = t.producer;
        t.producer = undefined;
        await producer?.disconnect();
      }),
    );
    await this.direct?.disconnect();
    await this.admin?.disconnect();
  }
}
