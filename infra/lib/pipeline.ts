import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { DEFAULT_METRICS_NAMESPACE, METRIC, PIPELINE_DIMENSION, PIPELINE_ENV } from '../../lib/metrics/metric-names.ts';
import type { WorkerEnv } from '../../lib/worker-env.ts';
import { addBacklogScaling, taskCount } from './backlog-scaling.ts';
import { BrokerAccess, brokerPort } from './broker-access.ts';
import { buildCuratedBucket, normalisePrefix } from './curated-bucket.ts';
import { buildGpuCapacity } from './gpu-capacity.ts';
import { buildInputQueue } from './input-queue.ts';
import { KafkaTopics } from './kafka-topics.ts';
import { LagProbe } from './lag-probe.ts';
import { PipelineMonitoring, type BacklogSignal } from './monitoring.ts';
import { MskArns } from './msk.ts';
import { kafkaAuthOf, validateProps, type MlmFilterPipelineProps, type ScalingOptions } from './props.ts';
import { buildScoreCacheTable, grantScoreCache, scoreCacheTtlDays } from './score-cache-table.ts';
import { grantMskSource, grantShardJobs, grantSinks } from './worker-grants.ts';
import { workerImage } from './worker-image.ts';
import { buildWorkerService, drainBudgetMs, type WorkerService } from './worker-service.ts';

export type { MonitoringOptions } from './monitoring.ts';
export type * from './props.ts';

/** Settings every worker service shares, worked out once from the props. */
interface WorkerBase {
  readonly image: ecs.ContainerImage;
  readonly logGroup: logs.ILogGroup;
  readonly environment: Record<string, string>;
  readonly subnets: ec2.SubnetSelection;
}

/**
 * The MLM-filter stream pipeline: GPU workers on ECS (EC2 GPU capacity) consuming crawled pairs from Kafka and/or SQS,
 * scaling on backlog, writing accepted pairs to a curated bucket and rejects to an audit topic, with a dashboard and
 * alarms. One ECS service per source, sharing the cluster, image and capacity. Brings nothing it can be given: the
 * VPC, and optionally the queue, the curated bucket, their keys and a broker client security group, are the user's.
 */
export class MlmFilterPipeline extends Construct {
  readonly pipelineName: string;
  readonly vpc: ec2.IVpc;
  readonly cluster: ecs.Cluster;
  readonly curatedBucket: s3.IBucket;
  readonly curatedPrefix: string;
  /** The worker tasks' security group (the shared broker client group when one was given). */
  readonly workerSecurityGroup: ec2.ISecurityGroup;
  /** The topic provisioner's security group, when the construct creates topics. */
  readonly topicProvisionerSecurityGroup?: ec2.ISecurityGroup;
  readonly queue?: sqs.IQueue;
  readonly deadLetterQueue?: sqs.Queue;
  readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  readonly capacityProvider: ecs.AsgCapacityProvider;
  readonly instanceRole: iam.IRole;
  readonly kafkaService?: WorkerService;
  readonly sqsService?: WorkerService;
  readonly services: ecs.Ec2Service[] = [];
  /** Publishes the Kafka backlog that wakes the Kafka service from zero (MSK sources). */
  readonly lagProbe?: LagProbe;
  readonly monitoring: PipelineMonitoring;
  readonly topics?: KafkaTopics;
  /** The fleet's shared score cache (scoreCache), read and written by every worker and shard job. */
  readonly scoreCacheTable?: dynamodb.Table;

  private readonly props: MlmFilterPipelineProps;
  private readonly namespace: string;
  private readonly msk?: MskArns;
  private readonly brokers: BrokerAccess;
  private readonly backlogs: BacklogSignal[] = [];

