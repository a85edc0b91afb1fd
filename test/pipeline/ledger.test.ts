/**
 * The batch ledger without Kafka: in-order commits whatever order records finish in, revocation (neither written nor
 * committed, ids free for the redelivery), a sink outage (nothing committed past unwritten data), hard stop (a hole:
 * nothing later is committed), and the sink retry policy (a non-retriable refusal of one outcome is dead-lettered,
 * a sink that refuses everything is fatal).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BatchLedger, type BatchEntry } from '../../lib/pipeline/ledger.ts';
import { silentLogger } from '../../lib/support/logger.ts';
import { RunFailure } from '../../lib/pipeline/run-failure.ts';
import { SinkWriter, type DeadLetterPort } from '../../lib/pipeline/sink-writer.ts';
import type { Committer, Outcome, Sink, SourceBatch } from '../../lib/types.ts';
import { FilterError } from '../../lib/types.ts';
import { jsonRecord } from '../helpers/doubles.ts';
import { settled, waitFor } from '../helpers/poll.ts';

/** A committer that records what it commits and releases, by batch name. */
class RecordingCommitter implements Committer {
  readonly kind = 'none' as const;
  readonly committed: string[] = [];
  readonly released: string[] = [];
  readonly names = new WeakMap<SourceBatch, string>();
  async commit(batch: SourceBatch) {
    this.committed.push(this.names.get(batch)!);
  }
  async release(batch: SourceBatch) {
    this.released.push(this.names.get(batch)!);
  }
  batch(name: string, ids: string[], revoked?: AbortSignal): SourceBatch {
    const b: SourceBatch = { records: ids.map((id, i) => jsonRecord({ id }, i)), committer: this, revoked };
    this.names.set(b, name);
    return b;
  }
}

/** A sink that stores outcome ids; `failing` makes writes throw the given error while set. */
class ListSink implements Sink {
  readonly name = 'list';
  readonly durability = 'durable' as const;
  readonly ids: string[] = [];
  failing: ((outcomes: readonly Outcome[]) => Error | undefined) | undefined;
  async write(outcomes: readonly Outcome[]) {
    const err = this.failing?.(outcomes);
    if (err) throw err;
    this.ids.push(...outcomes.map((o) => o.id));
  }
  async flush() {}
  async close() {}
}

const outcome = (entry: BatchEntry, i: number): Outcome => {
  const record = entry.batch.records[i]!;
  const id = (JSON.parse(record.raw as string) as { id: string }).id;
  return { record, id, decision: 'reject', reasons: [], scores: {} };
};

function ledgerWith(sink: Sink, extra: { hard?: AbortSignal; deadLetter?: DeadLetterPort } = {}) {
  const failure = new RunFailure();
  const committedIds: string[] = [];
  const writer = new SinkWriter({
    sinks: [sink],
    retryBaseMs: 5,
    retryMaxMs: 20,
    deadLetter: extra.deadLetter,
    logger: silentLogger,
  });
  const ledger = new BatchLedger({
    writer,
    maxPendingRecords: 100,
    dedupe: true,
    hard: extra.hard ?? new AbortController().signal,
    failure,
    logger: silentLogger,
    onCommitted: (outcomes) => committedIds.push(...outcomes.map((o) => o.id)),
  });
  return { ledger, failure, committedIds };
}

const settleAll = (entry: BatchEntry) => entry.batch.records.forEach((_, i) => entry.settle(i, outcome(entry, i)));

test('batches are written and committed in source order whatever order their records finish in', async () => {
  const sink = new ListSink();
  const c = new RecordingCommitter();
  const { ledger, committedIds } = ledgerWith(sink);
  const a = await ledger.admit(c.batch('a', ['a1', 'a2']));
  const b = await ledger.admit(c.batch('b', ['b1']));
  settleAll(b); // b is complete first, but waits for a
  await b.ready;
  await settled(); // everything the ledger does on b's completion has run: nothing else is queued in memory
  assert.deepEqual(c.committed, [], 'b is not committed before a');
  assert.deepEqual(sink.ids, [], 'nor written before a');
  settleAll(a);
  await ledger.drain();
  assert.deepEqual(c.committed, ['a', 'b']);
  assert.deepEqual(sink.ids, ['a1', 'a2', 'b1']);
  assert.deepEqual(committedIds, ['a1', 'a2', 'b1']);
});

test('a revoked batch is neither written nor committed, and its ids can be claimed again on redelivery', async () => {
  const sink = new ListSink();
  const c = new RecordingCommitter();
  const { ledger } = ledgerWith(sink);
  const revoke = new AbortController();
  const first = await ledger.admit(c.batch('first', ['r1', 'r2'], revoke.signal));
  assert.equal(first.claim('r1'), true);
  assert.equal(first.claim('r2'), true);
  first.settle(0, outcome(first, 0));
  revoke.abort();
  assert.ok(first.signal.aborted, 'the records of a revoked batch see the stop');
  // Redelivered (maybe to this worker) while a record of the revoked batch is still running: its ids are free at once.
  const again = await ledger.admit(c.batch('again', ['r1', 'r2']));
  assert.equal(again.claim('r1'), true, 'the redelivered id is not a duplicate');
  assert.equal(again.claim('r2'), true);
  first.lose();
  settleAll(again);
  await ledger.drain();
  assert.deepEqual(c.committed, ['again'], 'only the redelivery is committed');
  assert.deepEqual(c.released, [], 'a revoked batch belongs to another consumer: nothing to release');
  assert.deepEqual(sink.ids, ['r1', 'r2'], 'the revoked batch was never written');
});

