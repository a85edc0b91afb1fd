/**
 * Slow (2-4 minutes: the construct's build and `npm pack`, an `npm install` from the npm registry and a synth; the
 * default suite leaves *.slow.test.ts out). Issues 13 and 22: the construct is a light library. The construct package
 * (infra/, built and packed from a copy of this checkout) is installed into a fresh CDK app outside the repository as
 * a user installs it: `npm install <tarball> aws-cdk-lib constructs cdk-nag` with install scripts enabled, from the
 * npm registry only (no mirror, no local link), so the app gets the newest aws-cdk-lib the registry has, not the
 * lock's. Its node_modules must hold no worker runtime (onnxruntime-node, sharp, kafkajs, the AWS SDK); its size is
 * reported. The app, written in plain JavaScript, imports an existing VPC, an MSK cluster by ARN with its security
 * group, an SQS queue and buckets with customer-managed keys, and synthesises with cdk-nag's AwsSolutions checks and
 * without a warning (what `cdk synth --strict` refuses). Neither Docker nor esbuild is called.
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
import { CONSTRUCT, ROOT, childEnv, packConstruct } from '../helpers/package-consumer.ts';
import { readViolations, statements } from './helpers.ts';

const run = promisify(execFile);
const MSK_SG = 'sg-0123456789abcdef0';
const KEY = (name: string) => `arn:aws:kms:eu-west-1:111122223333:key/${name}`;
const QUEUE_ARN = 'arn:aws:sqs:eu-west-1:111122223333:crawler-pairs';
/** What the app installs beside the construct, unpinned: the registry's newest, as a user's `npm install` gets. */
const APP_OWN = ['aws-cdk-lib', 'constructs', 'cdk-nag'];
/** The worker's runtime, which must not come with the construct. */
const WORKER_RUNTIME = ['onnxruntime-node', 'sharp', 'kafkajs', '@aws-sdk', 'aws-msk-iam-sasl-signer-js', 'esbuild'];
const REGISTRY = 'https://registry.npmjs.org/';

