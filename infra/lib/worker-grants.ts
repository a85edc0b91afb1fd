import { Stack, Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kms from 'aws-cdk-lib/aws-kms';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import type { MskArns } from './msk.ts';
import { nagResource } from './nag.ts';

/** Everything a worker writes to, whichever source it reads. */
export interface SinkGrants {
  readonly curatedBucket: s3.IBucket;
  readonly curatedPrefix: string;
  /** The curated bucket's customer-managed key, if any (the IBucket's own or the one given with it). */
  readonly curatedKey?: kms.IKey;
  readonly modelBucket: s3.IBucket;
  readonly modelKey: string;
  /** The model object's customer-managed key, if any. */
  readonly modelEncryptionKey?: kms.IKey;
  readonly msk?: MskArns;
  readonly sinkTopics: readonly string[];
  readonly scramSecret?: secretsmanager.ISecret;
}

/**
 * Sink permissions of a worker task role: the curated prefix (and its key), the model object (and its key), the sink
 * topics with the exactly-once producer's transactional ids, the SCRAM secret.
 */
export function grantSinks(scope: Construct, role: iam.IRole, g: SinkGrants): void {
  const objects = g.curatedBucket.arnForObjects(`${g.curatedPrefix}*`);
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'CuratedShards',
      actions: ['s3:PutObject', 's3:GetObject', 's3:AbortMultipartUpload'],
      resources: [objects],
    }),
  );
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'CuratedListing',
      // The sink recovers its position from the shards already written (DESIGN.md curated layout).
      actions: ['s3:ListBucket'],
      resources: [g.curatedBucket.bucketArn],
      conditions: { StringLike: { 's3:prefix': [`${g.curatedPrefix}*`] } },
    }),
  );
  // SSE-KMS: GenerateDataKey to write, Decrypt to read shards back and to complete multipart uploads.
  g.curatedKey?.grant(role, 'kms:GenerateDataKey', 'kms:Decrypt');
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'ModelArtifact',
      actions: ['s3:GetObject'],
      resources: [g.modelBucket.arnForObjects(g.modelKey)],
    }),
  );
  g.modelEncryptionKey?.grantDecrypt(role);
  if (g.msk) grantMskSinks(role, g.msk, g.sinkTopics);
  if (g.scramSecret) grantSecretRead(g.scramSecret, role);
  acknowledgeSinkWildcards(scope, role, objects, g.msk);
}

function grantMskSinks(role: iam.IRole, msk: MskArns, sinkTopics: readonly string[]): void {
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['kafka-cluster:Connect', 'kafka-cluster:DescribeCluster', 'kafka-cluster:WriteDataIdempotently'],
      resources: [msk.clusterArn],
    }),
  );
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['kafka-cluster:DescribeTopic', 'kafka-cluster:WriteData'],
      resources: sinkTopics.map((t) => msk.topic(t)),
    }),
  );
  // Exactly-once: audit events and consumed offsets commit in one Kafka transaction, under one transactional id per
  // input partition, `mlmf-<group>-<topic>-<partition>` (the worker's default MLMF_TRANSACTIONAL_ID_PREFIX).
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['kafka-cluster:DescribeTransactionalId', 'kafka-cluster:AlterTransactionalId'],
      resources: [msk.transactionalId('mlmf-*')],
    }),
  );
}

function acknowledgeSinkWildcards(scope: Construct, role: iam.IRole, objects: string, msk: MskArns | undefined): void {
  const policy = role.node.tryFindChild('DefaultPolicy');
  if (!policy) return;
  const stack = Stack.of(scope);
  Validations.of(policy).acknowledge({
    id: `AwsSolutions-IAM5[Resource::${nagResource(stack, objects)}]`,
    reason:
      's3:PutObject, s3:GetObject and s3:AbortMultipartUpload on objects under the curated prefix only: shard names are deterministic but data-dependent (partition and offset range).',
  });
  if (msk) {
    Validations.of(policy).acknowledge({
      id: `AwsSolutions-IAM5[Resource::${nagResource(stack, msk.transactionalId('mlmf-*'))}]`,
      reason:
        "kafka-cluster:DescribeTransactionalId and AlterTransactionalId on this cluster's transactional ids that start with mlmf- only: there is one per input partition (mlmf-<group>-<topic>-<partition>), taken over by whichever task owns the partition.",
    });
  }
}

