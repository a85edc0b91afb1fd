import { setTimeout as sleep } from 'node:timers/promises';
import type { Consumer, ConsumerRunConfig, EachBatchPayload, Kafka, KafkaMessage } from 'kafkajs';
import type { KafkaProducerHub } from '../kafka/producer-hub.ts';
import type { Committer, Source, SourceBatch } from '../types.ts';
import { FilterError } from '../types.ts';
import { DEFAULT_KAFKA_RETRY_BUDGET_MS, kafkaErrorType, nextOffset, OutageClock } from '../kafka/client.ts';
import { groupLag } from '../kafka/lag.ts';
import { silentLogger, type Logger } from '../support/logger.ts';

/** Options of the Kafka source (a consumer group member). */
export interface KafkaSourceOptions {
  readonly kafka: Kafka;
  readonly topic: string;
  readonly groupId: string;
  /** Where a group without committed offsets starts. Default true (earliest): a new filter sees the whole backlog. */
  readonly fromBeginning?: boolean;
  /** Records per SourceBatch (a fetched Kafka batch is cut into these). Default 256. */
  readonly maxBatchRecords?: number;
  /** Batches handed out and not yet acked; at the bound the partition's fetch loop waits, heartbeating. Default 16. */
  readonly maxInFlightBatches?: number;
  /** Partitions processed concurrently by the fetch loop. Default 4. */
  readonly partitionsConsumedConcurrently?: number;
  /** Group session timeout, ms. Default 30000. Heartbeats continue while batches wait for scoring. */
  readonly sessionTimeoutMs?: number;
  /** Heartbeat interval, ms. Default 3000. */
  readonly heartbeatIntervalMs?: number;
  /**
   * How long the consumer keeps restarting after crashes through a broker outage, ms, counted from the first crash
   * until it joins its group again; past it, or on a permanent error, `batches` fails (`kafka_consumer_crashed`).
   * Default 120000.
   */
  readonly restartBudgetMs?: number;
  /**
   * Transactional commits: `ack` commits the offsets in the hub's transaction together with the topic messages the
   * sinks staged for those offsets (exactly-once to the audit/accepted/DLQ topics). Without it, `ack` commits the
   * offsets with the consumer (at-least-once).
   */
  readonly hub?: KafkaProducerHub;
  /** Called after each commit with the batch's size and the time from hand-out to durable commit, ms. */
  readonly onAcked?: (records: number, latencyMs: number) => void;
  readonly logger?: Logger;
}

interface InFlight {
  readonly topic: string;
  readonly partition: number;
  readonly lastOffset: string;
  readonly handedOut: number;
  readonly controller: AbortController;
  settled: boolean;
}

const REBALANCE_ERRORS = new Set([
  'REBALANCE_IN_PROGRESS',
  'ILLEGAL_GENERATION',
  'UNKNOWN_MEMBER_ID',
  'NOT_COORDINATOR',
  'FENCED_INSTANCE_ID',
]);

/**
 * Kafka consumer-group source. The fetch loop (kafkajs eachBatch, no auto-commit, no auto-resolve) cuts each fetched
 * batch into SourceBatches and hands them to the pipeline through a bounded queue; offsets are committed only in
 * `ack`, which the pipeline calls in order once the batch is durable in every sink. On a rebalance every batch in
 * flight is revoked (its `revoked` signal aborts and it is never committed): kafkajs resumes each assigned partition
 * from its committed offset, so those records come again, to this worker or another.
 */
