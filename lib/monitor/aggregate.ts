/**
 * The monitor's numbers, computed from audit / accepted topic events alone (no Kafka here, so it is tested with plain
 * objects). Memory is bounded however long it runs: scores are integers 0..100 (101-bin histograms), the throughput
 * window keeps one bucket per second, and the dedupe set is a bounded most-recent-ids set.
 */
import type { MetricShort } from '../types.ts';
import { METRICS } from '../types.ts';
import { decodeAcceptedMessage } from '../formats/accepted-event.ts';
import { decodeAuditEvent, presentScores } from '../formats/audit-event.ts';
import { EventTally, type TalliedReason } from '../formats/event-tally.ts';
import { RecentIds } from '../pipeline/recent-ids.ts';

/** Which topic an event came from: the audit topic (rejects, and accepts when audited) or the accepted topic. */
export type EventKind = 'audit' | 'accepted';

/** An audit or accepted event reduced to what the monitor counts. */
export interface MonitorEvent {
  readonly id: string;
  readonly decision: 'accept' | 'reject';
  readonly reasons: readonly TalliedReason[];
  readonly scores: Partial<Record<MetricShort, number | null>>;
  /** Event time, ms since the epoch (the Kafka message timestamp, else the event's `ts`). */
  readonly ts: number;
}

/**
 * Reads one topic message as a {@link MonitorEvent}: the audit topic's through the audit event's decode, the accepted
 * topic's through the accepted message's (an id, or the message key, is all it needs; its decision is `accept`
 * unless it is a whole audit event). Returns the decode's error message for a message that is neither.
 */
export function parseEvent(
  kind: EventKind,
  value: Buffer | string | null,
  key?: Buffer | string | null,
  messageTs?: number,
): MonitorEvent | { error: string } {
  if (value === null || value.length === 0) return { error: 'empty message' };
  const decoded = kind === 'audit' ? decodeAuditEvent(value) : decodeAcceptedMessage(value, key);
  if (!decoded.ok) return { error: decoded.error.message };
  const read = 'kind' in decoded.value ? decoded.value : { kind: 'audit' as const, event: decoded.value };
  const e = read.event;
  const eventTs = e.ts !== undefined ? Date.parse(e.ts) : NaN;
  const ts = messageTs !== undefined && Number.isFinite(messageTs) ? messageTs : eventTs;
  return {
    id: e.id,
    decision: read.kind === 'audit' ? read.event.decision : 'accept',
    reasons: read.kind === 'audit' ? read.event.reasons : [],
    scores: e.scores ? presentScores(e.scores) : {},
    ts: Number.isFinite(ts) ? ts : Date.now(),
  };
}

export interface MonitorAggregatorOptions {
  /** Throughput / recent accept-rate window, seconds. Default 60. */
  readonly windowSeconds?: number;
  /** Ids remembered for dedupe (an accept seen on both topics, a redelivery). Default 100000. */
  readonly dedupeCapacity?: number;
  /**
   * Whether accepts are visible at all (an accepted topic is tailed, or the worker audits accepts). When false and
   * no accept was seen, the accept rate is reported as null rather than a misleading 0 %.
   */
  readonly acceptsVisible?: boolean;
}

/** Score histogram bins shown: 0-9, 10-19, ..., 90-100. */
export const SCORE_BINS = 10;
export const binLabel = (i: number) => (i === SCORE_BINS - 1 ? '90-100' : `${i * 10}-${i * 10 + 9}`);

export interface MetricSnapshot {
  count: number;
  mean: number | null;
  p50: number | null;
  /** Counts per bin of {@link SCORE_BINS} (0-9 ... 90-100), accepted and rejected together. */
  bins: number[];
}

/** One view of the stream; what `monitor --json` prints per interval. */
export interface MonitorSnapshot {
  at: string;
  events: number;
  accepted: number;
  rejected: number;
  /** accepted / (accepted + rejected); null when accepts are not visible. */
  acceptRate: number | null;
  acceptsVisible: boolean;
  duplicates: number;
  malformed: number;
  /** Reject reason codes, most frequent first; share = fraction of rejected events carrying the code. */
  reasons: { code: string; count: number; share: number }[];
  /** below_threshold rejects by the metric that failed. */
  belowThresholdByMetric: Record<string, number>;
  scores: Record<MetricShort, MetricSnapshot>;
  window: {
    seconds: number;
    events: number;
    eventsPerSecond: number;
    accepted: number;
    rejected: number;
    acceptRate: number | null;
  };
  /** Time of the newest event seen (ISO), null before the first. */
  lastEventAt: string | null;
}

