import { describe, test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Duration, Stack } from 'aws-cdk-lib';
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import {
  MSK_ARN,
  MSK_GROUP_PREFIX,
  MSK_TOPIC_PREFIX,
  brokersVpc,
  model,
  statements,
  synth,
  workerEnv,
  type Synthesised,
} from './helpers.ts';
import { METRIC } from '../../lib/metrics/metric-names.ts';
import type { MlmFilterPipeline } from '../../infra/lib/pipeline.ts';
import { drainBudgetFromEnv } from '../../functions/worker/stop-signals.ts';
import { ROOT } from '../helpers/package-consumer.ts';

/** An ECR repository and an image digest for the prebuilt-image tests. */
const ECR = '111122223333.dkr.ecr.eu-west-1.amazonaws.com/mlm-filter';
const DIGEST = `sha256:${'0123456789abcdef'.repeat(4)}`;

const WORKER_ENV = [
  'MLMF_SOURCE',
  'MLMF_BROKERS',
  'MLMF_KAFKA_AUTH',
  'MLMF_KAFKA_TLS',
  'MLMF_BUCKET',
  'MLMF_PREFIX',
  'MLMF_AUDIT_TOPIC',
  'MLMF_MODEL_DIR',
  'MLMF_MODEL_S3_URI',
  'MLMF_MODEL_SHA256',
  'MLMF_THRESHOLDS',
  'MLMF_COMBINE',
  'MLMF_METRICS',
  'MLMF_EXECUTION_PROVIDER',
  'MLMF_BATCH_SIZE',
  'MLMF_HEALTH_PORT',
  'MLMF_METRICS_NAMESPACE',
  'MLMF_PIPELINE',
  'AWS_REGION',
];

const mskBrokers = ['b-1.crawl.kafka.eu-west-1.amazonaws.com:9098', 'b-2.crawl.kafka.eu-west-1.amazonaws.com:9098'];

function noWildcardResources(s: Synthesised, policyIdPart: string) {
  const found = statements(s.template).filter((st) => st.policy.includes(policyIdPart) && st.Resource.includes('*'));
  assert.deepEqual(found, [], `'*' resources in ${policyIdPart}`);
}

