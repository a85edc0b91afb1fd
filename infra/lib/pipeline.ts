import * as path from 'node:path';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Duration, IgnoreMode, RemovalPolicy, Stack, Token, Validations } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { DEFAULT_METRICS_NAMESPACE, METRIC, PIPELINE_DIMENSION, PIPELINE_ENV } from '../../lib/metrics/metric-names.ts';
import type { WorkerEnv } from '../../lib/worker-env.ts';
import { KafkaTopics } from './kafka-topics.ts';
import { PipelineMonitoring, type BacklogSignal, type MonitoringOptions } from './monitoring.ts';
import { MskArns, isMskClusterArn } from './msk.ts';

export type { MonitoringOptions } from './monitoring.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** An Amazon MSK cluster reached with IAM access control (SASL/OAUTHBEARER over TLS, port 9098). */
export interface MskIamKafkaOptions {
  readonly kind: 'msk-iam';
  /** `arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid>`; topic and group ARNs are derived from it. */
  readonly clusterArn: string;
  /** The cluster's IAM bootstrap brokers (`aws kafka get-bootstrap-brokers`, BootstrapBrokerStringSaslIam). */
  readonly bootstrapServers: readonly string[];
  /** The brokers' security group: the worker and the topic provisioner are allowed in on the broker port. */
  readonly securityGroup?: ec2.ISecurityGroup;
}

/** Any other Kafka (self-managed, Confluent, MSK without IAM) reachable from the VPC. */
export interface SelfManagedKafkaOptions {
  readonly kind: 'self-managed';
  readonly bootstrapServers: readonly string[];
  /** @default 'scram-sha-512' when `scramSecret` is set, else 'none' */
  readonly auth?: 'none' | 'scram-sha-512';
  /** Secrets Manager secret holding JSON `{"username": ..., "password": ...}`. Read by the worker at start. */
  readonly scramSecret?: secretsmanager.ISecret;
  /** Connect over TLS. @default true */
  readonly tls?: boolean;
  /** The brokers' security group, opened to the worker and the provisioner on the broker port. */
  readonly securityGroup?: ec2.ISecurityGroup;
}

export type KafkaClusterOptions = MskIamKafkaOptions | SelfManagedKafkaOptions;

/** Task-count bounds and the backlog each task should carry. */
export interface ScalingOptions {
  /** 0 lets the service sleep when there is no input (a step policy wakes it on backlog). @default 0 for SQS and MSK, 1 for self-managed Kafka */
  readonly minTasks?: number;
  /** @default 4 */
  readonly maxTasks?: number;
  /**
   * Waiting records per running task that target tracking holds: about throughput x acceptable delay
   * (e.g. 10 pairs/s x 10 min = 6000). @default 6000
   */
  readonly targetBacklogPerTask?: number;
}

/** Consume crawled pairs from a Kafka topic of {@link MlmFilterPipelineProps.kafka}. */
export interface KafkaSourceOptions extends ScalingOptions {
  readonly topic: string;
  /** @default `mlm-filter-<pipelineName>` */
  readonly consumerGroup?: string;
}

/** Consume crawled pairs from an SQS queue: imported by ARN, or created with its dead-letter queue. */
export interface SqsSourceOptions extends ScalingOptions {
  /** Use this existing queue. @default - a new encrypted queue with a dead-letter queue */
  readonly queueArn?: string;
  /** Receives before a message moves to the dead-letter queue (created queue only). @default 5 */
  readonly maxReceiveCount?: number;
  /** Must exceed the worker's time from receive to durable ack. @default Duration.minutes(15) */
  readonly visibilityTimeout?: Duration;
  /** @default Duration.days(4) (dead-letter queue: 14 days) */
  readonly retentionPeriod?: Duration;
  /** Encrypt the created queues with this key. @default - SQS-managed SSE */
  readonly encryptionKey?: kms.IKey;
}

/** The audit / accepted / dead-letter topics on {@link MlmFilterPipelineProps.kafka}. */
export interface TopicOptions {
  /** Rejected pairs with scores and reasons. */
  readonly audit: string;
  /** Accepted pairs with their curated location. @default - none */
  readonly accepted?: string;
  /** Records that fail permanently. @default - none */
  readonly deadLetter?: string;
  /** Create the topics with a custom resource; false declares them existing. @default true */
  readonly provision?: boolean;
  /** @default 12 */
  readonly partitions?: number;
  /** @default 3 */
  readonly replicationFactor?: number;
  /** Audit topic retention. @default Duration.days(30) */
  readonly retention?: Duration;
  /** Delete the provisioned topics and their data when the stack is deleted. @default false */
  readonly deleteOnDestroy?: boolean;
}

/** The model artifact: a tarball of the model directory (DESIGN.md layout), fetched and verified at task start. */
export interface ModelArtifactOptions {
  readonly bucket: s3.IBucket;
  readonly key: string;
  /** Hex SHA-256 of the tarball; the worker refuses to start on a mismatch. */
  readonly sha256: string;
  /** Where the worker unpacks it. @default '/opt/mlm-filter/model' */
  readonly localDir?: string;
}