export class KafkaSource implements Source {
  private consumer: Consumer | undefined;
  private readonly inflight = new Set<InFlight>();
  private readonly entries = new WeakMap<SourceBatch, InFlight>();
  readonly committer: Committer;
  private readonly queue: SourceBatch[] = [];
  private wake: (() => void) | undefined;
  private stopping = false;
  private crashed: unknown;
  /** Consumer crashes since the last successful group join. */
  private readonly outage: OutageClock;
  private restartTimer: NodeJS.Timeout | undefined;
  private joins = 0;
  /** Partitions of the source topic this member owns (from the last group join). */
  private assigned: number[] = [];
  /**
   * Transactional mode: per owned partition, the hub's fence of this ownership (its transactional id taken over, then
   * the committed offset read): no batch of the partition is handed out before it, and none below that offset.
   */
  private fences = new Map<number, Promise<bigint>>();
  /** When the group last confirmed this membership (a heartbeat or a join), performance.now() ms. */
  private confirmedAt = performance.now();
  /** Commits waiting for the membership to be confirmed again (membership). */
  private confirmWaiters: (() => void)[] = [];
  /** Fetch-loop handlers waiting for an in-flight slot. */
  private roomWaiters: (() => void)[] = [];
  /** Batches handed out, acked, revoked (for tests and metrics). */
  readonly counts = { batches: 0, acked: 0, revoked: 0, records: 0, replaySkipped: 0 };
  private readonly log: Logger;

  constructor(private readonly options: KafkaSourceOptions) {
    this.log = options.logger ?? silentLogger;
    this.committer = this.makeCommitter();
    this.outage = new OutageClock(options.restartBudgetMs ?? DEFAULT_KAFKA_RETRY_BUDGET_MS, { baseMs: 300 });
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
    const room = this.roomWaiters;
    this.roomWaiters = [];
    room.forEach((r) => r());
  }

  /**
   * Drops every batch in flight: none of them may be committed by this generation. Each batch's `revoked` signal
   * aborts; the batch ledger turns that into its revocation event, synchronously, and the sinks and the producer hub
   * drop what they staged for the partition before any commit of it can go on (see BatchLedger.onRevoked).
   */
  private revokeAll(reason: string): void {
    const partitions = new Map<string, { topic: string; partition: number }>();
    for (const f of this.inflight) {
      if (f.settled) continue;
      f.settled = true;
      f.controller.abort(new FilterError('partition_revoked', reason, { topic: f.topic, partition: f.partition }));
      partitions.set(`${f.topic}:${f.partition}`, { topic: f.topic, partition: f.partition });
      this.counts.revoked++;
    }
    this.inflight.clear();
    this.confirmed(false);
    // Not yet picked up by the pipeline: drop them too (their offsets are not committed either).
    this.queue.length = 0;
    if (partitions.size > 0) {
      this.log.warn('rebalance: in-flight batches revoked, they will be redelivered', {
        reason,
        partitions: [...partitions.values()],
      });
    }
    this.notify();
  }

  private makeBatch(topic: string, partition: number, messages: KafkaMessage[]): SourceBatch {
    const entry: InFlight = {
      topic,
      partition,
      lastOffset: messages[messages.length - 1]!.offset,
      handedOut: performance.now(),
      controller: new AbortController(),
      settled: false,
    };
    this.inflight.add(entry);
    const batch: SourceBatch = {
      records: messages.map((m) => ({
        raw: m.value ?? Buffer.alloc(0),
        origin: { kind: 'kafka', topic, partition, offset: m.offset },
      })),
      revoked: entry.controller.signal,
      committer: this.committer,
    };
    this.entries.set(batch, entry);
    return batch;
  }

  private settle(entry: InFlight): void {
    entry.settled = true;
    this.inflight.delete(entry);
    this.notify();
  }

  /**
   * The committer: with a hub, the offsets commit in ONE transaction with the messages the topic sinks staged for
   * them (`kafka-transaction`); without, the consumer commits the offsets (`kafka-offsets`, at-least-once). A commit
   * the group refuses (it rebalanced) revokes what is in flight instead of failing the run.
   */
  private makeCommitter(): Committer {
    return {
      kind: this.options.hub ? 'kafka-transaction' : 'kafka-offsets',
      commit: (batch) => this.commit(batch),
      release: (batch, error) => this.release(batch, error),
    };
  }