describe('MSK (IAM) + SQS: two services, one per source', () => {
  let s: Synthesised;
  before(() => {
    s = synth((stack) => ({
      pipelineName: 'crawl-filter',
      vpc: brokersVpc(stack),
      kafka: {
        kind: 'msk-iam',
        clusterArn: MSK_ARN,
        bootstrapServers: mskBrokers,
        securityGroup: ec2.SecurityGroup.fromSecurityGroupId(stack, 'MskSg', 'sg-0123456789abcdef0'),
      },
      kafkaSource: { topic: 'crawl.pairs', maxTasks: 6 },
      sqsSource: { maxTasks: 3 },
      topics: { audit: 'mlmf.audit', accepted: 'mlmf.accepted', deadLetter: 'mlmf.dlq' },
      model: model(stack),
      monitoring: { alarmTopic: sns.Topic.fromTopicArn(stack, 'Ops', 'arn:aws:sns:eu-west-1:111122223333:ops') },
    }));
  });

  test('no synth warnings (cdk synth --strict fails on any)', () => {
    assert.deepEqual(Annotations.fromStack(s.stack).findWarning('*', Match.anyValue()), []);
  });

  test('cdk-nag AwsSolutions and CloudFormation validation: no unacknowledged finding', () => {
    assert.deepEqual(s.violations, []);
  });

  test('GPU capacity: ECS GPU AMI, encrypted root volume, IMDSv2, managed scaling', () => {
    // Session Manager is opt-in (capacity.ssmAccess): off here.
    assert.doesNotMatch(JSON.stringify(s.template.findResources('AWS::IAM::Role')), /AmazonSSMManagedInstanceCore/);
    s.template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
      LaunchTemplateData: Match.objectLike({
        ImageId: { Ref: Match.stringLikeRegexp('gpurecommendedimageid') },
        MetadataOptions: Match.objectLike({ HttpTokens: 'required', HttpPutResponseHopLimit: 1 }),
        BlockDeviceMappings: [Match.objectLike({ Ebs: Match.objectLike({ Encrypted: true, VolumeType: 'gp3' }) })],
      }),
    });
    const params = s.template.toJSON().Parameters as Record<string, { Default?: string }>;
    assert.ok(
      Object.values(params).some(
        (p) => p.Default === '/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id',
      ),
    );
    s.template.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
      MinSize: '0',
      MaxSize: '9',
      MixedInstancesPolicy: Match.objectLike({
        InstancesDistribution: Match.objectLike({ OnDemandPercentageAboveBaseCapacity: 100 }),
        LaunchTemplate: Match.objectLike({
          Overrides: [{ InstanceType: 'g5.xlarge' }, { InstanceType: 'g6.xlarge' }],
        }),
      }),
    });
    s.template.hasResourceProperties('AWS::ECS::CapacityProvider', {
      AutoScalingGroupProvider: Match.objectLike({
        // One instance per step: a few waiting records never launch several GPU instances at once.
        ManagedScaling: Match.objectLike({ Status: 'ENABLED', MinimumScalingStepSize: 1, MaximumScalingStepSize: 1 }),
        ManagedDraining: 'ENABLED',
      }),
    });
    s.template.hasResourceProperties('AWS::ECS::Cluster', {
      ClusterSettings: [{ Name: 'containerInsights', Value: 'enabled' }],
    });
  });

  test('tasks cannot reach the instance metadata service (awsvpc + ECS_AWSVPC_BLOCK_IMDS)', () => {
    const lt = Object.values(s.template.findResources('AWS::EC2::LaunchTemplate'))[0] as {
      Properties: { LaunchTemplateData: { UserData: unknown } };
    };
    const userData = JSON.stringify(lt.Properties.LaunchTemplateData.UserData);
    assert.match(userData, /ECS_AWSVPC_BLOCK_IMDS=true >> \/etc\/ecs\/ecs.config/);
    assert.match(userData, /ECS_CLUSTER=/);
    s.template.allResourcesProperties('AWS::ECS::TaskDefinition', { NetworkMode: 'awsvpc' });
  });

  test('services: after the capacity provider association and their ingress rule, no DesiredCount', () => {
    const [association] = Object.keys(s.template.findResources('AWS::ECS::ClusterCapacityProviderAssociations'));
    assert.ok(association);
    const ingress = Object.entries(s.template.findResources('AWS::EC2::SecurityGroupIngress'))
      .filter(([, r]) => JSON.stringify(r).includes('WorkerSg'))
      .map(([id]) => id);
    assert.equal(ingress.length, 1);
    const services = Object.values(s.template.findResources('AWS::ECS::Service')) as {
      DependsOn?: string[];
      Properties: Record<string, unknown>;
    }[];
    assert.equal(services.length, 2);
    for (const svc of services) {
      // Create after, delete before the association: ECS refuses both the other way round.
      assert.ok(svc.DependsOn?.includes(association), `service lacks DependsOn ${association}: ${svc.DependsOn}`);
      assert.ok(svc.DependsOn?.includes(ingress[0]!), 'service starts tasks before the brokers let them in');
      // A template DesiredCount would reset a scaled-out service on every deploy that touches it.
      assert.equal(svc.Properties.DesiredCount, undefined);
    }
  });

  test('services start after the topics exist', () => {
    const [topics] = Object.keys(s.template.findResources('Custom::KafkaTopics'));
    assert.ok(topics);
    const services = Object.values(s.template.findResources('AWS::ECS::Service')) as { DependsOn?: string[] }[];
    for (const svc of services) assert.ok(svc.DependsOn?.includes(topics), `service lacks DependsOn ${topics}`);
  });

  test('drain: the worker is told to finish 15 s before the 120 s stop timeout', () => {
    s.template.allResourcesProperties('AWS::ECS::TaskDefinition', {
      ContainerDefinitions: [Match.objectLike({ StopTimeout: 120 })],
    });
    for (const task of ['KafkaTask', 'SqsTask']) {
      // Read the way the worker reads it (functions/worker/stop-signals.ts).
      const budget = drainBudgetFromEnv({
        MLMF_DRAIN_BUDGET_MS: String(workerEnv(s.template, task).MLMF_DRAIN_BUDGET_MS),
      });
      assert.equal(budget, 105_000, task);
    }
  });

  test('task definitions: one GPU, health check, full worker environment', () => {
    s.template.resourceCountIs('AWS::ECS::TaskDefinition', 2);
    s.template.resourceCountIs('AWS::ECS::Service', 2);
    s.template.allResourcesProperties('AWS::ECS::TaskDefinition', {
      ContainerDefinitions: [
        Match.objectLike({
          ResourceRequirements: [{ Type: 'GPU', Value: '1' }],
          HealthCheck: Match.objectLike({ StartPeriod: 300 }),
          StopTimeout: 120,
          LogConfiguration: Match.objectLike({ LogDriver: 'awslogs' }),
        }),
      ],
    });
    const kafka = workerEnv(s.template, 'KafkaTask');
    for (const k of WORKER_ENV) assert.ok(k in kafka, `kafka worker env lacks ${k}`);
    assert.equal(kafka.MLMF_SOURCE, 'kafka');
    assert.equal(kafka.MLMF_SOURCE_TOPIC, 'crawl.pairs');
    assert.equal(kafka.MLMF_GROUP_ID, 'mlm-filter-crawl-filter');
    assert.equal(kafka.MLMF_KAFKA_AUTH, 'iam');
    assert.equal(kafka.MLMF_KAFKA_TLS, 'true');
    assert.equal(kafka.MLMF_BROKERS, mskBrokers.join(','));
    assert.equal(kafka.MLMF_ACCEPTED_TOPIC, 'mlmf.accepted');
    assert.equal(kafka.MLMF_DLQ_TOPIC, 'mlmf.dlq');
    assert.equal(kafka.MLMF_MODEL_S3_URI, 's3://models-bucket/mlm/qwen-1.5b.tar');
    assert.equal(kafka.MLMF_THRESHOLDS, 'itm>=66,odf>=20');
    assert.equal(kafka.MLMF_METRICS, 'all');
    assert.equal(kafka.MLMF_PIPELINE, 'crawl-filter');
    const sqsEnv = workerEnv(s.template, 'SqsTask');
    assert.equal(sqsEnv.MLMF_SOURCE, 'sqs');
    assert.ok(sqsEnv.MLMF_SQS_QUEUE_URL, 'queue url passed');
    assert.equal(sqsEnv.MLMF_SOURCE_TOPIC, undefined);
  });

  test('worker image comes from functions/worker/Dockerfile as an asset (hashed at synth, built at deploy)', () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(s.outdir, 'Test.assets.json'), 'utf8')) as {
      dockerImages: Record<string, { source: { directory: string; dockerFile?: string; platform?: string } }>;
    };
    const images = Object.values(manifest.dockerImages);
    assert.equal(images.length, 1);
    assert.equal(images[0]!.source.dockerFile, 'functions/worker/Dockerfile');
    // The GPU instances are x86_64 whatever the build host is.
    assert.equal(images[0]!.source.platform, 'linux/amd64');
    const staged = path.join(s.outdir, images[0]!.source.directory);
    // The image installs the runtime package from its own manifest and lock (scripts/worker-lock.mjs); the root's
    // (with the infra workspace) stay out of the context.
    assert.ok(fs.existsSync(path.join(staged, 'functions', 'worker', 'package.json')));
    assert.ok(fs.existsSync(path.join(staged, 'functions', 'worker', 'package-lock.json')));
    assert.ok(!fs.existsSync(path.join(staged, 'package-lock.json')), 'the root lock is in the build context');
    assert.ok(!fs.existsSync(path.join(staged, 'package.json')), 'the root manifest is in the build context');
    assert.ok(!fs.existsSync(path.join(staged, 'infra')), 'the construct is in the build context');
    // No mirrors given: no build args, the Dockerfile's defaults (the public registries) apply.
    assert.equal((images[0]!.source as { dockerBuildArgs?: unknown }).dockerBuildArgs, undefined);
    assert.ok(!fs.existsSync(path.join(staged, 'node_modules')), 'node_modules is not in the build context');
    assert.ok(!fs.existsSync(path.join(staged, 'test')), 'tests are not in the build context');
  });

  test('created SQS queue: encrypted, TLS only, dead-letter queue with redrive', () => {
    s.template.resourceCountIs('AWS::SQS::Queue', 2);
    // cdk destroy keeps them: pending and dead-lettered messages (a backfill's shard jobs) are not thrown away.
    s.template.allResources('AWS::SQS::Queue', { DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
    s.template.hasResourceProperties('AWS::SQS::Queue', {
      SqsManagedSseEnabled: true,
      VisibilityTimeout: 900,
      RedrivePolicy: { deadLetterTargetArn: Match.anyValue(), maxReceiveCount: 5 },
    });
    s.template.allResourcesProperties('AWS::SQS::QueuePolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
        ]),
      },
    });
  });

  test('curated bucket: encrypted, public access blocked, TLS enforced, versioned, access-logged', () => {
    s.template.hasResourceProperties('AWS::S3::Bucket', {
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
      },
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      VersioningConfiguration: { Status: 'Enabled' },
      LoggingConfiguration: Match.objectLike({ LogFilePrefix: 'curated/' }),
      LifecycleConfiguration: {
        Rules: [
          Match.objectLike({
            Status: 'Enabled',
            NoncurrentVersionExpiration: { NoncurrentDays: 30 },
            AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 },
          }),
        ],
      },
    });
    s.template.hasResource('AWS::S3::Bucket', { DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
    s.template.allResourcesProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
        ]),
      },
    });
  });

  test('IAM: MSK actions scoped to the exact cluster, topic and group ARNs', () => {
    const st = statements(s.template);
    const kafkaTask = st.filter((x) => x.policy.includes('KafkaTaskRole'));
    const sqsTask = st.filter((x) => x.policy.includes('SqsTaskRole'));
    const find = (list: typeof st, action: string) => list.filter((x) => x.Action.includes(action));

    assert.deepEqual(find(kafkaTask, 'kafka-cluster:ReadData')[0]?.Resource, [`${MSK_TOPIC_PREFIX}crawl.pairs`]);
    assert.deepEqual(find(kafkaTask, 'kafka-cluster:AlterGroup')[0]?.Resource, [
      `${MSK_GROUP_PREFIX}mlm-filter-crawl-filter`,
    ]);
    const sinkTopics = ['mlmf.audit', 'mlmf.accepted', 'mlmf.dlq'].map((t) => MSK_TOPIC_PREFIX + t);
    assert.deepEqual(find(kafkaTask, 'kafka-cluster:WriteData')[0]?.Resource, sinkTopics);
    assert.deepEqual(find(kafkaTask, 'kafka-cluster:Connect')[0]?.Resource, [MSK_ARN]);
    // The SQS-fed service writes the same sinks but never reads the Kafka source.
    assert.deepEqual(find(sqsTask, 'kafka-cluster:WriteData')[0]?.Resource, sinkTopics);
    assert.equal(find(sqsTask, 'kafka-cluster:ReadData').length, 0);
    assert.equal(find(kafkaTask, 'sqs:ReceiveMessage').length, 0);
    assert.equal(find(sqsTask, 'sqs:ReceiveMessage').length, 1);
    // The exactly-once producer's transactional ids are the one pattern: only the worker's own `mlmf-` prefix.
    const txn = find(kafkaTask, 'kafka-cluster:AlterTransactionalId')[0]?.Resource as string[] | undefined;
    assert.deepEqual(txn, [`${MSK_ARN.replace(':cluster/', ':transactional-id/')}/mlmf-*`]);
    // No role may touch other topics or the whole cluster's topics.
    for (const x of st.filter((x) => x.Action.some((a) => a.startsWith('kafka-cluster:')))) {
      if (x.Action.includes('kafka-cluster:AlterTransactionalId')) continue;
      for (const r of x.Resource)
        assert.ok(typeof r === 'string' && !r.includes('*'), `wildcard kafka resource ${String(r)}`);
    }
    // The provisioner can create exactly the three sink topics and cannot delete (deleteOnDestroy is off).
    const prov = st.filter((x) => x.Action.includes('kafka-cluster:CreateTopic'));
    assert.equal(prov.length, 1);
    assert.deepEqual(prov[0]!.Resource, sinkTopics);
    assert.ok(!st.some((x) => x.Action.includes('kafka-cluster:DeleteTopic')));
    noWildcardResources(s, 'KafkaTaskRole');
    noWildcardResources(s, 'SqsTaskRole');
  });

  test('IAM: S3 scoped to the curated prefix and the model object', () => {
    const st = statements(s.template).filter((x) => x.policy.includes('KafkaTaskRole'));
    const put = st.find((x) => x.Action.includes('s3:PutObject'))!;
    assert.equal(put.Resource.length, 1);
    assert.match(JSON.stringify(put.Resource), /\/curated\/\*/);
    assert.ok(!put.Action.includes('s3:DeleteObject'));
    const list = st.find((x) => x.Action.includes('s3:ListBucket'))!;
    assert.deepEqual(list.Condition, { StringLike: { 's3:prefix': ['curated/*'] } });
    const modelGet = st.find((x) => x.Action.length === 1 && x.Action[0] === 's3:GetObject')!;
    assert.match(JSON.stringify(modelGet.Resource), /models-bucket\/mlm\/qwen-1\.5b\.tar"/);
  });

  test('topics: custom resource on a Node.js Lambda in the VPC, brokers opened on 9098', () => {
    s.template.hasResourceProperties('Custom::KafkaTopics', {
      Brokers: mskBrokers.join(','),
      Auth: 'iam',
      Tls: 'true',
      DeleteOnDestroy: 'false',
      // -1: the brokers' default.replication.factor, which a 2-broker cluster can meet (3 could not).
      Topics: [
        { Name: 'mlmf.audit', Partitions: '12', ReplicationFactor: '-1', Configs: { 'retention.ms': '2592000000' } },
        { Name: 'mlmf.accepted', Partitions: '12', ReplicationFactor: '-1' },
        { Name: 'mlmf.dlq', Partitions: '12', ReplicationFactor: '-1' },
      ],
    });
    s.template.hasResourceProperties('AWS::Lambda::Function', {
      Runtime: Match.stringLikeRegexp('^nodejs(2[2-9]|[3-9][0-9])\\.x$'),
      Handler: 'index.handler',
      VpcConfig: Match.objectLike({ SubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'] }),
    });
    const ingress = s.template.findResources('AWS::EC2::SecurityGroupIngress', {
      Properties: { GroupId: 'sg-0123456789abcdef0', FromPort: 9098, ToPort: 9098 },
    });
    const sources = Object.values(ingress).map((r) =>
      JSON.stringify((r as { Properties: { SourceSecurityGroupId: unknown } }).Properties.SourceSecurityGroupId),
    );
    assert.equal(sources.length, 3, 'workers, topic provisioner and lag probe may reach the brokers');
    for (const client of ['WorkerSg', 'TopicProvisionerSg', 'KafkaLagProbeSg']) {
      assert.ok(
        sources.some((src) => src.includes(client)),
        `no ingress from ${client}: ${sources.join(' ')}`,
      );
    }
    // The custom resource runs during the deploy that creates the rule: it must wait for it.
    const rule = Object.entries(ingress).find(([, r]) => JSON.stringify(r).includes('TopicProvisionerSg'))![0];
    const cr = Object.values(s.template.findResources('Custom::KafkaTopics'))[0] as { DependsOn?: string[] };
    assert.ok(cr.DependsOn?.includes(rule), `Custom::KafkaTopics does not depend on ${rule}`);
  });

  test('autoscaling: target tracking on backlog per task, wake-from-zero step policy', () => {
    const policies = s.template.findResources('AWS::ApplicationAutoScaling::ScalingPolicy');
    const tt = Object.values(policies).filter(
      (p) => (p as { Properties: { PolicyType: string } }).Properties.PolicyType === 'TargetTrackingScaling',
    );
    assert.equal(tt.length, 2);
    const json = JSON.stringify(tt);
    assert.match(json, /backlog \/ IF\(tasks > 1, tasks, 1\)/);
    assert.match(json, new RegExp(METRIC.KafkaBacklog));
    assert.match(json, /ApproximateNumberOfMessagesVisible/);
    // Desired, not running: tasks still waiting for their instance count, so a cold start does not add more.
    assert.match(json, /DesiredTaskCount/);
    assert.doesNotMatch(json, /RunningTaskCount/);
    s.template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', {
      MinCapacity: 0,
      MaxCapacity: 6,
      ScalableDimension: 'ecs:service:DesiredCount',
    });
    const steps = Object.values(policies).filter(
      (p) => (p as { Properties: { PolicyType: string } }).Properties.PolicyType === 'StepScaling',
    );
    assert.equal(steps.length, 2, 'one wake policy per source');
    for (const step of steps) {
      // Only ever up: +1 (a wake can never cut a scaled-out service back to one task, as ExactCapacity 1 could), and a
      // cooldown past a cold start, during which the task already added counts toward the alarm's re-invocations.
      assert.deepEqual(
        (step as { Properties: { StepScalingPolicyConfiguration: unknown } }).Properties.StepScalingPolicyConfiguration,
        {
          AdjustmentType: 'ChangeInCapacity',
          Cooldown: 600,
          MetricAggregationType: 'Maximum',
          StepAdjustments: [{ MetricIntervalLowerBound: 0, ScalingAdjustment: 1 }],
        },
      );
    }
    const wakes = Object.values(s.template.findResources('AWS::CloudWatch::Alarm')).filter((a) =>
      JSON.stringify(a).includes('idle with backlog'),
    ) as {
      Properties: { Metrics: { Id: string; Expression?: string; MetricStat?: unknown }[]; AlarmActions: unknown[] };
    }[];
    assert.equal(wakes.length, 2, 'one wake alarm per source');
    for (const wake of wakes) {
      const byId = Object.fromEntries(wake.Properties.Metrics.map((m) => [m.Id, m]));
      // A gap in Container Insights' desired count alone no longer wakes: ECS's own CPU metric must be absent too
      // (no task runs), so a service running N tasks is left alone when Container Insights goes quiet.
      assert.equal(byId.expr_1?.Expression, 'IF(FILL(tasks, 0) < 1 AND FILL(cpu, -1) < 0 AND backlog > 0, 1, 0)');
      type Stat = {
        Metric: { Namespace: string; MetricName: string; Dimensions: unknown };
        Period: number;
        Stat: string;
      };
      const cpu = byId.cpu?.MetricStat as Stat;
      const tasks = byId.tasks?.MetricStat as Stat;
      assert.deepEqual(
        [cpu.Metric.Namespace, cpu.Metric.MetricName, cpu.Period, cpu.Stat],
        ['AWS/ECS', 'CPUUtilization', 60, 'Maximum'],
      );
      // The CPU metric names the same cluster and service as the desired count it pairs with.
      assert.deepEqual(cpu.Metric.Dimensions, tasks.Metric.Dimensions);
      assert.match(JSON.stringify(byId.tasks), /DesiredTaskCount/);
      assert.equal(wake.Properties.AlarmActions.length, 1);
    }
  });

  test('monitoring: dashboard on the shared metric names, alarms to the SNS topic', () => {
    const dash = s.template.findResources('AWS::CloudWatch::Dashboard');
    const body = JSON.stringify(dash);
    for (const name of [
      METRIC.PairsIn,
      METRIC.PairsAccepted,
      METRIC.PairsRejected,
      METRIC.RejectsByReason,
      METRIC.ScoreITM,
      METRIC.ScoreODF,
      METRIC.ScoreCTQ,
      METRIC.ScoreSU,
      METRIC.GpuUtilization,
      METRIC.Errors,
      METRIC.BatchLatencyMs,
      METRIC.KafkaBacklog,
      'ApproximateNumberOfMessagesVisible',
    ]) {
      assert.ok(body.includes(name), `dashboard lacks ${name}`);
    }
    const alarms = Object.entries(s.template.findResources('AWS::CloudWatch::Alarm')).filter(([id]) =>
      id.includes('Monitoring'),
    );
    const ids = alarms.map(([id]) => id).join(' ');
    for (const kind of [
      'OldestInputKafka',
      'OldestInputSqs',
      'DeadLettersSqs',
      'NoProgressKafka',
      'NoProgressSqs',
      'ErrorRate',
    ]) {
      assert.match(ids, new RegExp(kind), `alarm ${kind}`);
    }
    for (const [, a] of alarms) {
      assert.deepEqual((a as { Properties: { AlarmActions: unknown[] } }).Properties.AlarmActions, [
        'arn:aws:sns:eu-west-1:111122223333:ops',
      ]);
    }
  });
});

