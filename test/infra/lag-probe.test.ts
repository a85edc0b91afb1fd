/**
 * The Kafka lag probe: its handler against the real local Kafka (scripts/test.sh starts it), the Lambda entry point run
 * as its own process (the EMF line on stdout), and the construct and its place in the pipeline (synthesised, cdk-nag).
 */
import { thrownCode } from '../helpers/thrown-code.ts';
import { parseScramSecret } from '../../lib/kafka/scram-secret.ts';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { App, Duration, Stack, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { Admin, Kafka } from 'kafkajs';
import {
  backlogEmf,
  measureBacklog,
  probeConfigFromEnv,
  probeKafka,
  probeOnce,
  type LagProbeConfig,
  type LagProbeEnv,
  type TopicBacklog,
} from '../../functions/lambda/lag-probe.ts';
import { LagProbe } from '../../infra/lib/lag-probe.ts';
import { MskArns } from '../../infra/lib/msk.ts';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import { BROKERS, committedTotal, createTopics, kafkaClient, needServices, produce, uniq } from '../stream/helpers.ts';
import { MSK_ARN, brokersVpc, model, readViolations, statements, synth } from './helpers.ts';
import { waitFor } from '../helpers/poll.ts';

const skip = await needServices('kafka');
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

function envFor(topic: string, groupId: string): LagProbeEnv {
  return {
    MLMF_BROKERS: BROKERS,
    MLMF_SOURCE_TOPIC: topic,
    MLMF_GROUP_ID: groupId,
    MLMF_PIPELINE: 'probe-check',
    MLMF_METRICS_NAMESPACE: 'MlmFilterCheck',
  };
}

/** Runs the probe the way the Lambda does (config from the environment, the worker's client set-up). */
async function probe(topic: string, groupId: string): Promise<{ backlog: TopicBacklog; emf: Record<string, unknown> }> {
  const config: LagProbeConfig = probeConfigFromEnv(envFor(topic, groupId));
  const lines: string[] = [];
  const backlog = await probeOnce(config, await probeKafka(config), (l) => lines.push(l));
  assert.equal(lines.length, 1);
  return { backlog, emf: JSON.parse(lines[0]!) as Record<string, unknown> };
}

/** Consumes the whole topic in `groupId` and commits, as the worker does, until every record is committed. */
async function consumeAll(kafka: Kafka, admin: Admin, topic: string, groupId: string, total: number): Promise<void> {
  const consumer = kafka.consumer({ groupId });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachBatch: async ({ batch }) => {
      if (batch.isEmpty()) return;
      const next = (BigInt(batch.lastOffset()) + 1n).toString();
      await consumer.commitOffsets([{ topic, partition: batch.partition, offset: next }]);
    },
  });
  try {
    await waitFor('every record committed', async () => (await committedTotal(admin, groupId, topic)) === total);
  } finally {
    await consumer.disconnect();
  }
}

