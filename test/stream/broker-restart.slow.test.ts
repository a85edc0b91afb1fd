/**
 * Slow (about a minute; runs with MLMF_SLOW=1): the fault loop's 10-second Kafka broker restart, as a crash
 * (SIGKILL) of a private single-node broker mid-run. The worker must ride it out -- it never exits -- and every
 * record must end exactly once on the audit/accepted topics, with the offsets committed to the end. An outage that
 * outlasts the retry budget (MLMF_KAFKA_RETRY_BUDGET_MS) is what ends it. The default suite runs the short form in
 * broker-restart.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { assertRodeOutOutage, runOutageScenario, runPastBudget } from './broker-outage.ts';
import { needServices } from './helpers.ts';
import { PrivateKafkaBroker, privateBrokerUnavailable } from './private-broker.ts';

const skip =
  process.env.MLMF_SLOW === '1'
    ? privateBrokerUnavailable() || (await needServices('s3'))
    : 'slow suite: set MLMF_SLOW=1';

describe('Kafka broker restart (slow)', { skip }, () => {
  let broker: PrivateKafkaBroker | undefined;
  before(async () => {
    broker = await PrivateKafkaBroker.start();
  });
  after(() => broker?.destroy());

  it('the worker never exits; every record exactly once; offsets committed to the end', async () => {
    const scenario = { signal: 'SIGKILL', outageMs: 10_000, before: 600, after: 200 } as const;
    const run = await runOutageScenario(broker!, scenario);
    assertRodeOutOutage(run, scenario.before);
  });

  it('an outage past the retry budget ends the worker: exit 1, kafka_commit_failed', async () => {
    const run = await runPastBudget(broker!, 3000);
    assert.equal(run.exitCode, 1, 'a runtime failure');
    const failure = run.lines.find((l) => l.includes('"worker failed"'));
    assert.match(failure ?? '', /"code":"kafka_(commit_failed|consumer_crashed)"/, `${failure}`);
    if (/kafka_commit_failed/.test(failure!))
      assert.match(failure!, /3000 ms retry budget/, 'MLMF_KAFKA_RETRY_BUDGET_MS');
    assert.ok(run.exitAfterMs < 60_000, `it gave up in time (${run.exitAfterMs} ms after the broker went down)`);
  });
});
