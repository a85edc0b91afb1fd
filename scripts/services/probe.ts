/**
 * Readiness probes for the local services, over their real protocols (a port that accepts TCP is not yet a broker
 * that answers metadata requests). Usage: node --import tsx scripts/services/probe.ts kafka|sqs|s3|dynamodb
 * Exit 0 when the service answers, 1 otherwise (the error on stderr).
 */
import { DynamoDBClient, ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { ListBucketsCommand, S3Client } from '@aws-sdk/client-s3';
import { ListQueuesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { Kafka, logLevel } from 'kafkajs';

const credentials = { accessKeyId: 'test', secretAccessKey: 'test' };
const region = 'us-east-1';

async function probe(service: string): Promise<void> {
  switch (service) {
    case 'kafka': {
      const kafka = new Kafka({
        clientId: 'mlmf-probe',
        brokers: [process.env.MLMF_BROKERS ?? '127.0.0.1:9092'],
        logLevel: logLevel.NOTHING,
        retry: { retries: 0 },
        connectionTimeout: 2000,
      });
      const admin = kafka.admin();
      await admin.connect();
      try {
        const cluster = await admin.describeCluster();
        if (cluster.brokers.length === 0) throw new Error('no broker in metadata');
      } finally {
        await admin.disconnect();
      }
      return;
    }
    case 'sqs': {
      const sqs = new SQSClient({
        region,
        credentials,
        endpoint: process.env.MLMF_SQS_ENDPOINT ?? 'http://127.0.0.1:9324',
      });
      await sqs.send(new ListQueuesCommand({}));
      sqs.destroy();
      return;
    }
    case 's3': {
      const s3 = new S3Client({
        region,
        credentials,
        forcePathStyle: true,
        endpoint: process.env.MLMF_S3_ENDPOINT ?? 'http://127.0.0.1:9000',
      });
      await s3.send(new ListBucketsCommand({}));
      s3.destroy();
      return;
    }
    case 'dynamodb': {
      const dynamodb = new DynamoDBClient({
        region,
        credentials,
        endpoint: process.env.MLMF_DYNAMODB_ENDPOINT ?? 'http://127.0.0.1:8000',
      });
      await dynamodb.send(new ListTablesCommand({}));
      dynamodb.destroy();
      return;
    }
    default:
      throw new Error(`unknown service ${service}`);
  }
}

const service = process.argv[2] ?? '';
const timer = setTimeout(() => {
  console.error(`${service}: probe timed out`);
  process.exit(1);
}, 8000);
probe(service).then(
  () => {
    clearTimeout(timer);
    process.exit(0);
  },
  (err: unknown) => {
    console.error(`${service}: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
