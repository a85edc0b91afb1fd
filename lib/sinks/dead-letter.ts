import { SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';
import type { Outcome, PartitionRef, ReasonCode, Sink, SinkDurability } from '../types.ts';
import { auditSource, type AuditSource } from '../formats/audit-event.ts';
import type { KafkaProducerHub } from '../kafka/producer-hub.ts';

/** Where dead letters go: a Kafka topic (through the hub, transactional with the offsets) or an SQS queue. */
export type DeadLetterTarget =
  | { readonly kind: 'kafka'; readonly hub: KafkaProducerHub; readonly topic: string }
  | { readonly kind: 'sqs'; readonly client: SQSClient; readonly queueUrl: string };

export interface DeadLetterSinkOptions {
  readonly target: DeadLetterTarget;
  /** Outcomes with one of these reason codes are dead-lettered. Default: `scoring_failed` (the model threw on it). */
  readonly codes?: readonly ReasonCode[];
  /** Raw record bytes kept in a dead letter; longer ones are cut (raw_truncated: true). Default 256 KiB. */
  readonly maxRawBytes?: number;
}

/** A dead letter: what failed, why, where it came from, and the raw record to replay it by hand once fixed. */
export interface DeadLetter {
  v: 1;
  id: string;
  code: string;
  message: string;
  reasons: Outcome['reasons'];
  source: AuditSource;
  /** The raw record, UTF-8 when it decodes as such, else base64 (raw_encoding says which). */
  raw: string;
  raw_encoding: 'utf8' | 'base64';
  raw_bytes: number;
  raw_truncated: boolean;
  ts: string;
}

function rawOf(
  outcome: Outcome,
  max: number,
): Pick<DeadLetter, 'raw' | 'raw_encoding' | 'raw_bytes' | 'raw_truncated'> {
  const r = outcome.record.raw;
  const buf =
    typeof r === 'string'
      ? Buffer.from(r, 'utf8')
      : Buffer.isBuffer(r)
        ? r
        : Buffer.from(JSON.stringify({ key: r.key, members: Object.keys(r.members) }));
  const cut = buf.subarray(0, max);
  let text: string | undefined;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(cut);
  } catch {
    text = undefined;
  }
  return {
    raw: text ?? cut.toString('base64'),
    raw_encoding: text === undefined ? 'base64' : 'utf8',
    raw_bytes: buf.length,
    raw_truncated: cut.length < buf.length,
  };
}

/**
 * The dead-letter path: records that fail permanently leave the stream here, so a poison record never blocks its
 * partition (the batch is acked once the dead letter is durable). As a Sink it takes outcomes whose reasons carry
 * one of `codes`; other sinks call `send` for what they cannot store (an audit event over the size limit).
 */
export class DeadLetterSink implements Sink {
  readonly name = 'dead-letter';
  constructor(private readonly options: DeadLetterSinkOptions) {}

  /** On a transactional hub, staged until the batch's offsets commit with it; SQS sends are durable. */
  get durability(): SinkDurability {
    const t = this.options.target;
    return t.kind === 'kafka' && t.hub.transactional ? 'staged' : 'durable';
  }

  letter(outcome: Outcome, code: string, message: string): DeadLetter {
    return {
      v: 1,
      id: outcome.id,
      code,
      message,
      reasons: [...outcome.reasons],
      source: auditSource(outcome.record.origin),
      ...rawOf(outcome, this.options.maxRawBytes ?? 256 * 1024),
      ts: new Date().toISOString(),
    };
  }

  /** Dead-letters one outcome with `code` (sink-side failures); durable (or staged for the transaction) on return. */
  async send(outcome: Outcome, code: string, message: string): Promise<void> {
    const letter = this.letter(outcome, code, message);
    const t = this.options.target;
    if (t.kind === 'kafka') {
      await t.hub.publish(`${this.name}:${code}`, outcome.record.origin, [
        { topic: t.topic, key: outcome.id, value: JSON.stringify(letter), headers: { code } },
      ]);
    } else {
      await t.client.send(new SendMessageCommand({ QueueUrl: t.queueUrl, MessageBody: JSON.stringify(letter) }));
    }
  }

  async write(outcomes: readonly Outcome[]): Promise<void> {
    const codes = this.options.codes ?? ['scoring_failed'];
    for (const o of outcomes) {
      const hit = o.reasons.find((r) => codes.includes(r.code));
      if (hit) await this.send(o, hit.code, hit.message);
    }
  }

  /** What this sink staged on the hub for revoked partitions goes with the rest of the hub's staging for them. */
  revoked(partitions: readonly PartitionRef[]): void {
    if (this.options.target.kind === 'kafka') this.options.target.hub.revoked(partitions);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
