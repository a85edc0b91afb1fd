/**
 * Slow (2-4 minutes: a full `npm run build`, `npm pack`, an `npm install` of the tarball and a synth with real
 * esbuild bundling; the default suite leaves *.slow.test.ts out). Issue 13's proof that the construct is a library:
 * the package is built and packed from a copy of this checkout, the tarball is installed into a fresh CDK app outside
 * the repository (its dependencies through npm, preferring the local cache; aws-cdk-lib, constructs, cdk-nag and
 * esbuild linked from this checkout's node_modules as the app's own), and that app, written in plain JavaScript,
 * imports an existing VPC, an MSK cluster by ARN with its security group, an SQS queue and buckets with
 * customer-managed keys, and synthesises with cdk-nag's AwsSolutions checks. Docker must not be called.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Template } from 'aws-cdk-lib/assertions';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import { PKG, ROOT } from '../helpers/package-consumer.ts';
import { readViolations, statements } from './helpers.ts';

const run = promisify(execFile);
const MSK_SG = 'sg-0123456789abcdef0';
const KEY = (name: string) => `arn:aws:kms:eu-west-1:111122223333:key/${name}`;
const QUEUE_ARN = 'arn:aws:sqs:eu-west-1:111122223333:crawler-pairs';
/** Packages the consumer app brings itself, linked from this checkout to save a download. */
const APP_OWN = ['aws-cdk-lib', 'constructs', 'cdk-nag', 'esbuild'];

/** The consumer app: what a user with an existing VPC, cluster, queue, buckets and keys writes. */
const APP = `
import { App, Stack, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks } from 'cdk-nag';
import { MlmFilterPipeline } from '${PKG.name}/construct';

const app = new App({ outdir: process.env.CONSUMER_OUTDIR });
const stack = new Stack(app, 'CrawlFilter', { env: { account: '111122223333', region: 'eu-west-1' } });
const key = (id, name) => kms.Key.fromKeyArn(stack, id, 'arn:aws:kms:eu-west-1:111122223333:key/' + name);
new MlmFilterPipeline(stack, 'Filter', {
  pipelineName: 'crawl-filter',
  vpc: ec2.Vpc.fromVpcAttributes(stack, 'Vpc', {
    vpcId: 'vpc-0123456789abcdef0',
    availabilityZones: ['eu-west-1a', 'eu-west-1b'],
    privateSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'],
  }),
  kafka: {
    kind: 'msk-iam',
    clusterArn: 'arn:aws:kafka:eu-west-1:111122223333:cluster/crawl/5f2c1d7e-aaaa-bbbb-cccc-0123456789ab-3',
    bootstrapServers: ['b-1.crawl.kafka.eu-west-1.amazonaws.com:9098', 'b-2.crawl.kafka.eu-west-1.amazonaws.com:9098'],
    securityGroup: ec2.SecurityGroup.fromSecurityGroupId(stack, 'MskSg', '${MSK_SG}'),
  },
  kafkaSource: { topic: 'crawl.pairs' },
  sqsSource: {
    queue: sqs.Queue.fromQueueAttributes(stack, 'Queue', { queueArn: '${QUEUE_ARN}', keyArn: '${KEY('queue-key')}' }),
  },
  topics: { audit: 'mlmf.audit', accepted: 'mlmf.accepted' },
  model: {
    bucket: s3.Bucket.fromBucketAttributes(stack, 'Models', { bucketName: 'models', encryptionKey: key('ModelKey', 'model-key') }),
    key: 'mlm/qwen-1.5b.tar',
    sha256: 'ab'.repeat(32),
  },
  curated: {
    bucket: s3.Bucket.fromBucketAttributes(stack, 'Lake', { bucketName: 'data-lake', encryptionKey: key('LakeKey', 'lake-key') }),
  },
});
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
app.synth();
`;