describe('self-managed Kafka with SASL/SCRAM in an existing VPC', () => {
  let s: Synthesised;
  const secretArn = 'arn:aws:secretsmanager:eu-west-1:111122223333:secret:crawl-kafka-AbCdEf';
  before(() => {
    s = synth((stack) => ({
      vpc: brokersVpc(stack),
      kafka: {
        kind: 'self-managed',
        bootstrapServers: ['kafka-1.internal:9096', 'kafka-2.internal:9096'],
        scramSecret: secretsmanager.Secret.fromSecretCompleteArn(stack, 'Scram', secretArn),
        securityGroup: ec2.SecurityGroup.fromSecurityGroupId(stack, 'KafkaSg', 'sg-0fedcba9876543210'),
      },
      kafkaSource: { topic: 'crawl.pairs', consumerGroup: 'filters', minTasks: 1, maxTasks: 2 },
      topics: { audit: 'mlmf.audit', partitions: 3, replicationFactor: 2 },
      model: model(stack),
      capacity: { spot: true, ssmAccess: true, instanceTypes: [new ec2.InstanceType('g6.xlarge')] },
    }));
  });

  test('no unacknowledged finding', () => assert.deepEqual(s.violations, []));

  test('worker gets SCRAM settings and reads only that secret; no MSK permissions', () => {
    const env = workerEnv(s.template, 'KafkaTask');
    assert.equal(env.MLMF_KAFKA_AUTH, 'scram-sha-512');
    assert.equal(env.MLMF_KAFKA_TLS, 'true');
    assert.equal(env.MLMF_KAFKA_SECRET_ARN, secretArn);
    assert.equal(env.MLMF_GROUP_ID, 'filters');
    const st = statements(s.template);
    const reads = st.filter((x) => x.Action.includes('secretsmanager:GetSecretValue'));
    assert.ok(reads.length >= 2, 'worker and provisioner');
    for (const r of reads) assert.deepEqual(r.Resource, [secretArn]);
    assert.ok(!st.some((x) => x.Action.some((a) => a.startsWith('kafka-cluster:'))));
    s.template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      GroupId: 'sg-0fedcba9876543210',
      FromPort: 9096,
    });
    s.template.hasResourceProperties('Custom::KafkaTopics', {
      Auth: 'scram-sha-512',
      SecretArn: secretArn,
      Topics: [Match.objectLike({ Name: 'mlmf.audit', Partitions: '3', ReplicationFactor: '2' })],
    });
  });

  test('spot capacity and worker-reported lag for scaling, min 1 task (no wake policy)', () => {
    s.template.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
      MaxSize: '2',
      CapacityRebalance: true,
      MixedInstancesPolicy: Match.objectLike({
        InstancesDistribution: Match.objectLike({
          OnDemandPercentageAboveBaseCapacity: 0,
          SpotAllocationStrategy: 'price-capacity-optimized',
        }),
      }),
    });
    const json = JSON.stringify(s.template.findResources('AWS::ApplicationAutoScaling::ScalingPolicy'));
    assert.match(json, /KafkaConsumerLag/);
    assert.doesNotMatch(json, /StepScaling/);
    s.template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', { MinCapacity: 1, MaxCapacity: 2 });
  });

  test('ssmAccess: the instance role gets the Session Manager core policy (and only then)', () => {
    const roles = JSON.stringify(s.template.findResources('AWS::IAM::Role'));
    assert.match(roles, /AmazonSSMManagedInstanceCore/);
  });

  test('spot interruptions drain: the agent is told to, and its role may set its instance DRAINING', () => {
    const lt = JSON.stringify(s.template.findResources('AWS::EC2::LaunchTemplate'));
    assert.match(lt, /ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> \/etc\/ecs\/ecs.config/);
    const drain = statements(s.template).filter((x) => x.Action.includes('ecs:UpdateContainerInstancesState'));
    assert.equal(drain.length, 1);
    assert.match(JSON.stringify(drain[0]!.Resource), /container-instance\//);
    assert.match(JSON.stringify(drain[0]!.Condition), /ecs:cluster/);
  });
});

