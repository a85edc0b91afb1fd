/**
 * writeOutcomes: a pass of outcomes known without scoring (a top-fraction run's second pass) through the pipeline's
 * ledger: written and committed in source order, retried while a sink is down, and failed (nothing committed from the
 * failing batch on) when a record has no outcome.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { writeOutcomes } from '../../lib/pipeline/index.ts';
import type { Outcome, Sink, SourceRecord } from '../../lib/types.ts';
import { ArraySource, jsonRecord } from '../helpers/doubles.ts';

class MemorySink implements Sink {
  readonly name = 'memory';
  readonly durability = 'durable' as const;
  readonly ids: string[] = [];
  constructor(private failuresLeft = 0) {}
  async write(outcomes: readonly Outcome[]) {
    if (this.failuresLeft-- > 0) throw new Error('sink down for a while');
    this.ids.push(...outcomes.map((o) => o.id));
  }
  async flush() {}
  async close() {}
}

/** The outcome of a record `{id, keep}`: accepted when keep, else rejected. */
function outcomeOf(record: SourceRecord): Outcome {
  const { id, keep } = JSON.parse(record.raw as string) as { id: string; keep: boolean };
  if (id === 'broken') throw new Error('staged sample cannot be read back');
  const reasons = keep ? [] : [{ code: 'below_threshold' as const, message: 'below the cutoff' }];
  return { record, id, decision: keep ? 'accept' : 'reject', reasons, scores: {} };
}

const records = (...ids: string[]) => ids.map((id, i) => jsonRecord({ id, keep: i % 2 === 0 }, i));

test('every record is written to every sink and committed, in source order; repeated ids are not deduped', async () => {
  const source = new ArraySource(records('a', 'b', 'c', 'a', 'e', 'f', 'g'), 2);
  const [one, two] = [new MemorySink(), new MemorySink(2)];
  const seen: string[] = [];
  const stats = await writeOutcomes({ source, outcomeOf, sinks: [one, two], onOutcome: (o) => seen.push(o.id) });
  const order = ['a', 'b', 'c', 'a', 'e', 'f', 'g'];
  assert.deepEqual(one.ids, order);
  assert.deepEqual(two.ids, order, 'the sink that was down at first got everything, once');
  assert.deepEqual(seen, order);
  assert.deepEqual(source.acked, [0, 1, 2, 3]);
  assert.deepEqual(
    [stats.records, stats.accepted, stats.rejected, stats.batchesAcked, stats.scorerBatches],
    [7, 4, 3, 4, 0],
  );
});

test('a record without an outcome fails the pass: nothing from its batch on is committed', async () => {
  const source = new ArraySource(records('a', 'b', 'c', 'broken', 'e', 'f'), 2);
  const sink = new MemorySink();
  await assert.rejects(writeOutcomes({ source, outcomeOf, sinks: [sink] }), /staged sample cannot be read back/);
  assert.ok(!source.acked.includes(1) && !source.acked.includes(2), `acked ${source.acked.join(',')}`);
  assert.ok(!sink.ids.includes('c') && !sink.ids.includes('e'), `written ${sink.ids.join(',')}`);
  assert.ok(source.released.includes(1), 'the failing batch is handed back to its source');
});

test('an empty source is an empty pass', async () => {
  const source = new ArraySource([], 2);
  const stats = await writeOutcomes({ source, outcomeOf, sinks: [new MemorySink()] });
  assert.equal(stats.records, 0);
  assert.deepEqual(source.acked, []);
});
