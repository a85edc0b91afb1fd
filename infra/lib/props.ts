import { Token, type Duration, type RemovalPolicy } from 'aws-cdk-lib';
import type * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as kms from 'aws-cdk-lib/aws-kms';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import type { ExecutionProvider } from '../../lib/model/execution-providers.ts';
import type { MonitoringOptions } from './monitoring.ts';
import { isMskClusterArn } from './msk.ts';
import { validateWorkerImage } from './worker-image.ts';

/** An Amazon MSK cluster reached with IAM access control (SASL/OAUTHBEARER over TLS, port 9098). */
export interface MskIamKafkaOptions {
  readonly kind: 'msk-iam';
  /** `arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid>`; topic and group ARNs are derived from it. */
  readonly clusterArn: string;
  /** The cluster's IAM bootstrap brokers (`aws kafka get-bootstrap-brokers`, BootstrapBrokerStringSaslIam). */
  readonly bootstrapServers: readonly string[];
  /**
   * The brokers' security group: the construct adds one ingress rule on the broker port for each of its broker clients
   * (worker tasks, topic provisioner, lag probe), and makes each client wait for its rule.
   * @default - no rule is added: the brokers must already let the clients in (see `brokerClientSecurityGroup`)
   */
  readonly securityGroup?: ec2.ISecurityGroup;
}

/** Any other Kafka (self-managed, Confluent, MSK without IAM) reachable from the VPC. */
export interface SelfManagedKafkaOptions {
  readonly kind: 'self-managed';
  readonly bootstrapServers: readonly string[];
  /** @default 'scram-sha-512' when `scramSecret` is set, else 'none' */
  readonly auth?: 'none' | 'scram-sha-512';
  /**
   * Secrets Manager secret holding JSON `{"username": ..., "password": ...}`, read by the workers and the topic
   * provisioner. Encrypted with a customer-managed key: import it with `Secret.fromSecretAttributes({ secretCompleteArn,
   * encryptionKey })` and the readers get kms:Decrypt on that key.
   * @default - no secret
   */
  readonly scramSecret?: secretsmanager.ISecret;
  /** Connect over TLS. @default true */
  readonly tls?: boolean;
  /** The brokers' security group (see {@link MskIamKafkaOptions.securityGroup}). @default - no rule is added */
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
   * Waiting records per task that target tracking holds: about throughput x acceptable delay
   * (e.g. 10 pairs/s x 10 min = 6000). With `sqsSource.messages: 'shard-jobs'` a record is a whole shard.
   * @default 6000 (shard jobs: 2)
   */
  readonly targetBacklogPerTask?: number;
}

/** Consume crawled pairs from a Kafka topic of {@link MlmFilterPipelineProps.kafka}. */
export interface KafkaSourceOptions extends ScalingOptions {
  readonly topic: string;
  /** @default `mlm-filter-<pipelineName>` */
  readonly consumerGroup?: string;
}