describe('SQS imported by ARN, existing curated bucket, pre-built image, KMS-free defaults', () => {
  let s: Synthesised;
  const queueArn = 'arn:aws:sqs:eu-west-1:111122223333:crawler-pairs';
  before(() => {
    s = synth((stack) => ({
      vpc: brokersVpc(stack),
      brokersAdmitVpc: true,
      kafka: { kind: 'msk-iam', clusterArn: MSK_ARN, bootstrapServers: mskBrokers },
      sqsSource: { queueArn, maxTasks: 2 },
      topics: { audit: 'mlmf.audit', provision: false },
      model: model(stack),
      curated: { bucket: s3.Bucket.fromBucketName(stack, 'Lake', 'data-lake'), prefix: 'mlm-filter/v1' },
      worker: {
        imageUri: '111122223333.dkr.ecr.eu-west-1.amazonaws.com/mlm-filter:1.0',
        batchSize: 32,
        metrics: 'policy',
      },
    }));
  });

  test('no unacknowledged finding', () => assert.deepEqual(s.violations, []));

  test('no VPC, queue, bucket or topic resources are created', () => {
    s.template.resourceCountIs('AWS::SQS::Queue', 0);
    s.template.resourceCountIs('AWS::S3::Bucket', 0);
    s.template.resourceCountIs('Custom::KafkaTopics', 0);
    s.template.resourceCountIs('AWS::Lambda::Function', 0);
    s.template.resourceCountIs('AWS::EC2::VPC', 0);
  });

  test('permissions name the imported queue and the prefix of the imported bucket', () => {
    const st = statements(s.template);
    const recv = st.find((x) => x.Action.includes('sqs:ReceiveMessage'))!;
    assert.deepEqual(recv.Resource, [queueArn]);
    const put = st.find((x) => x.Action.includes('s3:PutObject'))!;
    assert.match(JSON.stringify(put.Resource), /data-lake\/mlm-filter\/v1\/\*/);
    const env = workerEnv(s.template, 'SqsTask');
    assert.equal(env.MLMF_BUCKET, 'data-lake');
    assert.equal(env.MLMF_PREFIX, 'mlm-filter/v1/');
    assert.equal(env.MLMF_BATCH_SIZE, '32');
    assert.equal(env.MLMF_METRICS, 'policy');
    assert.match(
      JSON.stringify(s.stack.resolve(env.MLMF_SQS_QUEUE_URL)),
      /https:\/\/sqs\.eu-west-1\.".*"\/111122223333\/crawler-pairs/,
    );
    const td = Object.values(s.template.findResources('AWS::ECS::TaskDefinition'))[0];
    assert.match(JSON.stringify(td), /111122223333\.dkr\.ecr\.eu-west-1\.".*"\/mlm-filter:1\.0/);
    const pull = st.find((x) => x.Action.includes('ecr:BatchGetImage'))!;
    assert.deepEqual(pull.Resource, [
      { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':ecr:eu-west-1:111122223333:repository/mlm-filter']] },
    ]);
    const manifest = fs.readFileSync(path.join(s.outdir, 'Test.assets.json'), 'utf8');
    assert.doesNotMatch(manifest, /"dockerImages":\s*\{\s*"/, 'no image is built when imageUri is set');
  });
});

