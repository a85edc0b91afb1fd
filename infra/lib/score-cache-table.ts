import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as iam from 'aws-cdk-lib/aws-iam';
import type { Construct } from 'constructs';
import type { ScoreCacheOptions } from './props.ts';

/** The TTL the worker writes when the construct says nothing (lib/cache/dynamo-store.ts DEFAULT_TTL_DAYS). */
export const DEFAULT_SCORE_CACHE_TTL = Duration.days(30);

/**
 * The fleet's shared score cache (lib/cache/dynamo-store.ts): one table, pk/sk strings, on demand (a crawl's load
 * comes in bursts and scales to zero between them), TTL on `expiresAt`. Encrypted at rest always: with the AWS-owned
 * key by default (no KMS charges or key policy), with `encryptionKey` when given.
 */
export function buildScoreCacheTable(scope: Construct, opts: ScoreCacheOptions): dynamodb.Table {
  const table = new dynamodb.Table(scope, 'ScoreCache', {
    partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
    sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
    billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
    timeToLiveAttribute: 'expiresAt',
    ...(opts.encryptionKey
      ? { encryption: dynamodb.TableEncryption.CUSTOMER_MANAGED, encryptionKey: opts.encryptionKey }
      : { encryption: dynamodb.TableEncryption.DEFAULT }),
    pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: opts.pointInTimeRecovery ?? false },
    removalPolicy: opts.removalPolicy ?? RemovalPolicy.RETAIN,
  });
  if (!opts.pointInTimeRecovery) {
    Validations.of(table).acknowledge({
      id: 'AwsSolutions-DDB3',
      reason:
        'A cache of scores the workers can recompute, each entry expiring by TTL: losing it costs GPU time, not data, so point-in-time recovery (billed per GB-month) is off by default (scoreCache.pointInTimeRecovery turns it on).',
    });
  }
  return table;
}

/**
 * What a worker does with the table, and nothing more: DescribeTable at start, GetItem and conditional PutItem for
 * entries (a TransactWriteItems is authorised as its PutItems), Query for the image dedupe's buckets.
 */
export function grantScoreCache(table: dynamodb.ITable, role: iam.IGrantable): void {
  table.grant(role, 'dynamodb:DescribeTable', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query');
  table.encryptionKey?.grant(role, 'kms:Decrypt', 'kms:GenerateDataKey');
}

/** The TTL the workers write, whole days (the worker reads fractions too; the construct keeps it readable). */
export function scoreCacheTtlDays(opts: ScoreCacheOptions): number {
  return (opts.ttl ?? DEFAULT_SCORE_CACHE_TTL).toDays();
}