/** Consume crawled pairs from an SQS queue: an existing one, or a new one with its dead-letter queue. */
export interface SqsSourceOptions extends ScalingOptions {
  /**
   * The crawler's existing queue. Encrypted with a customer-managed key: import it with
   * `Queue.fromQueueAttributes({ queueArn, keyArn })` (or give `encryptionKey`) and the workers get kms:Decrypt on it.
   * @default - a new encrypted queue with a dead-letter queue
   */
  readonly queue?: sqs.IQueue;
  /**
   * ARN of the crawler's existing queue (shorthand for `queue`).
   * @default - see `queue`
   */
  readonly queueArn?: string;
  /**
   * What the queue carries. `pairs`: the crawler's pair records. `shard-jobs`: backfill, the shard-job messages of
   * `mlm-filter enqueue` (the workers run with MLMF_SOURCE=sqs-shards; each job reads its input shard from
   * `shardInputBuckets` and writes its outputs under the curated prefix: give `enqueue --output` a prefix under it;
   * a job that keeps failing goes to the created dead-letter queue with its reason). @default 'pairs'
   */
  readonly messages?: 'pairs' | 'shard-jobs';
  /** shard-jobs: the buckets holding the input shards (the workers get s3:GetObject on them, and their keys' Decrypt). @default - none: required with shard-jobs */
  readonly shardInputBuckets?: readonly s3.IBucket[];
  /**
   * Receives before a message moves to the dead-letter queue (created queue only). With shard-jobs it must exceed
   * the worker's own limit of 3 deliveries, after which it dead-letters the job with its reason. @default 5
   */
  readonly maxReceiveCount?: number;
  /** Must exceed the worker's time from receive to durable ack (created queue only). @default Duration.minutes(15) */
  readonly visibilityTimeout?: Duration;
  /** Created queue only. @default Duration.days(4) (dead-letter queue: 14 days) */
  readonly retentionPeriod?: Duration;
  /**
   * Created queues: what `cdk destroy` does with them (and the pending and dead-lettered messages they hold, e.g.
   * a backfill's shard jobs). @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;
  /**
   * The created queues are encrypted with this key; with an existing queue, the key it is encrypted with (when its
   * IQueue does not carry it). @default - SQS-managed SSE for created queues; the imported queue's own key, if any
   */
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
  /** Replication factor of created topics; -1 takes the brokers' `default.replication.factor`. @default -1 */
  readonly replicationFactor?: number;
  /** Audit topic retention. @default Duration.days(30) */
  readonly retention?: Duration;
  /** Delete the provisioned topics and their data when the stack is deleted. @default false */
  readonly deleteOnDestroy?: boolean;
}

/** The model artifact: a tarball of the model directory (DESIGN.md layout), fetched and verified at task start. */
export interface ModelArtifactOptions {
  /** Its bucket; a customer-managed key it carries (`Bucket.fromBucketAttributes({ encryptionKey })`) is granted. */
  readonly bucket: s3.IBucket;
  readonly key: string;
  /** Hex SHA-256 of the tarball; the worker refuses to start on a mismatch. */
  readonly sha256: string;
  /** Where the worker unpacks it. @default '/opt/mlm-filter/model' */
  readonly localDir?: string;
  /**
   * The customer-managed key the object is encrypted with, when the bucket's IBucket does not carry it (or the object
   * uses another key than the bucket default). The workers get kms:Decrypt on it. @default - the bucket's key, if any
   */
  readonly encryptionKey?: kms.IKey;
}

/** The bucket that receives accepted pairs as WebDataset shards. */
export interface CuratedBucketOptions {
  /**
   * Write into this existing bucket. A customer-managed key it carries (`Bucket.fromBucketAttributes({ encryptionKey })`)
   * is granted to the workers. @default - a new bucket
   */
  readonly bucket?: s3.IBucket;
  /** Key prefix the worker writes under (and the only prefix it may touch). @default 'curated/' */
  readonly prefix?: string;
  /**
   * A new bucket: SSE-KMS with this key. An existing bucket: the key it encrypts with, when its IBucket does not carry
   * it. The workers get kms:Encrypt/Decrypt/GenerateDataKey on it. @default - SSE-S3 (new bucket)
   */
  readonly encryptionKey?: kms.IKey;
  /**
   * Your lifecycle rules (new bucket), in addition to the construct's own: noncurrent versions expire after
   * `noncurrentVersionExpiration`, incomplete multipart uploads are aborted after 7 days. @default - none
   */
  readonly lifecycleRules?: s3.LifecycleRule[];
  /** New bucket: how long an overwritten or deleted object's old version is kept. @default Duration.days(30) */
  readonly noncurrentVersionExpiration?: Duration;
  /** Server access logs into a separate bucket (new bucket). @default true */
  readonly serverAccessLogs?: boolean;
  /** @default RemovalPolicy.RETAIN */
  readonly removalPolicy?: RemovalPolicy;
}

