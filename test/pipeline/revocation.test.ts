/**
 * Revocation is one event of the batch ledger: the source aborts a batch's `revoked` signal, and in the same turn the
 * ledger forgets the batch's ids and tells its subscribers -- the sinks, through the pipeline -- which partitions
 * to drop. Synchronous, because a commit of the partition may be waiting to go on (test/stream/revocation.test.ts
 * shows the producer hub's). Waiting for room and the drain flush the sinks on events, without a timer.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runPipeline } from '../../lib/pipeline/index.ts';
import { BatchLedger } from '../../lib/pipeline/ledger.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import { RunFailure } from '../../lib/pipeline/run-failure.ts';
import { SinkWriter } from '../../lib/pipeline/sink-writer.ts';
import { Policy } from '../../lib/policy/index.ts';
import type { Committer, Outcome, PartitionRef, Sink, SourceBatch, SourceRecord } from '../../lib/types.ts';
import { NO_COMMIT } from '../../lib/types.ts';
import { ArraySource, CaptionScorer, FakeIntake, jsonRecord } from '../helpers/doubles.ts';

const img = { base64: Buffer.from('x').toString('base64') };

const kafkaRecord = (id: string, partition: number, offset: number): SourceRecord => ({
  raw: JSON.stringify({ id, image: img, caption: 'score=90' }),
  origin: { kind: 'kafka', topic: 'in', partition, offset: String(offset) },
});

/** A sink that keeps what it is written and what it is told was revoked; `onWrite` runs before each write. */
class RevocableSink implements Sink {
  readonly name = 'revocable';
  readonly durability = 'durable' as const;
  readonly ids: string[] = [];
  readonly revocations: PartitionRef[][] = [];
  onWrite: ((outcomes: readonly Outcome[]) => void) | undefined;
  async write(outcomes: readonly Outcome[]) {
    this.onWrite?.(outcomes);
    this.ids.push(...outcomes.map((o) => o.id));
  }
  revoked(partitions: readonly PartitionRef[]) {
    this.revocations.push([...partitions]);
  }
  async flush() {}
  async close() {}
}

function ledgerOver(sinks: Sink[], maxPendingRecords = 100) {
  const failure = new RunFailure();
  const writer = new SinkWriter({ sinks, retryBaseMs: 5, retryMaxMs: 20, logger: silentLogger });
  const ledger = new BatchLedger({
    writer,
    maxPendingRecords,
    dedupe: true,
    hard: new AbortController().signal,
    failure,
    logger: silentLogger,
    onCommitted: () => {},
  });
  return { ledger, failure };
}

const batchOf = (records: SourceRecord[], revoked?: AbortSignal, committer: Committer = NO_COMMIT): SourceBatch => ({
  records,
  committer,
  revoked,
});

test("the ledger announces a revoked batch's partitions in the same turn, once, and frees its ids", async () => {
  const { ledger } = ledgerOver([]);
  const seen: PartitionRef[][] = [];
  ledger.onRevoked((p) => seen.push([...p]));
  const revoke = new AbortController();
  const records = [kafkaRecord('a', 3, 10), kafkaRecord('b', 3, 11), kafkaRecord('c', 5, 7)];
  const entry = await ledger.admit(batchOf(records, revoke.signal));
  assert.equal(entry.claim('a'), true);
  revoke.abort();
  assert.deepEqual(seen, [
    [
      { topic: 'in', partition: 3 },
      { topic: 'in', partition: 5 },
    ],
  ]);
  const again = await ledger.admit(batchOf([kafkaRecord('a', 3, 10)]));
  assert.equal(again.claim('a'), true, 'the redelivered id is not a duplicate');
  revoke.abort();
  assert.equal(seen.length, 1, 'one announcement per batch revoked');
});

test('a batch without Kafka records announces nothing; a subscriber that throws fails the run', async () => {
  const { ledger, failure } = ledgerOver([]);
  const seen: PartitionRef[][] = [];
  ledger.onRevoked((p) => seen.push([...p]));
  const file = new AbortController();
  await ledger.admit(batchOf([jsonRecord({ id: 'f' })], file.signal));
  file.abort();
  assert.deepEqual(seen, []);
  ledger.onRevoked(() => {
    throw new Error('cannot drop');
  });
  const kafka = new AbortController();
  await ledger.admit(batchOf([kafkaRecord('k', 0, 0)], kafka.signal));
  kafka.abort();
  assert.equal(seen.length, 1, 'the other subscribers still hear it');
  assert.equal(failure.failed, true, 'state it could not drop may not be committed');
});

test("the pipeline subscribes every sink's revoked hook; the revoked batch is neither written nor acked", async () => {
  const records = [0, 1, 2, 3, 4, 5].map((i) => kafkaRecord(`r${i}`, Math.floor(i / 2), i));
  const revoke = new AbortController();
  const source = new ArraySource(records, 2, (b) => (b === 1 ? revoke.signal : undefined));
  const sink = new RevocableSink();
  // The first batch's write comes after every batch was admitted (the scorer takes its time): revoke the second then.
  sink.onWrite = () => revoke.abort();
  await runPipeline({
    source,
    intake: new FakeIntake(),
    scorer: new CaptionScorer(2, 20),
    policy: new Policy(),
    sinks: [sink],
  });
  assert.deepEqual(sink.revocations, [[{ topic: 'in', partition: 1 }]]);
  assert.deepEqual(source.acked, [0, 2]);
  assert.deepEqual(sink.ids.sort(), ['r0', 'r1', 'r4', 'r5']);
});

/** A sink whose writes are durable only once flushed, and which never flushes by itself. */
class FlushOnlySink implements Sink {
  readonly name = 'flush-only';
  readonly durability = 'durable' as const;
  readonly overlappingWrites = true;
  flushes = 0;
  private waiting: (() => void)[] = [];
  write(): Promise<void> {
    return new Promise((resolve) => this.waiting.push(resolve));
  }
  async flush() {
    this.flushes++;
    const w = this.waiting;
    this.waiting = [];
    w.forEach((r) => r());
  }
  async close() {}
}

test('a full bound and the drain end by flushing a sink that holds everything, on events', async () => {
  const sink = new FlushOnlySink();
  const { ledger } = ledgerOver([sink], 4);
  const committed: number[] = [];
  const committer: Committer = {
    kind: 'none',
    commit: async (b) => void committed.push(Number(b.records[0]!.origin.kind === 'file' && b.records[0]!.origin.line)),
    release: async () => {},
  };
  const settle = (e: Awaited<ReturnType<typeof ledger.admit>>) =>
    e.batch.records.forEach((record, i) =>
      e.settle(i, { record, id: `x${i}`, decision: 'reject', reasons: [], scores: {} }),
    );
  for (let b = 0; b < 4; b++) {
    // Four records of room: every second admission waits until the sink flushes what it holds.
    settle(
      await ledger.admit(
        batchOf([jsonRecord({ id: 'a' }, 2 * b), jsonRecord({ id: 'b' }, 2 * b + 1)], undefined, committer),
      ),
    );
  }
  await ledger.drain();
  assert.deepEqual(committed, [0, 2, 4, 6]);
  assert.ok(sink.flushes >= 2, `flushed when waiting (${sink.flushes})`);
});