describe('props validation', () => {
  const base = (stack: Stack) => ({
    vpc: brokersVpc(stack),
    brokersAdmitVpc: true,
    kafka: { kind: 'msk-iam' as const, clusterArn: MSK_ARN, bootstrapServers: mskBrokers },
    topics: { audit: 'a', provision: false },
    model: model(stack),
  });
  const sha = (stack: Stack) => {
    const b = base(stack);
    return { ...b, sqsSource: {}, model: { ...b.model, sha256: 'abc' } };
  };
  /** The pipeline in a VPC's isolated subnets (no egress). */
  const isolated = (stack: Stack) => ({
    ...base(stack),
    sqsSource: {},
    vpc: ec2.Vpc.fromVpcAttributes(stack, 'Isolated', {
      vpcId: 'vpc-0123456789abcdef1',
      availabilityZones: ['eu-west-1a'],
      isolatedSubnetIds: ['subnet-0bbbbbbbbbbbbbbb1'],
      isolatedSubnetRouteTableIds: ['rtb-0bbbbbbbbbbbbbbb1'],
    }),
    vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
  });
  const cases: [
    string,
    (stack: Stack) => Parameters<typeof synth>[0] extends (s: Stack) => infer P ? P : never,
    RegExp,
  ][] = [
    ['no source', (st) => base(st), /kafkaSource and\/or sqsSource/],
    ['bad sha', sha, /sha256/],
    [
      'bad MSK ARN',
      (st) => {
        const b = base(st);
        return { ...b, sqsSource: {}, kafka: { ...b.kafka, clusterArn: 'arn:aws:s3:::nope' } };
      },
      /clusterArn/,
    ],
    ['min > max', (st) => ({ ...base(st), sqsSource: { minTasks: 3, maxTasks: 2 } }), /minTasks/],
    [
      'shard jobs without input buckets',
      (st) => ({ ...base(st), sqsSource: { messages: 'shard-jobs' as const } }),
      /shardInputBuckets/,
    ],
    [
      'shard jobs dead-lettered by the queue before the worker can',
      (st) => ({
        ...base(st),
        sqsSource: {
          messages: 'shard-jobs' as const,
          shardInputBuckets: [s3.Bucket.fromBucketName(st, 'Pool', 'pool')],
          maxReceiveCount: 3,
        },
      }),
      /maxReceiveCount/,
    ],
    [
      'self-managed scale to zero',
      (st) => ({
        ...base(st),
        kafka: { kind: 'self-managed' as const, bootstrapServers: ['k:9092'], tls: false },
        kafkaSource: { topic: 't', minTasks: 0 },
      }),
      /minTasks must be >= 1/,
    ],
    [
      'no path to the brokers',
      (st) => ({ ...base(st), brokersAdmitVpc: undefined, sqsSource: {} }),
      /no path to the brokers: give kafka.securityGroup/,
    ],
    [
      'MSK IAM on the TLS listener port',
      (st) => {
        const b = base(st);
        return { ...b, sqsSource: {}, kafka: { ...b.kafka, bootstrapServers: ['b-1.crawl.kafka:9094'] } };
      },
      /MSK IAM listens on 9098/,
    ],
    ['isolated subnets', (st) => isolated(st), /isolated subnets/],
    ...imageCases(base),
  ];
  for (const [name, build, message] of cases) {
    test(name, () => assert.throws(() => synth(build, { nag: false }), message));
  }

  test('isolated subnets pass once subnetsWithoutEgress says the endpoints exist', () => {
    assert.doesNotThrow(() => synth((st) => ({ ...isolated(st), subnetsWithoutEgress: true }), { nag: false }));
  });

  test('idle input alarm threshold follows maxInputAge', () => {
    const s = synth((st) => ({ ...base(st), sqsSource: {}, monitoring: { maxInputAge: Duration.minutes(10) } }), {
      nag: false,
    });
    s.template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'ApproximateAgeOfOldestMessage',
      Threshold: 600,
    });
  });
});

