import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App, Stack, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { MlmFilterStack, type ContextKey } from '../../infra/lib/app-config.ts';
import { MSK_ARN, SHA, readViolations } from './helpers.ts';

test('negative control: the AwsSolutions checks do report an unacknowledged finding', () => {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlmf-nag-'));
  const app = new App({ outdir });
  const stack = new Stack(app, 'Bad');
  new s3.Bucket(stack, 'PlainBucket');
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  assert.throws(() => app.synth(), /Validation failed/);
  const rules = readViolations(outdir).map((v) => v.rule);
  assert.ok(rules.includes('AwsSolutions-S1'), rules.join(', '));
  assert.ok(rules.includes('AwsSolutions-S10'), rules.join(', '));
});

test('app stack from context: bundles the Lambda with local esbuild, never calls Docker, passes cdk-nag', () => {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlmf-app-'));
  // Any Docker invocation (bundling fallback or image build) would run this and leave a trace.
  const trace = path.join(outdir, 'docker-called');
  const fakeDocker = path.join(outdir, 'docker');
  fs.writeFileSync(fakeDocker, `#!/bin/sh\necho "$@" >> ${trace}\nexit 1\n`, { mode: 0o755 });
  const saved = { CDK_DOCKER: process.env.CDK_DOCKER, PATH: process.env.PATH };
  process.env.CDK_DOCKER = fakeDocker;
  process.env.PATH = `${outdir}:${process.env.PATH}`;
  try {
    const context: Partial<Record<ContextKey, string>> = {
      kafka: 'msk-iam',
      mskClusterArn: MSK_ARN,
      bootstrapServers: 'b-1.x:9098',
      brokersAdmitVpc: 'true',
      sourceTopic: 'crawl',
      sqs: 'create',
      auditTopic: 'audit',
      modelBucket: 'models',
      modelKey: 'm.tar',
      modelSha256: SHA,
      minTasks: '0',
      maxTasks: '2',
      alarmEmail: 'ops@example.com',
      instanceTypes: 'g6.xlarge',
    };
    const app = new App({ outdir });
    const stack = new MlmFilterStack(app, 'MlmFilter', { context: (k) => context[k] });
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    app.synth();
    assert.deepEqual(readViolations(outdir), []);
    assert.deepEqual(stack.examplesUsed, [], 'real brokers given: no example fallback');
    assert.ok(
      !fs.existsSync(trace),
      `docker was called: ${fs.existsSync(trace) ? fs.readFileSync(trace, 'utf8') : ''}`,
    );

    const t = Template.fromStack(stack);
    t.resourceCountIs('AWS::SNS::Subscription', 1);
    t.hasResourceProperties('AWS::SNS::Topic', {
      KmsMasterKeyId: { 'Fn::GetAtt': [Match.stringLikeRegexp('AlarmTopicKey'), 'Arn'] },
    });
    const assets = JSON.parse(fs.readFileSync(path.join(outdir, 'MlmFilter.assets.json'), 'utf8')) as {
      files: Record<string, { source: { path: string } }>;
    };
    const bundles = Object.values(assets.files)
      .map((f) => path.join(outdir, f.source.path))
      .filter((p) => fs.existsSync(path.join(p, 'index.mjs')));
    assert.equal(bundles.length, 2, 'the topic provisioner and the lag probe bundles');
    for (const bundle of bundles) {
      const code = fs.readFileSync(path.join(bundle, 'index.mjs'), 'utf8');
      assert.ok(code.length > 50_000 && /kafkajs|KafkaJS/.test(code), `kafkajs is bundled in ${bundle}`);
    }
  } finally {
    process.env.CDK_DOCKER = saved.CDK_DOCKER;
    process.env.PATH = saved.PATH;
    if (saved.CDK_DOCKER === undefined) delete process.env.CDK_DOCKER;
  }
});

test('app stack without context falls back to the example configuration and says so', () => {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new MlmFilterStack(app, 'Example', { context: () => undefined });
  assert.ok(stack.examplesUsed.includes('bootstrapServers'));
  assert.ok(stack.examplesUsed.includes('modelSha256'));
  Template.fromStack(stack).resourceCountIs('AWS::ECS::Service', 2);
});

test('a partial real configuration does not silently borrow example values', () => {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  assert.throws(
    () => new MlmFilterStack(app, 'Partial', { context: (k) => (k === 'bootstrapServers' ? 'b:9098' : undefined) }),
    /context mskClusterArn is required/,
  );
});

test('an imported VPC from context synthesises without warnings (cdk synth --strict)', () => {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const context: Partial<Record<ContextKey, string>> = {
    kafka: 'msk-iam',
    mskClusterArn: MSK_ARN,
    bootstrapServers: 'b-1.x:9098',
    kafkaSecurityGroupId: 'sg-0123456789abcdef0',
    vpcId: 'vpc-0123456789abcdef0',
    subnetIds: 'subnet-0aaaaaaaaaaaaaaa1,subnet-0aaaaaaaaaaaaaaa2',
    availabilityZones: 'eu-west-1a,eu-west-1b',
    sourceTopic: 'crawl',
    auditTopic: 'audit',
    modelBucket: 'models',
    modelKey: 'm.tar',
    modelSha256: SHA,
  };
  const stack = new MlmFilterStack(app, 'Imported', {
    env: { account: '111122223333', region: 'eu-west-1' },
    context: (k) => context[k],
  });
  app.synth();
  assert.deepEqual(Annotations.fromStack(stack).findWarning('*', Match.anyValue()), []);
});