  private async commit(batch: SourceBatch): Promise<void> {
    const entry = this.entries.get(batch);
    if (!entry || entry.controller.signal.aborted) return;
    try {
      if (!(await this.commitOffsets(entry))) return;
    } catch (err) {
      const type = kafkaErrorType(err);
      if (!type || !REBALANCE_ERRORS.has(type)) throw err;
      // The group moved on: this generation may not commit; the records come again from the last commit.
      this.revokeAll(`commit refused (${type})`);
      return;
    }
    this.counts.acked++;
    this.settle(entry);
    this.options.onAcked?.(batch.records.length, performance.now() - entry.handedOut);
  }

  private async release(batch: SourceBatch, error: Error): Promise<void> {
    const entry = this.entries.get(batch);
    if (!entry || entry.settled) return;
    // Nothing to undo: uncommitted offsets are redelivered after a restart or rebalance.
    const { topic, partition, lastOffset } = entry;
    this.log.warn('batch not committed; it will be redelivered', {
      topic,
      partition,
      lastOffset,
      error: error.message,
    });
    this.settle(entry);
  }

  /** False when the hub found the partition dropped (a rebalance) before committing: nothing was committed. */
  private async commitOffsets({ topic, partition, lastOffset }: InFlight): Promise<boolean> {
    const hub = this.options.hub;
    if (hub) return (await hub.commit(topic, partition, lastOffset, () => this.membership())) === 'committed';
    await this.consumer!.commitOffsets([{ topic, partition, offset: nextOffset(lastOffset) }]);
    return true;
  }

  /**
   * Resolves once this member may act for its partitions: at once while the group confirmed it within the session
   * timeout, else at the next heartbeat that gets through or the next group event (a rejoin, which revokes). A member
   * frozen past its session timeout (a GC pause, a stopped host) resumes with its commits in flight: they wait here
   * until kafkajs finds out it was removed (kafkajs rejoins on UNKNOWN_MEMBER_ID without a REBALANCING event), and the
   * rejoin revokes them; the partition's fence is what makes a commit that slips through harmless.
   */
  private membership(): Promise<void> {
    if (performance.now() - this.confirmedAt < this.sessionTimeoutMs) return Promise.resolve();
    return new Promise((resolve) => this.confirmWaiters.push(resolve));
  }

  /** The group confirmed (a heartbeat, a join) or moved on: waiting commits go on (and find out which). */
  private confirmed(alive: boolean): void {
    if (alive) this.confirmedAt = performance.now();
    const waiters = this.confirmWaiters;
    this.confirmWaiters = [];
    waiters.forEach((w) => w());
  }

  private get sessionTimeoutMs(): number {
    return this.options.sessionTimeoutMs ?? 30_000;
  }

  /** A heartbeat from the fetch loop; one the group refuses (it rebalanced, or removed this member) revokes first. */
  private async heartbeat(payload: EachBatchPayload): Promise<void> {
    try {
      await payload.heartbeat();
    } catch (err) {
      const type = kafkaErrorType(err);
      if (type && REBALANCE_ERRORS.has(type)) this.revokeAll(`heartbeat refused (${type})`);
      throw err;
    }
  }