describe('everything brought by the user: keys, queue, bucket, client security group, image, tuned parts', () => {
  let s: Synthesised;
  const keyArn = (n: string) => `arn:aws:kms:eu-west-1:111122223333:key/0000000${n}-aaaa-bbbb-cccc-0123456789ab`;
  const secretArn = 'arn:aws:secretsmanager:eu-west-1:111122223333:secret:crawl-kafka-AbCdEf';
  const queueArn = 'arn:aws:sqs:eu-west-1:111122223333:crawler-pairs';
  before(() => {
    const then = (pipeline: MlmFilterPipeline, stack: Stack) => {
      pipeline.grantPublishPairs(new iam.Role(stack, 'Crawler', { assumedBy: new iam.AccountRootPrincipal() }));
    };
    s = synth(
      (stack) => {
        const key = (id: string, n: string) => kms.Key.fromKeyArn(stack, id, keyArn(n));
        return {
          vpc: brokersVpc(stack),
          brokerClientSecurityGroup: ec2.SecurityGroup.fromSecurityGroupId(stack, 'Clients', 'sg-0cccccccccccccccc'),
          kafka: {
            kind: 'self-managed',
            bootstrapServers: ['kafka-1.internal:9096'],
            scramSecret: secretsmanager.Secret.fromSecretAttributes(stack, 'Scram', {
              secretCompleteArn: secretArn,
              encryptionKey: key('SecretKey', '1'),
            }),
            securityGroup: ec2.SecurityGroup.fromSecurityGroupId(stack, 'KafkaSg', 'sg-0fedcba9876543210'),
          },
          sqsSource: {
            queue: sqs.Queue.fromQueueAttributes(stack, 'Queue', { queueArn, keyArn: keyArn('2') }),
            maxTasks: 2,
          },
          topics: { audit: 'mlmf.audit' },
          model: {
            bucket: s3.Bucket.fromBucketAttributes(stack, 'Models', {
              bucketName: 'models-bucket',
              encryptionKey: key('ModelKey', '3'),
            }),
            key: 'mlm/qwen-1.5b.tar',
            sha256: 'ab'.repeat(32),
          },
          curated: {
            bucket: s3.Bucket.fromBucketAttributes(stack, 'Lake', {
              bucketName: 'data-lake',
              encryptionKey: key('LakeKey', '4'),
            }),
          },
          capacity: {
            instanceTypes: [new ec2.InstanceType('g6.2xlarge')],
            machineImage: ec2.MachineImage.genericLinux({ 'eu-west-1': 'ami-0123456789abcdef0' }),
            autoScalingGroupProps: { maxCapacity: 7 },
          },
          worker: {
            image: ecs.ContainerImage.fromRegistry('public.ecr.aws/example/mlm-filter:2'),
            stopTimeout: Duration.seconds(90),
            taskDefinitionProps: { family: 'crawl-filter-worker' },
            containerProps: { memoryLimitMiB: 15000 },
          },
        };
      },
      { then },
    );
  });

  test('no unacknowledged finding', () => assert.deepEqual(s.violations, []));

  test('every key of an imported resource is granted to the roles that read or write it, nothing wider', () => {
    const st = statements(s.template);
    const kmsOn = (n: string) =>
      st.filter((x) => x.Action.some((a) => a.startsWith('kms:')) && JSON.stringify(x.Resource).includes(keyArn(n)));
    const task = (list: typeof st) => list.filter((x) => x.policy.includes('SqsTaskRole'));
    const provisioner = (list: typeof st) => list.filter((x) => x.policy.includes('Topics'));
    // Secret: decrypt only through Secrets Manager, for the workers and the topic provisioner.
    const secret = kmsOn('1');
    assert.equal(task(secret).length, 1);
    assert.equal(provisioner(secret).length, 1);
    for (const x of secret) {
      assert.deepEqual(x.Action, ['kms:Decrypt']);
      assert.deepEqual(x.Condition, { StringEquals: { 'kms:ViaService': 'secretsmanager.eu-west-1.amazonaws.com' } });
    }
    assert.deepEqual(
      task(kmsOn('2')).map((x) => x.Action),
      [['kms:Decrypt']],
      'queue key',
    );
    assert.deepEqual(
      task(kmsOn('3')).map((x) => x.Action),
      [['kms:Decrypt']],
      'model key',
    );
    assert.deepEqual(
      task(kmsOn('4')).map((x) => x.Action),
      [['kms:GenerateDataKey', 'kms:Decrypt']],
      'curated key: write shards, read them back, complete multipart uploads',
    );
    assert.equal(provisioner(kmsOn('4')).length + provisioner(kmsOn('3')).length, 0);
  });

  test('the shared client security group: on the tasks and the provisioner, no rule added to the brokers', () => {
    s.template.resourceCountIs('AWS::EC2::SecurityGroupIngress', 0);
    s.template.hasResourceProperties('AWS::ECS::Service', {
      NetworkConfiguration: { AwsvpcConfiguration: Match.objectLike({ SecurityGroups: ['sg-0cccccccccccccccc'] }) },
    });
    s.template.hasResourceProperties('AWS::Lambda::Function', {
      VpcConfig: Match.objectLike({ SecurityGroupIds: ['sg-0cccccccccccccccc'] }),
    });
    assert.equal(s.pipeline.workerSecurityGroup.securityGroupId, 'sg-0cccccccccccccccc');
    assert.equal(s.pipeline.topicProvisionerSecurityGroup?.securityGroupId, 'sg-0cccccccccccccccc');
  });

  test('pass-through: image, AMI, instance types, ASG size, task family, container memory, stop timeout', () => {
    s.template.hasResourceProperties('AWS::ECS::TaskDefinition', {
      Family: 'crawl-filter-worker',
      NetworkMode: 'awsvpc',
      ContainerDefinitions: [
        Match.objectLike({
          Image: 'public.ecr.aws/example/mlm-filter:2',
          Memory: 15000,
          StopTimeout: 90,
          ResourceRequirements: [{ Type: 'GPU', Value: '1' }],
        }),
      ],
    });
    assert.equal(workerEnv(s.template, 'SqsTask').MLMF_DRAIN_BUDGET_MS, '75000');
    s.template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
      LaunchTemplateData: Match.objectLike({ ImageId: 'ami-0123456789abcdef0' }),
    });
    s.template.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
      MaxSize: '7',
      MixedInstancesPolicy: Match.objectLike({
        LaunchTemplate: Match.objectLike({ Overrides: [{ InstanceType: 'g6.2xlarge' }] }),
      }),
    });
    const manifest = fs.readFileSync(path.join(s.outdir, 'Test.assets.json'), 'utf8');
    assert.doesNotMatch(manifest, /"dockerImages":\s*\{\s*"/, 'no image is built when an image is given');
  });

  test('the created resources are properties; the crawler can be granted publishing', () => {
    const p = s.pipeline;
    assert.ok(p.autoScalingGroup instanceof autoscaling.AutoScalingGroup);
    assert.ok(p.capacityProvider instanceof ecs.AsgCapacityProvider);
    assert.ok(p.instanceRole instanceof iam.Role);
    assert.equal(p.sqsService?.service, p.services[0]);
    assert.equal(p.kafkaService, undefined);
    assert.ok(p.sqsService?.taskRole instanceof iam.Role);
    assert.equal(p.queue?.queueArn, queueArn);
    const st = statements(s.template).filter((x) => x.policy.includes('Crawler'));
    assert.deepEqual(
      st.map((x) => [x.Action, x.Resource]),
      [
        [['sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'], [queueArn]],
        [['kms:GenerateDataKey', 'kms:Decrypt'], [keyArn('2')]],
      ],
    );
  });
});

