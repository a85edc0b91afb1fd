import { setMaxListeners } from 'node:events';
import type { ByteAdmission, Outcome, PartitionRef, SourceBatch } from '../types.ts';
import { PIPELINE_DEFAULTS } from './defaults.ts';
import type { Logger } from '../support/logger.ts';
import { RecentIds } from './recent-ids.ts';
import type { RunFailure } from './run-failure.ts';
import { Semaphore } from './semaphore.ts';
import type { SinkWriter } from './sink-writer.ts';

export interface LedgerOptions {
  /** The sinks behind the run's retry policy. */
  readonly writer: SinkWriter;
  /** Records admitted and not yet committed or dropped: the bound on memory under any backlog. */
  readonly maxPendingRecords: number;
  /** Record bytes reserved by the source (ByteAdmission) and not yet committed or dropped. Default 256 MiB. */
  readonly maxPendingBytes?: number;
  /** Reject repeated pair ids seen in this run (remembers the last 1M). */
  readonly dedupe: boolean;
  /** Hard stop: in-flight batches are dropped uncommitted. */
  readonly hard: AbortSignal;
  readonly failure: RunFailure;
  readonly logger: Logger;
  /** Each committed batch's outcomes, in source order. */
  readonly onCommitted: (outcomes: readonly Outcome[]) => void;
  /** Records wait on nothing but sink buffering: push partial work through (the scorer's partial batch). */
  readonly onIdle?: () => void;
}

/**
 * A revocation: the source took back a batch in the ledger (it lost the partition to a rebalance), with the Kafka
 * partitions its records came from. Called synchronously as the source revokes, before any later step of the
 * batch's commit can run; a partition may be announced once per batch revoked.
 */
export type RevocationListener = (partitions: readonly PartitionRef[]) => void;

/** One source batch's life in the ledger: admitted, each record's outcome in (or lost), then written, committed. */
export class BatchEntry {
  readonly outcomes: (Outcome | undefined)[];
  /** Stops the batch's records: a hard stop, or the source revoking the batch. */
  readonly signal: AbortSignal;
  /** True once every record holds an outcome; false when one ended without (stop, fatal error). */
  readonly ready: Promise<boolean>;
  private markReady!: (complete: boolean) => void;
  private readonly ids: string[] = [];
  private remaining: number;
  private lost = false;

  constructor(
    readonly batch: SourceBatch,
    hard: AbortSignal,
    private readonly recent: RecentIds | undefined,
    private readonly onRecordDone: () => void,
    onRevoked: (entry: BatchEntry) => void,
  ) {
    const n = batch.records.length;
    this.outcomes = new Array(n);
    this.remaining = n;
    this.signal = batch.revoked ? AbortSignal.any([hard, batch.revoked]) : hard;
    // Every waiting record listens on the stop signals; hundreds at once are expected, not a leak.
    setMaxListeners(0, this.signal);
    this.ready = new Promise((resolve) => (this.markReady = resolve));
    if (n === 0) this.markReady(true);
    batch.revoked?.addEventListener('abort', () => onRevoked(this), { once: true });
  }

  get revoked(): boolean {
    return this.batch.revoked?.aborted === true;
  }

  /** The Kafka partitions the batch's records came from (none for other sources). */
  get partitions(): PartitionRef[] {
    const found = new Map<string, PartitionRef>();
    for (const { origin: o } of this.batch.records) {
      if (o.kind === 'kafka') found.set(`${o.topic}\u0000${o.partition}`, { topic: o.topic, partition: o.partition });
    }
    return [...found.values()];
  }

  /** Registers a pair id of this batch; false when the run saw it before (a duplicate). */
  claim(id: string): boolean {
    if (this.recent?.seen(id)) return false;
    this.ids.push(id);
    return true;
  }

  settle(index: number, outcome: Outcome): void {
    this.outcomes[index] = outcome;
    this.recordDone();
  }

  /** A record ended without an outcome: the batch cannot be written or committed in this run. */
  lose(): void {
    this.lost = true;
    this.recordDone();
  }

  /** The batch will be redelivered: its ids must not count as duplicates then. */
  forgetIds(): void {
    for (const id of this.ids) this.recent?.forget(id);
    // Once: a redelivered copy may have claimed them again by the time this batch is dropped.
    this.ids.length = 0;
  }

  private recordDone(): void {
    this.onRecordDone();
    if (--this.remaining === 0) this.markReady(!this.lost);
  }
}