  /**
   * Transactional mode: waits for this ownership's fence and drops the messages below the committed offset it read
   * (kafkajs may have fetched the offset before the previous owner's last transaction settled). Undefined when the
   * fence failed (the run fails) or the batch went stale meanwhile.
   */
  private async unfenced(payload: EachBatchPayload, gone: () => boolean): Promise<KafkaMessage[] | undefined> {
    const { batch } = payload;
    if (!this.options.hub) return batch.messages;
    let fence = this.fences.get(batch.partition);
    if (!fence) this.fences.set(batch.partition, (fence = this.options.hub.fence(batch.topic, batch.partition)));
    // Heartbeats go on meanwhile (a heartbeat's error goes to kafkajs): the fence may wait behind a commit of the
    // partition that waits for one.
    const settled = fence.then(
      () => true,
      () => true,
    );
    while (!(await Promise.race([settled, sleep(1000).then(() => false)]))) {
      if (gone()) return undefined;
      await this.heartbeat(payload);
    }
    let from: bigint;
    try {
      from = await fence;
    } catch (err) {
      this.crashed = err;
      this.notify();
      return undefined;
    }
    if (gone()) return undefined;
    const skipped = batch.messages.filter((m) => BigInt(m.offset) < from);
    if (skipped.length === 0) return batch.messages;
    this.counts.replaySkipped += skipped.length;
    payload.resolveOffset(skipped[skipped.length - 1]!.offset);
    return batch.messages.filter((m) => BigInt(m.offset) >= from);
  }