describe('backfill: the SQS service takes shard jobs (sqsSource.messages = shard-jobs)', () => {
  let s: Synthesised;
  before(() => {
    s = synth((stack) => {
      const poolKey = kms.Key.fromKeyArn(
        stack,
        'PoolKey',
        'arn:aws:kms:eu-west-1:111122223333:key/0b0b0b0b-1111-2222-3333-444444444444',
      );
      const pool = s3.Bucket.fromBucketAttributes(stack, 'Pool', {
        bucketName: 'datacomp-pool',
        encryptionKey: poolKey,
      });
      return {
        vpc: brokersVpc(stack),
        brokersAdmitVpc: true,
        kafka: { kind: 'msk-iam', clusterArn: MSK_ARN, bootstrapServers: mskBrokers },
        sqsSource: {
          messages: 'shard-jobs',
          shardInputBuckets: [pool],
          maxTasks: 8,
          // A customer key on the created queues: sending to the DLQ must not need kms:ReEncrypt* (cdk-nag IAM5).
          encryptionKey: new kms.Key(stack, 'QueueKey', { enableKeyRotation: true }),
        },
        topics: { audit: 'mlmf.audit', provision: false },
        model: model(stack),
      };
    });
  });

  test('cdk-nag AwsSolutions: no unacknowledged finding', () => {
    assert.deepEqual(s.violations, []);
  });

  test('the workers run shard jobs and dead-letter a failing one to the created dead-letter queue', () => {
    const env = workerEnv(s.template, 'Sqs');
    assert.equal(env.MLMF_SOURCE, 'sqs-shards');
    assert.ok(env.MLMF_SQS_DLQ_URL, 'MLMF_SQS_DLQ_URL is set');
    s.template.hasResourceProperties('AWS::SQS::Queue', {
      RedrivePolicy: Match.objectLike({ maxReceiveCount: 5 }),
    });
  });

  test('grants: GetObject on the input bucket and its key, DeleteObject under the curated prefix only, SendMessage on the DLQ', () => {
    const all = statements(s.template);
    const inputs = all.find(
      (st) => st.Action.includes('s3:GetObject') && JSON.stringify(st.Resource).includes('datacomp-pool'),
    );
    assert.ok(inputs, 'GetObject on the input bucket');
    assert.deepEqual(inputs.Action, ['s3:GetObject']);
    const del = all.find((st) => st.Action.includes('s3:DeleteObject'));
    assert.ok(del, 'DeleteObject for stale outputs');
    assert.match(JSON.stringify(del.Resource), /curated\/\*/);
    assert.ok(all.some((st) => st.Action.includes('kms:Decrypt') && JSON.stringify(st.Resource).includes('0b0b0b0b')));
    assert.ok(
      all.some((st) => st.Action.includes('sqs:SendMessage')),
      'SendMessage on the dead-letter queue',
    );
    const wide = all.filter((st) => st.Action.some((a) => a === 'kms:ReEncrypt*' || a === 'kms:GenerateDataKey*'));
    assert.deepEqual(wide, [], 'no wildcard KMS actions for sending to the dead-letter queue');
    assert.ok(
      all.some((st) => st.Action.includes('s3:ListBucket') && JSON.stringify(st.Resource).includes('datacomp-pool')),
      'ListBucket on the input bucket (a missing shard is a 404)',
    );
  });

  test('scaling holds a few jobs per task, not thousands (a job is a whole shard)', () => {
    s.template.hasResourceProperties('AWS::ApplicationAutoScaling::ScalingPolicy', {
      TargetTrackingScalingPolicyConfiguration: Match.objectLike({ TargetValue: 2 }),
    });
  });
});