/** GPU instances for the ECS cluster. */
export interface GpuCapacityOptions {
  /** Instance types, one GPU each is assumed. @default [g5.xlarge, g6.xlarge] */
  readonly instanceTypes?: ec2.InstanceType[];
  /**
   * The instances' AMI: an ECS GPU AMI whose NVIDIA driver runs CUDA 13 (>= 580).
   * @default - the ECS-optimised Amazon Linux 2023 GPU AMI (SSM `/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended`)
   */
  readonly machineImage?: ec2.IMachineImage;
  /** Run on Spot (price-capacity-optimized over the instance types). @default false */
  readonly spot?: boolean;
  /**
   * Lets operators open a shell on the GPU hosts with Systems Manager Session Manager (no SSH, no inbound rule): the
   * instance role gets AmazonSSMManagedInstanceCore. The AL2023 ECS AMI runs the SSM agent. @default false
   */
  readonly ssmAccess?: boolean;
  /** Root volume (images, model, Docker layers), GiB. @default 100 */
  readonly rootVolumeGiB?: number;
  /** @default - the sum of the services' maxTasks */
  readonly maxInstances?: number;
  /**
   * Overrides of the Auto Scaling group's settings (notifications, health check, termination policies...); the
   * construct keeps the VPC, launch template and instance mix. @default - none
   */
  readonly autoScalingGroupProps?: Partial<autoscaling.CommonAutoScalingGroupProps>;
  /**
   * Overrides of the capacity provider's settings. @default - managed scaling at 100% target capacity, one instance per
   * scaling step (a small backlog does not launch several GPU instances), managed draining
   */
  readonly capacityProviderProps?: Partial<Omit<ecs.AsgCapacityProviderProps, 'autoScalingGroup'>>;
}

/**
 * Where the worker image's build fetches from: Docker build args of functions/worker/Dockerfile, recorded in the asset
 * manifest (cdk.out) and the image's history, so URLs with credentials in them are refused (give a mirror that your
 * build host reaches without them, or build the image yourself and use `imageUri`).
 */
export interface WorkerImageBuildOptions {
  /** npm registry for `npm ci` of the packed lock (NPM_CONFIG_REGISTRY). @default 'https://registry.npmjs.org/' */
  readonly npmRegistry?: string;
  /** Python package index for the CUDA wheels (PIP_INDEX_URL). @default 'https://pypi.org/simple' */
  readonly pipIndexUrl?: string;
  /** An extra Python package index (PIP_EXTRA_INDEX_URL). @default - none */
  readonly pipExtraIndexUrl?: string;
  /**
   * Base image of both stages (BASE_IMAGE): a mirror, or a pinned `node:24-bookworm-slim@sha256:...`; keep Node 24 on
   * Debian bookworm. @default 'node:24-bookworm-slim' (Docker Hub)
   */
  readonly baseImage?: string;
}