  constructor(scope: Construct, id: string, props: MlmFilterPipelineProps) {
    super(scope, id);
    // Access-log delivery by bucket policy (ACLs stay disabled), whatever the app's feature flags say.
    this.node.setContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy', true);
    validateProps(this, props);
    this.props = props;
    this.pipelineName = props.pipelineName ?? id;
    this.namespace = props.metricsNamespace ?? DEFAULT_METRICS_NAMESPACE;
    this.msk = props.kafka.kind === 'msk-iam' ? new MskArns(props.kafka.clusterArn) : undefined;
    this.vpc = props.vpc;
    this.brokers = new BrokerAccess(this, {
      vpc: this.vpc,
      pipelineName: this.pipelineName,
      port: brokerPort(props.kafka.bootstrapServers),
      clusterSecurityGroup: props.kafka.securityGroup,
      sharedClientSecurityGroup: props.brokerClientSecurityGroup,
    });
    this.workerSecurityGroup = this.brokers.client('Worker', 'MLM filter workers').securityGroup;

    this.curatedPrefix = normalisePrefix(props.curated?.prefix ?? 'curated/');
    this.curatedBucket = props.curated?.bucket ?? buildCuratedBucket(this, props.curated);
    this.topics = this.provisionTopics();
    if (this.topics) this.topicProvisionerSecurityGroup = this.topicProvisioner().securityGroup;
    if (props.sqsSource) {
      ({ queue: this.queue, deadLetterQueue: this.deadLetterQueue } = buildInputQueue(this, props.sqsSource));
    }

    this.cluster = new ecs.Cluster(this, 'Cluster', {
      vpc: this.vpc,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });
    const capacity = buildGpuCapacity(this, {
      ...props.capacity,
      cluster: this.cluster,
      vpc: this.vpc,
      vpcSubnets: this.subnets,
      pipelineName: this.pipelineName,
      defaultMaxInstances: maxTasks(props.kafkaSource) + maxTasks(props.sqsSource),
    });
    this.autoScalingGroup = capacity.autoScalingGroup;
    this.capacityProvider = capacity.capacityProvider;
    this.instanceRole = capacity.instanceRole;

    if (props.scoreCache?.enabled ?? true) this.scoreCacheTable = buildScoreCacheTable(this, props.scoreCache ?? {});
    const base = this.workerBase();
    if (props.kafkaSource) ({ service: this.kafkaService, lagProbe: this.lagProbe } = this.addKafkaService(base));
    if (this.queue) this.sqsService = this.addSqsService(base, this.queue);
    this.monitoring = new PipelineMonitoring(this, 'Monitoring', {
      ...props.monitoring,
      pipelineName: this.pipelineName,
      namespace: this.namespace,
      backlogs: this.backlogs,
    });
  }

  /**
   * Lets the crawler's role publish pairs: SendMessage on the SQS source (and kms:GenerateDataKey/Decrypt on its key),
   * and with MSK IAM, Connect and WriteData on the Kafka source topic. Nothing for self-managed Kafka, whose ACLs are
   * not IAM's.
   */
  grantPublishPairs(grantee: iam.IGrantable): iam.Grant[] {
    const grants: iam.Grant[] = [];
    if (this.queue) {
      grants.push(this.queue.grant(grantee, 'sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'));
      const key =
        this.queue.encryptionMasterKey ?? (this.deadLetterQueue ? undefined : this.props.sqsSource?.encryptionKey);
      // What SendMessage to an SSE-KMS queue needs, without the kms:ReEncrypt*/GenerateDataKey* of grantSendMessages.
      if (key) grants.push(key.grant(grantee, 'kms:GenerateDataKey', 'kms:Decrypt'));
    }
    const topic = this.props.kafkaSource?.topic;
    if (this.msk && topic) {
      grants.push(
        iam.Grant.addToPrincipal({
          grantee,
          actions: ['kafka-cluster:Connect', 'kafka-cluster:WriteDataIdempotently'],
          resourceArns: [this.msk.clusterArn],
        }),
        iam.Grant.addToPrincipal({
          grantee,
          actions: ['kafka-cluster:DescribeTopic', 'kafka-cluster:WriteData'],
          resourceArns: [this.msk.topic(topic)],
        }),
      );
    }
    return grants;
  }

  private get subnets(): ec2.SubnetSelection {
    return this.props.vpcSubnets ?? { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS };
  }

  private get kafkaAuth(): 'none' | 'iam' | 'scram-sha-512' {
    return kafkaAuthOf(this.props.kafka);
  }

