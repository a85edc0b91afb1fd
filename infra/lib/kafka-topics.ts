import { CustomResource, Duration, Stack, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { acknowledgeVpcLambdaPolicies, kafkaLambda } from './kafka-lambda.ts';
import * as cr from 'aws-cdk-lib/custom-resources';
import { Construct } from 'constructs';
import type { MskArns } from './msk.ts';
import { grantSecretRead } from './worker-grants.ts';

/** One topic the provisioner creates. */
export interface KafkaTopicSpec {
  readonly name: string;
  /** @default 12 */
  readonly partitions?: number;
  /** -1 takes the brokers' `default.replication.factor` (KIP-464). @default -1 */
  readonly replicationFactor?: number;
  /** Topic configs applied at creation only (e.g. `retention.ms`). @default - broker defaults */
  readonly configs?: Record<string, string>;
}

export interface KafkaTopicsProps {
  readonly vpc: ec2.IVpc;
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** Security group of the provisioner function; the caller opens the brokers to it. */
  readonly securityGroup: ec2.ISecurityGroup;
  readonly bootstrapServers: readonly string[];
  readonly auth: 'none' | 'iam' | 'scram-sha-512';
  readonly tls: boolean;
  readonly scramSecret?: secretsmanager.ISecret;
  /** Set for MSK IAM: the function is granted topic management on exactly these topics. */
  readonly msk?: MskArns;
  readonly topics: readonly KafkaTopicSpec[];
  /** Delete the topics (and their data) when the stack or this resource is deleted. @default false */
  readonly deleteOnDestroy?: boolean;
}

/**
 * Creates Kafka topics through a custom resource backed by functions/lambda/topic-provisioner.ts
 * (pre-bundled in the construct package, bundled locally with esbuild in a checkout; never Docker).
 */
export class KafkaTopics extends Construct {
  readonly handler: lambda.Function;

  constructor(scope: Construct, id: string, props: KafkaTopicsProps) {
    super(scope, id);
    const logGroup = new logs.LogGroup(this, 'Logs', { retention: logs.RetentionDays.ONE_MONTH });
    this.handler = kafkaLambda(this, 'Handler', 'topic-provisioner', {
      architecture: lambda.Architecture.ARM_64,
      memorySize: 256,
      timeout: Duration.minutes(5),
      vpc: props.vpc,
      vpcSubnets: props.vpcSubnets,
      securityGroups: [props.securityGroup],
      logGroup,
    });

    const managed = props.topics.map((t) => t.name);
    if (props.msk) {
      const topicArns = managed.map((n) => props.msk!.topic(n));
      this.handler.addToRolePolicy(
        new iam.PolicyStatement({
          actions: ['kafka-cluster:Connect', 'kafka-cluster:DescribeCluster'],
          resources: [props.msk.clusterArn],
        }),
      );
      this.handler.addToRolePolicy(
        new iam.PolicyStatement({
          actions: [
            'kafka-cluster:CreateTopic',
            'kafka-cluster:DescribeTopic',
            'kafka-cluster:AlterTopic',
            ...(props.deleteOnDestroy ? ['kafka-cluster:DeleteTopic'] : []),
          ],
          resources: topicArns,
        }),
      );
    }
    if (props.scramSecret) grantSecretRead(props.scramSecret, this.handler);

    const provider = new cr.Provider(this, 'Provider', {
      onEventHandler: this.handler,
      logGroup,
    });

    new CustomResource(this, 'Resource', {
      serviceToken: provider.serviceToken,
      resourceType: 'Custom::KafkaTopics',
      properties: {
        Brokers: props.bootstrapServers.join(','),
        Auth: props.auth,
        Tls: String(props.tls),
        SecretArn: props.scramSecret?.secretArn ?? '',
        Region: Stack.of(this).region,
        DeleteOnDestroy: String(props.deleteOnDestroy ?? false),
        Topics: props.topics.map((t) => ({
          Name: t.name,
          Partitions: String(t.partitions ?? 12),
          ReplicationFactor: String(t.replicationFactor ?? -1),
          ...(t.configs ? { Configs: t.configs } : {}),
        })),
      },
    });

    acknowledgeVpcLambdaPolicies(this);
    const frameworkPolicy = provider.node
      .findChild('framework-onEvent')
      .node.findChild('ServiceRole')
      .node.findChild('DefaultPolicy');
    Validations.of(frameworkPolicy).acknowledge({
      id: `AwsSolutions-IAM5[Resource::<${Stack.of(this).getLogicalId(this.handler.node.defaultChild as lambda.CfnFunction)}.Arn>:*]`,
      reason:
        'lambda:InvokeFunction on the provisioner function and its versions (<arn>:*) only: the CDK Provider framework calls it.',
    });
  }
}
