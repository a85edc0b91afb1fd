import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import type { CuratedBucketOptions } from './props.ts';

/** A new curated bucket: encrypted, public access blocked, TLS only, versioned, access-logged into a second bucket. */
export function buildCuratedBucket(scope: Construct, opts: CuratedBucketOptions | undefined): s3.Bucket {
  const removalPolicy = opts?.removalPolicy ?? RemovalPolicy.RETAIN;
  const accessLogs = (opts?.serverAccessLogs ?? true) ? buildAccessLogBucket(scope, removalPolicy) : undefined;
  return new s3.Bucket(scope, 'CuratedBucket', {
    ...(opts?.encryptionKey
      ? { encryption: s3.BucketEncryption.KMS, encryptionKey: opts.encryptionKey, bucketKeyEnabled: true }
      : { encryption: s3.BucketEncryption.S3_MANAGED }),
    blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
    enforceSSL: true,
    versioned: true,
    // Versioning keeps every overwritten or deleted shard: expire old versions after a while, and abort the
    // multipart uploads a killed worker leaves (their parts are billed and invisible). Yours come after ours.
    lifecycleRules: [
      {
        id: 'noncurrent-versions-and-stale-uploads',
        noncurrentVersionExpiration: opts?.noncurrentVersionExpiration ?? Duration.days(30),
        abortIncompleteMultipartUploadAfter: Duration.days(7),
      },
      ...(opts?.lifecycleRules ?? []),
    ],
    serverAccessLogsBucket: accessLogs,
    serverAccessLogsPrefix: accessLogs ? 'curated/' : undefined,
    removalPolicy,
  });
}

function buildAccessLogBucket(scope: Construct, removalPolicy: RemovalPolicy): s3.Bucket {
  const bucket = new s3.Bucket(scope, 'AccessLogsBucket', {
    encryption: s3.BucketEncryption.S3_MANAGED,
    blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
    enforceSSL: true,
    // ACLs disabled: access log delivery is granted by bucket policy, not the legacy LogDeliveryWrite ACL.
    objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
    lifecycleRules: [{ expiration: Duration.days(365) }],
    removalPolicy,
  });
  Validations.of(bucket).acknowledge({
    id: 'AwsSolutions-S1',
    reason: 'No server access logs on the server access log bucket itself: logging it into itself would loop.',
  });
  return bucket;
}

/** A key prefix without a leading slash and with a trailing one ('' stays the whole bucket). */
export function normalisePrefix(prefix: string): string {
  const p = prefix.replace(/^\/+/, '');
  return p === '' || p.endsWith('/') ? p : `${p}/`;
}