/** The consumer app: what a user with an existing VPC, cluster, queue, buckets and keys writes. */
const APP = `
import { App, Stack, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks } from 'cdk-nag';
import { MlmFilterPipeline } from '${CONSTRUCT.name}';

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

interface Installed {
  readonly app: string;
  /** `du -sk node_modules`, MiB. */
  readonly sizeMiB: number;
  /** aws-cdk-lib's version in the app, and the newest the registry has. */
  readonly cdkLib: string;
  readonly newestCdkLib: string;
}

/** A fresh app directory with the tarball installed as a user installs it: install scripts on, the npm registry only. */
async function installConsumer(work: string, tarball: string): Promise<Installed> {
  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(
    path.join(app, 'package.json'),
    JSON.stringify({ name: 'crawl-app', private: true, type: 'module' }),
  );
  const env = childEnv({ npm_config_registry: REGISTRY });
  const args = ['install', '--no-audit', '--no-fund', tarball, ...APP_OWN];
  await run('npm', args, { cwd: app, env, maxBuffer: 64 << 20 });
  fs.writeFileSync(path.join(app, 'app.mjs'), APP);
  const { stdout: du } = await run('du', ['-sk', 'node_modules'], { cwd: app });
  const { stdout: newest } = await run('npm', ['view', 'aws-cdk-lib', 'version'], { cwd: app, env });
  const version = (name: string) =>
    (JSON.parse(fs.readFileSync(path.join(app, 'node_modules', name, 'package.json'), 'utf8')) as { version: string })
      .version;
  return {
    app,
    sizeMiB: Math.round(Number(du.split(/\s/)[0]) / 1024),
    cdkLib: version('aws-cdk-lib'),
    newestCdkLib: newest.trim(),
  };
}

/** Every package directory under the app's node_modules (nested ones too), by name. */
function packageNames(dir: string, found = new Set<string>()): Set<string> {
  if (!fs.existsSync(dir)) return found;
  for (const name of fs.readdirSync(dir)) {
    if (name.startsWith('.')) continue;
    const full = path.join(dir, name);
    found.add(name);
    if (name.startsWith('@')) {
      for (const sub of fs.readdirSync(full)) {
        found.add(`${name}/${sub}`);
        packageNames(path.join(full, sub, 'node_modules'), found);
      }
    } else packageNames(path.join(full, 'node_modules'), found);
  }
  return found;
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
  let install: Installed;
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
    const tarball = await packConstruct(work);
    install = await installConsumer(work, tarball);
    app = install.app;
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

  test("the app installs no worker runtime, with install scripts on, and the registry's newest aws-cdk-lib", (t) => {
    const names = packageNames(path.join(app, 'node_modules'));
    assert.ok(names.has(CONSTRUCT.name) && names.has('aws-cdk-lib'), [...names].join(' '));
    assert.deepEqual(
      WORKER_RUNTIME.filter((n) => names.has(n)),
      [],
      'the construct brought the worker runtime',
    );
    assert.equal(install.cdkLib, install.newestCdkLib, 'the app did not get the newest aws-cdk-lib');
    t.diagnostic(`app node_modules: ${install.sizeMiB} MiB, ${names.size} names; aws-cdk-lib ${install.cdkLib}`);
    // Issue 22's measure: the old single package (the worker's runtime with it) gave this app about 550 MiB.
    assert.ok(install.sizeMiB < 300, `${install.sizeMiB} MiB`);
  });

  const ofType = (type: string) => Object.entries(resources).filter(([, r]) => r.Type === type);

  test('synthesises with cdk-nag AwsSolutions clean, without Docker, from the installed package', () => {
    assert.deepEqual(readViolations(outdir), []);
    assert.equal(synth.code, 0, synth.output);
    assert.equal(synth.dockerCalls, '', 'docker was called during synth');
    const installed = fs.realpathSync(path.join(app, 'node_modules', CONSTRUCT.name));
    assert.ok(!installed.startsWith(fs.realpathSync(ROOT)), `the package resolves into the checkout: ${installed}`);
    assert.ok(fs.existsSync(path.join(installed, 'dist', 'infra', 'lib', 'pipeline.js')));
  });

  test('no synth warnings (cdk synth --strict fails on any)', () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(outdir, 'manifest.json'), 'utf8')) as {
      artifacts: Record<string, { metadata?: Record<string, { type: string; data: unknown }[]> }>;
    };
    const warnings = Object.values(manifest.artifacts)
      .flatMap((a) => Object.entries(a.metadata ?? {}))
      .flatMap(([where, entries]) =>
        entries.filter((e) => e.type === 'aws:cdk:warning').map((e) => `${where}: ${e.data}`),
      );
    assert.deepEqual(warnings, []);
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
    // The construct carries the runtime package's manifest and lock for the image's npm ci (scripts/worker-lock.mjs).
    for (const name of ['package.json', 'package-lock.json']) {
      const file = path.join(context, 'functions', 'worker', name);
      assert.ok(fs.existsSync(file), `the build context has no functions/worker/${name}`);
      const committed = fs.readFileSync(path.join(ROOT, 'functions', 'worker', name));
      assert.ok(fs.readFileSync(file).equals(committed), `functions/worker/${name}: not the checkout's`);
    }
    const installed = fs.realpathSync(path.join(app, 'node_modules', CONSTRUCT.name));
    assert.ok(fs.existsSync(path.join(installed, 'worker-context', 'functions', 'worker', 'Dockerfile')));
    for (const absent of ['node_modules', 'dist', 'test', 'infra', 'package.json', 'package-lock.json']) {
      assert.ok(!fs.existsSync(path.join(context, absent)), `${absent} is in the build context`);
    }
  });

  test("the Lambda code is the installed package's pre-built bundle (kafkajs inside), nothing bundled at synth", () => {
    const installed = fs.realpathSync(path.join(app, 'node_modules', CONSTRUCT.name));
    const assetOf = (code: string) =>
      Object.entries(assets.files).find(([, f]) => {
        const file = path.join(outdir, f.source.path, 'index.mjs');
        return fs.existsSync(file) && fs.readFileSync(file, 'utf8') === code;
      })?.[0];
    for (const name of ['topic-provisioner', 'lag-probe']) {
      const bundle = fs.readFileSync(path.join(installed, 'dist', 'lambda', name, 'index.mjs'), 'utf8');
      assert.match(bundle, /KafkaJS|kafkajs/, `kafkajs is not bundled in ${name}`);
      const hash = assetOf(bundle);
      assert.ok(hash, `${name}: the deployed code is not the package's bundle`);
      const fns = ofType('AWS::Lambda::Function').filter(([, r]) => JSON.stringify(r.Properties.Code).includes(hash));
      assert.equal(fns.length, 1, name);
      assert.equal(fns[0]![1].Properties.Handler, 'index.handler', name);
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
