import { Duration } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type { Construct } from 'constructs';
import type { ScalingOptions } from './props.ts';

export interface BacklogScalingProps {
  /** `Kafka` or `Sqs`: names the resources. */
  readonly name: string;
  readonly pipelineName: string;
  readonly cluster: ecs.ICluster;
  readonly service: ecs.Ec2Service;
  /** Records waiting. */
  readonly backlog: cloudwatch.IMetric;
  readonly scaling: ScalingOptions;
  readonly defaultMinTasks: number;
}

/** A service's task count as Container Insights reports it. */
export function taskCount(
  cluster: ecs.ICluster,
  service: ecs.Ec2Service,
  metricName: 'RunningTaskCount' | 'DesiredTaskCount',
): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: 'ECS/ContainerInsights',
    metricName,
    dimensionsMap: { ClusterName: cluster.clusterName, ServiceName: service.serviceName },
    statistic: 'Average',
    period: Duration.minutes(1),
    label: metricName === 'RunningTaskCount' ? 'running tasks' : 'desired tasks',
  });
}

/**
 * Target tracking on backlog per task; with minTasks 0, a step policy that wakes the service when input waits and no
 * task is wanted or running (target tracking cannot scale out from zero), by adding one task, never setting a count. Both count *desired* tasks, not running ones: a task
 * that is still waiting for its GPU instance, image and model already counts, so a cold start of several minutes
 * does not keep adding tasks (and instances) for the same backlog.
 */
export function addBacklogScaling(scope: Construct, props: BacklogScalingProps): appscaling.ScalableTarget {
  const minTasks = props.scaling.minTasks ?? props.defaultMinTasks;
  const target = new appscaling.ScalableTarget(scope, `${props.name}ScalableTarget`, {
    serviceNamespace: appscaling.ServiceNamespace.ECS,
    resourceId: `service/${props.cluster.clusterName}/${props.service.serviceName}`,
    scalableDimension: 'ecs:service:DesiredCount',
    minCapacity: minTasks,
    maxCapacity: props.scaling.maxTasks ?? 4,
  });
  const desired = taskCount(props.cluster, props.service, 'DesiredTaskCount');
  new appscaling.CfnScalingPolicy(scope, `${props.name}BacklogPerTask`, {
    policyName: `${props.pipelineName}-${props.name.toLowerCase()}-backlog-per-task`,
    policyType: 'TargetTrackingScaling',
    scalingTargetId: target.scalableTargetId,
    targetTrackingScalingPolicyConfiguration: {
      targetValue: props.scaling.targetBacklogPerTask ?? 6000,
      scaleOutCooldown: 120,
      scaleInCooldown: 600,
      customizedMetricSpecification: {
        metrics: [
          metricStat(props.backlog, 'backlog'),
          metricStat(desired, 'tasks'),
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
  if (minTasks === 0) addWakeFromZero(scope, props, target, desired);
  return target;
}

function addWakeFromZero(
  scope: Construct,
  props: BacklogScalingProps,
  target: appscaling.ScalableTarget,
  desired: cloudwatch.IMetric,
): void {
  // Only ever up: +1, never "exactly 1", which would cut a scaled-out service back to one task whenever the alarm
  // fires with tasks wanted. The alarm re-invokes the action every minute while it stays in ALARM; during the cooldown
  // Application Auto Scaling counts the task this action already added toward the next scale-out, so a wake adds one
  // task, not one a minute. The cooldown outlasts a cold start (GPU instance, image pull, model download).
  const wake = new appscaling.StepScalingAction(scope, `${props.name}Wake`, {
    scalingTarget: target,
    adjustmentType: appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
    cooldown: Duration.minutes(10),
    metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
  });
  wake.addAdjustment({ adjustment: 1, lowerBound: 0 });
  // "No task": Container Insights' desired count below 1, or absent, since at zero it may publish nothing at all
  // (FILL(tasks, 0)); and no running task either, read from AWS/ECS's own per-service CPUUtilization, which exists only
  // while a task runs (FILL(cpu, -1) < 0). The second term is what keeps a gap in Container Insights' data from waking
  // a service that runs N tasks. What remains, Container Insights silent while the first task still starts, is covered
  // by the cooldown; past it one more task at most per cooldown, up to maxTasks, which target tracking scales back in.
  new cloudwatch.Alarm(scope, `${props.name}WakeAlarm`, {
    alarmDescription: `${props.name}: input waits and no task is wanted or running: start one`,
    metric: new cloudwatch.MathExpression({
      expression: 'IF(FILL(tasks, 0) < 1 AND FILL(cpu, -1) < 0 AND backlog > 0, 1, 0)',
      usingMetrics: { backlog: props.backlog, tasks: desired, cpu: serviceCpu(props.cluster, props.service) },
      period: Duration.minutes(1),
      label: 'idle with backlog',
    }),
    threshold: 1,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    evaluationPeriods: 1,
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
  }).addAlarmAction(new cwActions.ApplicationScalingAction(wake));
}

/** The service's CPU use as ECS itself publishes it (AWS/ECS, every minute while at least one task runs). */
function serviceCpu(cluster: ecs.ICluster, service: ecs.Ec2Service): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: 'AWS/ECS',
    metricName: 'CPUUtilization',
    dimensionsMap: { ClusterName: cluster.clusterName, ServiceName: service.serviceName },
    statistic: 'Maximum',
    period: Duration.minutes(1),
    label: 'running tasks CPU',
  });
}

/** A metric as one entry of a target-tracking metric-math specification. */
function metricStat(m: cloudwatch.IMetric, id: string) {
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
}
