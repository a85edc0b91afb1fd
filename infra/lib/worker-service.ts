import { Duration, Validations } from 'aws-cdk-lib';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct, IDependable } from 'constructs';
import type { WorkerOptions } from './props.ts';

/** The stop timeout unless told otherwise: the two minutes a Spot interruption notice gives (Fargate's maximum too). */
export const DEFAULT_STOP_TIMEOUT = Duration.seconds(120);
/** What the worker keeps between the end of its drain budget and SIGKILL: closing clients, flushing logs. */
export const DRAIN_MARGIN = Duration.seconds(15);

export interface WorkerServiceProps {
  readonly source: 'kafka' | 'sqs';
  readonly pipelineName: string;
  readonly cluster: ecs.Cluster;
  readonly capacityProvider: ecs.AsgCapacityProvider;
  readonly image: ecs.ContainerImage;
  readonly logGroup: logs.ILogGroup;
  /** The container's environment: the worker contract for this source. */
  readonly environment: Record<string, string>;
  readonly worker: WorkerOptions;
  readonly securityGroup: ec2.ISecurityGroup;
  readonly vpcSubnets: ec2.SubnetSelection;
  /** Resources the tasks need before their first start (the brokers' ingress rule). */
  readonly ready: readonly IDependable[];
}

/** One source's worker: its task role, task definition (one GPU) and ECS service on the GPU capacity provider. */
export interface WorkerService {
  readonly service: ecs.Ec2Service;
  readonly taskDefinition: ecs.Ec2TaskDefinition;
  readonly taskRole: iam.IRole;
}

export function buildWorkerService(scope: Construct, props: WorkerServiceProps): WorkerService {
  const name = props.source === 'kafka' ? 'Kafka' : 'Sqs';
  const w = props.worker;
  const taskRole =
    w.taskDefinitionProps?.taskRole ??
    new iam.Role(scope, `${name}TaskRole`, {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: `MLM filter worker (${props.pipelineName}, ${props.source} source)`,
    });
  const taskDefinition = new ecs.Ec2TaskDefinition(scope, `${name}Task`, {
    ...w.taskDefinitionProps,
    // awsvpc: the task gets its own ENI and security group, and ECS_AWSVPC_BLOCK_IMDS applies to it.
    networkMode: ecs.NetworkMode.AWS_VPC,
    taskRole,
  });
  addWorkerContainer(taskDefinition, props);
  Validations.of(taskDefinition).acknowledge({
    id: 'AwsSolutions-ECS2',
    reason:
      'The environment holds only non-secret settings (brokers, topics, bucket and prefix, model URI and digest, policy); the SCRAM credentials are passed as the secret ARN and read with the task role.',
  });
  const service = new ecs.Ec2Service(scope, `${name}Service`, {
    cluster: props.cluster,
    taskDefinition,
    // No desiredCount: CloudFormation would set it back to the template's value on every deploy that touches the
    // service, stopping the tasks autoscaling added. A new service starts one task, which also proves the image, the
    // model download and the GPU before the stack completes; autoscaling then takes the count to minTasks.
    securityGroups: [props.securityGroup],
    vpcSubnets: props.vpcSubnets,
    capacityProviderStrategies: [{ capacityProvider: props.capacityProvider.capacityProviderName, weight: 1 }],
    circuitBreaker: { enable: true, rollback: true },
    minHealthyPercent: 50,
    maxHealthyPercent: 200,
  });
  // The cluster's capacity provider association is created at synth (an aspect of the cluster): depending on the
  // cluster construct orders the service after it on create and before it on delete, which ECS requires both ways.
  service.node.addDependency(props.cluster);
  for (const r of props.ready) service.node.addDependency(r);
  acknowledgeExecutionPolicy(taskDefinition);
  return { service, taskDefinition, taskRole };
}

function addWorkerContainer(taskDefinition: ecs.Ec2TaskDefinition, props: WorkerServiceProps): void {
  const w = props.worker;
  const healthPort = w.healthPort ?? 8080;
  taskDefinition.addContainer('worker', {
    cpu: w.cpu ?? 3584,
    memoryReservationMiB: w.memoryReservationMiB ?? 12288,
    logging: ecs.LogDrivers.awsLogs({ logGroup: props.logGroup, streamPrefix: props.source }),
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
    // SIGTERM starts the drain (finish in-flight batches, flush sinks, ack); SIGKILL follows after this.
    stopTimeout: w.stopTimeout ?? DEFAULT_STOP_TIMEOUT,
    readonlyRootFilesystem: false,
    ...w.containerProps,
    image: props.image,
    gpuCount: 1,
    environment: props.environment,
  });
}

/** The milliseconds the worker may drain for: the stop timeout less {@link DRAIN_MARGIN}. */
export function drainBudgetMs(stopTimeout: Duration | undefined): number {
  return (stopTimeout ?? DEFAULT_STOP_TIMEOUT).toMilliseconds() - DRAIN_MARGIN.toMilliseconds();
}

function acknowledgeExecutionPolicy(taskDefinition: ecs.Ec2TaskDefinition): void {
  const policy = taskDefinition.executionRole?.node.tryFindChild('DefaultPolicy');
  if (!policy) return;
  Validations.of(policy).acknowledge({
    id: 'AwsSolutions-IAM5[Resource::*]',
    reason:
      'ecr:GetAuthorizationToken, which has no resource-level permissions; the image pull itself (ecr:BatchGetImage, GetDownloadUrlForLayer, BatchCheckLayerAvailability) is on the image repository only.',
  });
}