  private async eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, isRunning, isStale } = payload;
    const size = this.options.maxBatchRecords ?? 256;
    const max = this.options.maxInFlightBatches ?? 16;
    const gone = () => this.stopping || !isRunning() || isStale();
    const messages = await this.unfenced(payload, gone);
    if (!messages) return;
    for (let i = 0; i < messages.length; i += size) {
      // Backpressure: the fetch loop for this partition waits here until the pipeline acks; heartbeats keep the
      // membership while scoring takes its time. (Not consumer.pause/resume: with kafkajs 2.2 a fetch loop whose
      // partitions are all paused does not pick up again after resume -- tulios/kafkajs#1641, seen here too.)
      while (this.inflight.size >= max) {
        if (gone()) return;
        await Promise.race([new Promise<void>((r) => this.roomWaiters.push(r)), sleep(1000)]);
        await this.heartbeat(payload);
      }
      if (gone()) return;
      const chunk = messages.slice(i, i + size);
      this.queue.push(this.makeBatch(batch.topic, batch.partition, chunk));
      this.counts.batches++;
      this.counts.records += chunk.length;
      // Only the fetch position moves; the commit waits for ack.
      resolveOffset(chunk[chunk.length - 1]!.offset);
      this.notify();
      await this.heartbeat(payload);
    }
  }

  /**
   * A new assignment: in transactional mode every owned partition's transactional id is taken over again (fencing
   * whoever had it, settling its open transaction) before its committed offset is read, and the producers of
   * partitions no longer owned are closed.
   */
  private assign(partitions: number[]): void {
    const hub = this.options.hub;
    const topic = this.options.topic;
    if (hub) {
      for (const p of this.assigned) if (!partitions.includes(p)) void hub.release(topic, p);
      this.fences = new Map(partitions.map((p) => [p, hub.fence(topic, p)]));
      // Failures surface where a batch waits for its fence (unfenced).
      for (const f of this.fences.values()) f.catch(() => undefined);
    }
    this.assigned = partitions;
  }

  /** The group consumer, its run settings and its event handlers (a crash restarts it within the budget). */
  private createConsumer(): { consumer: Consumer; run: ConsumerRunConfig } {
    const o = this.options;
    const consumer = o.kafka.consumer({
      groupId: o.groupId,
      sessionTimeout: o.sessionTimeoutMs ?? 30_000,
      // The broker answers one request per connection at a time: a heartbeat queued behind a long-poll fetch waits
      // for it, so the fetch wait must stay well inside the session timeout.
      maxWaitTimeInMs: Math.min(5000, Math.floor((o.sessionTimeoutMs ?? 30_000) / 5)),
      heartbeatInterval: o.heartbeatIntervalMs ?? 3000,
      readUncommitted: false,
      // After these retries kafkajs crashes the consumer and, for an error it deems retriable, restarts it: the
      // budget decides when an outage has lasted too long for that.
      retry: { retries: 8, restartOnFailure: async (err) => this.outage.failed(err) },
    });
    const run: ConsumerRunConfig = {
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: o.partitionsConsumedConcurrently ?? 4,
      eachBatch: (p) => this.eachBatch(p),
    };
    consumer.on(consumer.events.REBALANCING, () => this.revokeAll('group rebalancing'));
    consumer.on(consumer.events.HEARTBEAT, () => this.confirmed(true));
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      this.outage.recovered();
      // A later join is a new generation: positions restart from the committed offsets.
      if (this.joins++ > 0) this.revokeAll('group re-joined');
      this.confirmed(true);
      this.assign(e.payload.memberAssignment[o.topic] ?? []);
      this.log.info('joined consumer group', {
        groupId: o.groupId,
        generation: this.joins,
        assignment: e.payload.memberAssignment,
      });
    });
    consumer.on(consumer.events.CRASH, (e) => this.onCrash(consumer, run, e.payload));
    return { consumer, run };
  }

  /**
   * kafkajs restarts the consumer itself after an error it deems retriable (`restart`). Some errors a broker restart
   * causes it deems final (no group coordinator found while the only broker is down): those restart here, until the
   * outage outlasts the budget or the error is permanent. Either way the batches in flight belong to a generation
   * that is over: they are revoked and come again from the committed offsets.
   */
  private onCrash(consumer: Consumer, run: ConsumerRunConfig, crash: { error: Error; restart: boolean }): void {
    if (crash.restart) {
      this.revokeAll('consumer restarting after an error');
      return;
    }
    if (this.stopping || !this.outage.failed(crash.error)) {
      this.crashed = crash.error;
      this.notify();
      return;
    }
    this.revokeAll('consumer restarting after an error kafkajs does not retry');
    const delay = this.outage.backoffMs();
    this.log.warn('Kafka consumer crashed; restarting it', {
      error: String(crash.error),
      restartInMs: Math.round(delay),
      budgetLeftMs: Math.round(this.outage.leftMs),
    });
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopping) return;
      // A start that fails crashes again (CRASH), back into this handler.
      consumer.run(run).catch((err: unknown) => {
        this.crashed = err;
        this.notify();
      });
    }, delay);
  }

  async *batches(signal: AbortSignal): AsyncIterable<SourceBatch> {
    const o = this.options;
    const { consumer, run } = this.createConsumer();
    this.consumer = consumer;
    try {
      await consumer.connect();
      await consumer.subscribe({ topic: o.topic, fromBeginning: o.fromBeginning ?? true });
      await consumer.run(run);
    } catch (err) {
      throw new FilterError('kafka_unavailable', `cannot consume ${o.topic}: ${(err as Error).message}`, {
        topic: o.topic,
        groupId: o.groupId,
      });
    }
    const onAbort = () => this.notify();
    signal.addEventListener('abort', onAbort);
    try {
      while (!signal.aborted) {
        if (this.crashed) {
          throw new FilterError('kafka_consumer_crashed', `Kafka consumer stopped: ${String(this.crashed)}`, {
            topic: o.topic,
          });
        }
        const next = this.queue.shift();
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((r) => (this.wake = r));
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      // Stop fetching; the consumer stays in the group so in-flight batches can still commit on ack.
      this.stopping = true;
      try {
        consumer.pause([{ topic: o.topic }]);
      } catch {
        // not running (connect failed)
      }
    }
  }

  /**
   * Consumer-group lag over the partitions this member owns (lib/kafka/lag.ts's partitionLag, the lag probe's
   * measure too): the backlog signal autoscaling reads for self-managed Kafka. Undefined before the first assignment.
   */
  async lag(): Promise<number | undefined> {
    if (this.joins === 0) return undefined;
    const admin = this.options.kafka.admin();
    await admin.connect();
    try {
      const partitions = await groupLag(admin, this.options.topic, this.options.groupId);
      const owned = partitions.filter((p) => this.assigned.includes(p.partition));
      return Number(owned.reduce((n, p) => n + p.lag, 0n));
    } finally {
      await admin.disconnect();
    }
  }

  async close(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    await this.consumer?.disconnect();
  }
}
