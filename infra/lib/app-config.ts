import { Annotations, Duration, Stack, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Construct } from 'constructs';
import { EXECUTION_PROVIDERS, isExecutionProvider } from '../../lib/model/execution-providers.ts';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import {
  MlmFilterPipeline,
  type KafkaClusterOptions,
  type MlmFilterPipelineProps,
  type ScalingOptions,
} from './pipeline.ts';

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
  'brokerClientSecurityGroupId',
  'brokersAdmitVpc',
  'subnetsWithoutEgress',
  'kafkaAuth',
  'kafkaTls',
  'scramSecretArn',
  'scramSecretKmsKeyArn',
  'sourceTopic',
  'consumerGroup',
  'sqs',
  'sqsQueueArn',
  'sqsKmsKeyArn',
  'sqsMessages',
  'shardInputBuckets',
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
  'modelKmsKeyArn',
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
  'scoreCache',
  'scoreCacheTtlDays',
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
  kafkaSecurityGroupId: 'sg-0123456789abcdef0',
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
  'modelKmsKeyArn',
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

/** Reads context values, falling back to {@link EXAMPLE_CONTEXT} only when no real brokers are configured. */
class ContextValues {
  /** Example values only make sense as a whole: once real brokers are given, no other key falls back silently. */
  private readonly usingExample: boolean;

  constructor(
    private readonly read: ContextReader,
    private readonly examplesUsed: ContextKey[],
  ) {
    this.usingExample = str(read('bootstrapServers')) === undefined;
  }

  /** The key's own value, never an example. */
  raw(key: ContextKey): unknown {
    return this.read(key);
  }

  str(key: ContextKey): string | undefined {
    return str(this.read(key));
  }

  /** The key's value, or its example value while the whole configuration is the example. */
  opt(key: ContextKey): unknown {
    const v = this.read(key);
    if (!this.usingExample || str(v) !== undefined || Array.isArray(v)) return v;
    if (EXAMPLE_CONTEXT[key] === undefined) return undefined;
    this.examplesUsed.push(key);
    return EXAMPLE_CONTEXT[key];
  }

  need(key: ContextKey): string {
    const v = str(this.opt(key));
    if (v === undefined) throw new Error(`context ${key} is required (cdk deploy -c ${key}=...)`);
    return v;
  }
}

/**
 * The deployable stack: one {@link MlmFilterPipeline} configured from context values, in the VPC given by `vpcId`
 * (or, for a first look, a new one). The app is one user of the construct: everything here is what any app does.
 */
export class MlmFilterStack extends Stack {
  readonly pipeline: MlmFilterPipeline;
  /** Context keys that fell back to example values. */
  readonly examplesUsed: ContextKey[] = [];

