import { Duration, Stack, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Construct } from 'constructs';
import { MlmFilterPipeline, type KafkaClusterOptions, type MlmFilterPipelineProps } from './pipeline.ts';

/**
 * Every context key the app reads (`cdk deploy -c key=value`, or cdk.json "context"). docs/DEPLOY.md documents them.
 * Lists are comma-separated.
 */
export const CONTEXT_KEYS = [
  'stackName',
  'pipelineName',
  'account',
  'region',
  'vpcId',
  'subnetIds',
  'availabilityZones',
  'kafka',
  'mskClusterArn',
  'bootstrapServers',
  'kafkaSecurityGroupId',
  'kafkaAuth',
  'kafkaTls',
  'scramSecretArn',
  'sourceTopic',
  'consumerGroup',
  'sqs',
  'sqsQueueArn',
  'auditTopic',
  'acceptedTopic',
  'dlqTopic',
  'provisionTopics',
  'topicPartitions',
  'topicReplicationFactor',
  'deleteTopicsOnDestroy',
  'modelBucket',
  'modelKey',
  'modelSha256',
  'curatedBucket',
  'curatedPrefix',
  'curatedKmsKeyArn',
  'instanceTypes',
  'spot',
  'minTasks',
  'maxTasks',
  'targetBacklogPerTask',
  'imageUri',
  'executionProvider',
  'batchSize',
  'thresholds',
  'combine',
  'metrics',
  'alarmEmail',
  'alarmTopicArn',
  'nag',
] as const;

export type ContextKey = (typeof CONTEXT_KEYS)[number];
export type ContextReader = (key: ContextKey) => unknown;

/** Values used when a key is absent, so that `cdk synth` works on a fresh clone. Not deployable as is. */
export const EXAMPLE_CONTEXT: Partial<Record<ContextKey, string>> = {
  kafka: 'msk-iam',
  mskClusterArn: 'arn:aws:kafka:us-east-1:123456789012:cluster/crawl/0a1b2c3d-4e5f-6789-abcd-ef0123456789-1',
  bootstrapServers:
    'b-1.crawl.example.kafka.us-east-1.amazonaws.com:9098,b-2.crawl.example.kafka.us-east-1.amazonaws.com:9098',
  sourceTopic: 'crawl.pairs',
  sqs: 'create',
  auditTopic: 'mlm-filter.audit',
  acceptedTopic: 'mlm-filter.accepted',
  dlqTopic: 'mlm-filter.dlq',
  modelBucket: 'example-mlm-filter-models',
  modelKey: 'mlm-filter-qwen2.5-1.5b-gpt4o/model.tar',
  modelSha256: '0'.repeat(64),
};

/** Keys without which a deployment cannot work; the app warns when they fall back to EXAMPLE_CONTEXT. */
export const REQUIRED_FOR_DEPLOY: readonly ContextKey[] = [
  'bootstrapServers',
  'auditTopic',
  'modelBucket',
  'modelKey',
  'modelSha256',
];

const str = (v: unknown): string | undefined => (v === undefined || v === null || v === '' ? undefined : String(v));
const list = (v: unknown): string[] | undefined =>
  Array.isArray(v)
    ? v.map(String)
    : str(v)
        ?.split(',')
        .map((s) => s.trim())
        .filter(Boolean);
const bool = (v: unknown): boolean | undefined => (str(v) === undefined ? undefined : v === true || v === 'true');
function int(v: unknown, key: string): number | undefined {
  const s = str(v);
  if (s === undefined) return undefined;
  if (!/^\d+$/.test(s)) throw new Error(`context ${key} must be a non-negative integer, got ${s}`);
  return Number(s);
}

export interface MlmFilterStackProps extends StackProps {
  readonly context: ContextReader;
}

/** The deployable stack: one {@link MlmFilterPipeline} configured from context values. */
export class MlmFilterStack extends Stack {
  readonly pipeline: MlmFilterPipeline;
  /** Context keys that fell back to example values. */
  readonly examplesUsed: ContextKey[] = [];