/** The worker container and its settings. */
export interface WorkerOptions {
  /** The worker image. @default - built from the package's functions/worker/Dockerfile at deploy, for linux/amd64 */
  readonly image?: ecs.ContainerImage;
  /**
   * A pre-built image by URI: `repo:tag`, or by digest `repo@sha256:<64 hex>` (what runs can then not change under the
   * same tag). An ECR URI (`<account>.dkr.ecr.<region>.amazonaws.com/<name>`) gets pull permission on exactly that
   * repository; a malformed digest or ECR URI fails synth. @default - see `image`
   */
  readonly imageUri?: string;
  /** Mirrors for the image built from the package's Dockerfile (not for `image`/`imageUri`). @default - public ones */
  readonly imageBuild?: WorkerImageBuildOptions;
  /** @default 'cuda' */
  readonly executionProvider?: ExecutionProvider;
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
  /**
   * Time from SIGTERM (scale-in, deployment, Spot interruption) to SIGKILL, 30-120 s: a Spot interruption notice gives
   * two minutes. The worker is told to end its drain (in-flight batches written and acked) 15 s before it.
   * @default Duration.seconds(120)
   */
  readonly stopTimeout?: Duration;
  /** @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /** Extra environment (non-secret). */
  readonly environment?: Record<string, string>;
  /**
   * Lets onnxruntime's built-in telemetry (Microsoft's 1DS collector: a device id under $HOME, session and error
   * events uploaded wherever egress allows) run in the workers. Off, the tasks and the image set
   * ORT_DISABLE_TELEMETRY=1 and the worker itself forces it before onnxruntime loads.
   * @default false
   */
  readonly onnxruntimeTelemetry?: boolean;
  /**
   * Settings of both task definitions (family, volumes, placement constraints, execution role...). The network mode
   * is always awsvpc: the tasks' security group and the metadata-service block depend on it. @default - none
   */
  readonly taskDefinitionProps?: Omit<ecs.Ec2TaskDefinitionProps, 'networkMode'>;
  /**
   * Settings of the worker container (memory limit, ulimits, Linux parameters...), applied over the construct's own.
   * The image, GPU count and environment stay the construct's (use `image` and `environment`). @default - none
   */
  readonly containerProps?: Omit<Partial<ecs.ContainerDefinitionOptions>, 'image' | 'gpuCount' | 'environment'>;
}

/**
 * The fleet's shared score cache (issue 24): a DynamoDB table every worker reads before scoring and writes after, so
 * a pair scored once (by the stream or a backfill) is not scored again until its entry expires. On by default: a
 * crawl repeats itself, a hit costs about half a read unit instead of a GPU inference, and a miss one read plus one
 * write unit (docs/DEPLOY.md, "The score cache").
 */
export interface ScoreCacheOptions {
  /** Create the table and give its name to the workers. @default true */
  readonly enabled?: boolean;
  /** How long an entry lives after it is written (DynamoDB TTL on `expiresAt`; whole days). @default Duration.days(30) */
  readonly ttl?: Duration;
  /**
   * A customer-managed key for the table (the workers get kms:Decrypt and kms:GenerateDataKey on it).
   * @default - the AWS-owned key (encrypted at rest, no KMS charges)
   */
  readonly encryptionKey?: kms.IKey;
  /** Point-in-time recovery. @default false (the table is a cache: losing it costs recomputation, not data) */
  readonly pointInTimeRecovery?: boolean;
  /** @default RemovalPolicy.RETAIN */
  readonly removalPolicy?: RemovalPolicy;
  /**
   * Image dedupe across the fleet (MLMF_DEDUPE_IMAGES): `exact` rejects a pair whose decoded image an accepted pair
   * already had (reason `duplicate_image`, naming that pair), `near` / `near:D` one within D bits of its perceptual
   * hash (near is near:6, measured in BENCHMARKS.md). The accepted images are remembered in this table.
   * @default 'off'
   */
  readonly dedupeImages?: string;
}