describe('lag probe against the local Kafka', { skip }, () => {
  let kafka: Kafka;
  let admin: Admin;
  before(async () => {
    kafka = kafkaClient();
    admin = kafka.admin();
    await admin.connect();
  });
  after(() => admin?.disconnect());

  test('a new group with no commits reports the whole topic; after consuming and committing everything, zero', async () => {
    const topic = uniq('probe');
    const groupId = `${topic}-group`;
    await createTopics(admin, [{ topic, partitions: 3 }]);
    await produce(
      kafka,
      topic,
      Array.from({ length: 25 }, (_, i) => ({ i })),
      3,
    );

    const fresh = await probe(topic, groupId);
    assert.equal(fresh.backlog.total, 25);
    assert.deepEqual(
      fresh.backlog.partitions.map((p) => [p.partition, p.committed, p.backlog]),
      [
        [0, null, 9],
        [1, null, 8],
        [2, null, 8],
      ],
    );
    assert.equal(fresh.emf[METRIC.KafkaBacklog], 25);
    assert.equal(fresh.emf.Pipeline, 'probe-check');
    assert.equal(fresh.emf.PartitionsWithoutCommit, 3);
    const aws = fresh.emf._aws as { CloudWatchMetrics: { Namespace: string; Dimensions: string[][] }[] };
    assert.equal(aws.CloudWatchMetrics[0]!.Namespace, 'MlmFilterCheck');
    assert.deepEqual(aws.CloudWatchMetrics[0]!.Dimensions, [['Pipeline']]);

    await consumeAll(kafka, admin, topic, groupId, 25);
    const drained = await probe(topic, groupId);
    assert.equal(drained.backlog.total, 0);
    assert.deepEqual(
      drained.backlog.partitions.map((p) => p.committed),
      ['9', '8', '8'],
    );
    assert.equal(drained.emf[METRIC.KafkaBacklog], 0);

    await produce(kafka, topic, [{ late: 1 }, { late: 2 }], 3);
    assert.equal((await probe(topic, groupId)).backlog.total, 2, 'new input after the commits is backlog again');
  });

  test('committed partitions count from the commit, the others from the low watermark', async () => {
    const topic = uniq('probe-mixed');
    const groupId = `${topic}-group`;
    await createTopics(admin, [{ topic, partitions: 2 }]);
    await produce(
      kafka,
      topic,
      Array.from({ length: 20 }, (_, i) => ({ i })),
      2,
    );
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 0, offset: '7' }] });
    const { backlog } = await probe(topic, groupId);
    assert.deepEqual(
      backlog.partitions.map((p) => [p.partition, p.committed, p.backlog]),
      [
        [0, '7', 3],
        [1, null, 10],
      ],
    );
    assert.equal(backlog.total, 13);
  });

  test('records deleted by retention: no commit counts end - low; a commit below low counts from low', async () => {
    const topic = uniq('probe-retained');
    const groupId = `${topic}-group`;
    await createTopics(admin, [{ topic, partitions: 1 }]);
    await produce(
      kafka,
      topic,
      Array.from({ length: 10 }, (_, i) => ({ i })),
      1,
    );
    // kafkajs looks the partition leader up in metadata it has fetched for this topic.
    await admin.fetchTopicMetadata({ topics: [topic] });
    await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '4' }] });
    const none = await probe(topic, groupId);
    assert.deepEqual(
      none.backlog.partitions.map((p) => [p.low, p.end, p.backlog]),
      [['4', '10', 6]],
    );
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 0, offset: '2' }] });
    const stale = await probe(topic, groupId);
    assert.equal(stale.backlog.partitions[0]!.committed, '2');
    assert.equal(stale.backlog.total, 6);
  });

  test('the Lambda entry point, as its own process, writes one bare EMF line on stdout', async () => {
    const topic = uniq('probe-entry');
    await createTopics(admin, [{ topic, partitions: 2 }]);
    await produce(
      kafka,
      topic,
      Array.from({ length: 5 }, (_, i) => ({ i })),
      2,
    );
    const entry = pathToFileURL(path.join(ROOT, 'functions', 'lambda', 'lag-probe.ts')).href;
    const script = `const m = await import(${JSON.stringify(entry)}); const r = await m.handler(); process.stderr.write(JSON.stringify(r));`;
    const { stdout, stderr } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script],
      {
        cwd: ROOT,
        env: { PATH: process.env.PATH, HOME: process.env.HOME, ...envFor(topic, `${topic}-group`) },
        timeout: 60_000,
      },
    );
    const lines = stdout.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 1, stdout);
    const doc = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.equal(doc[METRIC.KafkaBacklog], 5);
    assert.equal(doc.Topic, topic);
    assert.deepEqual(JSON.parse(stderr.trim().split('\n').pop()!), {
      topic,
      groupId: `${topic}-group`,
      backlog: 5,
    });
  });
});