/**
 * Owns every source batch's life: admitted (within the pending-record bound), every outcome known, written to the
 * sinks in source order through the run's retry policy (SinkWriter), committed in source order by the batch's
 * committer -- or dropped (revoked, hard stop, fatal error), forgetting its dedupe ids and releasing it to its
 * source. Once a batch is dropped for any reason but revocation, no later batch is committed in this run: Kafka
 * offsets are cumulative, so committing a later batch would commit past the dropped one.
 *
 * A revocation is the ledger's event (onRevoked): the batch's ids are forgotten and every subscriber -- the sinks,
 * through the pipeline, and whatever they stage into -- drops what it holds for the batch's partitions.
 *
 * Waiting (for room under a bound, for the drain) is on events: a record's outcome, a write handed to the sinks, a
 * batch finished. When someone waits and every admitted record has its outcome, only sink buffering holds the
 * rest, so the sinks are flushed then -- once per such event, never on a timer.
 */
export class BatchLedger {
  private readonly open = new Set<{ entry: BatchEntry; done: Promise<void> }>();
  private readonly room: Semaphore;
  private readonly bytes: Semaphore;
  private readonly recent: RecentIds | undefined;
  private writeTail: Promise<void> = Promise.resolve();
  private commitTail: Promise<void> = Promise.resolve();
  private hole = false;
  /** Records admitted that hold no outcome yet. */
  private inProgress = 0;
  private readonly revocationListeners = new Set<RevocationListener>();
  /** Waits (room under a bound, the drain) going on: while any, an idle pipeline flushes its sinks. */
  private waits = 0;
  private flushing = false;
  /** Something moved since the last flush began. */
  private flushWanted = false;
  readonly counts = { committed: 0, dropped: 0 };
  /** The byte bound as sources see it: reserved before a record is read, given back when its batch is done. */
  readonly admission: ByteAdmission;

  constructor(private readonly options: LedgerOptions) {
    this.room = new Semaphore(options.maxPendingRecords);
    this.bytes = new Semaphore(options.maxPendingBytes ?? PIPELINE_DEFAULTS.maxPendingBytes);
    this.recent = options.dedupe ? new RecentIds(1_000_000) : undefined;
    const bytes = this.bytes;
    this.admission = {
      capacity: bytes.capacity,
      tryReserve: (n) => bytes.tryAcquire(n),
      reserve: (n, signal) => this.waitFor(bytes, n, signal),
      unreserve: (n) => bytes.release(n),
    };
  }

  /** Waits for room for the batch's records, then takes it in; its records are the caller's to process. */
  async admit(batch: SourceBatch): Promise<BatchEntry> {
    await this.waitFor(this.room, batch.records.length);
    this.inProgress += batch.records.length;
    const recordDone = () => {
      if (--this.inProgress === 0) this.moved();
    };
    const entry = new BatchEntry(batch, this.options.hard, this.recent, recordDone, (e) => this.revoke(e));
    const done = this.schedule(entry);
    const item = { entry, done };
    this.open.add(item);
    void done.finally(() => {
      this.open.delete(item);
      this.moved();
    });
    return entry;
  }

  /** Subscribes `listener` to revocations (see RevocationListener); returns its unsubscribe. */
  onRevoked(listener: RevocationListener): () => void {
    this.revocationListeners.add(listener);
    return () => this.revocationListeners.delete(listener);
  }

  /**
   * The source revoked the batch: it comes again, maybe to this very worker, so its ids stop counting as seen at
   * once, and the subscribers drop what they hold for its partitions now -- synchronously, so that no commit of
   * them that is under way can go on with it (the producer hub's transaction checks for exactly this).
   */
  private revoke(entry: BatchEntry): void {
    entry.forgetIds();
    const partitions = entry.partitions;
    if (partitions.length === 0) return;
    for (const listener of this.revocationListeners) {
      try {
        listener(partitions);
      } catch (err) {
        // A subscriber that cannot drop a revoked batch's state might commit it: nothing more may commit.
        this.options.failure.fail(err);
      }
    }
  }

  /** Waits until every admitted batch is committed or dropped (or a hard stop), flushing the sinks when idle. */
  async drain(): Promise<void> {
    const { hard } = this.options;
    let stop!: () => void;
    const stopped = new Promise<void>((resolve) => (stop = resolve));
    hard.addEventListener('abort', stop, { once: true });
    this.waits++;
    try {
      this.moved();
      while (this.open.size > 0 && !hard.aborted) {
        await Promise.race([Promise.all([...this.open].map((o) => o.done)), stopped]);
      }
    } finally {
      this.waits--;
      hard.removeEventListener('abort', stop);
    }
    await this.commitTail;
  }

