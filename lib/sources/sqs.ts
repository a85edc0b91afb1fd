import {
  ChangeMessageVisibilityBatchCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  type Message,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import type { Committer, Source, SourceBatch } from '../types.ts';
import { FilterError } from '../types.ts';
import { RetryPolicy, sleep } from '../support/retry.ts';
import { silentLogger, type Logger } from '../support/logger.ts';

/** Options of the SQS source (standard or FIFO queue; competing consumers scale it out). */
export interface SqsSourceOptions {
  readonly client: SQSClient;
  readonly queueUrl: string;
  /** Long-poll wait per receive, s (0..20). Default 20. */
  readonly waitTimeSeconds?: number;
  /** Receives merged into one SourceBatch before it is handed out (each receive returns up to 10). Default 10. */
  readonly receivesPerBatch?: number;
  /** Batches handed out and not yet acked; at the bound, polling waits. Default 8. */
  readonly maxInFlightBatches?: number;
  /** Visibility timeout set on messages in work, s; renewed every third of it until ack. Default 60. */
  readonly visibilityTimeoutSeconds?: number;
  /** Called after each delete with the batch's size and the time from hand-out to delete, ms. */
  readonly onAcked?: (records: number, latencyMs: number) => void;
  readonly logger?: Logger;
}

/** Up to 5 tries of a DeleteMessageBatch's retriable entries, 400 ms apart and doubling. */
const DELETE_RETRY = new RetryPolicy({ maxAttempts: 5, baseMs: 400, maxMs: 5000 });
/** A failing receive (the queue or the network down) is tried again after 1 s, then up to 10 s apart. */
const RECEIVE_RETRY = new RetryPolicy({ baseMs: 1000, maxMs: 10_000 });

/** A batch handed out and not yet committed or released. */
interface InWork {
  readonly messages: Message[];
  readonly timer: NodeJS.Timeout;
  readonly handedOut: number;
  settled: boolean;
}

/**
 * SQS source: long polling, batch receive (10), visibility extended while the batch is in work, DeleteMessageBatch
 * on ack. Messages are never deleted before their outcome is durable: a crash makes them visible again, and one
 * that keeps failing moves to the queue's dead-letter queue by its redrive policy (maxReceiveCount), so it cannot
 * circulate forever. Delivery is at-least-once; duplicates carry the same pair id.
 */
export class SqsSource implements Source {
  private inflight = 0;
  private room: (() => void) | undefined;
  private readonly inWork = new WeakMap<SourceBatch, InWork>();
  readonly counts = { batches: 0, acked: 0, records: 0, deleteFailures: 0 };
  private readonly log: Logger;

  constructor(private readonly options: SqsSourceOptions) {
    this.log = options.logger ?? silentLogger;
  }

  private async receive(signal: AbortSignal, wait: number): Promise<Message[]> {
    const res = await this.options.client.send(
      new ReceiveMessageCommand({
        QueueUrl: this.options.queueUrl,
        MaxNumberOfMessages: 10,
        WaitTimeSeconds: wait,
        VisibilityTimeout: this.options.visibilityTimeoutSeconds ?? 60,
        MessageSystemAttributeNames: ['ApproximateReceiveCount', 'MessageGroupId'],
      }),
      { abortSignal: signal },
    );
    return res.Messages ?? [];
  }

  private async changeVisibility(messages: Message[], seconds: number): Promise<void> {
    // SQS takes at most 10 entries per batch request; a SourceBatch merges several receives.
    for (let i = 0; i < messages.length; i += 10) {
      const res = await this.options.client.send(
        new ChangeMessageVisibilityBatchCommand({
          QueueUrl: this.options.queueUrl,
          Entries: messages.slice(i, i + 10).map((m, j) => ({
            Id: String(j),
            ReceiptHandle: m.ReceiptHandle!,
            VisibilityTimeout: seconds,
          })),
        }),
      );
      if (res.Failed?.length) this.log.warn('visibility change failed for some messages', { failed: res.Failed });
    }
  }

  private makeBatch(messages: Message[]): SourceBatch {
    const { queueUrl } = this.options;
    const visibility = this.options.visibilityTimeoutSeconds ?? 60;
    // Renew before the timeout runs out, so long scoring never lets another consumer take the messages.
    const timer = setInterval(
      () =>
        void this.changeVisibility(messages, visibility).catch((err) =>
          this.log.warn('visibility extension failed', { error: String(err) }),
        ),
      Math.max(1000, (visibility * 1000) / 3),
    );
    timer.unref();
    const batch: SourceBatch = {
      records: messages.map((m) => ({
        raw: m.Body ?? '',
        origin: { kind: 'sqs', queueUrl, messageId: m.MessageId! },
      })),
      committer: this.committer,
    };
    this.inWork.set(batch, { messages, timer, handedOut: performance.now(), settled: false });
    return batch;
  }

  /** Stops the batch's visibility renewal and frees its in-flight slot (once). */
  private settle(work: InWork): void {
    if (work.settled) return;
    work.settled = true;
    clearInterval(work.timer);
    this.inflight--;
    this.room?.();
  }

  /** The committer: DeleteMessageBatch (10 per request), retried; a release makes the messages visible at once. */
  readonly committer: Committer = {
    kind: 'sqs-delete',
    commit: async (batch) => {
      const work = this.inWork.get(batch);
      if (!work || work.settled) return;
      clearInterval(work.timer);
      for (let i = 0; i < work.messages.length; i += 10) await this.deleteChunk(work.messages.slice(i, i + 10));
      this.counts.acked++;
      this.settle(work);
      this.options.onAcked?.(work.messages.length, performance.now() - work.handedOut);
    },
    release: async (batch) => {
      const work = this.inWork.get(batch);
      if (!work || work.settled) return;
      this.settle(work);
      // Visible again at once rather than after the timeout: another consumer can retry it now.
      await this.changeVisibility(work.messages, 0).catch(() => undefined);
    },
  };

  private async deleteChunk(chunk: Message[]): Promise<void> {
    const queueUrl = this.options.queueUrl;
    let entries = chunk.map((m, j) => ({ Id: String(j), ReceiptHandle: m.ReceiptHandle! }));
    await DELETE_RETRY.run(async () => {
      const res = await this.options.client.send(
        new DeleteMessageBatchCommand({ QueueUrl: queueUrl, Entries: entries }),
      );
      const failed = new Set((res.Failed ?? []).filter((f) => !f.SenderFault).map((f) => f.Id));
      for (const f of res.Failed ?? []) {
        if (!f.SenderFault) continue;
        // An expired receipt: the message may come again; its outcome is already durable (duplicate by id).
        this.counts.deleteFailures++;
        this.log.warn('delete refused; the message may be redelivered', { id: f.Id, code: f.Code });
      }
      entries = entries.filter((e) => failed.has(e.Id));
      if (entries.length > 0) {
        throw new FilterError('sqs_delete_failed', `could not delete ${entries.length} messages`, { queueUrl });
      }
    });
  }

  async *batches(signal: AbortSignal): AsyncIterable<SourceBatch> {
    const perBatch = this.options.receivesPerBatch ?? 10;
    const max = this.options.maxInFlightBatches ?? 8;
    const wait = this.options.waitTimeSeconds ?? 20;
    // Receives are retried for as long as the source runs: the budget only paces them.
    const failures = RECEIVE_RETRY.budget();
    while (!signal.aborted) {
      while (this.inflight >= max && !signal.aborted) await this.roomOrStop(signal);
      let messages: Message[] = [];
      try {
        // The first receive long-polls; the rest only top the batch up with what is already there.
        messages = await this.receive(signal, wait);
        for (let i = 1; i < perBatch && messages.length === 10 * i && !signal.aborted; i++) {
          messages.push(...(await this.receive(signal, 0)));
        }
      } catch (err) {
        if (signal.aborted) {
          // Received but not handed out: make them visible again now.
          if (messages.length) await this.changeVisibility(messages, 0).catch(() => undefined);
          break;
        }
        failures.failed(err);
        const retryInMs = failures.nextDelayMs();
        this.log.error('SQS receive failed, retrying', {
          queueUrl: this.options.queueUrl,
          retryInMs,
          error: String(err),
        });
        await sleep(retryInMs, signal).catch(() => undefined);
        if (messages.length === 0) continue;
      }
      failures.recovered();
      if (messages.length === 0) continue;
      this.inflight++;
      this.counts.batches++;
      this.counts.records += messages.length;
      yield this.makeBatch(messages);
    }
  }

  /** Resolves once a batch settles (its in-flight slot is free) or the read stops. */
  private roomOrStop(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = () => {
        signal.removeEventListener('abort', wake);
        this.room = undefined;
        resolve();
      };
      this.room = wake;
      signal.addEventListener('abort', wake, { once: true });
    });
  }

  /** Messages waiting in the queue (ApproximateNumberOfMessages), the backlog signal for autoscaling and alarms. */
  async depth(): Promise<number> {
    const res = await this.options.client.send(
      new GetQueueAttributesCommand({
        QueueUrl: this.options.queueUrl,
        AttributeNames: ['ApproximateNumberOfMessages'],
      }),
    );
    return Number(res.Attributes?.ApproximateNumberOfMessages ?? 0);
  }

  async close(): Promise<void> {}
}