describe('lag probe configuration and EMF', () => {
  test('the environment: required names, auth and TLS checked with lag_probe_config', () => {
    const base = envFor('t', 'g');
    assert.deepEqual(
      probeConfigFromEnv({
        ...base,
        MLMF_BROKERS: 'a:1, b:2',
        MLMF_KAFKA_AUTH: 'iam',
        MLMF_KAFKA_TLS: 'true',
        AWS_REGION: 'eu-west-1',
      }),
      {
        brokers: ['a:1', 'b:2'],
        topic: 't',
        groupId: 'g',
        auth: 'iam',
        tls: true,
        secretArn: undefined,
        region: 'eu-west-1',
        pipeline: 'probe-check',
        namespace: 'MlmFilterCheck',
      },
    );
    for (const bad of [
      { ...base, MLMF_BROKERS: '' },
      { ...base, MLMF_SOURCE_TOPIC: undefined },
      { ...base, MLMF_GROUP_ID: ' ' },
      { ...base, MLMF_KAFKA_AUTH: 'plain' },
      { ...base, MLMF_KAFKA_TLS: 'yes' },
      { ...base, MLMF_KAFKA_AUTH: 'scram-sha-512' },
    ]) {
      assert.equal(
        thrownCode(() => probeConfigFromEnv(bad)),
        'lag_probe_config',
        JSON.stringify(bad),
      );
    }
  });

  test('the SCRAM secret must be {"username","password"}', () => {
    assert.deepEqual(parseScramSecret('{"username":"u","password":"p"}', 'arn'), {
      mechanism: 'scram-sha-512',
      username: 'u',
      password: 'p',
    });
    for (const s of [undefined, '', 'not json', '{"username":"u"}', '{"username":1,"password":"p"}']) {
      assert.equal(
        thrownCode(() => parseScramSecret(s, 'arn')),
        'kafka_secret_invalid',
      );
    }
  });

  test('measureBacklog reads a partition the group never committed on from its low watermark', async () => {
    const admin = {
      fetchTopicOffsets: async () => [
        { partition: 1, offset: '50', high: '50', low: '40' },
        { partition: 0, offset: '9007199254740993', high: '9007199254740993', low: '9007199254740990' },
      ],
      fetchOffsets: async () => [
        {
          topic: 't',
          partitions: [
            { partition: 0, offset: '-1', metadata: null },
            { partition: 1, offset: '45', metadata: null },
          ],
        },
      ],
    };
    const b = await measureBacklog(admin as never, 't', 'g');
    assert.deepEqual(
      b.partitions.map((p) => [p.partition, p.backlog]),
      [
        [0, 3],
        [1, 5],
      ],
      'int64 offsets beyond 2^53 are subtracted exactly',
    );
    const doc = backlogEmf(b, { pipeline: 'p', namespace: 'N', timestamp: 1 });
    assert.equal(doc[METRIC.KafkaBacklog], 8);
  });
});

