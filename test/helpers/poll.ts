/**
 * The tests' one way to wait on state that announces itself with no event (an offset committed on the broker, a
 * queue's depth, a file another process writes): poll a condition with a deadline. Where an event exists (a log
 * line, a promise, an emitter), await that instead. Every helper takes `what` first (named in the timeout error),
 * then the condition, then the time bounds.
 */
import { performance } from 'node:perf_hooks';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';

// Deadlines on the monotonic clock: a shared VM's wall clock can step (NTP) by a minute, which timed a 60 s wait out
// after 14 s.
const now = () => performance.now();

export type Condition = () => boolean | Promise<boolean>;

/** Polls `cond` every `everyMs` until it holds; throws naming `what` once `timeoutMs` has passed without it. */
export async function waitFor(what: string, cond: Condition, timeoutMs = 30_000, everyMs = 100): Promise<void> {
  const deadline = now() + timeoutMs;
  while (!(await cond())) {
    if (now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(Math.min(everyMs, Math.max(1, deadline - now())));
  }
}

/**
 * Polls `cond` for `windowMs` and fails at the first poll where it does not hold: for claims about a span of time
 * ("the batch stays invisible past its visibility timeout"), checked all along instead of once after a sleep.
 */
export async function holdsFor(what: string, cond: Condition, windowMs: number, everyMs = 250): Promise<void> {
  const end = now() + windowMs;
  do {
    if (!(await cond()))
      throw new Error(`${what}: stopped holding ${Math.round(windowMs - (end - now()))} ms into the window`);
    await sleep(Math.max(0, Math.min(everyMs, end - now())));
  } while (now() < end);
  if (!(await cond())) throw new Error(`${what}: did not hold at the end of the ${windowMs} ms window`);
}

/**
 * Resolves once every promise continuation queued so far has run (and those they queue in turn): for a negative
 * claim about in-process code with no I/O left ("b is not committed before a"), what would have happened by now
 * provably did not.
 */
export async function settled(): Promise<void> {
  await nextTurn();
}
