/**
 * onnxruntime's telemetry in the deployed fleet: the worker image and the tasks set ORT_DISABLE_TELEMETRY=1 under
 * the worker's own policy (a second line of defence, and the only one for images not built from our Dockerfile),
 * and `worker.onnxruntimeTelemetry` is the operator's explicit opt-in.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import type { Stack } from 'aws-cdk-lib';
import { MSK_ARN, brokersVpc, model, synth, workerEnv } from './helpers.ts';

const props = (onnxruntimeTelemetry?: boolean) => (stack: Stack) => ({
  vpc: brokersVpc(stack),
  brokersAdmitVpc: true,
  kafka: { kind: 'msk-iam' as const, clusterArn: MSK_ARN, bootstrapServers: ['b-1.example:9098'] },
  sqsSource: {},
  topics: { audit: 'mlmf.audit', provision: false },
  model: model(stack),
  worker: onnxruntimeTelemetry === undefined ? {} : { onnxruntimeTelemetry },
});

describe('onnxruntime telemetry in the fleet', () => {
  test('tasks run with ORT_DISABLE_TELEMETRY=1 and no opt-in by default', () => {
    const env = workerEnv(synth(props(), { nag: false }).template, 'SqsTask');
    assert.equal(env.ORT_DISABLE_TELEMETRY, '1');
    assert.equal(env.MLMF_ORT_TELEMETRY, undefined);
  });

  test('a user environment cannot turn it on by accident; onnxruntimeTelemetry: true is the opt-in', () => {
    const accidental = (stack: Stack) => ({
      ...props()(stack),
      worker: { environment: { ORT_DISABLE_TELEMETRY: '0' } },
    });
    assert.equal(workerEnv(synth(accidental, { nag: false }).template, 'SqsTask').ORT_DISABLE_TELEMETRY, '1');
    const on = workerEnv(synth(props(true), { nag: false }).template, 'SqsTask');
    assert.equal(on.MLMF_ORT_TELEMETRY, '1');
    assert.equal(on.ORT_DISABLE_TELEMETRY, '0');
  });

  test("the worker image's runtime stage sets ORT_DISABLE_TELEMETRY=1", () => {
    const dockerfile = fs.readFileSync(new URL('../../functions/worker/Dockerfile', import.meta.url), 'utf8');
    const stages = dockerfile.split(/^FROM /m);
    const runtime = stages[stages.length - 1]!;
    // ENV instructions continue over backslash-newlines: join them before matching.
    const envs = runtime
      .replace(/\\\n/g, ' ')
      .split('\n')
      .filter((l) => /^ENV\s/.test(l));
    assert.ok(
      envs.some((l) => /\sORT_DISABLE_TELEMETRY=1(\s|$)/.test(l)),
      `no ENV ORT_DISABLE_TELEMETRY=1 in the runtime stage: ${envs.join(' | ')}`,
    );
  });
});