  constructor(scope: Construct, id: string, props: MlmFilterStackProps) {
    super(scope, id, props);
    const get = (key: ContextKey): unknown => {
      const v = props.context(key);
      if (str(v) !== undefined || Array.isArray(v)) return v;
      if (EXAMPLE_CONTEXT[key] !== undefined) {
        this.examplesUsed.push(key);
        return EXAMPLE_CONTEXT[key];
      }
      return undefined;
    };
    // Example values only make sense as a whole: once real brokers are given, no other key falls back silently.
    const usingExample = str(props.context('bootstrapServers')) === undefined;
    const opt = (key: ContextKey) => (usingExample ? get(key) : props.context(key));
    const need = (key: ContextKey): string => {
      const v = str(opt(key));
      if (v === undefined) throw new Error(`context ${key} is required (cdk deploy -c ${key}=...)`);
      return v;
    };

    let vpc: ec2.IVpc | undefined;
    const vpcId = str(props.context('vpcId'));
    if (vpcId) {
      // Attributes, not Vpc.fromLookup: synth stays offline and credential-free.
      vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
        vpcId,
        availabilityZones: list(props.context('availabilityZones')) ?? [],
        privateSubnetIds: list(props.context('subnetIds')) ?? [],
      });
    }

    const kafkaSgId = str(props.context('kafkaSecurityGroupId'));
    const kafkaSg = kafkaSgId ? ec2.SecurityGroup.fromSecurityGroupId(this, 'KafkaSg', kafkaSgId) : undefined;
    const bootstrapServers = list(opt('bootstrapServers')) ?? [];
    const kind = str(opt('kafka')) ?? 'msk-iam';
    let kafka: KafkaClusterOptions;
    if (kind === 'msk-iam') {
      kafka = { kind, clusterArn: need('mskClusterArn'), bootstrapServers, securityGroup: kafkaSg };
    } else if (kind === 'self-managed') {
      const secretArn = str(props.context('scramSecretArn'));
      const auth = str(props.context('kafkaAuth'));
      if (auth !== undefined && auth !== 'none' && auth !== 'scram-sha-512') {
        throw new Error(`context kafkaAuth must be none or scram-sha-512, got ${auth}`);
      }
      kafka = {
        kind,
        bootstrapServers,
        auth,
        tls: bool(props.context('kafkaTls')),
        scramSecret: secretArn
          ? secretsmanager.Secret.fromSecretCompleteArn(this, 'ScramSecret', secretArn)
          : undefined,
        securityGroup: kafkaSg,
      };
    } else {
      throw new Error(`context kafka must be msk-iam or self-managed, got ${kind}`);
    }

    const scaling = {
      minTasks: int(props.context('minTasks'), 'minTasks'),
      maxTasks: int(props.context('maxTasks'), 'maxTasks'),
      targetBacklogPerTask: int(props.context('targetBacklogPerTask'), 'targetBacklogPerTask'),
    };
    const sourceTopic = str(opt('sourceTopic'));
    const sqsMode = str(opt('sqs'));
    const sqsQueueArn = str(props.context('sqsQueueArn'));

    const curatedName = str(props.context('curatedBucket'));
    const curatedKey = str(props.context('curatedKmsKeyArn'));
    const alarmTopicArn = str(props.context('alarmTopicArn'));
    const alarmEmail = str(props.context('alarmEmail'));
    const combine = str(props.context('combine'));
    const ep = str(props.context('executionProvider'));

    const pipelineProps: MlmFilterPipelineProps = {
      pipelineName: str(props.context('pipelineName')) ?? 'mlm-filter',
      vpc,
      kafka,
      kafkaSource: sourceTopic
        ? { topic: sourceTopic, consumerGroup: str(props.context('consumerGroup')), ...scaling }
        : undefined,
      sqsSource: sqsQueueArn || sqsMode === 'create' ? { queueArn: sqsQueueArn, ...scaling } : undefined,
      topics: {
        audit: need('auditTopic'),
        accepted: str(opt('acceptedTopic')),
        deadLetter: str(opt('dlqTopic')),
        provision: bool(props.context('provisionTopics')),
        partitions: int(props.context('topicPartitions'), 'topicPartitions'),
        replicationFactor: int(props.context('topicReplicationFactor'), 'topicReplicationFactor'),
        deleteOnDestroy: bool(props.context('deleteTopicsOnDestroy')),
      },
      model: {
        bucket: s3.Bucket.fromBucketName(this, 'ModelBucket', need('modelBucket')),
        key: need('modelKey'),
        sha256: need('modelSha256'),
      },
      curated: {
        bucket: curatedName ? s3.Bucket.fromBucketName(this, 'CuratedBucket', curatedName) : undefined,
        prefix: str(props.context('curatedPrefix')),
        encryptionKey: curatedKey ? kms.Key.fromKeyArn(this, 'CuratedKey', curatedKey) : undefined,
      },
      capacity: {
        instanceTypes: list(props.context('instanceTypes'))?.map((t) => new ec2.InstanceType(t)),
        spot: bool(props.context('spot')),
      },
      worker: {
        imageUri: str(props.context('imageUri')),
        executionProvider: ep as 'cuda' | 'webgpu' | 'cpu' | undefined,
        batchSize: int(props.context('batchSize'), 'batchSize'),
        thresholds: str(props.context('thresholds')),
        combine: combine as 'and' | 'or' | undefined,
        metrics: str(props.context('metrics')),
      },
      monitoring: {
        alarmTopic: alarmTopicArn
          ? sns.Topic.fromTopicArn(this, 'AlarmTopic', alarmTopicArn)
          : alarmEmail
            ? this.createAlarmTopic(alarmEmail)
            : undefined,
        maxInputAge: Duration.minutes(30),
      },
    };
    if (ep !== undefined && !['cuda', 'webgpu', 'cpu'].includes(ep)) {
      throw new Error(`context executionProvider must be cuda, webgpu or cpu, got ${ep}`);
    }
    if (combine !== undefined && combine !== 'and' && combine !== 'or') {
      throw new Error(`context combine must be and or or, got ${combine}`);
    }
    this.pipeline = new MlmFilterPipeline(this, 'Pipeline', pipelineProps);
  }

  /** An encrypted alarm topic that CloudWatch may publish to, with an e-mail subscription. */
  private createAlarmTopic(email: string): sns.Topic {
    const key = new kms.Key(this, 'AlarmTopicKey', {
      enableKeyRotation: true,
      description: 'MLM filter alarm topic',
    });
    key.grant(new iam.ServicePrincipal('cloudwatch.amazonaws.com'), 'kms:Decrypt', 'kms:GenerateDataKey*');
    const topic = new sns.Topic(this, 'AlarmTopic', { masterKey: key, enforceSSL: true });
    topic.addSubscription(new subs.EmailSubscription(email));
    return topic;
  }
}
