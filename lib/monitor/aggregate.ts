/**
 * The monitor's numbers, computed from audit / accepted topic events alone (no Kafka here, so it is tested with plain
 * objects). Memory is bounded however long it runs: scores are integers 0..100 (101-bin histograms), the throughput
 * window keeps one bucket per second, and the dedupe set is a bounded most-recent-ids set.
 */
import type { MetricShort } from '../types.ts';
import { METRICS } from '../types.ts';
import { ReasonTally } from '../policy/reason-tally.ts';
import { AUDIT_LINE_MAX_BYTES } from '../sinks/audit-event.ts';

/** Which topic an event came from: the audit topic (rejects, and accepts when audited) or the accepted topic. */
export type EventKind = 'audit' | 'accepted';

/** An audit or accepted event reduced to what the monitor counts. */
export interface MonitorEvent {
  readonly id: string;
  readonly decision: 'accept' | 'reject';
  readonly reasons: readonly { readonly code: string; readonly detail?: Record<string, unknown> }[];
  readonly scores: Partial<Record<MetricShort, number | null>>;
  /** Event time, ms since the epoch (the Kafka message timestamp, else the event's `ts`). */
  readonly ts: number;
}

/**
 * Parses one topic message into a {@link MonitorEvent}. Audit events (lib/sinks/audit-event.ts) carry every field;
 * an accepted-topic message only needs an `id` (or the message key): its decision is `accept` unless it says otherwise.
 * Returns an error string for a message that is not a JSON object with an id.
 */
export function parseEvent(
  kind: EventKind,
  value: Buffer | string | null,
  key?: Buffer | string | null,
  messageTs?: number,
): MonitorEvent | { error: string } {
  if (value === null || value.length === 0) return { error: 'empty message' };
  // Not parsed at all: no audit event is that long (a string of it might not even fit in one).
  if (Buffer.byteLength(value) > AUDIT_LINE_MAX_BYTES) return { error: `over ${AUDIT_LINE_MAX_BYTES} bytes` };
  let raw: unknown;
  try {
    raw = JSON.parse(value.toString());
  } catch {
    return { error: 'not JSON' };
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return { error: 'not a JSON object' };
  const o = raw as Record<string, unknown>;
  const id = typeof o.id === 'string' && o.id ? o.id : key ? key.toString() : '';
  if (!id) return { error: 'no id' };
  const decision =
    o.decision === 'reject' || o.decision === 'accept' ? o.decision : kind === 'accepted' ? 'accept' : undefined;
  if (!decision) return { error: 'no decision' };
  const reasons = Array.isArray(o.reasons)
    ? o.reasons
        .filter((r): r is Record<string, unknown> => !!r && typeof r === 'object' && typeof r.code === 'string')
        .map((r) => ({
          code: r.code as string,
          detail: r.detail && typeof r.detail === 'object' ? (r.detail as Record<string, unknown>) : undefined,
        }))
    : [];
  const scores: Partial<Record<MetricShort, number | null>> = {};
  const s = o.scores && typeof o.scores === 'object' ? (o.scores as Record<string, unknown>) : {};
  for (const { short } of METRICS) {
    const v = s[short];
    if (typeof v === 'number' && Number.isFinite(v)) scores[short] = v;
  }
  const eventTs = typeof o.ts === 'string' ? Date.parse(o.ts) : NaN;
  const ts = messageTs !== undefined && Number.isFinite(messageTs) ? messageTs : eventTs;
  return { id, decision, reasons, scores, ts: Number.isFinite(ts) ? ts : Date.now() };
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
  private readonly capacity: number;
  private readonly acceptsVisibleOption: boolean;
  private readonly seen = new Set<string>();
  private accepted = 0;
  private rejected = 0;
  private duplicates = 0;
  private malformed = 0;
  private lastTs = -Infinity;
  private readonly tally = new ReasonTally();
  private readonly hist = new Map<MetricShort, number[]>(METRICS.map((m) => [m.short, new Array(101).fill(0)]));
  /** Per-second buckets of the window: second -> [accepted, rejected]. */
  private readonly perSecond = new Map<number, [number, number]>();

  constructor(options: MonitorAggregatorOptions = {}) {
    this.windowSeconds = options.windowSeconds ?? 60;
    this.capacity = options.dedupeCapacity ?? 100_000;
    this.acceptsVisibleOption = options.acceptsVisible ?? false;
  }

  /** Counts an event; returns false when its id was already counted (dedupe). */
  add(e: MonitorEvent): boolean {
    if (this.seen.has(e.id)) {
      this.duplicates++;
      return false;
    }
    this.seen.add(e.id);
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.values().next().value!);

    const accept = e.decision === 'accept';
    if (accept) this.accepted++;
    else {
      this.rejected++;
      this.tally.add(e.reasons);
    }
    for (const { short } of METRICS) {
      const v = e.scores[short];
      if (typeof v === 'number') this.hist.get(short)![Math.max(0, Math.min(100, Math.round(v)))]!++;
    }
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
    const acceptsVisible = this.acceptsVisibleOption || this.accepted > 0;
    const rate = (a: number, r: number) => (acceptsVisible && a + r > 0 ? a / (a + r) : null);
    const scores = {} as Record<MetricShort, MetricSnapshot>;
    for (const [metric, h] of this.hist) {
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
      events: this.accepted + this.rejected,
      accepted: this.accepted,
      rejected: this.rejected,
      acceptRate: rate(this.accepted, this.rejected),
      acceptsVisible,
      duplicates: this.duplicates,
      malformed: this.malformed,
      reasons: [...this.tally.byCode]
        .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
        .map(([code, count]) => ({ code, count, share: this.rejected ? count / this.rejected : 0 })),
      belowThresholdByMetric: Object.fromEntries([...this.tally.belowThresholdByMetric].sort((a, b) => b[1] - a[1])),
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