  /**
   * Chains the batch's write behind the previous batch's write and its commit behind the previous commit, at
   * admission, so sinks see outcomes and the source sees commits in source order whatever order records finish in.
   */
  private schedule(entry: BatchEntry): Promise<void> {
    let handedOver!: () => void;
    const issued = new Promise<void>((resolve) => {
      handedOver = () => {
        resolve();
        this.moved();
      };
    });
    const written = this.writeTail.then(() => this.writeInTurn(entry, handedOver));
    void written.finally(handedOver);
    // Overlapping sinks get the next batch once this one is handed over; others once it is durable.
    this.writeTail = this.options.writer.overlapping ? issued : written.then(() => undefined);
    const committed = Promise.all([this.commitTail, written])
      .then(([, wrote]) => this.commitInTurn(entry, wrote))
      .catch((err: unknown) => this.commitFailed(entry, err))
      .finally(() => {
        this.room.release(entry.batch.records.length);
        this.bytes.release(entry.batch.bytes ?? 0);
      });
    this.commitTail = committed;
    return committed;
  }

  /** True once the outcomes are written; false when the batch was dropped before or during the write. */
  private async writeInTurn(entry: BatchEntry, handedOver: () => void): Promise<boolean> {
    if (!(await entry.ready) || entry.revoked || this.options.failure.failed) return false;
    try {
      await this.options.writer.write(entry.outcomes as Outcome[], entry.signal, handedOver);
      return true;
    } catch (err) {
      if (!entry.signal.aborted) this.options.failure.fail(err);
      return false;
    }
  }

  private async commitInTurn(entry: BatchEntry, wrote: boolean): Promise<void> {
    if (!wrote || entry.revoked) return this.drop(entry);
    if (this.hole || this.options.failure.failed) return this.drop(entry);
    await entry.batch.committer.commit(entry.batch);
    if (entry.revoked) return this.drop(entry); // the commit found the group moved on: nothing was committed
    this.counts.committed++;
    this.options.onCommitted(entry.outcomes as Outcome[]);
  }

  private async commitFailed(entry: BatchEntry, err: unknown): Promise<void> {
    this.options.failure.fail(err);
    await this.drop(entry);
  }

  /** Not committed in this run: forget its ids (it comes again) and hand it back to its source. */
  private async drop(entry: BatchEntry): Promise<void> {
    this.counts.dropped++;
    entry.forgetIds();
    const records = entry.batch.records.length;
    if (entry.revoked) {
      this.options.logger.info('batch revoked before commit: dropped for redelivery', { records });
      return;
    }
    this.hole = true;
    const reason = this.options.hard.aborted ? 'hard stop' : 'the run failed before this batch was committed';
    await entry.batch.committer.release(entry.batch, new Error(reason)).catch((err: unknown) => {
      this.options.logger.warn('releasing an uncommitted batch failed', { records, error: String(err) });
    });
  }

  /** Waits for `n` units of `bound`; when only sink buffering holds them, the sinks are flushed (moved). */
  private async waitFor(bound: Semaphore, n: number, stop?: AbortSignal): Promise<void> {
    const { failure } = this.options;
    const stops = AbortSignal.any([this.options.hard, failure.signal, ...(stop ? [stop] : [])]);
    stops.throwIfAborted();
    if (bound.tryAcquire(n)) return;
    const acquired = bound.acquire(n, stops);
    this.waits++;
    try {
      this.moved();
      await acquired.catch(() => undefined);
    } finally {
      this.waits--;
    }
    failure.throwIfFailed();
    await acquired;
  }

  /** Something moved (an outcome, a hand-over, a batch done, a wait begun): flush if that left the sinks holding all. */
  private moved(): void {
    // A wait that begins calls this itself.
    if (this.waits === 0) return;
    this.flushWanted = true;
    if (this.flushing) return;
    this.flushing = true;
    void this.flushWhileIdle();
  }

  /** One flush per burst of events while someone waits, every admitted record has its outcome and batches are open. */
  private async flushWhileIdle(): Promise<void> {
    while (this.flushWanted) {
      this.flushWanted = false;
      // After this turn: a write handed over just now has added its outcomes to the sinks' buffers by then.
      await new Promise((resolve) => setImmediate(resolve));
      if (this.waits === 0 || this.inProgress > 0 || this.open.size === 0 || this.options.hard.aborted) continue;
      this.options.onIdle?.();
      await this.flushSinks();
    }
    this.flushing = false;
  }

  private async flushSinks(): Promise<void> {
    await this.options.writer.flush().catch((err: unknown) => this.options.failure.fail(err));
  }
}
