import { ArnFormat, Stack, Validations } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import type { Construct } from 'constructs';
import { nagResource } from './nag.ts';
import type { GpuCapacityOptions } from './props.ts';

/** What {@link buildGpuCapacity} creates. */
export interface GpuCapacity {
  readonly launchTemplate: ec2.LaunchTemplate;
  readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  readonly capacityProvider: ecs.AsgCapacityProvider;
  readonly instanceRole: iam.Role;
  readonly instanceSecurityGroup: ec2.SecurityGroup;
}

export interface GpuCapacityProps extends GpuCapacityOptions {
  readonly cluster: ecs.Cluster;
  readonly vpc: ec2.IVpc;
  readonly vpcSubnets: ec2.SubnetSelection;
  readonly pipelineName: string;
  /** Instances when `maxInstances` is not given: one per task the services may run. */
  readonly defaultMaxInstances: number;
}

/**
 * The ECS-optimised Amazon Linux 2023 GPU AMI: its NVIDIA driver (580.x in every release since mid-2025, e.g.
 * 580.178.04 in release 20261113) runs the worker's CUDA 13 build of the onnxruntime provider; the Amazon Linux 2 GPU
 * AMI's 550.x cannot.
 */
export function defaultGpuImage(): ec2.IMachineImage {
  return ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.GPU);
}

/**
 * GPU instances for the cluster: a launch template (GPU AMI, encrypted root volume, IMDSv2, tasks blocked from the
 * instance metadata service), an Auto Scaling group over the instance types, and a capacity provider with managed
 * scaling that the services place their tasks through.
 */
export function buildGpuCapacity(scope: Construct, props: GpuCapacityProps): GpuCapacity {
  const instanceSecurityGroup = new ec2.SecurityGroup(scope, 'InstanceSg', {
    vpc: props.vpc,
    description: `MLM filter GPU instances (${props.pipelineName}): egress only`,
    allowAllOutbound: true,
  });
  const instanceRole = new iam.Role(scope, 'InstanceRole', {
    assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
    description: 'ECS container instance (agent registration, image pull, logs)',
  });
  if (props.spot) allowSpotDraining(scope, props.cluster, instanceRole);
  if (props.ssmAccess) allowSessionManager(instanceRole);
  const launchTemplate = buildLaunchTemplate(scope, props, instanceRole, instanceSecurityGroup);
  const autoScalingGroup = buildAutoScalingGroup(scope, props, launchTemplate);
  const capacityProvider = new ecs.AsgCapacityProvider(scope, 'GpuCapacity', {
    enableManagedScaling: true,
    targetCapacityPercent: 100,
    // Tasks wait for an instance to boot, pull the image and load the model: one instance per step keeps a small
    // backlog from launching several GPU instances at once; larger ones grow a step per warm-up period.
    minimumScalingStepSize: 1,
    maximumScalingStepSize: 1,
    enableManagedTerminationProtection: false,
    enableManagedDraining: true,
    spotInstanceDraining: props.spot ?? false,
    ...props.capacityProviderProps,
    autoScalingGroup,
  });
  props.cluster.addAsgCapacityProvider(capacityProvider);
  acknowledgeAgentPolicy(instanceRole);
  return { launchTemplate, autoScalingGroup, capacityProvider, instanceRole, instanceSecurityGroup };
}

function buildLaunchTemplate(
  scope: Construct,
  props: GpuCapacityProps,
  role: iam.IRole,
  securityGroup: ec2.ISecurityGroup,
): ec2.LaunchTemplate {
  const userData = ec2.UserData.forLinux();
  // The tasks run in awsvpc mode: the agent then routes 169.254.169.254 to nowhere inside each task's network
  // namespace, so a task sees only its own task-role credentials, never the instance role's.
  userData.addCommands('echo ECS_AWSVPC_BLOCK_IMDS=true >> /etc/ecs/ecs.config');
  // aws-cdk-lib writes this only for ASGs with a spotPrice, not for a mixed-instances policy like ours: without it
  // the agent ignores the two-minute interruption notice and the tasks die with the instance, never drained.
  if (props.spot) userData.addCommands('echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config');
  return new ec2.LaunchTemplate(scope, 'GpuLaunchTemplate', {
    machineImage: props.machineImage ?? defaultGpuImage(),
    userData,
    role,
    securityGroup,
    requireImdsv2: true,
    // One hop: the agent (host network) reaches IMDS, a container behind a bridge could not even without the block.
    httpPutResponseHopLimit: 1,
    blockDevices: [
      {
        deviceName: '/dev/xvda',
        volume: ec2.BlockDeviceVolume.ebs(props.rootVolumeGiB ?? 100, {
          volumeType: ec2.EbsDeviceVolumeType.GP3,
          encrypted: true,
          deleteOnTermination: true,
        }),
      },
    ],
  });
}