/** The bucket that receives accepted pairs as WebDataset shards. */
export interface CuratedBucketOptions {
  /** Write into this existing bucket. @default - a new bucket */
  readonly bucket?: s3.IBucket;
  /** Key prefix the worker writes under (and the only prefix it may touch). @default 'curated/' */
  readonly prefix?: string;
  /** SSE-KMS with this key (new bucket). @default - SSE-S3 */
  readonly encryptionKey?: kms.IKey;
  /** @default - none */
  readonly lifecycleRules?: s3.LifecycleRule[];
  /** Server access logs into a separate bucket (new bucket). @default true */
  readonly serverAccessLogs?: boolean;
  /** @default RemovalPolicy.RETAIN */
  readonly removalPolicy?: RemovalPolicy;
}

/** GPU instances for the ECS cluster. */
export interface GpuCapacityOptions {
  /** Instance types, one GPU each is assumed. @default [g5.xlarge, g6.xlarge] */
  readonly instanceTypes?: ec2.InstanceType[];
  /** Run on Spot (price-capacity-optimized over the instance types). @default false */
  readonly spot?: boolean;
  /** Root volume (images, model, Docker layers), GiB. @default 100 */
  readonly rootVolumeGiB?: number;
  /** @default - the sum of the services' maxTasks */
  readonly maxInstances?: number;
}

/** The worker container and its settings. */
export interface WorkerOptions {
  /** A pre-built image (e.g. ECR URI). @default - built from functions/worker/Dockerfile at deploy */
  readonly imageUri?: string;
  /** @default 'cuda' */
  readonly executionProvider?: 'cuda' | 'webgpu' | 'cpu';
  /** @default 16 */
  readonly batchSize?: number;
  /** Policy thresholds, e.g. `itm>=66,odf>=20` (the paper's best DataComp-medium setting). @default 'itm>=66,odf>=20' */
  readonly thresholds?: string;
  /** @default 'and' */
  readonly combine?: 'and' | 'or';
  /**
   * Metrics the worker scores (MLMF_METRICS): `all`, `policy` (only those `thresholds` reads: for the default policy
   * two metrics instead of four, roughly 1.5-1.8x fewer decoder tokens; the others are null in the curated samples
   * and audit events and cannot be re-thresholded later without rescoring), or a list such as `itm,odf,ctq` that
   * includes every metric `thresholds` reads (the worker refuses to start otherwise). @default 'all'
   */
  readonly metrics?: string;
  /** @default 3584 (of a 4-vCPU instance) */
  readonly cpu?: number;
  /** Soft memory reservation, MiB. @default 12288 */
  readonly memoryReservationMiB?: number;
  /** @default 8080 */
  readonly healthPort?: number;
  /** @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /** Extra environment (non-secret). */
  readonly environment?: Record<string, string>;
}

export interface MlmFilterPipelineProps {
  /** Names the dashboard, consumer group and the `Pipeline` metric dimension. @default the construct id */
  readonly pipelineName?: string;
  /** The VPC of the brokers (or one that reaches them). @default - a new VPC with one NAT gateway */
  readonly vpc?: ec2.IVpc;
  /** Subnets for the GPU instances and the provisioner: they need egress to fetch images. @default - private with egress */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** The Kafka cluster holding the audit (and accepted, dead-letter) topics, and the Kafka source if any. */
  readonly kafka: KafkaClusterOptions;
  /** Consume from Kafka. At least one of kafkaSource and sqsSource. */
  readonly kafkaSource?: KafkaSourceOptions;
  /** Consume from SQS. */
  readonly sqsSource?: SqsSourceOptions;
  readonly topics: TopicOptions;
  readonly model: ModelArtifactOptions;
  /** @default - a new bucket, SSE-S3, versioned, access-logged */
  readonly curated?: CuratedBucketOptions;
  readonly capacity?: GpuCapacityOptions;
  readonly worker?: WorkerOptions;
  readonly monitoring?: MonitoringOptions;
  /** CloudWatch EMF namespace of the worker's metrics. @default 'MlmFilter' */
  readonly metricsNamespace?: string;
}

function brokerPort(servers: readonly string[]): number {
  const port = Number(servers[0]?.split(':').pop());
  return Number.isInteger(port) && port > 0 ? port : 9092;
}

/**
 * The MLM-filter stream pipeline: GPU workers on ECS (EC2 GPU capacity) consuming crawled pairs from Kafka and/or SQS,
 * scaling on backlog, writing accepted pairs to a curated bucket and rejects to an audit topic, with a dashboard and
 * alarms. One ECS service per source, sharing the cluster, image and capacity.
 */
