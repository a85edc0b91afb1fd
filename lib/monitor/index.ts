import type { KafkaConnectionOptions } from '../kafka/client.ts';
import { MonitorAggregator, parseEvent, type EventKind, type MonitorSnapshot } from './aggregate.ts';
import { tailTopics } from './kafka-tail.ts';
import { renderSnapshot } from './render.ts';

export { MonitorAggregator, parseEvent, type MonitorEvent, type MonitorSnapshot } from './aggregate.ts';
export { tailTopics, type TailMessage, type TailOptions } from './kafka-tail.ts';
export { renderSnapshot } from './render.ts';
export { parseFrom } from './from.ts';

/** Options of {@link runMonitor} (`mlm-filter monitor`). */
export interface MonitorOptions {
  readonly connection: KafkaConnectionOptions;
  /** The worker's audit topic: rejects, and accepts when the worker audits them. */
  readonly auditTopic: string;
  /** The accepted topic, when the pipeline has one: accept events (deduplicated against the audit topic by id). */
  readonly acceptedTopic?: string;
  /** Start at this time (ms since the epoch) or at the earliest retained message; default: new messages only. */
  readonly from?: number | 'earliest';
  /** One JSON snapshot per line instead of the terminal view. */
  readonly json?: boolean;
  /** Refresh interval, ms. Default 1000. */
  readonly intervalMs?: number;
  /** Throughput window, seconds. Default 60. */
  readonly windowSeconds?: number;
  /** Stop after this long, ms (scripts, tests). Default: until the signal aborts. */
  readonly durationMs?: number;
  /** Stop once this many pairs are decided (accepted + rejected): a script waiting for a run it started. */
  readonly untilDecided?: number;
  readonly signal?: AbortSignal;
  /** Where frames go. Default process.stdout. */
  readonly out?: NodeJS.WriteStream | { write(s: string): unknown; isTTY?: boolean; columns?: number };
}

/** Tails the topics and prints a frame (or a JSON snapshot) every interval; returns the last snapshot. */
export async function runMonitor(options: MonitorOptions): Promise<MonitorSnapshot> {
  const out = options.out ?? process.stdout;
  const aggregator = new MonitorAggregator({
    windowSeconds: options.windowSeconds,
    acceptsVisible: options.acceptedTopic !== undefined,
  });
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  if (options.signal?.aborted) stop.abort();
  const timeout = options.durationMs !== undefined ? setTimeout(() => stop.abort(), options.durationMs) : undefined;

  const topics: { topic: string; kind: EventKind }[] = [{ topic: options.auditTopic, kind: 'audit' }];
  if (options.acceptedTopic) topics.push({ topic: options.acceptedTopic, kind: 'accepted' });
  const title =
    `mlm-filter monitor  audit=${options.auditTopic}` +
    (options.acceptedTopic ? `  accepted=${options.acceptedTopic}` : '') +
    `  (Ctrl-C to quit)`;
  const show = (final: boolean) => {
    const snap = aggregator.snapshot();
    if (options.json) out.write(JSON.stringify(snap) + '\n');
    else {
      const frame = renderSnapshot(snap, { columns: out.columns, title });
      // On a terminal redraw in place; into a pipe or file print frames one after another.
      out.write(out.isTTY && !final ? `\x1b[H\x1b[2J${frame}\n` : `${frame}\n`);
    }
    return snap;
  };
  const ticker = setInterval(() => show(false), options.intervalMs ?? 1000);
  try {
    await tailTopics({
      connection: options.connection,
      topics,
      from: options.from ?? 'latest',
      signal: stop.signal,
      onMessage: (m) => {
        const e = parseEvent(m.kind, m.value, m.key, m.timestamp);
        if ('error' in e) aggregator.addMalformed();
        else aggregator.add(e);
        if (options.untilDecided !== undefined) {
          const s = aggregator.snapshot();
          if (s.accepted + s.rejected >= options.untilDecided) stop.abort();
        }
      },
    });
  } finally {
    clearInterval(ticker);
    clearTimeout(timeout);
    options.signal?.removeEventListener('abort', onAbort);
  }
  return show(true);
}
