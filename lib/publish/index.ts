/**
 * `mlm-filter publish`: a crawler's pair records (JSONL) onto the worker's input, a Kafka topic or an SQS queue.
 * Every record is first read by the worker's own parser (lib/pair), so a record the worker would only reject as
 * `invalid_record` is caught at the crawler, with its line. Kafka messages are keyed by the pair's id (the id the
 * worker keys its audit, accepted and dead-letter messages by; derived the same way when the record has none), so
 * every copy of a pair lands on one partition, in order. The record's bytes are published unchanged.
 */
import { createHash } from 'node:crypto';
import type { Kafka, Message, Producer } from 'kafkajs';
import { SendMessageBatchCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { parseRecord, type PairOptions } from '../pair/index.ts';
import { JsonlSource } from '../sources/jsonl.ts';
import { topicMaxMessageBytes } from '../kafka/client.ts';
import { FilterError, RejectError, type SourceRecord } from '../types.ts';

/** One record refused before publishing: its line in the input and why. */
export interface RefusedRecord {
  readonly line: number;
  readonly message: string;
}

export interface PublishOptions {
  /** JSONL file, or `-` for standard input. */
  readonly input: string;
  /**
   * `fail` (default): a file with an invalid record publishes nothing (it is read twice: checked whole, then sent);
   * on stdin the publish stops at the first invalid record. `skip`: invalid records are reported and left out.
   */
  readonly invalid?: 'fail' | 'skip';
  /** Check only: nothing is published. */
  readonly check?: boolean;
  /** The worker's parsing limits (its defaults when unset). */
  readonly pair?: PairOptions;
  /** Called for each refused record (the CLI prints it). */
  readonly onRefused?: (r: RefusedRecord) => void;
  readonly signal?: AbortSignal;
}

export interface PublishResult {
  /** Non-blank lines read. */
  readonly records: number;
  readonly published: number;
  readonly refused: number;
}

/** Where records go: a batch at a time, each already checked, with its key. */
export interface PublishTarget {
  readonly name: string;
  /** The largest record the target takes, bytes (checked per record, before anything is sent). */
  readonly maxRecordBytes: number;
  send(records: readonly CheckedRecord[]): Promise<void>;
  close(): Promise<void>;
}

export interface CheckedRecord {
  readonly key: string;
  readonly value: Buffer;
  readonly line: number;
}

const lineOf = (r: SourceRecord) => (r.origin.kind === 'file' ? r.origin.line : 0);

/** The record as the worker would parse it, or why it is refused. */
function check(record: SourceRecord, target: PublishTarget | undefined, pair?: PairOptions): CheckedRecord | string {
  try {
    const { id } = parseRecord(record, pair);
    const value = record.raw as Buffer;
    const size = Buffer.byteLength(id) + value.length;
    if (target && size > target.maxRecordBytes) {
      return `record is ${size} bytes with its key, over the ${target.maxRecordBytes} bytes ${target.name} takes`;
    }
    return { key: id, value, line: lineOf(record) };
  } catch (err) {
    if (err instanceof RejectError) return err.reason.message;
    throw err;
  }
}

async function* checkedBatches(options: PublishOptions, target: PublishTarget | undefined) {
  const source = await JsonlSource.open({
    path: options.input,
    batchSize: 500,
    ...(options.pair?.maxRecordBytes !== undefined ? { maxLineBytes: options.pair.maxRecordBytes } : {}),
  });
  for await (const batch of source.batches(options.signal ?? new AbortController().signal)) {
    const ok: CheckedRecord[] = [];
    const refused: RefusedRecord[] = [];
    for (const record of batch.records) {
      const c = check(record, target, options.pair);
      if (typeof c === 'string') refused.push({ line: lineOf(record), message: c });
      else ok.push(c);
    }
    yield { ok, refused, records: batch.records.length };
  }
}

const refusedError = (refused: number, published: number, first: RefusedRecord) =>
  new FilterError(
    'publish_invalid_records',
    `${refused} record(s) refused: invalid for the worker, or too large for the target (first: line ${first.line}: ` +
      `${first.message}); ` +
      `${published} published before it; --invalid skip leaves such records out`,
    { refused, published, line: first.line },
  );

/**
 * Publishes the input's records to `target` (or only checks them, `check`). With `invalid: 'fail'` an invalid record
 * throws `publish_invalid_records`: a file is checked whole before anything is sent (nothing is published), stdin
 * stops at that record (what came before it is published), and a check reports every one before it throws.
 */
export async function publish(options: PublishOptions, target?: PublishTarget): Promise<PublishResult> {
  const mode = options.invalid ?? 'fail';
  if (mode === 'fail' && options.input !== '-' && !options.check) {
    await publish({ ...options, check: true }, target);
  }
  let records = 0;
  let published = 0;
  let refused = 0;
  let first: RefusedRecord | undefined;
  for await (const batch of checkedBatches(options, target)) {
    records += batch.records;
    for (const r of batch.refused) options.onRefused?.(r);
    refused += batch.refused.length;
    first ??= batch.refused[0];
    if (options.check) continue;
    if (first && mode === 'fail') {
      const before = batch.ok.filter((r) => r.line < first!.line);
      if (before.length > 0) await target?.send(before);
      throw refusedError(refused, published + before.length, first);
    }
    if (target && batch.ok.length > 0) await target.send(batch.ok);
    published += batch.ok.length;
  }
  if (first && mode === 'fail') throw refusedError(refused, published, first);
  return { records, published, refused };
}

/** A Kafka topic as the target: an idempotent producer, messages keyed by pair id; the topic must exist. */
export async function kafkaTarget(kafka: Kafka, topic: string): Promise<PublishTarget> {
  const admin = kafka.admin();
  try {
    await admin.connect();
    const topics = await admin.listTopics();
    if (!topics.includes(topic)) {
      throw new FilterError(
        'kafka_topic_unavailable',
        `topic ${topic} does not exist (create it: mlm-filter topics create --brokers ... --source-topic ${topic})`,
        { topic },
      );
    }
  } catch (err) {
    if (err instanceof FilterError) throw err;
    throw new FilterError('kafka_unavailable', `cannot reach the Kafka brokers: ${(err as Error).message}`, {
      topic,
    });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
  // Room for the record batch's own framing under the topic's limit.
  const maxRecordBytes = ((await topicMaxMessageBytes(kafka, topic)) ?? 1024 * 1024) - 512;
  const producer: Producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  return {
    name: `Kafka topic ${topic}`,
    maxRecordBytes,
    async send(records) {
      const messages: Message[] = records.map((r) => ({ key: r.key, value: r.value }));
      await producer.send({ topic, messages, acks: -1 });
    },
    close: () => producer.disconnect(),
  };
}

/** SQS's limit on one message and on one SendMessageBatch request. */
const SQS_MAX_BYTES = 256 * 1024;

/** An SQS queue as the target: SendMessageBatch (10 per request); a FIFO queue groups by pair id. */
export function sqsTarget(sqs: SQSClient, queueUrl: string): PublishTarget {
  const fifo = queueUrl.endsWith('.fifo');
  const sendBatch = async (entries: readonly CheckedRecord[]) => {
    const res = await sqs.send(
      new SendMessageBatchCommand({
        QueueUrl: queueUrl,
        Entries: entries.map((r, i) => ({
          Id: String(i),
          MessageBody: r.value.toString('utf8'),
          ...(fifo
            ? {
                MessageGroupId: r.key,
                MessageDeduplicationId: createHash('sha256').update(r.value).digest('hex'),
              }
            : {}),
        })),
      }),
    );
    const failed = res.Failed ?? [];
    if (failed.length > 0) {
      const f = failed[0]!;
      const line = entries[Number(f.Id)]?.line;
      throw new FilterError(
        'sqs_send_failed',
        `${failed.length} message(s) refused by ${queueUrl} (first: line ${line}: ${f.Code} ${f.Message ?? ''})`.trim(),
        { queueUrl, failed: failed.length, line },
      );
    }
  };
  return {
    name: `SQS queue ${queueUrl}`,
    maxRecordBytes: SQS_MAX_BYTES,
    async send(records) {
      // Batches of at most 10 messages and SQS_MAX_BYTES in all, in input order.
      let batch: CheckedRecord[] = [];
      let bytes = 0;
      for (const r of records) {
        if (batch.length === 10 || (batch.length > 0 && bytes + r.value.length > SQS_MAX_BYTES)) {
          await sendBatch(batch);
          batch = [];
          bytes = 0;
        }
        batch.push(r);
        bytes += r.value.length;
      }
      if (batch.length > 0) await sendBatch(batch);
    },
    close: async () => sqs.destroy(),
  };
}
