import assert from 'node:assert/strict';
import { FilterError } from '../../lib/types.ts';

/** The catalog code of the FilterError `fn` throws; fails the test when it throws nothing or something else. */
export function thrownCode(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FilterError, `expected a FilterError, got ${String(err)}`);
    return err.code;
  }
  assert.fail('expected a throw');
}