export interface MlmFilterPipelineProps {
  /** Names the dashboard, consumer group and the `Pipeline` metric dimension. @default the construct id */
  readonly pipelineName?: string;
  /** The VPC of the brokers (or one that reaches them). */
  readonly vpc: ec2.IVpc;
  /** Subnets for the GPU instances, tasks and Lambdas: they need egress to fetch images. @default - private with egress */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /**
   * An existing security group that the brokers already let in on their port: every broker client of the construct
   * (worker tasks, topic provisioner, lag probe) gets it instead of a new group, so the first deploy reaches the
   * brokers without touching the cluster. No ingress rule is added for it.
   * @default - a new group per client, let in through `kafka.securityGroup` when that is given
   */
  readonly brokerClientSecurityGroup?: ec2.ISecurityGroup;
  /**
   * The brokers already let every client in this VPC in (e.g. an ingress rule for the VPC's CIDR), so neither
   * `kafka.securityGroup` nor `brokerClientSecurityGroup` is given. Without one of the three, synth fails: the
   * workers would deploy with no path to the brokers and time out at their first connection.
   * @default false
   */
  readonly brokersAdmitVpc?: boolean;
  /**
   * The selected subnets have no internet egress on purpose, and the VPC has the endpoints the tasks need (ECR api
   * and dkr, S3 gateway, CloudWatch Logs, SQS, STS, Secrets Manager where used). Pairs with image URLs cannot be
   * fetched there (only `image.s3`/base64 pairs and backfill shards). Without it, isolated subnets fail synth.
   * @default false
   */
  readonly subnetsWithoutEgress?: boolean;
  /** The Kafka cluster holding the audit (and accepted, dead-letter) topics, and the Kafka source if any. */
  readonly kafka: KafkaClusterOptions;
  /** Consume from Kafka. At least one of kafkaSource and sqsSource. @default - none */
  readonly kafkaSource?: KafkaSourceOptions;
  /** Consume from SQS. @default - none */
  readonly sqsSource?: SqsSourceOptions;
  readonly topics: TopicOptions;
  readonly model: ModelArtifactOptions;
  /** @default - a new bucket, SSE-S3, versioned, access-logged */
  readonly curated?: CuratedBucketOptions;
  /** @default - see {@link GpuCapacityOptions} */
  readonly capacity?: GpuCapacityOptions;
  /** @default - see {@link WorkerOptions} */
  readonly worker?: WorkerOptions;
  /** @default - see {@link MonitoringOptions} */
  readonly monitoring?: MonitoringOptions;
  /** CloudWatch EMF namespace of the worker's metrics. @default 'MlmFilter' */
  readonly metricsNamespace?: string;
  /** @default - a new table, see {@link ScoreCacheOptions} */
  readonly scoreCache?: ScoreCacheOptions;
}

/** Kafka authentication as the worker and the Lambdas configure it. */
export function kafkaAuthOf(kafka: KafkaClusterOptions): 'none' | 'iam' | 'scram-sha-512' {
  return kafka.kind === 'msk-iam' ? 'iam' : (kafka.auth ?? (kafka.scramSecret ? 'scram-sha-512' : 'none'));
}

