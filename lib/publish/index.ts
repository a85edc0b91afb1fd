/**
 * `mlm-filter publish`: a crawler's pair records (JSONL) onto the worker's input, a Kafka topic or an SQS queue.
 * Every record is first read by the worker's own parser (lib/pair), so a record the worker would only reject as
 * `invalid_record` is caught at the crawler, with its line. Kafka messages are keyed by the pair's id (the id the
 * worker keys its audit, accepted and dead-letter messages by; derived the same way when the record has none), so
 * every copy of a pair lands on one partition, in order. The record's bytes are published unchanged (a CRLF line's
 * `\r` is the line's end, not the record's). A gzip-compressed file is read as what it holds, as `filter` reads it.
 * A pair id repeated in one input is refused like an invalid record (the worker keys its outputs by id: only one
 * of the two could be kept), within the last million ids, as the pipeline's own duplicate memory.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type { Kafka, Message, Producer } from 'kafkajs';
import { GetQueueAttributesCommand, SendMessageBatchCommand, type SQSClient } from '@aws-sdk/client-sqs';
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
  /** Why the target would refuse this record (its size, what it holds), checked before anything is sent. */
  refuse(record: { readonly key: string; readonly value: Buffer }): string | undefined;
  /** Sends in input order; a failure may carry `context.sent`: how many of `records` were sent before it. */
  send(records: readonly CheckedRecord[]): Promise<void>;
  close(): Promise<void>;
}

export interface CheckedRecord {
  readonly key: string;
  readonly value: Buffer;
  readonly line: number;
}

const lineOf = (r: SourceRecord) => (r.origin.kind === 'file' ? r.origin.line : 0);

/**
 * The record without a file's UTF-8 byte order mark: the parser skips it in bytes (Kafka), but an SQS message is a
 * string the worker parses as it is, and JSON.parse refuses a leading U+FEFF. It marks the file, not the record.
 */
const withoutBom = (raw: Buffer) => (raw[0] === 0xef && raw[1] === 0xbb && raw[2] === 0xbf ? raw.subarray(3) : raw);

/** Most ids remembered to find a repeated one (the pipeline's duplicate memory holds as many). */
const REMEMBERED_IDS = 1_000_000;

/** Checks records as the worker parses them, as the target takes them, and for a pair id given twice. */
class RecordCheck {
  private readonly ids = new Map<string, number>();
  constructor(
    private readonly target: PublishTarget | undefined,
    private readonly pair?: PairOptions,
  ) {}

  /** The record with its key, or why it is refused. */
  check(record: SourceRecord): CheckedRecord | string {
    let id: string;
    try {
      id = parseRecord(record, this.pair).id;
    } catch (err) {
      if (err instanceof RejectError) return err.reason.message;
      throw err;
    }
    const checked = { key: id, value: withoutBom(record.raw as Buffer), line: lineOf(record) };
    return this.target?.refuse(checked) ?? this.repeated(checked) ?? checked;
  }

  private repeated({ key, line }: CheckedRecord): string | undefined {
    const first = this.ids.get(key);
    if (first !== undefined) {
      return `pair id ${JSON.stringify(key)} is also on line ${first}: the worker keys its outputs by id, one would be lost`;
    }
    this.ids.set(key, line);
    if (this.ids.size > REMEMBERED_IDS) this.ids.delete(this.ids.keys().next().value!);
    return undefined;
  }
}

async function* checkedBatches(options: PublishOptions, target: PublishTarget | undefined) {
  const source = await JsonlSource.open({
    path: options.input,
    batchSize: 500,
    ...(await gunzippedIfGzip(options.input)),
    ...(options.pair?.maxRecordBytes !== undefined ? { maxLineBytes: options.pair.maxRecordBytes } : {}),
  });
  const checks = new RecordCheck(target, options.pair);
  try {
    for await (const batch of source.batches(options.signal ?? new AbortController().signal)) {
      const ok: CheckedRecord[] = [];
      const refused: RefusedRecord[] = [];
      for (const record of batch.records) {
        const c = checks.check(record);
        if (typeof c === 'string') refused.push({ line: lineOf(record), message: c });
        else ok.push(c);
      }
      yield { ok, refused, records: batch.records.length };
    }
  } catch (err) {
    if (err instanceof FilterError) throw err;
    throw new FilterError('input_unreadable', `cannot read ${options.input}: ${(err as Error).message}`, {
      path: options.input,
    });
  }
}

