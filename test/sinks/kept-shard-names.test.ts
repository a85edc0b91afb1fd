/**
 * --keep-shard-names' check of the input shard names (lib/sinks/kept-shard-names.ts): two inputs with one basename
 * would write one curated shard, and a name that is no plain file name (or a numbered run name) cannot be kept.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkKeptShardNames, keptStem } from '../../lib/sinks/kept-shard-names.ts';
import { FilterError } from '../../lib/types.ts';

const refusal = (shards: string[]) => {
  try {
    checkKeptShardNames(shards);
  } catch (err) {
    assert.ok(err instanceof FilterError);
    assert.equal(err.code, 'bad_usage');
    return err.message;
  }
  return undefined;
};

test('two inputs with one basename are refused, naming both', () => {
  assert.equal(refusal(['a/00000.tar', 'a/00001.tar', 'b/00002.tar']), undefined);
  const message = refusal(['a/00000.tar', 'a/00001.tar', 'b/00000.tar']);
  assert.match(message!, /inputs a\/00000\.tar and b\/00000\.tar would both write curated\/00000\.tar/);
});

test('names a curated shard cannot take are refused', () => {
  assert.equal(keptStem('/pool/laion-00042.tar'), 'laion-00042');
  for (const bad of ['x/shard-000001.tar', 'x/a b.tar', 'x/.hidden.tar', 'x/a.b.tar', `x/${'9'.repeat(101)}.tar`]) {
    assert.match(refusal([bad])!, /cannot name a curated shard after/, bad);
  }
  assert.equal(refusal(['x/shard_1.tar', 'x/00000000.tar', 'x/A-b_c.tar']), undefined);
});
