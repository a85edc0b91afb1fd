import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import type { SqsSourceOptions } from './props.ts';

/** The SQS source: the crawler's existing queue, or a new encrypted, TLS-only one with its dead-letter queue. */
export function buildInputQueue(
  scope: Construct,
  opts: SqsSourceOptions,
): { queue: sqs.IQueue; deadLetterQueue?: sqs.Queue } {
  if (opts.queue) return { queue: opts.queue };
  if (opts.queueArn) return { queue: sqs.Queue.fromQueueArn(scope, 'InputQueue', opts.queueArn) };
  const enc = opts.encryptionKey
    ? { encryption: sqs.QueueEncryption.KMS, encryptionMasterKey: opts.encryptionKey }
    : { encryption: sqs.QueueEncryption.SQS_MANAGED };
  const removalPolicy = opts.removalPolicy ?? RemovalPolicy.RETAIN;
  const deadLetterQueue = new sqs.Queue(scope, 'InputDeadLetterQueue', {
    ...enc,
    removalPolicy,
    enforceSSL: true,
    retentionPeriod: Duration.days(14),
  });
  const queue = new sqs.Queue(scope, 'InputQueue', {
    ...enc,
    removalPolicy,
    enforceSSL: true,
    visibilityTimeout: opts.visibilityTimeout ?? Duration.minutes(15),
    retentionPeriod: opts.retentionPeriod ?? Duration.days(4),
    deadLetterQueue: { queue: deadLetterQueue, maxReceiveCount: opts.maxReceiveCount ?? 5 },
  });
  return { queue, deadLetterQueue };
}