  constructor(scope: Construct, id: string, props: MlmFilterStackProps) {
    super(scope, id, props);
    const c = new ContextValues(props.context, this.examplesUsed);
    const ep = c.str('executionProvider');
    if (ep !== undefined && !isExecutionProvider(ep)) {
      throw new Error(`context executionProvider must be one of ${EXECUTION_PROVIDERS.join(', ')}, got ${ep}`);
    }
    const combine = c.str('combine');
    if (combine !== undefined && combine !== 'and' && combine !== 'or') {
      throw new Error(`context combine must be and or or, got ${combine}`);
    }
    const brokerClientSg = c.str('brokerClientSecurityGroupId');
    const pipelineProps: MlmFilterPipelineProps = {
      pipelineName: c.str('pipelineName') ?? 'mlm-filter',
      vpc: this.network(c),
      brokerClientSecurityGroup: brokerClientSg
        ? ec2.SecurityGroup.fromSecurityGroupId(this, 'BrokerClientSg', brokerClientSg)
        : undefined,
      brokersAdmitVpc: bool(c.raw('brokersAdmitVpc')),
      subnetsWithoutEgress: bool(c.raw('subnetsWithoutEgress')),
      kafka: this.kafkaCluster(c),
      ...this.sources(c),
      topics: {
        audit: c.need('auditTopic'),
        accepted: str(c.opt('acceptedTopic')),
        deadLetter: str(c.opt('dlqTopic')),
        provision: bool(c.raw('provisionTopics')),
        partitions: int(c.raw('topicPartitions'), 'topicPartitions'),
        replicationFactor: int(c.raw('topicReplicationFactor'), 'topicReplicationFactor'),
        deleteOnDestroy: bool(c.raw('deleteTopicsOnDestroy')),
      },
      model: {
        bucket: this.bucket('ModelBucket', c.need('modelBucket'), c.str('modelKmsKeyArn')),
        key: c.need('modelKey'),
        sha256: c.need('modelSha256'),
      },
      curated: this.curated(c),
      capacity: {
        instanceTypes: list(c.raw('instanceTypes'))?.map((t) => new ec2.InstanceType(t)),
        spot: bool(c.raw('spot')),
      },
      worker: {
        imageUri: c.str('imageUri'),
        executionProvider: ep,
        batchSize: int(c.raw('batchSize'), 'batchSize'),
        thresholds: c.str('thresholds'),
        combine: combine as 'and' | 'or' | undefined,
        metrics: c.str('metrics'),
      },
      monitoring: { alarmTopic: this.alarmTopic(c), maxInputAge: Duration.minutes(30) },
      scoreCache: scoreCacheOf(c),
    };
    this.pipeline = new MlmFilterPipeline(this, 'Pipeline', pipelineProps);
  }