/** Fails synth on props that would deploy a pipeline that cannot work. */
export function validateProps(scope: Construct, props: MlmFilterPipelineProps): void {
  const fail = (msg: string) => {
    throw new Error(`MlmFilterPipeline ${scope.node.path}: ${msg}`);
  };
  if (!props.vpc) fail('vpc is required (the VPC of the brokers, or one that reaches them)');
  if (!props.kafkaSource && !props.sqsSource) fail('set kafkaSource and/or sqsSource');
  if (props.kafka.bootstrapServers.length === 0) fail('kafka.bootstrapServers is empty');
  if (props.kafka.kind === 'msk-iam' && !Token.isUnresolved(props.kafka.clusterArn)) {
    if (!isMskClusterArn(props.kafka.clusterArn))
      fail(`kafka.clusterArn is not an MSK cluster ARN: ${props.kafka.clusterArn}`);
  }
  if (props.kafka.kind === 'self-managed') {
    const auth = kafkaAuthOf(props.kafka);
    if (auth === 'scram-sha-512' && !props.kafka.scramSecret) fail('kafka.auth scram-sha-512 needs kafka.scramSecret');
    if (auth === 'scram-sha-512' && props.kafka.tls === false) fail('SCRAM over plaintext would expose credentials');
    if (props.kafkaSource && props.kafkaSource.minTasks === 0) {
      fail('self-managed Kafka lag is reported by the workers themselves, so kafkaSource.minTasks must be >= 1');
    }
  }
  validateNetwork(props, fail);
  if (props.sqsSource?.queue && props.sqsSource.queueArn) fail('sqsSource: give queue or queueArn, not both');
  if (props.sqsSource?.messages === 'shard-jobs') {
    if (!props.sqsSource.shardInputBuckets?.length)
      fail('sqsSource.shardInputBuckets: shard-jobs need the buckets that hold the input shards');
    if ((props.sqsSource.maxReceiveCount ?? 5) <= 3)
      fail('sqsSource.maxReceiveCount: with shard-jobs it must exceed 3, the worker dead-letters a job itself after 3');
  }
  if (props.worker) validateWorkerImage(props.worker, fail);
  const stop = props.worker?.stopTimeout?.toSeconds() ?? 120;
  if (stop < 30 || stop > 120) {
    fail(
      'worker.stopTimeout must be 30-120 seconds (a Spot interruption notice gives two minutes, Fargate allows 120 s)',
    );
  }
  if (!/^[0-9a-fA-F]{64}$/.test(props.model.sha256)) fail('model.sha256 must be 64 hex characters');
  const ttl = props.scoreCache?.ttl;
  if (ttl && !ttl.isUnresolved() && (ttl.toSeconds() < 86_400 || ttl.toSeconds() % 86_400 !== 0)) {
    fail('scoreCache.ttl must be whole days, at least one (the workers write expiresAt in days)');
  }
  const dedupe = props.scoreCache?.dedupeImages;
  if (dedupe !== undefined && !/^(off|exact|near(:([0-9]|[12][0-9]|3[0-2]))?)$/.test(dedupe)) {
    fail(`scoreCache.dedupeImages must be off, exact, near or near:D with D 0..32, got ${JSON.stringify(dedupe)}`);
  }
  if (dedupe !== undefined && dedupe !== 'off' && props.scoreCache?.enabled === false) {
    fail('scoreCache.dedupeImages needs the score cache table: scoreCache.enabled is false');
  }
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

/** MSK's IAM listener ports (private, public): any other port is the TLS, SCRAM or plaintext listener. */
const MSK_IAM_PORTS = new Set(['9098', '9198']);

/** A deploy that cannot reach its brokers or the internet fails at synth, not at the first connection. */
function validateNetwork(props: MlmFilterPipelineProps, fail: (msg: string) => void): void {
  const kafka = props.kafka;
  if (kafka.kind === 'msk-iam') {
    const wrong = kafka.bootstrapServers.filter(
      (b) => !Token.isUnresolved(b) && !MSK_IAM_PORTS.has(b.split(':').pop()!),
    );
    if (wrong.length) {
      fail(
        `kafka.bootstrapServers ${wrong.join(', ')}: MSK IAM listens on 9098 (9198 public); use the cluster's ` +
          'BootstrapBrokerStringSaslIam (aws kafka get-bootstrap-brokers)',
      );
    }
  }
  if (!kafka.securityGroup && !props.brokerClientSecurityGroup && !props.brokersAdmitVpc) {
    fail(
      'no path to the brokers: give kafka.securityGroup (the construct adds an ingress rule per client), ' +
        'brokerClientSecurityGroup (a group the brokers already admit), or brokersAdmitVpc: true',
    );
  }
  const selection = props.vpcSubnets;
  if (selection && !props.subnetsWithoutEgress && selectsIsolated(props.vpc, selection)) {
    fail(
      'vpcSubnets selects isolated subnets: tasks could not fetch images, pull the worker image or reach AWS APIs; ' +
        'select subnets with egress, or set subnetsWithoutEgress: true once the VPC has the endpoints they need',
    );
  }
}

function selectsIsolated(vpc: ec2.IVpc, selection: ec2.SubnetSelection): boolean {
  // SubnetType.PRIVATE_ISOLATED's value (this module imports aws-ec2 for types only).
  if (selection.subnetType === 'Isolated') return true;
  const isolated = new Set(vpc.isolatedSubnets.map((s) => s.subnetId));
  if (isolated.size === 0) return false;
  return vpc.selectSubnets(selection).subnets.some((s) => isolated.has(s.subnetId));
}
