/**
 * The one place AWS clients are built (the worker, `mlm-filter filter` and `mlm-filter backfill` share it), and the
 * AWS error helpers (lib/support/aws-errors.ts, kept apart so that reading an error does not load the SDK).
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';

export { httpStatus, isClientError, isNotFound, isPreconditionFailed } from './aws-errors.ts';

export interface AwsClientOptions {
  /** Default: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1. */
  readonly region?: string;
  /**
   * An S3-, SQS- or DynamoDB-compatible server (MLMF_S3_ENDPOINT, MLMF_SQS_ENDPOINT, MLMF_DYNAMODB_ENDPOINT): S3 then
   * addresses buckets by path.
   */
  readonly endpoint?: string;
  /** Per-request timeout, ms: a hung request fails (and is retried) instead of holding its caller. Default none. */
  readonly requestTimeoutMs?: number;
  /** Connection timeout, ms (with `requestTimeoutMs`). Default 5000. */
  readonly connectTimeoutMs?: number;
  /** The SDK's own attempts per request (its standard retry mode, under ours). Default the SDK's (3). */
  readonly maxAttempts?: number;
}

/** The region asked for, else the environment's, else us-east-1. */
export function awsRegion(region?: string): string {
  return region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
}

function common(o: AwsClientOptions) {
  return {
    region: awsRegion(o.region),
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    ...(o.maxAttempts !== undefined ? { maxAttempts: o.maxAttempts } : {}),
    ...(o.requestTimeoutMs !== undefined
      ? {
          requestHandler: {
            requestTimeout: o.requestTimeoutMs,
            connectionTimeout: o.connectTimeoutMs ?? 5000,
            throwOnRequestTimeout: true,
          },
        }
      : {}),
  };
}

export function s3Client(o: AwsClientOptions = {}): S3Client {
  // Local servers (moto, MinIO) serve buckets by path, not by virtual-host names that would need DNS.
  return new S3Client({ ...common(o), ...(o.endpoint ? { forcePathStyle: true } : {}) });
}

export function sqsClient(o: AwsClientOptions = {}): SQSClient {
  return new SQSClient(common(o));
}

export function dynamoDbClient(o: AwsClientOptions = {}): DynamoDBClient {
  return new DynamoDBClient(common(o));
}