/** A gzip-compressed file's decompressed stream (its first two bytes say so), as `filter` reads JSONL inputs. */
async function gunzippedIfGzip(path: string): Promise<{ stream?: Readable }> {
  // Only a regular file is looked at (opening a FIFO would wait for a writer); JsonlSource refuses the rest by name.
  if (path === '-' || !(await stat(path).catch(() => undefined))?.isFile()) return {};
  const magic = Buffer.alloc(2);
  const file = await open(path);
  try {
    await file.read(magic, 0, 2, 0);
  } finally {
    await file.close();
  }
  if (magic[0] !== 0x1f || magic[1] !== 0x8b) return {};
  const raw = createReadStream(path);
  const gunzip = createGunzip();
  raw.on('error', (err) => gunzip.destroy(err));
  return { stream: raw.pipe(gunzip) };
}

/** Sends one batch; a failure says how far the publish got: what is on the target for sure, what may be. */
async function sendBatch(target: PublishTarget, batch: readonly CheckedRecord[], published: number) {
  try {
    await target.send(batch);
  } catch (err) {
    const sent = Number((err as FilterError).context?.sent ?? 0);
    const from = batch[sent]?.line ?? batch[0]!.line;
    throw new FilterError(
      'publish_incomplete',
      `sending to ${target.name} failed at line ${from}: ${(err as Error).message}; the ${published + sent} ` +
        `record(s) before line ${from} are published, lines ${from}-${batch[batch.length - 1]!.line} may be in ` +
        'part: publish the rest from that line (a record published twice is seen twice)',
      { published: published + sent, line: from },
      { cause: err },
    );
  }
}

const refusedError = (refused: number, published: number, first: RefusedRecord) =>
  new FilterError(
    'publish_invalid_records',
    `${refused} record(s) refused: invalid for the worker, a repeated pair id, or refused by the target (first: ` +
      `line ${first.line}: ` +
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
  try {
    for await (const batch of checkedBatches(options, target)) {
      records += batch.records;
      for (const r of batch.refused) options.onRefused?.(r);
      refused += batch.refused.length;
      first ??= batch.refused[0];
      if (options.check) continue;
      if (first && mode === 'fail') {
        const before = batch.ok.filter((r) => r.line < first!.line);
        if (target && before.length > 0) await sendBatch(target, before, published);
        throw refusedError(refused, published + before.length, first);
      }
      if (target && batch.ok.length > 0) await sendBatch(target, batch.ok, published);
      published += batch.ok.length;
    }
  } catch (err) {
    throw withProgress(err, published);
  }
  if (first && mode === 'fail') throw refusedError(refused, published, first);
  return { records, published, refused };
}

/** An input failing after records went out (a gzip cut short, stdin broken) says how many did. */
function withProgress(err: unknown, published: number): unknown {
  if (published === 0 || !(err instanceof FilterError) || err.code.startsWith('publish_')) return err;
  const message = `${err.message}; ${published} record(s) before it were published`;
  return new FilterError(err.code, message, { ...err.context, published }, { cause: err });
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
    refuse: ({ key, value }) => {
      const size = Buffer.byteLength(key) + value.length;
      return size > maxRecordBytes
        ? `record is ${size} bytes with its key, over the ${maxRecordBytes} bytes Kafka topic ${topic} takes`
        : undefined;
    },
    async send(records) {
      const messages: Message[] = records.map((r) => ({ key: r.key, value: r.value }));
      await producer.send({ topic, messages, acks: -1 });
    },
    close: () => producer.disconnect(),
  };
}

