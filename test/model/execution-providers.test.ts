/** The one execution-provider list: the CLI's choices, the worker's environment and the construct's context read it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { App } from 'aws-cdk-lib';
import { MlmFilterStack } from '../../infra/lib/app-config.ts';
import { buildProgram } from '../../lib/cli/main.ts';
import { FilterError } from '../../lib/errors.ts';
import { EXECUTION_PROVIDERS, isExecutionProvider } from '../../lib/model/execution-providers.ts';
import { configFromEnv } from '../../lib/worker/config.ts';
import { WORKER_ENV } from '../../lib/worker-env.ts';

const base = {
  MLMF_SOURCE: 'sqs',
  MLMF_SQS_QUEUE_URL: 'q',
  MLMF_BUCKET: 'b',
  MLMF_AUDIT_TOPIC: 'a',
  MLMF_BROKERS: 'k:9092',
};

test('the CLI offers exactly the listed providers: filter as choices, worker in its help', () => {
  const option = (command: string) =>
    buildProgram()
      .commands.find((c) => c.name() === command)
      ?.options.find((o) => o.long === '--execution-provider');
  assert.deepEqual(option('filter')?.argChoices, [...EXECUTION_PROVIDERS]);
  assert.ok(option('worker')?.description.startsWith(EXECUTION_PROVIDERS.join(' | ')), option('worker')?.description);
});

test('the worker takes each listed provider from MLMF_EXECUTION_PROVIDER and refuses another one', () => {
  for (const ep of EXECUTION_PROVIDERS) {
    assert.equal(configFromEnv({ ...base, MLMF_EXECUTION_PROVIDER: ep }).executionProvider, ep);
  }
  assert.throws(
    () => configFromEnv({ ...base, MLMF_EXECUTION_PROVIDER: 'tpu' }),
    (e: unknown) =>
      e instanceof FilterError && e.code === 'worker_config' && e.message.includes(EXECUTION_PROVIDERS.join('|')),
  );
  assert.equal(WORKER_ENV.MLMF_EXECUTION_PROVIDER, EXECUTION_PROVIDERS.join(' | '));
  assert.ok(!isExecutionProvider('CUDA') && !isExecutionProvider(undefined));
});

test("the construct's executionProvider context is checked against the same list", () => {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  assert.throws(
    () => new MlmFilterStack(app, 'BadEp', { context: (k) => (k === 'executionProvider' ? 'tpu' : undefined) }),
    /context executionProvider must be one of cuda, webgpu, cpu, got tpu/,
  );
});