  /** The brokers' VPC by attributes (no lookup: synth stays offline and credential-free), or a new one. */
  private network(c: ContextValues): ec2.IVpc {
    const vpcId = c.str('vpcId');
    if (vpcId) {
      const imported = ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
        vpcId,
        availabilityZones: list(c.raw('availabilityZones')) ?? [],
        privateSubnetIds: list(c.raw('subnetIds')) ?? [],
      });
      // Without their route table ids, imported subnets warn when something reads them: nothing in this stack does
      // (no interface or gateway endpoint is added to an imported VPC), and `cdk synth --strict` fails on warnings.
      Annotations.of(imported).acknowledgeWarning(
        '@aws-cdk/aws-ec2:noSubnetRouteTableId',
        "the stack adds nothing to an imported VPC's route tables",
      );
      return imported;
    }
    const vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 1,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
        { name: 'workers', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 20 },
      ],
    });
    vpc.addFlowLog('FlowLogs', {
      destination: ec2.FlowLogDestination.toCloudWatchLogs(
        new logs.LogGroup(this, 'FlowLogGroup', { retention: logs.RetentionDays.ONE_MONTH }),
      ),
      trafficType: ec2.FlowLogTrafficType.REJECT,
    });
    // Model and shard traffic stays off the NAT gateway.
    vpc.addGatewayEndpoint('S3Endpoint', { service: ec2.GatewayVpcEndpointAwsService.S3 });
    return vpc;
  }

  private kafkaCluster(c: ContextValues): KafkaClusterOptions {
    const kafkaSgId = str(c.opt('kafkaSecurityGroupId'));
    const securityGroup = kafkaSgId ? ec2.SecurityGroup.fromSecurityGroupId(this, 'KafkaSg', kafkaSgId) : undefined;
    const bootstrapServers = list(c.opt('bootstrapServers')) ?? [];
    const kind = str(c.opt('kafka')) ?? 'msk-iam';
    if (kind === 'msk-iam') return { kind, clusterArn: c.need('mskClusterArn'), bootstrapServers, securityGroup };
    if (kind !== 'self-managed') throw new Error(`context kafka must be msk-iam or self-managed, got ${kind}`);
    const auth = c.str('kafkaAuth');
    if (auth !== undefined && auth !== 'none' && auth !== 'scram-sha-512') {
      throw new Error(`context kafkaAuth must be none or scram-sha-512, got ${auth}`);
    }
    const secretArn = c.str('scramSecretArn');
    const secretKey = c.str('scramSecretKmsKeyArn');
    const scramSecret = secretArn
      ? secretsmanager.Secret.fromSecretAttributes(this, 'ScramSecret', {
          secretCompleteArn: secretArn,
          encryptionKey: secretKey ? kms.Key.fromKeyArn(this, 'ScramSecretKey', secretKey) : undefined,
        })
      : undefined;
    return { kind, bootstrapServers, auth, tls: bool(c.raw('kafkaTls')), scramSecret, securityGroup };
  }

  private sources(c: ContextValues): Pick<MlmFilterPipelineProps, 'kafkaSource' | 'sqsSource'> {
    const scaling: ScalingOptions = {
      minTasks: int(c.raw('minTasks'), 'minTasks'),
      maxTasks: int(c.raw('maxTasks'), 'maxTasks'),
      targetBacklogPerTask: int(c.raw('targetBacklogPerTask'), 'targetBacklogPerTask'),
    };
    const sourceTopic = str(c.opt('sourceTopic'));
    const queueArn = c.str('sqsQueueArn');
    const queueKey = c.str('sqsKmsKeyArn');
    const queue = queueArn
      ? sqs.Queue.fromQueueAttributes(this, 'InputQueue', { queueArn, keyArn: queueKey })
      : undefined;
    const messages = c.str('sqsMessages');
    if (messages !== undefined && messages !== 'pairs' && messages !== 'shard-jobs') {
      throw new Error(`context sqsMessages must be pairs or shard-jobs, got ${JSON.stringify(messages)}`);
    }
    const inputs = (c.str('shardInputBuckets') ?? '').split(',').filter(Boolean);
    const shardInputBuckets = inputs.map((name, i) => s3.Bucket.fromBucketName(this, `ShardInput${i}`, name));
    const jobs = messages ? { messages, ...(inputs.length ? { shardInputBuckets } : {}) } : {};
    return {
      kafkaSource: sourceTopic ? { topic: sourceTopic, consumerGroup: c.str('consumerGroup'), ...scaling } : undefined,
      sqsSource: queue || str(c.opt('sqs')) === 'create' ? { queue, ...scaling, ...jobs } : undefined,
    };
  }

  private curated(c: ContextValues): MlmFilterPipelineProps['curated'] {
    const name = c.str('curatedBucket');
    const keyArn = c.str('curatedKmsKeyArn');
    const key = keyArn ? kms.Key.fromKeyArn(this, 'CuratedKey', keyArn) : undefined;
    return {
      bucket: name
        ? s3.Bucket.fromBucketAttributes(this, 'CuratedBucket', { bucketName: name, encryptionKey: key })
        : undefined,
      prefix: c.str('curatedPrefix'),
      encryptionKey: key,
    };
  }

  /** An existing bucket, carrying the customer-managed key its objects are encrypted with when one is given. */
  private bucket(id: string, name: string, keyArn: string | undefined): s3.IBucket {
    const encryptionKey = keyArn ? kms.Key.fromKeyArn(this, `${id}Key`, keyArn) : undefined;
    return s3.Bucket.fromBucketAttributes(this, id, { bucketName: name, encryptionKey });
  }

  private alarmTopic(c: ContextValues): sns.ITopic | undefined {
    const arn = c.str('alarmTopicArn');
    if (arn) return sns.Topic.fromTopicArn(this, 'AlarmTopic', arn);
    const email = c.str('alarmEmail');
    return email ? this.createAlarmTopic(email) : undefined;
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

/** scoreCache=false turns the fleet's score cache off; scoreCacheTtlDays sets its entries' lifetime. */
function scoreCacheOf(c: ContextValues): MlmFilterPipelineProps['scoreCache'] {
  const days = int(c.raw('scoreCacheTtlDays'), 'scoreCacheTtlDays');
  return { enabled: bool(c.raw('scoreCache')), ...(days !== undefined ? { ttl: Duration.days(days) } : {}) };
}