/** npm's own settings of the parent run (npm test) must not leak into the child npm runs. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith('npm_')));
  return { ...env, AWS_EC2_METADATA_DISABLED: 'true', ...extra };
}

/** `npm run build` then `npm pack` on a copy of the package's files: the shared dist/ of the checkout is not touched. */
async function packPackage(work: string): Promise<string> {
  const stage = path.join(work, 'package');
  for (const entry of [...PKG.files.filter((f) => !f.startsWith('dist')), 'package.json', 'package-lock.json']) {
    fs.cpSync(path.join(ROOT, entry), path.join(stage, entry), { recursive: true });
  }
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(stage, 'node_modules'), 'dir');
  await run('npm', ['run', 'build'], { cwd: stage, env: childEnv(), maxBuffer: 64 << 20 });
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], {
    cwd: stage,
    env: childEnv(),
    maxBuffer: 64 << 20,
  });
  const [packed] = JSON.parse(stdout) as { filename: string }[];
  return path.join(work, packed!.filename);
}

/** A fresh app directory with the tarball installed and the app's own CDK packages linked in. */
async function installConsumer(work: string, tarball: string): Promise<string> {
  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(
    path.join(app, 'package.json'),
    JSON.stringify({ name: 'crawl-app', private: true, type: 'module' }),
  );
  // --ignore-scripts: onnxruntime-node's and sharp's install scripts fetch binaries a synth never loads.
  const args = ['install', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund', tarball];
  await run('npm', args, { cwd: app, env: childEnv(), maxBuffer: 64 << 20 });
  for (const name of APP_OWN) {
    fs.symlinkSync(path.join(ROOT, 'node_modules', name), path.join(app, 'node_modules', name), 'dir');
  }
  fs.mkdirSync(path.join(app, 'node_modules', '.bin'), { recursive: true });
  fs.symlinkSync('../esbuild/bin/esbuild', path.join(app, 'node_modules', '.bin', 'esbuild'));
  fs.writeFileSync(path.join(app, 'app.mjs'), APP);
  return app;
}

interface Synth {
  readonly code: number;
  readonly output: string;
  readonly dockerCalls: string;
}

/** Runs the app with a `docker` that records any call and fails. */
async function synthConsumer(work: string, app: string, outdir: string): Promise<Synth> {
  const bin = path.join(work, 'fake-bin');
  const trace = path.join(work, 'docker-called');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'docker'), `#!/bin/sh\necho "$@" >> ${trace}\nexit 1\n`, { mode: 0o755 });
  const env = childEnv({ CONSUMER_OUTDIR: outdir, CDK_DOCKER: path.join(bin, 'docker') });
  env.PATH = `${bin}:${process.env.PATH}`;
  const dockerCalls = () => (fs.existsSync(trace) ? fs.readFileSync(trace, 'utf8') : '');
  try {
    const r = await run(process.execPath, ['app.mjs'], { cwd: app, env, maxBuffer: 64 << 20 });
    return { code: 0, output: r.stdout + r.stderr, dockerCalls: dockerCalls() };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, output: e.stdout + e.stderr, dockerCalls: dockerCalls() };
  }
}

type Resource = { Type: string; Properties: Record<string, unknown>; DependsOn?: string[] };