/** SQS's limit on one message and on one SendMessageBatch request, where the queue does not say its own. */
const SQS_MAX_BYTES = 256 * 1024;
/** What an SQS message body may hold (XML 1.0 characters); U+FFFE and U+FFFF are what valid JSON can carry else. */
const SQS_BODY = /^[\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]*$/u;
/** A FIFO message group id: 1-128 printable ASCII characters. */
const SQS_GROUP = /^[\x21-\x7e]{1,128}$/;

/**
 * An SQS queue as the target: SendMessageBatch (10 per request); a FIFO queue groups by pair id. The queue must
 * exist (checked first, with its MaximumMessageSize); a record it would refuse is refused by line before sending.
 */
export async function sqsTarget(sqs: SQSClient, queueUrl: string): Promise<PublishTarget> {
  const fifo = queueUrl.endsWith('.fifo');
  const maxBytes = await queueMaxBytes(sqs, queueUrl).catch((err: unknown) => {
    sqs.destroy();
    throw err;
  });
  const name = `SQS queue ${queueUrl}`;
  const refuse = ({ key, value }: { key: string; value: Buffer }) => {
    if (value.length > maxBytes) return `record is ${value.length} bytes, over the ${maxBytes} bytes ${name} takes`;
    if (!SQS_BODY.test(value.toString('utf8'))) return 'record holds U+FFFE or U+FFFF, which SQS messages cannot';
    if (fifo && !SQS_GROUP.test(key)) {
      return `pair id ${JSON.stringify(key)} cannot be a FIFO message group (1-128 printable ASCII characters)`;
    }
    return undefined;
  };
  return {
    name,
    refuse,
    send: (records) => sendToSqs(sqs, queueUrl, fifo, maxBytes, records),
    close: async () => sqs.destroy(),
  };
}

async function queueMaxBytes(sqs: SQSClient, queueUrl: string): Promise<number> {
  try {
    const res = await sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['MaximumMessageSize'] }),
    );
    return Number(res.Attributes?.MaximumMessageSize ?? SQS_MAX_BYTES) || SQS_MAX_BYTES;
  } catch (err) {
    const missing = /NonExistentQueue|QueueDoesNotExist/.test(`${(err as Error).name} ${(err as Error).message}`);
    throw new FilterError(
      'sqs_queue_unavailable',
      missing
        ? `SQS queue ${queueUrl} does not exist (create it first; publish creates nothing)`
        : `cannot reach SQS queue ${queueUrl}: ${(err as Error).message}`,
      { queueUrl },
    );
  }
}

/** Batches of at most 10 messages and `maxBytes` in all, in input order; a failure says how many were sent. */
async function sendToSqs(
  sqs: SQSClient,
  queueUrl: string,
  fifo: boolean,
  maxBytes: number,
  records: readonly CheckedRecord[],
) {
  let start = 0;
  while (start < records.length) {
    let end = start;
    for (let bytes = 0; end < records.length && end - start < 10; end++) {
      if (end > start && bytes + records[end]!.value.length > maxBytes) break;
      bytes += records[end]!.value.length;
    }
    await sendSqsBatch(sqs, queueUrl, fifo, records.slice(start, end), start);
    start = end;
  }
}

async function sendSqsBatch(
  sqs: SQSClient,
  queueUrl: string,
  fifo: boolean,
  entries: readonly CheckedRecord[],
  sent: number,
) {
  const failedWith = (count: number, line: number | undefined, why: string, cause?: unknown) =>
    new FilterError(
      'sqs_send_failed',
      `${count} message(s) refused by ${queueUrl} (first: line ${line}: ${why})`,
      { queueUrl, failed: count, line, sent },
      { cause },
    );
  let res;
  try {
    res = await sqs.send(
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
  } catch (err) {
    throw failedWith(entries.length, entries[0]?.line, (err as Error).message, err);
  }
  const failed = res.Failed ?? [];
  if (failed.length > 0) {
    const f = failed[0]!;
    throw failedWith(failed.length, entries[Number(f.Id)]?.line, `${f.Code} ${f.Message ?? ''}`.trim());
  }
}