  private get kafkaTls(): boolean {
    return this.props.kafka.kind === 'msk-iam' ? true : (this.props.kafka.tls ?? true);
  }

  private get scramSecret(): secretsmanager.ISecret | undefined {
    return this.props.kafka.kind === 'self-managed' ? this.props.kafka.scramSecret : undefined;
  }

  private get sinkTopics(): string[] {
    const t = this.props.topics;
    return [t.audit, t.accepted, t.deadLetter].filter((n): n is string => typeof n === 'string' && n.length > 0);
  }

  /** The audit / accepted / dead-letter topics, created by a custom resource that waits for its broker access. */
  private provisionTopics(): KafkaTopics | undefined {
    const t = this.props.topics;
    if (t.provision === false) return undefined;
    const client = this.topicProvisioner();
    const topics = new KafkaTopics(this, 'Topics', {
      vpc: this.vpc,
      vpcSubnets: this.subnets,
      securityGroup: client.securityGroup,
      bootstrapServers: this.props.kafka.bootstrapServers,
      auth: this.kafkaAuth,
      tls: this.kafkaTls,
      scramSecret: this.scramSecret,
      msk: this.msk,
      deleteOnDestroy: t.deleteOnDestroy,
      topics: this.sinkTopics.map((name) => ({
        name,
        partitions: t.partitions ?? 12,
        replicationFactor: t.replicationFactor ?? -1,
        configs:
          name === t.audit
            ? { 'retention.ms': String((t.retention ?? Duration.days(30)).toMilliseconds()) }
            : undefined,
      })),
    });
    for (const r of client.ready) topics.node.addDependency(r);
    return topics;
  }

  private topicProvisioner() {
    return this.brokers.client('TopicProvisioner', 'MLM filter topic provisioner');
  }

