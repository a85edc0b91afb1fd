import { Fn } from 'aws-cdk-lib';

/**
 * ARNs that MSK IAM access control authorises against, derived from a cluster ARN
 * (`arn:<partition>:kafka:<region>:<account>:cluster/<name>/<uuid>`). Works for literal ARNs (computed at synth) and
 * for tokens (rendered as Fn::Split/Fn::Select/Fn::Join).
 */
export class MskArns {
  private readonly prefix: string;
  private readonly clusterPath: string;

  constructor(readonly clusterArn: string) {
    const parts = Fn.split(':cluster/', clusterArn, 2);
    this.prefix = Fn.select(0, parts);
    this.clusterPath = Fn.select(1, parts);
  }

  /** The cluster name, the `Cluster Name` dimension of MSK's CloudWatch metrics. */
  get clusterName(): string {
    return Fn.select(0, Fn.split('/', this.clusterPath, 2));
  }

  topic(name: string): string {
    return Fn.join('', [this.prefix, ':topic/', this.clusterPath, '/', name]);
  }

  /** Transactional ids matching `pattern` (e.g. `mlmf-*`): the worker's exactly-once producer needs them. */
  transactionalId(pattern: string): string {
    return Fn.join('', [this.prefix, ':transactional-id/', this.clusterPath, '/', pattern]);
  }

  group(name: string): string {
    return Fn.join('', [this.prefix, ':group/', this.clusterPath, '/', name]);
  }
}

/** True for a literal string that looks like an MSK cluster ARN (tokens are accepted unchecked). */
export function isMskClusterArn(arn: string): boolean {
  return /^arn:aws[a-z-]*:kafka:[a-z0-9-]+:\d{12}:cluster\/[^/]+\/[^/]+$/.test(arn);
}