export class MonitorAggregator {
  private readonly windowSeconds: number;
  private readonly acceptsVisibleOption: boolean;
  private readonly seen: RecentIds;
  private duplicates = 0;
  private malformed = 0;
  private lastTs = -Infinity;
  private readonly tally = new EventTally();
  /** Per-second buckets of the window: second -> [accepted, rejected]. */
  private readonly perSecond = new Map<number, [number, number]>();

  constructor(options: MonitorAggregatorOptions = {}) {
    this.windowSeconds = options.windowSeconds ?? 60;
    this.seen = new RecentIds(options.dedupeCapacity ?? 100_000);
    this.acceptsVisibleOption = options.acceptsVisible ?? false;
  }

  /** Counts an event; returns false when its id was already counted (dedupe). */
  add(e: MonitorEvent): boolean {
    if (this.seen.seen(e.id)) {
      this.duplicates++;
      return false;
    }
    this.tally.add(e);
    const accept = e.decision === 'accept';
    const sec = Math.floor(e.ts / 1000);
    const bucket = this.perSecond.get(sec) ?? [0, 0];
    bucket[accept ? 0 : 1]++;
    this.perSecond.set(sec, bucket);
    if (this.perSecond.size > 4 * this.windowSeconds) this.prune(Math.max(...this.perSecond.keys()));
    if (e.ts > this.lastTs) this.lastTs = e.ts;
    return true;
  }

  /** A message that could not be parsed (counted, shown, never fatal). */
  addMalformed(): void {
    this.malformed++;
  }

  private prune(nowSec: number): void {
    for (const s of this.perSecond.keys()) if (s <= nowSec - this.windowSeconds) this.perSecond.delete(s);
  }

  snapshot(now: number = Date.now()): MonitorSnapshot {
    const nowSec = Math.floor(now / 1000);
    this.prune(nowSec);
    let wa = 0;
    let wr = 0;
    for (const [s, [a, r]] of this.perSecond) {
      if (s > nowSec - this.windowSeconds && s <= nowSec) {
        wa += a;
        wr += r;
      }
    }
    const { accepted, rejected } = this.tally;
    const acceptsVisible = this.acceptsVisibleOption || accepted > 0;
    const rate = (a: number, r: number) => (acceptsVisible && a + r > 0 ? a / (a + r) : null);
    const scores = {} as Record<MetricShort, MetricSnapshot>;
    for (const { short: metric } of METRICS) {
      const h = this.tally.scoreCounts(metric);
      const count = h.reduce((a, b) => a + b, 0);
      const sum = h.reduce((a, n, s) => a + n * s, 0);
      let p50: number | null = null;
      for (let s = 0, c = 0; s <= 100 && count > 0; s++) {
        c += h[s]!;
        if (c >= count / 2) {
          p50 = s;
          break;
        }
      }
      const bins = new Array<number>(SCORE_BINS).fill(0);
      h.forEach((n, s) => (bins[Math.min(SCORE_BINS - 1, Math.floor(s / 10))]! += n));
      scores[metric] = { count, mean: count ? sum / count : null, p50, bins };
    }
    return {
      at: new Date(now).toISOString(),
      events: accepted + rejected,
      accepted,
      rejected,
      acceptRate: rate(accepted, rejected),
      acceptsVisible,
      duplicates: this.duplicates,
      malformed: this.malformed,
      reasons: this.tally.reasons.rows(rejected),
      belowThresholdByMetric: this.tally.reasons.byMetric(),
      scores,
      window: {
        seconds: this.windowSeconds,
        events: wa + wr,
        eventsPerSecond: (wa + wr) / this.windowSeconds,
        accepted: wa,
        rejected: wr,
        acceptRate: rate(wa, wr),
      },
      lastEventAt: Number.isFinite(this.lastTs) ? new Date(this.lastTs).toISOString() : null,
    };
  }
}