test('a duplicate id within the run is refused by claim', async () => {
  const c = new RecordingCommitter();
  const { ledger } = ledgerWith(new ListSink());
  const e = await ledger.admit(c.batch('d', ['x', 'x']));
  assert.equal(e.claim('x'), true);
  assert.equal(e.claim('x'), false);
  settleAll(e);
  await ledger.drain();
});

test('a sink outage commits nothing past unwritten data; all commits follow in order once it is back', async () => {
  const sink = new ListSink();
  let refused = 0;
  sink.failing = () => (refused++, new Error('bucket unreachable')); // retriable (not in the catalog)
  const c = new RecordingCommitter();
  const { ledger, failure } = ledgerWith(sink);
  const entries = [];
  for (const name of ['o1', 'o2', 'o3']) entries.push(await ledger.admit(c.batch(name, [`${name}-a`])));
  entries.forEach(settleAll);
  // Three refused writes: the ledger has gone round its retry loop with every batch ready to commit.
  await waitFor('three refused writes', () => refused >= 3, 5_000, 5);
  assert.deepEqual(c.committed, [], 'nothing is committed while the first batch cannot be written');
  assert.equal(failure.failed, false, 'a retriable outage is not fatal');
  sink.failing = undefined;
  await ledger.drain();
  assert.deepEqual(c.committed, ['o1', 'o2', 'o3']);
  assert.deepEqual(sink.ids, ['o1-a', 'o2-a', 'o3-a']);
});

test('a hard stop drops in-flight batches uncommitted, releases them, and commits nothing after them', async () => {
  const sink = new ListSink();
  const c = new RecordingCommitter();
  const hard = new AbortController();
  const { ledger } = ledgerWith(sink, { hard: hard.signal });
  const a = await ledger.admit(c.batch('a', ['a1']));
  const b = await ledger.admit(c.batch('b', ['b1']));
  settleAll(b);
  hard.abort();
  a.lose(); // its record saw the stop
  await ledger.drain();
  assert.deepEqual(c.committed, [], 'b is complete but must not be committed past the dropped a');
  assert.ok(c.released.includes('a'), 'the dropped batch is handed back to its source');
});

test('an outcome a sink refuses for good is dead-lettered and the batch is committed', async () => {
  const sink = new ListSink();
  sink.failing = (os) =>
    os.some((o) => o.id === 'big') ? new FilterError('message_too_large', 'over the topic limit') : undefined;
  const letters: { id: string; code: string }[] = [];
  const deadLetter: DeadLetterPort = { send: async (o, code) => void letters.push({ id: o.id, code }) };
  const c = new RecordingCommitter();
  const { ledger, failure } = ledgerWith(sink, { deadLetter });
  const e = await ledger.admit(c.batch('m', ['ok1', 'big', 'ok2']));
  settleAll(e);
  await ledger.drain();
  assert.equal(failure.failed, false);
  assert.deepEqual(c.committed, ['m']);
  assert.deepEqual(sink.ids, ['ok1', 'ok2']);
  assert.deepEqual(letters, [{ id: 'big', code: 'message_too_large' }]);
});

test('a sink that refuses every outcome of a batch for good is broken: fatal, nothing committed', async () => {
  const sink = new ListSink();
  sink.failing = () => new FilterError('output_unwritable', 'read-only file system');
  const letters: string[] = [];
  const c = new RecordingCommitter();
  const { ledger, failure } = ledgerWith(sink, { deadLetter: { send: async (o) => void letters.push(o.id) } });
  const e = await ledger.admit(c.batch('x', ['x1', 'x2']));
  settleAll(e);
  await ledger.drain();
  assert.equal(failure.failed, true);
  assert.throws(
    () => failure.throwIfFailed(),
    (err: FilterError) => err.code === 'sink_broken',
  );
  assert.deepEqual(c.committed, []);
  assert.deepEqual(letters, [], 'nothing is dead-lettered for a broken sink');
});

test('lone refusals three in a row mean a broken sink; a success in between resets the count', async () => {
  const sink = new ListSink();
  sink.failing = (os) => (os[0]!.id.startsWith('bad') ? new FilterError('message_too_large', 'too big') : undefined);
  const letters: string[] = [];
  const c = new RecordingCommitter();
  const { ledger, failure } = ledgerWith(sink, { deadLetter: { send: async (o) => void letters.push(o.id) } });
  for (const id of ['bad1', 'bad2', 'fine', 'bad3', 'bad4']) settleAll(await ledger.admit(c.batch(id, [id])));
  await waitFor('five commits', () => c.committed.length === 5, 5_000, 5);
  assert.equal(failure.failed, false);
  assert.deepEqual(letters, ['bad1', 'bad2', 'bad3', 'bad4']);
  settleAll(await ledger.admit(c.batch('bad5', ['bad5'])));
  await ledger.drain();
  assert.equal(failure.failed, true, 'the third lone refusal in a row is fatal');
  assert.deepEqual(c.committed.length, 5);
});

test('without a dead-letter port a refusal for good stops the run, nothing committed', async () => {
  const sink = new ListSink();
  sink.failing = () => new FilterError('message_too_large', 'too big');
  const c = new RecordingCommitter();
  const { ledger, failure } = ledgerWith(sink);
  settleAll(await ledger.admit(c.batch('n', ['n1'])));
  await ledger.drain();
  assert.throws(
    () => failure.throwIfFailed(),
    (err: FilterError) => err.code === 'message_too_large',
  );
  assert.deepEqual(c.committed, []);
  assert.deepEqual(c.released, ['n']);
});