/** Read access to the Kafka source topic and the consumer group (MSK IAM). */
export function grantMskSource(role: iam.IRole, msk: MskArns, topic: string, group: string): void {
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['kafka-cluster:DescribeTopic', 'kafka-cluster:ReadData'],
      resources: [msk.topic(topic)],
    }),
  );
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['kafka-cluster:DescribeGroup', 'kafka-cluster:AlterGroup'],
      resources: [msk.group(group)],
    }),
  );
}

/**
 * secretsmanager:GetSecretValue on the secret, and kms:Decrypt through Secrets Manager on its customer-managed key.
 * `ISecret.grantRead` alone drops the key grant for an imported key (it cannot edit that key's policy and does not
 * fall back to the reader's own policy), so the statement is added to the reader's policy here.
 */
export function grantSecretRead(secret: secretsmanager.ISecret, grantee: iam.IGrantable): void {
  secret.grantRead(grantee);
  if (!secret.encryptionKey) return;
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['kms:Decrypt'],
      resources: [secret.encryptionKey.keyArn],
      conditions: { StringEquals: { 'kms:ViaService': `secretsmanager.${Stack.of(secret).region}.amazonaws.com` } },
    }),
  );
}

/** What a shard-job (backfill) worker needs beyond the sinks: its inputs, cleanup of its own outputs, its DLQ. */
export interface ShardJobGrants {
  readonly inputBuckets: readonly s3.IBucket[];
  readonly curatedBucket: s3.IBucket;
  readonly curatedPrefix: string;
  readonly deadLetterQueue?: sqs.IQueue;
}

/**
 * Shard jobs read whole input shards (s3:GetObject, ranged), delete the curated shards an earlier attempt of the same
 * job left behind (s3:DeleteObject under the curated prefix), and dead-letter a job that keeps failing.
 */
export function grantShardJobs(scope: Construct, role: iam.IRole, g: ShardJobGrants): void {
  const inputs = g.inputBuckets.map((b) => b.arnForObjects('*'));
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({ sid: 'ShardJobInputs', actions: ['s3:GetObject'], resources: inputs }),
  );
  // ListBucket makes a missing shard read as 404 (input missing) rather than 403.
  const buckets = g.inputBuckets.map((b) => b.bucketArn);
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({ sid: 'ShardJobInputListing', actions: ['s3:ListBucket'], resources: buckets }),
  );
  for (const b of g.inputBuckets) b.encryptionKey?.grantDecrypt(role);
  const outputs = g.curatedBucket.arnForObjects(`${g.curatedPrefix}*`);
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({ sid: 'ShardJobOutputCleanup', actions: ['s3:DeleteObject'], resources: [outputs] }),
  );
  if (g.deadLetterQueue) grantDeadLetterSend(role, g.deadLetterQueue);
  const policy = role.node.tryFindChild('DefaultPolicy');
  if (!policy) return;
  const stack = Stack.of(scope);
  for (const arn of inputs) {
    Validations.of(policy).acknowledge({
      id: `AwsSolutions-IAM5[Resource::${nagResource(stack, arn)}]`,
      reason:
        's3:GetObject on the objects of a bucket the user named as holding backfill input shards: the shard keys come in the job messages.',
    });
  }
}

/**
 * SendMessage on the dead-letter queue and, with a customer-managed key, only what sending needs: aws-cdk-lib's
 * `grantSendMessages` also grants kms:ReEncrypt* and kms:GenerateDataKey* (cdk-nag AwsSolutions-IAM5).
 */
function grantDeadLetterSend(role: iam.IRole, queue: sqs.IQueue): void {
  role.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'ShardJobDeadLetter',
      actions: ['sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'],
      resources: [queue.queueArn],
    }),
  );
  queue.encryptionMasterKey?.grant(role, 'kms:GenerateDataKey', 'kms:Decrypt');
}