describe('LagProbe construct', () => {
  function probeStack(extra: (stack: Stack) => Partial<ConstructorParameters<typeof LagProbe>[2]>, bundle = false) {
    const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlmf-probe-'));
    const app = new App({ outdir, context: bundle ? {} : { 'aws:cdk:bundling-stacks': [] } });
    const stack = new Stack(app, 'Probe', { env: { account: '111122223333', region: 'eu-west-1' } });
    const probe = new LagProbe(stack, 'LagProbe', {
      vpc: brokersVpc(stack),
      bootstrapServers: ['b-1.x:9098', 'b-2.x:9098'],
      auth: 'iam',
      tls: true,
      msk: new MskArns(MSK_ARN),
      topic: 'crawl.pairs',
      consumerGroup: 'filters',
      pipelineName: 'crawl-filter',
      namespace: 'MlmFilterCheck',
      ...extra(stack),
    });
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    app.synth();
    return { probe, template: Template.fromStack(stack), violations: readViolations(outdir), outdir };
  }

  test('bundles with local esbuild: kafkajs and the MSK signer in, no worker-only native module', () => {
    const { outdir } = probeStack(() => ({}), true);
    const assets = JSON.parse(fs.readFileSync(path.join(outdir, 'Probe.assets.json'), 'utf8')) as {
      files: Record<string, { source: { path: string } }>;
    };
    const bundles = Object.values(assets.files)
      .map((f) => path.join(outdir, f.source.path, 'index.mjs'))
      .filter((p) => fs.existsSync(p));
    assert.equal(bundles.length, 1);
    const code = fs.readFileSync(bundles[0]!, 'utf8');
    assert.ok(/KafkaJS/.test(code) && /generateAuthToken|aws-msk-iam/.test(code), 'kafkajs and the IAM signer bundled');
    assert.doesNotMatch(code, /onnxruntime|sharp|prom-client/, 'the probe bundle carries none of the worker');
  });

  test('MSK IAM: a VPC function on its own security group, every minute, read-only Kafka permissions', () => {
    const { probe, template, violations } = probeStack(() => ({}));
    assert.deepEqual(violations, []);
    template.hasResourceProperties('AWS::Lambda::Function', {
      Handler: 'index.handler',
      Runtime: Match.stringLikeRegexp('^nodejs(2[2-9]|[3-9][0-9])\\.x$'),
      VpcConfig: Match.objectLike({
        SubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'],
        SecurityGroupIds: [{ 'Fn::GetAtt': [Match.stringLikeRegexp('LagProbeSg'), 'GroupId'] }],
      }),
      Environment: {
        Variables: {
          MLMF_BROKERS: 'b-1.x:9098,b-2.x:9098',
          MLMF_SOURCE_TOPIC: 'crawl.pairs',
          MLMF_GROUP_ID: 'filters',
          MLMF_KAFKA_AUTH: 'iam',
          MLMF_KAFKA_TLS: 'true',
          MLMF_PIPELINE: 'crawl-filter',
          MLMF_METRICS_NAMESPACE: 'MlmFilterCheck',
        },
      },
    });
    template.hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'rate(1 minute)',
      Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [Match.stringLikeRegexp('LagProbeHandler'), 'Arn'] } })],
    });
    assert.ok(probe.securityGroup instanceof ec2.SecurityGroup);
    const kafkaActions = statements(template)
      .filter((s) => s.Action.some((a) => a.startsWith('kafka-cluster:')))
      .map((s) => ({ actions: s.Action, resources: JSON.stringify(s.Resource) }));
    assert.deepEqual(
      kafkaActions.map((k) => k.actions),
      [['kafka-cluster:Connect'], ['kafka-cluster:DescribeTopic'], ['kafka-cluster:DescribeGroup']],
      'no ReadData, no AlterGroup: the probe never consumes or commits',
    );
    assert.match(kafkaActions[1]!.resources, /:topic\//);
    assert.match(kafkaActions[1]!.resources, /crawl\.pairs/);
    assert.match(kafkaActions[2]!.resources, /:group\//);
    assert.match(kafkaActions[2]!.resources, /filters/);
    const m = probe.backlog.toMetricConfig().metricStat!;
    assert.equal(m.namespace, 'MlmFilterCheck');
    assert.equal(m.metricName, METRIC.KafkaBacklog);
    assert.deepEqual(m.dimensions, [{ name: 'Pipeline', value: 'crawl-filter' }]);
  });

  test('SCRAM: reads exactly the secret, no MSK permissions', () => {
    const arn = 'arn:aws:secretsmanager:eu-west-1:111122223333:secret:crawl-kafka-AbCdEf';
    const { template, violations } = probeStack((stack) => ({
      auth: 'scram-sha-512',
      msk: undefined,
      scramSecret: secretsmanager.Secret.fromSecretCompleteArn(stack, 'Scram', arn),
      interval: Duration.minutes(2),
    }));
    assert.deepEqual(violations, []);
    const st = statements(template);
    assert.ok(!st.some((s) => s.Action.some((a) => a.startsWith('kafka-cluster:'))));
    const reads = st.filter((s) => s.Action.includes('secretsmanager:GetSecretValue'));
    assert.equal(reads.length, 1);
    assert.deepEqual(reads[0]!.Resource, [arn]);
    template.hasResourceProperties('AWS::Lambda::Function', {
      Environment: { Variables: Match.objectLike({ MLMF_KAFKA_AUTH: 'scram-sha-512', MLMF_KAFKA_SECRET_ARN: arn }) },
    });
    template.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(2 minutes)' });
  });
});

