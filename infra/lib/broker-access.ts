import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Construct, type IDependable } from 'constructs';

export interface BrokerAccessProps {
  readonly vpc: ec2.IVpc;
  readonly pipelineName: string;
  /** The brokers' port (the first bootstrap server's). */
  readonly port: number;
  /** The brokers' security group: each client's ingress rule is added to it. */
  readonly clusterSecurityGroup?: ec2.ISecurityGroup;
  /** A group the brokers already let in: every client uses it and no rule is added. */
  readonly sharedClientSecurityGroup?: ec2.ISecurityGroup;
}

/** A broker client's security group and what must exist before the client first connects. */
export interface BrokerClient {
  readonly securityGroup: ec2.ISecurityGroup;
  /** The ingress rule on the brokers' group, when the construct added one: the client must depend on it. */
  readonly ready: IDependable[];
}

/**
 * How the construct's broker clients (worker tasks, topic provisioner, lag probe) reach the Kafka brokers. Without
 * ordering, CloudFormation may run the topic custom resource before the brokers' ingress rule exists and the first
 * deploy fails on a connection timeout, so every client is handed the rule it waits for.
 */
export class BrokerAccess {
  private readonly clients = new Map<string, BrokerClient>();

  constructor(
    private readonly scope: Construct,
    private readonly props: BrokerAccessProps,
  ) {}

  /** The security group for the client `id` (created once), let in on the brokers' port where the construct can. */
  client(id: string, description: string): BrokerClient {
    const known = this.clients.get(id);
    if (known) return known;
    const shared = this.props.sharedClientSecurityGroup;
    const client = shared ? { securityGroup: shared, ready: [] } : this.newClient(id, description);
    this.clients.set(id, client);
    return client;
  }

  /**
   * Lets in a client that brings its own security group (a construct that creates one). With a shared client group
   * the brokers already let that one in, not this: such a client should take {@link client}'s group instead.
   */
  allow(id: string, securityGroup: ec2.ISecurityGroup, description: string): IDependable[] {
    return this.ingress(id, securityGroup, description);
  }

  private newClient(id: string, description: string): BrokerClient {
    const securityGroup = new ec2.SecurityGroup(this.scope, `${id}Sg`, {
      vpc: this.props.vpc,
      description: `${description} (${this.props.pipelineName}): egress only; the brokers let it in`,
      allowAllOutbound: true,
    });
    return { securityGroup, ready: this.ingress(id, securityGroup, description) };
  }

  private ingress(id: string, securityGroup: ec2.ISecurityGroup, description: string): IDependable[] {
    const cluster = this.props.clusterSecurityGroup;
    if (!cluster) return [];
    // An explicit rule (not addIngressRule) so that it can be depended on, and so that it is added even to a group
    // imported as immutable: naming the cluster's group is the request to open it.
    const rule = new ec2.CfnSecurityGroupIngress(this.scope, `${id}ToBrokers`, {
      groupId: cluster.securityGroupId,
      sourceSecurityGroupId: securityGroup.securityGroupId,
      ipProtocol: 'tcp',
      fromPort: this.props.port,
      toPort: this.props.port,
      description: `${description} (${this.props.pipelineName}) to the Kafka brokers`,
    });
    return [rule];
  }
}

/** The brokers' port: the first bootstrap server's, 9092 when it has none. */
export function brokerPort(servers: readonly string[]): number {
  const port = Number(servers[0]?.split(':').pop());
  return Number.isInteger(port) && port > 0 ? port : 9092;
}