  private workerBase(): WorkerBase {
    const w = this.props.worker ?? {};
    const logGroup = new logs.LogGroup(this, 'WorkerLogs', {
      retention: w.logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    return { image: workerImage(this, w), logGroup, environment: this.workerEnvironment(), subnets: this.subnets };
  }

  /** The environment both services share, typed against the worker's contract (lib/worker-env.ts). */
  private workerEnvironment(): Record<string, string> {
    const p = this.props;
    const w = p.worker ?? {};
    const contract: WorkerEnv = {
      [PIPELINE_ENV]: this.pipelineName,
      MLMF_BROKERS: p.kafka.bootstrapServers.join(','),
      MLMF_KAFKA_AUTH: this.kafkaAuth,
      MLMF_KAFKA_TLS: String(this.kafkaTls),
      MLMF_BUCKET: this.curatedBucket.bucketName,
      MLMF_PREFIX: this.curatedPrefix,
      MLMF_AUDIT_TOPIC: p.topics.audit,
      MLMF_MODEL_DIR: p.model.localDir ?? '/opt/mlm-filter/model',
      MLMF_MODEL_S3_URI: `s3://${p.model.bucket.bucketName}/${p.model.key}`,
      MLMF_MODEL_SHA256: p.model.sha256.toLowerCase(),
      MLMF_THRESHOLDS: w.thresholds ?? 'itm>=66,odf>=20',
      MLMF_COMBINE: w.combine ?? 'and',
      MLMF_METRICS: w.metrics ?? 'all',
      MLMF_EXECUTION_PROVIDER: w.executionProvider ?? 'cuda',
      MLMF_BATCH_SIZE: String(w.batchSize ?? 16),
      MLMF_HEALTH_PORT: String(w.healthPort ?? 8080),
      MLMF_METRICS_NAMESPACE: this.namespace,
      MLMF_DRAIN_BUDGET_MS: String(drainBudgetMs(w.stopTimeout)),
      // A second line of defence under the worker's own policy (lib/model/telemetry.ts), for images not built here.
      ORT_DISABLE_TELEMETRY: w.onnxruntimeTelemetry ? '0' : '1',
      AWS_REGION: Stack.of(this).region,
    };
    if (w.onnxruntimeTelemetry) contract.MLMF_ORT_TELEMETRY = '1';
    if (p.topics.accepted) contract.MLMF_ACCEPTED_TOPIC = p.topics.accepted;
    if (p.topics.deadLetter) contract.MLMF_DLQ_TOPIC = p.topics.deadLetter;
    if (this.scramSecret) contract.MLMF_KAFKA_SECRET_ARN = this.scramSecret.secretArn;
    if (this.scoreCacheTable) {
      contract.MLMF_SCORE_CACHE_TABLE = this.scoreCacheTable.tableName;
      contract.MLMF_SCORE_CACHE_TTL_DAYS = String(scoreCacheTtlDays(p.scoreCache ?? {}));
      if (p.scoreCache?.dedupeImages) contract.MLMF_DEDUPE_IMAGES = p.scoreCache.dedupeImages;
    }
    return { ...(w.environment ?? {}), ...(contract as Record<string, string>) };
  }

  /** One worker service with its sink grants; the caller adds the source's. */
  private addService(base: WorkerBase, source: 'kafka' | 'sqs', env: WorkerEnv): WorkerService {
    const worker = this.brokers.client('Worker', 'MLM filter workers');
    const built = buildWorkerService(this, {
      source,
      pipelineName: this.pipelineName,
      cluster: this.cluster,
      capacityProvider: this.capacityProvider,
      image: base.image,
      logGroup: base.logGroup,
      environment: { ...base.environment, ...(env as Record<string, string>) },
      worker: this.props.worker ?? {},
      securityGroup: worker.securityGroup,
      vpcSubnets: base.subnets,
      // A worker started before its topics exist fails its first audit write (or auto-creates them with the
      // brokers' defaults): the services wait for the provisioner too.
      ready: this.topics ? [...worker.ready, this.topics] : worker.ready,
    });
    const p = this.props;
    grantSinks(this, built.taskRole, {
      curatedBucket: this.curatedBucket,
      curatedPrefix: this.curatedPrefix,
      curatedKey: p.curated?.encryptionKey ?? this.curatedBucket.encryptionKey,
      modelBucket: p.model.bucket,
      modelKey: p.model.key,
      modelEncryptionKey: p.model.encryptionKey ?? p.model.bucket.encryptionKey,
      msk: this.msk,
      sinkTopics: this.sinkTopics,
      scramSecret: this.scramSecret,
    });
    if (this.scoreCacheTable) grantScoreCache(this.scoreCacheTable, built.taskRole);
    this.services.push(built.service);
    return built;
  }

  private addKafkaService(base: WorkerBase): { service: WorkerService; lagProbe?: LagProbe } {
    const src = this.props.kafkaSource!;
    const group = src.consumerGroup ?? `mlm-filter-${this.pipelineName}`;
    const built = this.addService(base, 'kafka', {
      MLMF_SOURCE: 'kafka',
      MLMF_SOURCE_TOPIC: src.topic,
      MLMF_GROUP_ID: group,
    });
    if (this.msk) grantMskSource(built.taskRole, this.msk, src.topic, group);
    const { backlog, lagProbe } = this.kafkaBacklog(src.topic, group);
    const age = this.msk
      ? new cloudwatch.Metric({
          namespace: 'AWS/Kafka',
          metricName: 'EstimatedMaxTimeLag',
          dimensionsMap: { 'Cluster Name': this.msk.clusterName, 'Consumer Group': group, Topic: src.topic },
          statistic: 'Maximum',
          period: Duration.minutes(5),
          label: 'Kafka estimated time lag (s)',
        })
      : undefined;
    this.addScaling('Kafka', built, backlog, src, this.msk ? 0 : 1, { oldestAgeSeconds: age });
    return { service: built, lagProbe };
  }

  /**
   * The Kafka backlog that scaling reads. MSK: the lag probe (infra/lib/lag-probe.ts), because MSK publishes
   * SumOffsetLag only for a group with committed offsets, so a service at zero tasks with a new (or expired) group
   * would never wake. Other Kafka: the lag the running workers report (which is why minTasks >= 1 there).
   */
  private kafkaBacklog(topic: string, group: string): { backlog: cloudwatch.Metric; lagProbe?: LagProbe } {
    if (this.msk) {
      const probe = new LagProbe(this, 'KafkaLagProbe', {
        vpc: this.vpc,
        vpcSubnets: this.subnets,
        bootstrapServers: this.props.kafka.bootstrapServers,
        auth: this.kafkaAuth,
        tls: this.kafkaTls,
        msk: this.msk,
        topic,
        consumerGroup: group,
        pipelineName: this.pipelineName,
        namespace: this.namespace,
        securityGroup: this.props.brokerClientSecurityGroup,
      });
      if (!this.props.brokerClientSecurityGroup) {
        const rules = this.brokers.allow('LagProbe', probe.securityGroup, 'MLM filter lag probe');
        for (const r of rules) probe.schedule.node.addDependency(r);
      }
      return { backlog: probe.backlog, lagProbe: probe };
    }
    const backlog = new cloudwatch.Metric({
      namespace: this.namespace,
      metricName: METRIC.KafkaConsumerLag,
      dimensionsMap: { [PIPELINE_DIMENSION]: this.pipelineName },
      statistic: 'Sum',
      period: Duration.minutes(1),
      label: 'Kafka consumer lag, worker-reported (records)',
    });
    return { backlog };
  }

  private addSqsService(base: WorkerBase, queue: sqs.IQueue): WorkerService {
    const src = this.props.sqsSource!;
    const jobs = src.messages === 'shard-jobs';
    const built = this.addService(base, 'sqs', {
      MLMF_SOURCE: jobs ? 'sqs-shards' : 'sqs',
      MLMF_SQS_QUEUE_URL: queue.queueUrl,
      ...(jobs && this.deadLetterQueue ? { MLMF_SQS_DLQ_URL: this.deadLetterQueue.queueUrl } : {}),
    });
    queue.grantConsumeMessages(built.taskRole);
    if (jobs) {
      grantShardJobs(this, built.taskRole, {
        inputBuckets: src.shardInputBuckets ?? [],
        curatedBucket: this.curatedBucket,
        curatedPrefix: this.curatedPrefix,
        deadLetterQueue: this.deadLetterQueue,
      });
    }
    // An existing queue whose IQueue does not carry its key: the key was given beside it.
    if (!this.deadLetterQueue && src.encryptionKey) src.encryptionKey.grantDecrypt(built.taskRole);
    const visible = queue.metricApproximateNumberOfMessagesVisible({
      statistic: 'Maximum',
      period: Duration.minutes(1),
      label: 'SQS messages visible',
    });
    // A shard job is a whole shard (thousands of pairs): the backlog a task should hold is a few jobs, not pairs.
    const scaling = jobs ? { ...src, targetBacklogPerTask: src.targetBacklogPerTask ?? 2 } : src;
    this.addScaling('Sqs', built, visible, scaling, 0, {
      oldestAgeSeconds: queue.metricApproximateAgeOfOldestMessage({
        statistic: 'Maximum',
        period: Duration.minutes(5),
      }),
      deadLetters: this.deadLetterQueue?.metricApproximateNumberOfMessagesVisible({
        statistic: 'Maximum',
        period: Duration.minutes(1),
      }),
    });
    return built;
  }

  private addScaling(
    name: 'Kafka' | 'Sqs',
    built: WorkerService,
    backlog: cloudwatch.Metric,
    scaling: ScalingOptions,
    defaultMinTasks: number,
    extra: Pick<BacklogSignal, 'oldestAgeSeconds' | 'deadLetters'>,
  ): void {
    const { service } = built;
    addBacklogScaling(this, {
      name,
      pipelineName: this.pipelineName,
      cluster: this.cluster,
      service,
      backlog,
      scaling,
      defaultMinTasks,
    });
    this.backlogs.push({
      label: name,
      backlog,
      runningTasks: taskCount(this.cluster, service, 'RunningTaskCount'),
      ...extra,
    });
  }
}

function maxTasks(source: ScalingOptions | undefined): number {
  return source ? (source.maxTasks ?? 4) : 0;
}