/** Image props that would build or pull something else than asked. */
function imageCases<P extends object>(base: (st: Stack) => P): [string, (st: Stack) => P, RegExp][] {
  const worker = (w: Record<string, unknown>) => (st: Stack) => ({ ...base(st), sqsSource: {}, worker: w }) as P;
  return [
    ['imageUri with a short digest', worker({ imageUri: `${ECR}@sha256:abc` }), /a digest is @sha256: and 64/],
    ['imageUri with an upper-case digest', worker({ imageUri: `${ECR}@${DIGEST.toUpperCase()}` }), /a digest/],
    [
      'imageUri: an ECR URI the construct cannot grant',
      worker({ imageUri: '11112222333.dkr.ecr.eu-west-1.amazonaws.com/mlm-filter:1' }),
      /not an ECR URI/,
    ],
    [
      'imageBuild with a prebuilt image',
      worker({ imageUri: `${ECR}@${DIGEST}`, imageBuild: { npmRegistry: 'https://npm.example.com/' } }),
      /imageBuild applies to the image built/,
    ],
    [
      'npm registry with credentials',
      worker({ imageBuild: { npmRegistry: 'https://ci:s3cret@npm.example.com/' } }),
      /credentials in the URL would be stored in cdk.out/,
    ],
    ['pip index not a URL', worker({ imageBuild: { pipIndexUrl: 'pypi.example.com/simple' } }), /not an http\(s\) URL/],
    ['pip extra index over ftp', worker({ imageBuild: { pipExtraIndexUrl: 'ftp://x/simple' } }), /not an http/],
    ['base image with a space', worker({ imageBuild: { baseImage: 'node:24 bookworm' } }), /baseImage/],
  ];
}

describe('the worker image: mirrors as build args, or a prebuilt image by digest', () => {
  const base = (stack: Stack) => ({
    vpc: brokersVpc(stack),
    brokersAdmitVpc: true,
    kafka: { kind: 'msk-iam' as const, clusterArn: MSK_ARN, bootstrapServers: mskBrokers },
    topics: { audit: 'a', provision: false },
    model: model(stack),
    sqsSource: {},
  });

  test('imageBuild mirrors reach the Dockerfile as build args, recorded in the asset manifest', () => {
    const mirrors = {
      npmRegistry: 'https://npm.corp.example/repository/npm/',
      pipIndexUrl: 'https://pypi.corp.example/simple',
      pipExtraIndexUrl: 'https://wheels.corp.example/simple',
      baseImage: `111122223333.dkr.ecr.eu-west-1.amazonaws.com/docker-hub/library/node:24-bookworm-slim@${DIGEST}`,
    };
    const s = synth((st) => ({ ...base(st), worker: { imageBuild: mirrors } }), { nag: false });
    const manifest = JSON.parse(fs.readFileSync(path.join(s.outdir, 'Test.assets.json'), 'utf8')) as {
      dockerImages: Record<string, { source: { dockerBuildArgs?: Record<string, string> } }>;
    };
    const [image] = Object.values(manifest.dockerImages);
    assert.deepEqual(image!.source.dockerBuildArgs, {
      NPM_CONFIG_REGISTRY: mirrors.npmRegistry,
      PIP_INDEX_URL: mirrors.pipIndexUrl,
      PIP_EXTRA_INDEX_URL: mirrors.pipExtraIndexUrl,
      BASE_IMAGE: mirrors.baseImage,
    });
    // Each is an ARG of the Dockerfile (a build arg that names no ARG is ignored by Docker, with a warning only).
    const dockerfile = fs.readFileSync(path.join(ROOT, 'functions', 'worker', 'Dockerfile'), 'utf8');
    for (const arg of Object.keys(image!.source.dockerBuildArgs!)) {
      assert.match(dockerfile, new RegExp(`^ARG ${arg}(=|$)`, 'm'), arg);
    }
  });

  test('imageBuild with only a pip index passes only that arg', () => {
    const s = synth((st) => ({ ...base(st), worker: { imageBuild: { pipIndexUrl: 'http://10.0.0.5:3141/simple' } } }), {
      nag: false,
    });
    const manifest = fs.readFileSync(path.join(s.outdir, 'Test.assets.json'), 'utf8');
    assert.match(manifest, /"dockerBuildArgs":\s*\{\s*"PIP_INDEX_URL":\s*"http:\/\/10\.0\.0\.5:3141\/simple"\s*\}/);
  });

  test('an ECR image by digest: the task runs exactly that digest, with pull permission on its repository', () => {
    const s = synth((st) => ({ ...base(st), worker: { imageUri: `${ECR}:1.0@${DIGEST}` } }), { nag: false });
    const td = Object.values(s.template.findResources('AWS::ECS::TaskDefinition'))[0];
    const image = JSON.stringify(s.stack.resolve(td));
    assert.match(image, new RegExp(`/mlm-filter@${DIGEST}"`));
    assert.doesNotMatch(image, /mlm-filter:1\.0/, 'the digest wins over the tag');
    const pull = statements(s.template).find((x) => x.Action.includes('ecr:BatchGetImage'))!;
    assert.deepEqual(pull.Resource, [
      { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':ecr:eu-west-1:111122223333:repository/mlm-filter']] },
    ]);
    assert.doesNotMatch(fs.readFileSync(path.join(s.outdir, 'Test.assets.json'), 'utf8'), /"dockerImages":\s*\{\s*"/);
  });

  test('a public image by digest is pulled as given, with no ECR permission', () => {
    const uri = `public.ecr.aws/example/mlm-filter@${DIGEST}`;
    const s = synth((st) => ({ ...base(st), worker: { imageUri: uri } }), { nag: false });
    const td = Object.values(s.template.findResources('AWS::ECS::TaskDefinition'))[0] as {
      Properties: { ContainerDefinitions: { Image: unknown }[] };
    };
    assert.equal(td.Properties.ContainerDefinitions[0]!.Image, uri);
    assert.equal(
      statements(s.template).find((x) => x.Action.includes('ecr:BatchGetImage')),
      undefined,
      'pull permission on a public image',
    );
  });
});