export class MlmFilterPipeline extends Construct {
  readonly pipelineName: string;
  readonly vpc: ec2.IVpc;
  readonly cluster: ecs.Cluster;
  readonly curatedBucket: s3.IBucket;
  readonly curatedPrefix: string;
  readonly workerSecurityGroup: ec2.SecurityGroup;
  readonly queue?: sqs.IQueue;
  readonly deadLetterQueue?: sqs.Queue;
  readonly services: ecs.Ec2Service[] = [];
  readonly monitoring: PipelineMonitoring;
  readonly topics?: KafkaTopics;

  constructor(scope: Construct, id: string, props: MlmFilterPipelineProps) {
    super(scope, id);
    // Access-log delivery by bucket policy (ACLs stay disabled), whatever the app's feature flags say.
    this.node.setContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy', true);
    this.pipelineName = props.pipelineName ?? id;
    const namespace = props.metricsNamespace ?? DEFAULT_METRICS_NAMESPACE;
    validate(this, props);

    const kafka = props.kafka;
    const msk = kafka.kind === 'msk-iam' ? new MskArns(kafka.clusterArn) : undefined;
    const kafkaAuth = kafka.kind === 'msk-iam' ? 'iam' : (kafka.auth ?? (kafka.scramSecret ? 'scram-sha-512' : 'none'));
    const kafkaTls = kafka.kind === 'msk-iam' ? true : (kafka.tls ?? true);
    const scramSecret = kafka.kind === 'self-managed' ? kafka.scramSecret : undefined;

    // --- network
    this.vpc = props.vpc ?? this.createVpc();
    const subnets = props.vpcSubnets ?? { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS };
    this.workerSecurityGroup = new ec2.SecurityGroup(this, 'WorkerSg', {
      vpc: this.vpc,
      description: `MLM filter workers (${this.pipelineName}): egress only`,
      allowAllOutbound: true,
    });
    const port = brokerPort(kafka.bootstrapServers);

    // --- curated bucket
    this.curatedPrefix = normalisePrefix(props.curated?.prefix ?? 'curated/');
    this.curatedBucket = props.curated?.bucket ?? this.createCuratedBucket(props.curated);

    // --- topics
    const sinkTopics = [props.topics.audit, props.topics.accepted, props.topics.deadLetter].filter(
      (t): t is string => typeof t === 'string' && t.length > 0,
    );
    if (props.topics.provision ?? true) {
      const provisionerSg = new ec2.SecurityGroup(this, 'TopicProvisionerSg', {
        vpc: this.vpc,
        description: `Kafka topic provisioner (${this.pipelineName})`,
        allowAllOutbound: true,
      });
      kafka.securityGroup?.addIngressRule(provisionerSg, ec2.Port.tcp(port), 'MLM filter topic provisioner');
      const partitions = props.topics.partitions ?? 12;
      const replicationFactor = props.topics.replicationFactor ?? 3;
      this.topics = new KafkaTopics(this, 'Topics', {
        vpc: this.vpc,
        vpcSubnets: subnets,
        securityGroup: provisionerSg,
        bootstrapServers: kafka.bootstrapServers,
        auth: kafkaAuth,
        tls: kafkaTls,
        scramSecret,
        msk,
        deleteOnDestroy: props.topics.deleteOnDestroy,
        topics: sinkTopics.map((name) => ({
          name,
          partitions,
          replicationFactor,
          configs:
            name === props.topics.audit
              ? { 'retention.ms': String((props.topics.retention ?? Duration.days(30)).toMilliseconds()) }
              : undefined,
        })),
      });
    }
    kafka.securityGroup?.addIngressRule(this.workerSecurityGroup, ec2.Port.tcp(port), 'MLM filter workers');

    // --- SQS source
    if (props.sqsSource) {
      if (props.sqsSource.queueArn) {
        this.queue = sqs.Queue.fromQueueArn(this, 'InputQueue', props.sqsSource.queueArn);
      } else {
        const enc = props.sqsSource.encryptionKey
          ? { encryption: sqs.QueueEncryption.KMS, encryptionMasterKey: props.sqsSource.encryptionKey }
          : { encryption: sqs.QueueEncryption.SQS_MANAGED };
        this.deadLetterQueue = new sqs.Queue(this, 'InputDeadLetterQueue', {
          ...enc,
          enforceSSL: true,
          retentionPeriod: Duration.days(14),
        });
        this.queue = new sqs.Queue(this, 'InputQueue', {
          ...enc,
          enforceSSL: true,
          visibilityTimeout: props.sqsSource.visibilityTimeout ?? Duration.minutes(15),
          retentionPeriod: props.sqsSource.retentionPeriod ?? Duration.days(4),
          deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: props.sqsSource.maxReceiveCount ?? 5 },
        });
      }
    }

    // --- ECS cluster on GPU instances
    this.cluster = new ecs.Cluster(this, 'Cluster', {
      vpc: this.vpc,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });
    const maxTasksTotal =
      (props.kafkaSource ? (props.kafkaSource.maxTasks ?? 4) : 0) +
      (props.sqsSource ? (props.sqsSource.maxTasks ?? 4) : 0);
    const capacityProvider = this.createGpuCapacity(props.capacity, subnets, maxTasksTotal);

