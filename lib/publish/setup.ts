/**
 * What a worker needs before it can start, for a local try (`mlm-filter topics create`, `mlm-filter bucket create`):
 * its topics (local brokers run with topic auto-creation off, as production ones should) and its curated bucket.
 * Deployments get both from the CDK construct. Both are idempotent: what exists is reported and left as it is.
 */
import { CreateBucketCommand, HeadBucketCommand, type S3Client } from '@aws-sdk/client-s3';
import type { Kafka } from 'kafkajs';
import { isClientError } from '../support/aws.ts';
import { FilterError } from '../types.ts';

export interface TopicState {
  readonly topic: string;
  /** `created` now, or `exists` (left untouched; its partitions as they are). */
  readonly state: 'created' | 'exists';
  readonly partitions: number;
}

/** Kafka's rule for topic names. */
const TOPIC_NAME = /^[A-Za-z0-9._-]{1,249}$/;

/**
 * Creates the topics that do not exist yet, with `partitions` partitions (the worker's consumers scale up to that
 * many) and the brokers' default replication factor. A topic racing another creator counts as existing.
 */
export async function createTopics(kafka: Kafka, topics: readonly string[], partitions: number): Promise<TopicState[]> {
  for (const t of topics) {
    if (!TOPIC_NAME.test(t) || t === '.' || t === '..') {
      throw new FilterError('invalid_option', `topic name ${JSON.stringify(t)} is not 1-249 of [A-Za-z0-9._-]`, {
        topic: t,
      });
    }
  }
  const wanted = [...new Set(topics)];
  const admin = kafka.admin();
  try {
    await admin.connect().catch((err: Error) => {
      throw new FilterError('kafka_unavailable', `cannot reach the Kafka brokers: ${err.message}`);
    });
    const existing = new Set(await admin.listTopics());
    const missing = wanted.filter((t) => !existing.has(t));
    if (missing.length > 0) {
      await admin.createTopics({
        waitForLeaders: true,
        topics: missing.map((topic) => ({ topic, numPartitions: partitions, replicationFactor: -1 })),
      });
    }
    const meta = await admin.fetchTopicMetadata({ topics: wanted });
    const counts = new Map(meta.topics.map((t) => [t.name, t.partitions.length]));
    return wanted.map((topic) => ({
      topic,
      state: missing.includes(topic) ? 'created' : 'exists',
      partitions: counts.get(topic) ?? 0,
    }));
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/** Creates the bucket unless this account already has it; `exists` when it did. */
export async function createBucket(s3: S3Client, bucket: string): Promise<'created' | 'exists'> {
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new FilterError('invalid_option', `bucket name ${JSON.stringify(bucket)} is not 3-63 of [a-z0-9.-]`, {
      bucket,
    });
  }
  try {
    await s3.send(new HeadBucketCommand({ Bucket: bucket }));
    return 'exists';
  } catch (err) {
    if (!isClientError(err)) throw err;
  }
  try {
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    return 'created';
  } catch (err) {
    const name = (err as { name?: string }).name;
    if (name === 'BucketAlreadyOwnedByYou') return 'exists';
    throw err;
  }
}