describe('the packed construct in a CDK app outside the repository', () => {
  let work: string;
  let app: string;
  let outdir: string;
  let synth: Synth;
  let template: Template;
  let resources: Record<string, Resource>;
  let assets: {
    files: Record<string, { source: { path: string } }>;
    dockerImages: Record<string, { source: { directory: string; dockerFile?: string; platform?: string } }>;
  };

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'mlmf-consumer-app-'));
    const tarball = await packPackage(work);
    app = await installConsumer(work, tarball);
    outdir = path.join(work, 'cdk.out');
    synth = await synthConsumer(work, app, outdir);
    const file = path.join(outdir, 'CrawlFilter.template.json');
    if (!fs.existsSync(file)) return;
    const json = JSON.parse(fs.readFileSync(file, 'utf8')) as { Resources: Record<string, Resource> };
    template = Template.fromJSON(json);
    resources = json.Resources;
    assets = JSON.parse(fs.readFileSync(path.join(outdir, 'CrawlFilter.assets.json'), 'utf8')) as typeof assets;
  });
  after(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const ofType = (type: string) => Object.entries(resources).filter(([, r]) => r.Type === type);

  test('synthesises with cdk-nag AwsSolutions clean, without Docker, from the installed package', () => {
    assert.deepEqual(readViolations(outdir), []);
    assert.equal(synth.code, 0, synth.output);
    assert.equal(synth.dockerCalls, '', 'docker was called during synth');
    const installed = fs.realpathSync(path.join(app, 'node_modules', PKG.name));
    assert.ok(!installed.startsWith(fs.realpathSync(ROOT)), `the package resolves into the checkout: ${installed}`);
    assert.ok(fs.existsSync(path.join(installed, 'dist', 'infra', 'lib', 'pipeline.js')));
  });

  test('the brokers let in the workers, the topic provisioner and the lag probe, before each first connects', () => {
    const rules = ofType('AWS::EC2::SecurityGroupIngress').filter(
      ([, r]) => r.Properties.GroupId === MSK_SG && r.Properties.FromPort === 9098 && r.Properties.ToPort === 9098,
    );
    const from = (client: string) => rules.find(([, r]) => JSON.stringify(r.Properties).includes(client))?.[0];
    for (const client of ['WorkerSg', 'TopicProvisionerSg', 'KafkaLagProbeSg']) assert.ok(from(client), client);
    assert.equal(rules.length, 3);
    const [, topics] = ofType('Custom::KafkaTopics')[0]!;
    assert.ok(topics.DependsOn?.includes(from('TopicProvisionerSg')!), 'topic creation may run before its rule');
    for (const [id, svc] of ofType('AWS::ECS::Service')) {
      assert.ok(svc.DependsOn?.includes(from('WorkerSg')!), `${id} may start tasks before their rule`);
    }
  });

  test('the customer-managed keys of the imported queue and buckets are granted to the task roles', () => {
    const st = statements(template);
    const onKey = (role: string, name: string) =>
      st.filter((s) => s.policy.includes(role) && JSON.stringify(s.Resource).includes(KEY(name))).map((s) => s.Action);
    assert.deepEqual(onKey('SqsTaskRole', 'queue-key'), [['kms:Decrypt']]);
    assert.deepEqual(onKey('KafkaTaskRole', 'queue-key'), []);
    for (const role of ['SqsTaskRole', 'KafkaTaskRole']) {
      assert.deepEqual(onKey(role, 'model-key'), [['kms:Decrypt']], role);
      assert.deepEqual(onKey(role, 'lake-key'), [['kms:GenerateDataKey', 'kms:Decrypt']], role);
    }
    const consume = st.find((s) => s.policy.includes('SqsTaskRole') && s.Action.includes('sqs:ReceiveMessage'));
    assert.deepEqual(consume?.Resource, [QUEUE_ARN]);
  });

  test('the services depend on the capacity provider association and carry no DesiredCount', () => {
    const [association] = ofType('AWS::ECS::ClusterCapacityProviderAssociations').map(([id]) => id);
    assert.ok(association);
    const services = ofType('AWS::ECS::Service');
    assert.equal(services.length, 2);
    for (const [id, svc] of services) {
      assert.ok(svc.DependsOn?.includes(association), `${id}: DependsOn ${svc.DependsOn?.join(', ')}`);
      assert.equal(svc.Properties.DesiredCount, undefined, id);
    }
  });

  test('tasks are blocked from the instance metadata service', () => {
    const [[, lt]] = ofType('AWS::EC2::LaunchTemplate') as [[string, Resource]];
    const data = lt.Properties.LaunchTemplateData as { MetadataOptions: unknown; UserData: unknown };
    assert.match(JSON.stringify(data.UserData), /ECS_AWSVPC_BLOCK_IMDS=true >> \/etc\/ecs\/ecs\.config/);
    assert.deepEqual(data.MetadataOptions, { HttpPutResponseHopLimit: 1, HttpTokens: 'required' });
    for (const [, td] of ofType('AWS::ECS::TaskDefinition')) assert.equal(td.Properties.NetworkMode, 'awsvpc');
  });

  test('the worker image: linux/amd64, built from the installed package, every COPY source in its context', () => {
    const images = Object.values(assets.dockerImages);
    assert.equal(images.length, 1);
    const { directory, dockerFile, platform } = images[0]!.source;
    assert.equal(platform, 'linux/amd64');
    const context = path.join(outdir, directory);
    const dockerfile = fs.readFileSync(path.join(context, dockerFile!), 'utf8');
    const sources = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/));
    assert.ok(sources.length >= 5, sources.join(' '));
    for (const src of sources.filter((s) => !s.includes('*'))) {
      assert.ok(fs.existsSync(path.join(context, src)), `the build context lacks ${src} (Dockerfile COPY)`);
    }
    // The installed package carries the tested lock for the image's npm ci, though npm never packs the root one.
    const lock = path.join(context, 'functions', 'worker', 'package-lock.json');
    assert.ok(fs.existsSync(lock), 'the build context has no functions/worker/package-lock.json');
    assert.ok(fs.readFileSync(lock).equals(fs.readFileSync(path.join(ROOT, 'package-lock.json'))), 'a stale lock');
    for (const absent of ['node_modules', 'dist', 'test', 'infra', 'package-lock.json']) {
      assert.ok(!fs.existsSync(path.join(context, absent)), `${absent} is in the build context`);
    }
  });

  test('the Lambda code is bundled from the installed package (entries and kafkajs), not from a checkout', () => {
    const bundles = Object.values(assets.files)
      .map((f) => path.join(outdir, f.source.path))
      .filter((p) => fs.existsSync(path.join(p, 'index.mjs.map')));
    const entries = bundles.map((b) => {
      const map = JSON.parse(fs.readFileSync(path.join(b, 'index.mjs.map'), 'utf8')) as { sources: string[] };
      const code = fs.readFileSync(path.join(b, 'index.mjs'), 'utf8');
      assert.ok(/kafkajs|KafkaJS/.test(code), `kafkajs is not bundled in ${b}`);
      assert.ok(
        !map.sources.some((s) => path.resolve(b, s).startsWith(ROOT)),
        'a bundled file comes from the checkout',
      );
      return map.sources.find((s) => /functions\/lambda\/[a-z-]+\.(ts|js)$/.test(s));
    });
    for (const name of ['topic-provisioner', 'lag-probe']) {
      const entry = entries.find((e) => e?.includes(`/lambda/${name}.`));
      assert.ok(entry?.includes(`node_modules/${PKG.name}/`), `${name}: ${entries.join(', ')}`);
    }
  });

  test('the lag probe: scheduled every minute, and the Kafka service scales and wakes on its metric', () => {
    const probeId = ofType('AWS::Lambda::Function').find(([id]) => id.includes('KafkaLagProbe'))?.[0];
    const rule = ofType('AWS::Events::Rule').find(([id]) => id.includes('KafkaLagProbe'))?.[1];
    assert.ok(probeId && rule, 'no lag probe function or schedule');
    assert.equal(rule.Properties.ScheduleExpression, 'rate(1 minute)');
    assert.deepEqual((rule.Properties.Targets as { Arn: unknown }[])[0]!.Arn, { 'Fn::GetAtt': [probeId, 'Arn'] });
    const backlog = (r: Resource) =>
      JSON.stringify(r.Properties).includes(`"MetricName":"${METRIC.KafkaBacklog}"`) &&
      JSON.stringify(r.Properties).includes('"Value":"crawl-filter"');
    const policies = ofType('AWS::ApplicationAutoScaling::ScalingPolicy').filter(
      ([, r]) => r.Properties.PolicyType === 'TargetTrackingScaling' && backlog(r),
    );
    assert.equal(policies.length, 1, 'the Kafka target tracking reads the probe');
    const wake = ofType('AWS::CloudWatch::Alarm').filter(([id, r]) => id.includes('KafkaWake') && backlog(r));
    assert.equal(wake.length, 1, 'the Kafka wake-from-zero alarm reads the probe');
  });

  const cfnLint = path.join(ROOT, '.services', 'cfn-lint', 'bin', 'cfn-lint');
  test(
    'cfn-lint passes the template',
    { skip: fs.existsSync(cfnLint) ? false : 'cfn-lint is not installed: scripts/cfn-lint.sh installs it' },
    async () => {
      // W3005 comes from aws-cdk-lib's own Lambda/Provider constructs (as in scripts/cfn-lint.sh).
      const file = path.join(outdir, 'CrawlFilter.template.json');
      const r = await run(cfnLint, ['--format', 'parseable', '--ignore-checks', 'W3005', '--', file]).catch(
        (e: { stdout: string; stderr: string }) => ({ stdout: e.stdout, stderr: e.stderr, failed: true }),
      );
      assert.ok(!('failed' in r), `${r.stdout}${r.stderr}`);
    },
  );
});