function buildAutoScalingGroup(
  scope: Construct,
  props: GpuCapacityProps,
  launchTemplate: ec2.LaunchTemplate,
): autoscaling.AutoScalingGroup {
  const instanceTypes = props.instanceTypes ?? [new ec2.InstanceType('g5.xlarge'), new ec2.InstanceType('g6.xlarge')];
  const asg = new autoscaling.AutoScalingGroup(scope, 'GpuInstances', {
    minCapacity: 0,
    maxCapacity: props.maxInstances ?? Math.max(1, props.defaultMaxInstances),
    capacityRebalance: props.spot ?? false,
    ...props.autoScalingGroupProps,
    vpc: props.vpc,
    vpcSubnets: props.autoScalingGroupProps?.vpcSubnets ?? props.vpcSubnets,
    mixedInstancesPolicy: {
      launchTemplate,
      launchTemplateOverrides: instanceTypes.map((instanceType) => ({ instanceType })),
      instancesDistribution: props.spot
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
  });
  Validations.of(asg).acknowledge({
    id: 'AwsSolutions-EC26',
    reason:
      'The root volume is encrypted: the launch template maps /dev/xvda as an encrypted gp3 volume (the rule does not read launch templates of a mixed-instances policy).',
  });
  Validations.of(asg).acknowledge({
    id: 'AwsSolutions-AS3',
    reason:
      'No scaling-event notifications: ECS managed scaling owns this group; its activity is in the ASG and ECS event history and a stalled scale-out raises the pipeline alarms.',
  });
  return asg;
}

/**
 * On a Spot interruption notice the agent sets its own container instance to DRAINING, so ECS stops its tasks with
 * SIGTERM (the worker drains) and places replacements elsewhere. The call is the agent's, with the instance role.
 */
function allowSpotDraining(scope: Construct, cluster: ecs.ICluster, role: iam.Role): void {
  const stack = Stack.of(scope);
  const instances = stack.formatArn({
    service: 'ecs',
    resource: 'container-instance',
    resourceName: `${cluster.clusterName}/*`,
    arnFormat: ArnFormat.SLASH_RESOURCE_NAME,
  });
  role.addToPolicy(
    new iam.PolicyStatement({
      actions: ['ecs:UpdateContainerInstancesState'],
      resources: [instances],
      conditions: { ArnEquals: { 'ecs:cluster': cluster.clusterArn } },
    }),
  );
  Validations.of(role.node.findChild('DefaultPolicy')).acknowledge({
    id: `AwsSolutions-IAM5[Resource::${nagResource(stack, instances)}]`,
    reason:
      "ecs:UpdateContainerInstancesState on this cluster's container instances only (ids unknown before launch), for the agent's Spot draining.",
  });
}

/** Session Manager shells on the hosts, for debugging a GPU host (driver, agent, container) without SSH. */
function allowSessionManager(role: iam.Role): void {
  role.addManagedPolicy(iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore'));
  Validations.of(role).acknowledge({
    id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]',
    reason:
      'Opted in (capacity.ssmAccess): the SSM agent needs ssm:UpdateInstanceInformation, ssmmessages:* and ec2messages:* for Session Manager; nothing else.',
  });
}

/** The agent statements aws-cdk-lib puts on the instance role (`Cluster.addAsgCapacityProvider`). */
function acknowledgeAgentPolicy(role: iam.Role): void {
  const policy = role.node.findChild('DefaultPolicy');
  Validations.of(policy).acknowledge({
    id: 'AwsSolutions-IAM5[Action::ecs:Submit*]',
    reason:
      'ecs:SubmitContainerStateChange, SubmitTaskStateChange and SubmitAttachmentStateChanges (the agent reporting task states), on this cluster ARN only.',
  });
  Validations.of(policy).acknowledge({
    id: 'AwsSolutions-IAM5[Resource::*]',
    reason:
      'ecs:DiscoverPollEndpoint, ecr:GetAuthorizationToken, logs:CreateLogStream and logs:PutLogEvents, which the agent needs and which aws-cdk-lib grants on *; ecs:Poll and ecs:StartTelemetrySession are conditioned on ecs:cluster = this cluster.',
  });
}