    // --- worker image, logs, shared environment
    const image = props.worker?.imageUri
      ? this.registryImage(props.worker.imageUri)
      : ecs.ContainerImage.fromAsset(repoRoot, {
          file: 'functions/worker/Dockerfile',
          // Synth only hashes these files; Docker runs at deploy (cdk deploy / cdk-assets publish).
          exclude: dockerIgnore(),
          ignoreMode: IgnoreMode.DOCKER,
        });
    const logGroup = new logs.LogGroup(this, 'WorkerLogs', {
      retention: props.worker?.logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const w = props.worker ?? {};
    // Typed against the worker's environment contract (lib/worker-env.ts): a misspelt name does not compile.
    const contract: WorkerEnv = {
      [PIPELINE_ENV]: this.pipelineName,
      MLMF_BROKERS: kafka.bootstrapServers.join(','),
      MLMF_KAFKA_AUTH: kafkaAuth,
      MLMF_KAFKA_TLS: String(kafkaTls),
      MLMF_BUCKET: this.curatedBucket.bucketName,
      MLMF_PREFIX: this.curatedPrefix,
      MLMF_AUDIT_TOPIC: props.topics.audit,
      MLMF_MODEL_DIR: props.model.localDir ?? '/opt/mlm-filter/model',
      MLMF_MODEL_S3_URI: `s3://${props.model.bucket.bucketName}/${props.model.key}`,
      MLMF_MODEL_SHA256: props.model.sha256.toLowerCase(),
      MLMF_THRESHOLDS: w.thresholds ?? 'itm>=66,odf>=20',
      MLMF_COMBINE: w.combine ?? 'and',
      MLMF_METRICS: w.metrics ?? 'all',
      MLMF_EXECUTION_PROVIDER: w.executionProvider ?? 'cuda',
      MLMF_BATCH_SIZE: String(w.batchSize ?? 16),
      MLMF_HEALTH_PORT: String(w.healthPort ?? 8080),
      MLMF_METRICS_NAMESPACE: namespace,
      AWS_REGION: Stack.of(this).region,
    };
    if (props.topics.accepted) contract.MLMF_ACCEPTED_TOPIC = props.topics.accepted;
    if (props.topics.deadLetter) contract.MLMF_DLQ_TOPIC = props.topics.deadLetter;
    if (scramSecret) contract.MLMF_KAFKA_SECRET_ARN = scramSecret.secretArn;
    const common: Record<string, string> = {
      ...(w.environment ?? {}),
      ...(contract as Record<string, string>),
    };

    const backlogs: BacklogSignal[] = [];
    const build = (source: 'kafka' | 'sqs', env: WorkerEnv, scaling: ScalingOptions) => {
      const taskRole = new iam.Role(this, `${cap(source)}TaskRole`, {
        assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
        description: `MLM filter worker (${this.pipelineName}, ${source} source)`,
      });
      this.grantSinks(taskRole, props, msk, sinkTopics, scramSecret);
      const taskDef = new ecs.Ec2TaskDefinition(this, `${cap(source)}Task`, {
        networkMode: ecs.NetworkMode.AWS_VPC,
        taskRole,
      });
      const healthPort = w.healthPort ?? 8080;
      taskDef.addContainer('worker', {
        image,
        cpu: w.cpu ?? 3584,
        memoryReservationMiB: w.memoryReservationMiB ?? 12288,
        gpuCount: 1,
        environment: { ...common, ...(env as Record<string, string>) },
        logging: ecs.LogDrivers.awsLogs({ logGroup, streamPrefix: source }),
        portMappings: [{ containerPort: healthPort }],
        healthCheck: {
          command: [
            'CMD',
            'node',
            '-e',
            `fetch('http://127.0.0.1:${healthPort}/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))`,
          ],
          interval: Duration.seconds(30),
          timeout: Duration.seconds(5),
          retries: 3,
          // Model download + verification + session creation happen before the first healthy answer.
          startPeriod: Duration.seconds(300),
        },
        // Graceful drain on SIGTERM: finish in-flight batches, flush sinks, ack.
        stopTimeout: Duration.seconds(120),
        readonlyRootFilesystem: false,
      });
      Validations.of(taskDef).acknowledge({
        id: 'AwsSolutions-ECS2',
        reason:
          'Only non-secret settings are passed as environment; the SCRAM secret is passed by ARN and read with the task role.',
      });
      const service = new ecs.Ec2Service(this, `${cap(source)}Service`, {
        cluster: this.cluster,
        taskDefinition: taskDef,
        desiredCount: scaling.minTasks ?? 0,
        securityGroups: [this.workerSecurityGroup],
        vpcSubnets: subnets,
        capacityProviderStrategies: [{ capacityProvider: capacityProvider.capacityProviderName, weight: 1 }],
        circuitBreaker: { enable: true, rollback: true },
        minHealthyPercent: 50,
        maxHealthyPercent: 200,
      });
      this.services.push(service);
      const execPolicy = taskDef.executionRole?.node.tryFindChild('DefaultPolicy');
      if (execPolicy) {
        Validations.of(execPolicy).acknowledge({
          id: 'AwsSolutions-IAM5[Resource::*]',
          reason:
            'ecr:GetAuthorizationToken has no resource-level permissions (image pull is scoped to the repository).',
        });
      }
      return service;
    };

    if (props.kafkaSource) {
      const group = props.kafkaSource.consumerGroup ?? `mlm-filter-${this.pipelineName}`;
      const service = build(
        'kafka',
        { MLMF_SOURCE: 'kafka', MLMF_SOURCE_TOPIC: props.kafkaSource.topic, MLMF_GROUP_ID: group },
        props.kafkaSource,
      );
      const role = service.taskDefinition.taskRole;
      if (msk) {
        role.addToPrincipalPolicy(
          new iam.PolicyStatement({
            actions: ['kafka-cluster:DescribeTopic', 'kafka-cluster:ReadData'],
            resources: [msk.topic(props.kafkaSource.topic)],
          }),
        );
        role.addToPrincipalPolicy(
          new iam.PolicyStatement({
            actions: ['kafka-cluster:DescribeGroup', 'kafka-cluster:AlterGroup'],
            resources: [msk.group(group)],
          }),
        );
      }
      const running = runningTasks(this.cluster, service);
      const lag = msk
        ? new cloudwatch.Metric({
            namespace: 'AWS/Kafka',
            metricName: 'SumOffsetLag',
            dimensionsMap: { 'Cluster Name': msk.clusterName, 'Consumer Group': group, Topic: props.kafkaSource.topic },
            statistic: 'Maximum',
            period: Duration.minutes(1),
            label: 'Kafka consumer lag (records)',
          })
        : new cloudwatch.Metric({
            namespace,
            metricName: METRIC.KafkaConsumerLag,
            dimensionsMap: { [PIPELINE_DIMENSION]: this.pipelineName },
            statistic: 'Sum',
            period: Duration.minutes(1),
            label: 'Kafka consumer lag, worker-reported (records)',
          });
      const age = msk
        ? new cloudwatch.Metric({
            namespace: 'AWS/Kafka',
            metricName: 'EstimatedMaxTimeLag',
            dimensionsMap: { 'Cluster Name': msk.clusterName, 'Consumer Group': group, Topic: props.kafkaSource.topic },
            statistic: 'Maximum',
            period: Duration.minutes(5),
            label: 'Kafka estimated time lag (s)',
          })
        : undefined;
      this.scale('Kafka', service, lag, running, props.kafkaSource, msk ? 0 : 1);
      backlogs.push({ label: 'Kafka', backlog: lag, oldestAgeSeconds: age, runningTasks: running });
    }

    if (props.sqsSource && this.queue) {
      const service = build('sqs', { MLMF_SOURCE: 'sqs', MLMF_SQS_QUEUE_URL: this.queue.queueUrl }, props.sqsSource);
      this.queue.grantConsumeMessages(service.taskDefinition.taskRole);
      const running = runningTasks(this.cluster, service);
      const visible = this.queue.metricApproximateNumberOfMessagesVisible({
        statistic: 'Maximum',
        period: Duration.minutes(1),
        label: 'SQS messages visible',
      });
      this.scale('Sqs', service, visible, running, props.sqsSource, 0);
      backlogs.push({
        label: 'Sqs',
        backlog: visible,
        oldestAgeSeconds: this.queue.metricApproximateAgeOfOldestMessage({
          statistic: 'Maximum',
          period: Duration.minutes(5),
        }),
        deadLetters: this.deadLetterQueue?.metricApproximateNumberOfMessagesVisible({
          statistic: 'Maximum',
          period: Duration.minutes(1),
        }),
        runningTasks: running,
      });
    }

    this.monitoring = new PipelineMonitoring(this, 'Monitoring', {
      ...props.monitoring,
      pipelineName: this.pipelineName,
      namespace,
      backlogs,
    });
  }

  /** An ECR image gets pull permissions on the execution role for exactly its repository; others are public. */
  private registryImage(uri: string): ecs.ContainerImage {
    const m =
      /^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([^:@]+)(?::([^@]+))?(?:@(sha256:[0-9a-f]{64}))?$/.exec(
        uri,
      );
    if (!m) return ecs.ContainerImage.fromRegistry(uri);
    const [, account, region, name, tag, digest] = m;
    const repo = ecr.Repository.fromRepositoryAttributes(this, 'WorkerRepository', {
      repositoryName: name!,
      repositoryArn: Stack.of(this).formatArn({
        service: 'ecr',
        account,
        region,
        resource: 'repository',
        resourceName: name,
      }),
    });
    return ecs.ContainerImage.fromEcrRepository(repo, digest ?? tag ?? 'latest');
  }

  private createVpc(): ec2.IVpc {
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

  private createCuratedBucket(opts: CuratedBucketOptions | undefined): s3.Bucket {
    const removalPolicy = opts?.removalPolicy ?? RemovalPolicy.RETAIN;
    let accessLogs: s3.Bucket | undefined;
    if (opts?.serverAccessLogs ?? true) {
      accessLogs = new s3.Bucket(this, 'AccessLogsBucket', {
        encryption: s3.BucketEncryption.S3_MANAGED,
        blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
        enforceSSL: true,
        // ACLs disabled: access log delivery is granted by bucket policy, not the legacy LogDeliveryWrite ACL.
        objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        lifecycleRules: [{ expiration: Duration.days(365) }],
        removalPolicy,
      });
      Validations.of(accessLogs).acknowledge({
        id: 'AwsSolutions-S1',
        reason: 'This is the server access log bucket; logging it into itself would loop.',
      });
    }
    return new s3.Bucket(this, 'CuratedBucket', {
      ...(opts?.encryptionKey
        ? { encryption: s3.BucketEncryption.KMS, encryptionKey: opts.encryptionKey, bucketKeyEnabled: true }
        : { encryption: s3.BucketEncryption.S3_MANAGED }),
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      versioned: true,
      lifecycleRules: opts?.lifecycleRules,
      serverAccessLogsBucket: accessLogs,
      serverAccessLogsPrefix: accessLogs ? 'curated/' : undefined,
      removalPolicy,
    });
  }

  private createGpuCapacity(
    opts: GpuCapacityOptions | undefined,
    subnets: ec2.SubnetSelection,
    maxTasksTotal: number,
  ): ecs.AsgCapacityProvider {
    const instanceTypes = opts?.instanceTypes ?? [new ec2.InstanceType('g5.xlarge'), new ec2.InstanceType('g6.xlarge')];
    const instanceSg = new ec2.SecurityGroup(this, 'InstanceSg', {
      vpc: this.vpc,
      description: `MLM filter GPU instances (${this.pipelineName}): egress only`,
      allowAllOutbound: true,
    });
    const role = new iam.Role(this, 'InstanceRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'ECS container instance (agent registration, image pull, logs)',
    });
    const launchTemplate = new ec2.LaunchTemplate(this, 'GpuLaunchTemplate', {
      // Amazon Linux 2023's ECS GPU AMI ships NVIDIA driver 580: the worker's onnxruntime CUDA provider is a CUDA 13
      // build (scripts/cuda-provider.sh), which AL2's GPU AMI (driver 550) cannot run.
      machineImage: ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.GPU),
      userData: ec2.UserData.forLinux(),
      role,
      securityGroup: instanceSg,
      requireImdsv2: true,
      httpPutResponseHopLimit: 2,
      blockDevices: [
        {
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(opts?.rootVolumeGiB ?? 100, {
            volumeType: ec2.EbsDeviceVolumeType.GP3,
            encrypted: true,
            deleteOnTermination: true,
          }),
        },
      ],
    });
    const asg = new autoscaling.AutoScalingGroup(this, 'GpuInstances', {
      vpc: this.vpc,
      vpcSubnets: subnets,
      minCapacity: 0,
      maxCapacity: opts?.maxInstances ?? Math.max(1, maxTasksTotal),
      mixedInstancesPolicy: {
        launchTemplate,
        launchTemplateOverrides: instanceTypes.map((instanceType) => ({ instanceType })),
        instancesDistribution: opts?.spot
          ? {
              onDemandBaseCapacity: 0,
              onDemandPercentageAboveBaseCapacity: 0,
              spotAllocationStrategy: autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
            }
          : {
              onDemandBaseCapacity: 0,
              onDemandPercentageAboveBaseCapacity: 100,
              onDemandAllocationStrategy: autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
            },
      },
      capacityRebalance: opts?.spot ?? false,
    });
    Validations.of(asg).acknowledge({
      id: 'AwsSolutions-EC26',
      reason:
        'The root volume is encrypted in the launch template (the rule cannot read mixed-instances launch templates).',
    });
    Validations.of(asg).acknowledge({
      id: 'AwsSolutions-AS3',
      reason:
        'ECS managed scaling owns this group; scaling activity is in the ASG/ECS history and stalls raise the pipeline alarms.',
    });
    const provider = new ecs.AsgCapacityProvider(this, 'GpuCapacity', {
      autoScalingGroup: asg,
      enableManagedScaling: true,
      targetCapacityPercent: 100,
      enableManagedTerminationProtection: false,
      enableManagedDraining: true,
      spotInstanceDraining: opts?.spot ?? false,
    });
    this.cluster.addAsgCapacityProvider(provider);
    const instancePolicy = role.node.findChild('DefaultPolicy');
    Validations.of(instancePolicy).acknowledge({
      id: 'AwsSolutions-IAM5[Action::ecs:Submit*]',
      reason: 'ECS agent permissions as generated by aws-cdk-lib, scoped to this cluster ARN.',
    });
    Validations.of(instancePolicy).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason:
        'ECS agent: ecs:DiscoverPollEndpoint and ecr:GetAuthorizationToken have no resource-level permissions; ecs:Poll is conditioned on the cluster.',
    });
    return provider;
  }

  /** Sink permissions shared by every service: the curated prefix, the model object, the sink topics. */
  private grantSinks(
    role: iam.IRole,
    props: MlmFilterPipelineProps,
    msk: MskArns | undefined,
    sinkTopics: readonly string[],
    scramSecret: secretsmanager.ISecret | undefined,
  ): void {
    const objects = this.curatedBucket.arnForObjects(`${this.curatedPrefix}*`);
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'CuratedShards',
        actions: ['s3:PutObject', 's3:GetObject', 's3:AbortMultipartUpload'],
        resources: [objects],
      }),
    );
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'CuratedListing',
        // The sink recovers its position from the shards already written (DESIGN.md curated layout).
        actions: ['s3:ListBucket'],
        resources: [this.curatedBucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${this.curatedPrefix}*`] } },
      }),
    );
    this.curatedBucket.encryptionKey?.grantEncryptDecrypt(role);
    role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'ModelArtifact',
        actions: ['s3:GetObject'],
        resources: [props.model.bucket.arnForObjects(props.model.key)],
      }),
    );
    props.model.bucket.encryptionKey?.grantDecrypt(role);
    if (msk) {
      role.addToPrincipalPolicy(
        new iam.PolicyStatement({
          actions: ['kafka-cluster:Connect', 'kafka-cluster:DescribeCluster', 'kafka-cluster:WriteDataIdempotently'],
          resources: [msk.clusterArn],
        }),
      );
      role.addToPrincipalPolicy(
        new iam.PolicyStatement({
          actions: ['kafka-cluster:DescribeTopic', 'kafka-cluster:WriteData'],
          resources: sinkTopics.map((t) => msk.topic(t)),
        }),
      ); // Exactly-once: audit events and consumed offsets commit in one Kafka transaction under ids `mlmf-<group>-...`.
      role.addToPrincipalPolicy(
        new iam.PolicyStatement({
          actions: ['kafka-cluster:DescribeTransactionalId', 'kafka-cluster:AlterTransactionalId'],
          resources: [msk.transactionalId('mlmf-*')],
        }),
      );
    }
    if (scramSecret) scramSecret.grantRead(role);
    const policy = role.node.tryFindChild('DefaultPolicy');
    if (policy) {
      Validations.of(policy).acknowledge({
        id: `AwsSolutions-IAM5[Resource::${nagResource(Stack.of(this), objects)}]`,
        reason: 'Shards are written under the curated prefix with deterministic but data-dependent names.',
      });
      if (msk) {
        Validations.of(policy).acknowledge({
          id: `AwsSolutions-IAM5[Resource::${nagResource(Stack.of(this), msk.transactionalId('mlmf-*'))}]`,
          reason: "Each worker task's transactional id embeds its host name; all share the mlmf- prefix.",
        });
      }
    }
  }

  /**
   * Target tracking on backlog per running task (metric math); with minTasks 0 a step policy wakes the service when
   * input waits and nothing runs, because target tracking cannot scale out from zero tasks.
   */
  private scale(
    name: string,
    service: ecs.Ec2Service,
    backlog: cloudwatch.Metric,
    running: cloudwatch.Metric,
    opts: ScalingOptions,
    defaultMin: number,
  ): void {
    const minTasks = opts.minTasks ?? defaultMin;
    const maxTasks = opts.maxTasks ?? 4;
    const target = new appscaling.ScalableTarget(this, `${name}ScalableTarget`, {
      serviceNamespace: appscaling.ServiceNamespace.ECS,
      resourceId: `service/${this.cluster.clusterName}/${service.serviceName}`,
      scalableDimension: 'ecs:service:DesiredCount',
      minCapacity: minTasks,
      maxCapacity: maxTasks,
    });
    const stat = (m: cloudwatch.Metric, id: string) => {
      const cfg = m.toMetricConfig().metricStat!;
      return {
        id,
        returnData: false,
        metricStat: {
          metric: {
            namespace: cfg.namespace,
            metricName: cfg.metricName,
            dimensions: (cfg.dimensions ?? []).map((d) => ({ name: d.name, value: String(d.value) })),
          },
          stat: cfg.statistic,
        },
      };
    };
    new appscaling.CfnScalingPolicy(this, `${name}BacklogPerTask`, {
      policyName: `${this.pipelineName}-${name.toLowerCase()}-backlog-per-task`,
      policyType: 'TargetTrackingScaling',
      scalingTargetId: target.scalableTargetId,
      targetTrackingScalingPolicyConfiguration: {
        targetValue: opts.targetBacklogPerTask ?? 6000,
        scaleOutCooldown: 120,
        scaleInCooldown: 600,
        customizedMetricSpecification: {
          metrics: [
            stat(backlog, 'backlog'),
            stat(running, 'tasks'),
            {
              id: 'perTask',
              expression: 'backlog / IF(tasks > 1, tasks, 1)',
              label: 'backlog per task',
              returnData: true,
            },
          ],
        },
      },
    });
    if (minTasks === 0) {
      const wake = new appscaling.StepScalingAction(this, `${name}Wake`, {
        scalingTarget: target,
        adjustmentType: appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
        cooldown: Duration.minutes(5),
        metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
      });
      wake.addAdjustment({ adjustment: 1, lowerBound: 0 });
      new cloudwatch.Alarm(this, `${name}WakeAlarm`, {
        alarmDescription: `${name}: input waits and no task runs: start one`,
        metric: new cloudwatch.MathExpression({
          expression: 'IF(FILL(tasks, 0) < 1 AND backlog > 0, 1, 0)',
          usingMetrics: { backlog, tasks: running },
          period: Duration.minutes(1),
          label: 'idle with backlog',
        }),
        threshold: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }).addAlarmAction(new cwActions.ApplicationScalingAction(wake));
    }
  }
}

function runningTasks(cluster: ecs.ICluster, service: ecs.Ec2Service): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: 'ECS/ContainerInsights',
    metricName: 'RunningTaskCount',
    dimensionsMap: { ClusterName: cluster.clusterName, ServiceName: service.serviceName },
    statistic: 'Average',
    period: Duration.minutes(1),
    label: 'running tasks',
  });
}

/** Renders an ARN the way cdk-nag names it in finding ids (`<LogicalId.Arn>`, `<AWS::Partition>`). */
function nagResource(stack: Stack, arn: string): string {
  const render = (v: unknown): string => {
    if (typeof v === 'string') return v;
    const o = v as Record<string, unknown>;
    if (o.Ref) return `<${String(o.Ref)}>`;
    if (Array.isArray(o['Fn::GetAtt'])) return `<${(o['Fn::GetAtt'] as string[]).join('.')}>`;
    if (Array.isArray(o['Fn::Join'])) {
      const [sep, parts] = o['Fn::Join'] as [string, unknown[]];
      return parts.map(render).join(sep);
    }
    return JSON.stringify(v);
  };
  return render(stack.resolve(arn));
}

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function normalisePrefix(prefix: string): string {
  const p = prefix.replace(/^\/+/, '');
  return p === '' || p.endsWith('/') ? p : `${p}/`;
}

/** The worker image's build context allow-list, shared by Docker and by CDK's asset hash. */
function dockerIgnore(): string[] {
  const file = path.join(repoRoot, 'functions', 'worker', 'Dockerfile.dockerignore');
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

function validate(scope: Construct, props: MlmFilterPipelineProps): void {
  const fail = (msg: string) => {
    throw new Error(`MlmFilterPipeline ${scope.node.path}: ${msg}`);
  };
  if (!props.kafkaSource && !props.sqsSource) fail('set kafkaSource and/or sqsSource');
  if (props.kafka.bootstrapServers.length === 0) fail('kafka.bootstrapServers is empty');
  if (props.kafka.kind === 'msk-iam' && !Token.isUnresolved(props.kafka.clusterArn)) {
    if (!isMskClusterArn(props.kafka.clusterArn))
      fail(`kafka.clusterArn is not an MSK cluster ARN: ${props.kafka.clusterArn}`);
  }
  if (props.kafka.kind === 'self-managed') {
    const auth = props.kafka.auth ?? (props.kafka.scramSecret ? 'scram-sha-512' : 'none');
    if (auth === 'scram-sha-512' && !props.kafka.scramSecret) fail('kafka.auth scram-sha-512 needs kafka.scramSecret');
    if (auth === 'scram-sha-512' && props.kafka.tls === false) fail('SCRAM over plaintext would expose credentials');
    if (props.kafkaSource && props.kafkaSource.minTasks === 0) {
      fail('self-managed Kafka lag is reported by the workers themselves, so kafkaSource.minTasks must be >= 1');
    }
  }
  if (!/^[0-9a-fA-F]{64}$/.test(props.model.sha256)) fail('model.sha256 must be 64 hex characters');
  for (const [name, s] of [
    ['kafkaSource', props.kafkaSource],
    ['sqsSource', props.sqsSource],
  ] as const) {
    if (!s) continue;
    const min = s.minTasks ?? 0;
    const max = s.maxTasks ?? 4;
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 0 || max < 1 || min > max) {
      fail(`${name}: need integers 0 <= minTasks <= maxTasks, maxTasks >= 1`);
    }
  }
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(props.pipelineName ?? scope.node.id)) {
    fail('pipelineName must be 1-64 characters of [A-Za-z0-9_.-]');
  }
}