describe('the pipeline on MSK scales on the probe', () => {
  const brokers = ['b-1.crawl.kafka.eu-west-1.amazonaws.com:9098', 'b-2.crawl.kafka.eu-west-1.amazonaws.com:9098'];
  let t: Template;
  let violations: unknown[];
  before(() => {
    const s = synth((stack) => ({
      pipelineName: 'crawl-filter',
      vpc: brokersVpc(stack),
      kafka: {
        kind: 'msk-iam',
        clusterArn: MSK_ARN,
        bootstrapServers: brokers,
        securityGroup: ec2.SecurityGroup.fromSecurityGroupId(stack, 'MskSg', 'sg-0123456789abcdef0'),
      },
      kafkaSource: { topic: 'crawl.pairs', consumerGroup: 'filters' },
      topics: { audit: 'mlmf.audit' },
      model: model(stack),
    }));
    t = s.template;
    violations = s.violations;
  });

  test('no unacknowledged cdk-nag finding', () => assert.deepEqual(violations, []));

  test('target tracking and the wake-from-zero alarm read KafkaBacklog of this pipeline', () => {
    const probeMetric = Match.objectLike({
      MetricName: METRIC.KafkaBacklog,
      Namespace: 'MlmFilter',
      Dimensions: [{ Name: 'Pipeline', Value: 'crawl-filter' }],
    });
    t.hasResourceProperties('AWS::ApplicationAutoScaling::ScalingPolicy', {
      PolicyType: 'TargetTrackingScaling',
      TargetTrackingScalingPolicyConfiguration: Match.objectLike({
        CustomizedMetricSpecification: {
          Metrics: Match.arrayWith([
            Match.objectLike({ Id: 'backlog', MetricStat: Match.objectLike({ Metric: probeMetric }) }),
          ]),
        },
      }),
    });
    t.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', { MinCapacity: 0 });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Metrics: Match.arrayWith([
        Match.objectLike({ Expression: 'IF(FILL(tasks, 0) < 1 AND FILL(cpu, -1) < 0 AND backlog > 0, 1, 0)' }),
        Match.objectLike({ Id: 'backlog', MetricStat: Match.objectLike({ Metric: probeMetric }) }),
      ]),
    });
    assert.doesNotMatch(JSON.stringify(t.findResources('AWS::ApplicationAutoScaling::ScalingPolicy')), /SumOffsetLag/);
  });

  test('the probe may reach the brokers; its silence raises an alarm (missing data breaches)', () => {
    t.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      GroupId: 'sg-0123456789abcdef0',
      FromPort: 9098,
      SourceSecurityGroupId: { 'Fn::GetAtt': [Match.stringLikeRegexp('KafkaLagProbeSg'), 'GroupId'] },
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Metrics: [
        Match.objectLike({
          MetricStat: Match.objectLike({
            Metric: Match.objectLike({ MetricName: METRIC.KafkaBacklog }),
            Stat: 'SampleCount',
          }),
        }),
      ],
      ComparisonOperator: 'LessThanThreshold',
      Threshold: 1,
      TreatMissingData: 'breaching',
    });
  });

  test('running tasks without worker metrics raise WorkerSilent; alarms on AWS source metrics tolerate gaps', () => {
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      AlarmDescription: Match.stringLikeRegexp('published no metrics'),
      Metrics: Match.arrayWith([
        Match.objectLike({ Expression: 'IF(FILL(tasks0, 0) > 0 AND FILL(reports, 0) == 0, 1, 0)' }),
        Match.objectLike({
          Id: 'tasks0',
          MetricStat: Match.objectLike({ Metric: Match.objectLike({ MetricName: 'RunningTaskCount' }) }),
        }),
        Match.objectLike({
          Id: 'reports',
          MetricStat: Match.objectLike({
            Metric: Match.objectLike({ MetricName: METRIC.PairsIn }),
            Stat: 'SampleCount',
          }),
        }),
      ]),
    });
    const alarms = Object.entries(t.findResources('AWS::CloudWatch::Alarm')) as [
      string,
      { Properties: { TreatMissingData?: string } },
    ][];
    const breaching = alarms.filter(([, a]) => a.Properties.TreatMissingData === 'breaching').map(([id]) => id);
    assert.equal(breaching.length, 1, breaching.join(', '));
    assert.match(breaching[0]!, /BacklogSilent/);
  });
});
