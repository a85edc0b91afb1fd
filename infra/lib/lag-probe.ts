import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { acknowledgeVpcLambdaPolicies, kafkaLambda } from './kafka-lambda.ts';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import type { LagProbeEnv } from '../../functions/lambda/lag-probe-env.ts';
import { DEFAULT_METRICS_NAMESPACE, METRIC, PIPELINE_DIMENSION } from '../../lib/metrics/metric-names.ts';
import type { MskArns } from './msk.ts';

export interface LagProbeProps {
  readonly vpc: ec2.IVpc;
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** A security group the brokers already let in (the pipeline's shared broker client group). @default - a new group */
  readonly securityGroup?: ec2.ISecurityGroup;
  readonly bootstrapServers: readonly string[];
  readonly auth: 'none' | 'iam' | 'scram-sha-512';
  readonly tls: boolean;
  /** SCRAM credentials (`{"username", "password"}`), read by the function at its first run. */
  readonly scramSecret?: secretsmanager.ISecret;
  /** Set for MSK IAM: the function may describe exactly the topic and the group. */
  readonly msk?: MskArns;
  /** The source topic and the workers' consumer group. */
  readonly topic: string;
  readonly consumerGroup: string;
  /** `Pipeline` dimension of the published metric. */
  readonly pipelineName: string;
  /** @default 'MlmFilter' */
  readonly namespace?: string;
  /** How often the backlog is measured. @default Duration.minutes(1) */
  readonly interval?: Duration;
}

/**
 * Publishes a Kafka consumer group's backlog on its topic every minute, as `KafkaBacklog` in the pipeline's namespace,
 * from a scheduled Lambda in the brokers' VPC (functions/lambda/lag-probe.ts). Unlike MSK's `SumOffsetLag`, the metric
 * exists for a group that never committed, so scale-from-zero can read it.
 *
 * The function has its own security group, {@link securityGroup}: allow it in on the brokers' port.
 */
export class LagProbe extends Construct {
  readonly handler: lambda.Function;
  readonly securityGroup: ec2.ISecurityGroup;
  readonly schedule: events.Rule;
  /** The published backlog, records (Maximum per minute). */
  readonly backlog: cloudwatch.Metric;

  constructor(scope: Construct, id: string, props: LagProbeProps) {
    super(scope, id);
    const namespace = props.namespace ?? DEFAULT_METRICS_NAMESPACE;
    const interval = props.interval ?? Duration.minutes(1);
    this.securityGroup =
      props.securityGroup ??
      new ec2.SecurityGroup(this, 'Sg', {
        vpc: props.vpc,
        description: `Kafka lag probe (${props.pipelineName}): egress only, allow it on the brokers`,
        allowAllOutbound: true,
      });
    const environment: LagProbeEnv = {
      MLMF_BROKERS: props.bootstrapServers.join(','),
      MLMF_SOURCE_TOPIC: props.topic,
      MLMF_GROUP_ID: props.consumerGroup,
      MLMF_KAFKA_AUTH: props.auth,
      MLMF_KAFKA_TLS: String(props.tls),
      MLMF_PIPELINE: props.pipelineName,
      MLMF_METRICS_NAMESPACE: namespace,
      ...(props.scramSecret ? { MLMF_KAFKA_SECRET_ARN: props.scramSecret.secretArn } : {}),
    };
    this.handler = kafkaLambda(this, 'Handler', 'lag-probe', {
      architecture: lambda.Architecture.ARM_64,
      memorySize: 256,
      // Shorter than the schedule, so runs do not pile up behind an unreachable cluster.
      timeout: Duration.seconds(Math.max(10, Math.min(55, interval.toSeconds() - 5))),
      vpc: props.vpc,
      vpcSubnets: props.vpcSubnets,
      securityGroups: [this.securityGroup],
      environment: environment as Record<string, string>,
      logGroup: new logs.LogGroup(this, 'Logs', { retention: logs.RetentionDays.ONE_MONTH }),
      // A failed measurement is not worth retrying: the next scheduled run measures afresh.
      retryAttempts: 0,
    });
    this.grantKafka(props);
    this.schedule = new events.Rule(this, 'Schedule', {
      description: `Measure the Kafka backlog of ${props.consumerGroup} on ${props.topic}`,
      schedule: events.Schedule.rate(interval),
      targets: [new targets.LambdaFunction(this.handler, { retryAttempts: 0 })],
    });
    this.backlog = new cloudwatch.Metric({
      namespace,
      metricName: METRIC.KafkaBacklog,
      dimensionsMap: { [PIPELINE_DIMENSION]: props.pipelineName },
      statistic: 'Maximum',
      period: interval.toSeconds() > 60 ? interval : Duration.minutes(1),
      label: 'Kafka backlog, lag probe (records)',
    });
  }

  /** Read-only access: describe the topic and the group (offsets), nothing else; or the SCRAM secret. */
  private grantKafka(props: LagProbeProps): void {
    if (props.msk) {
      this.handler.addToRolePolicy(
        new iam.PolicyStatement({ actions: ['kafka-cluster:Connect'], resources: [props.msk.clusterArn] }),
      );
      this.handler.addToRolePolicy(
        new iam.PolicyStatement({
          actions: ['kafka-cluster:DescribeTopic'],
          resources: [props.msk.topic(props.topic)],
        }),
      );
      this.handler.addToRolePolicy(
        new iam.PolicyStatement({
          actions: ['kafka-cluster:DescribeGroup'],
          resources: [props.msk.group(props.consumerGroup)],
        }),
      );
    }
    props.scramSecret?.grantRead(this.handler);
    acknowledgeVpcLambdaPolicies(this);
  }
}
