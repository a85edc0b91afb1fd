/**
 * Counting decided pairs the same way everywhere an operator reads them (summary.json, `mlm-filter monitor`,
 * `mlm-filter report`): accepts and rejects, reject reasons, and a histogram of each metric's scores. Memory is
 * fixed however many events: scores are integers 0..100, so 101 bins per metric and decision hold them exactly.
 */
import type { MetricShort } from '../types.ts';
import { METRICS } from '../types.ts';

/** The part of a reason the tally reads (lib/types Reason and the audit event's reasons both fit). */
export interface TalliedReason {
  readonly code: string;
  readonly detail?: Readonly<Record<string, unknown>>;
}

/**
 * Rejects by reason: a reject counts once per distinct reason code, and `below_threshold` reasons also count per
 * metric, so "which metric rejects most" needs no second pass.
 */
export class ReasonTally {
  /** Rejects per reason code (a reject with two reasons of one code counts once for it). */
  readonly byCode = new Map<string, number>();
  /** below_threshold reasons per metric (a reject failing two metrics counts for both). */
  readonly belowThresholdByMetric = new Map<string, number>();

  /** Counts the reasons of one rejected pair. */
  add(reasons: readonly TalliedReason[]): void {
    for (const code of new Set(reasons.map((r) => r.code))) this.byCode.set(code, (this.byCode.get(code) ?? 0) + 1);
    for (const r of reasons) {
      const metric = r.code === 'below_threshold' ? r.detail?.metric : undefined;
      if (typeof metric === 'string') {
        this.belowThresholdByMetric.set(metric, (this.belowThresholdByMetric.get(metric) ?? 0) + 1);
      }
    }
  }

  /** Reason codes, most frequent first (ties by code); share = fraction of `rejected` carrying the code. */
  rows(rejected: number): { code: string; count: number; share: number }[] {
    return [...this.byCode]
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .map(([code, count]) => ({ code, count, share: rejected ? count / rejected : 0 }));
  }

  /** below_threshold rejects per metric, most frequent first. */
  byMetric(): Record<string, number> {
    return Object.fromEntries([...this.belowThresholdByMetric].sort((a, b) => b[1] - a[1]));
  }
}

/** What the tally reads of a decided pair: an outcome, an audit event, a curated sample (null: unscored). */
export interface TalliedEvent {
  readonly decision: 'accept' | 'reject';
  readonly reasons: readonly TalliedReason[];
  readonly scores: Partial<Record<MetricShort, number | null>>;
}

/** One metric's scores: per decision, counts per integer score 0..100, and the exact sum. */
export interface ScoreHistogram {
  readonly accept: number[];
  readonly reject: number[];
  sumAccept: number;
  sumReject: number;
}

const emptyHistogram = (): ScoreHistogram => ({
  accept: new Array<number>(101).fill(0),
  reject: new Array<number>(101).fill(0),
  sumAccept: 0,
  sumReject: 0,
});

/** The one tally of decided pairs: the run summary, the monitor and the report each keep one. */
export class EventTally {
  accepted = 0;
  rejected = 0;
  readonly reasons = new ReasonTally();
  readonly histograms = new Map<MetricShort, ScoreHistogram>(METRICS.map((m) => [m.short, emptyHistogram()]));

  /** Starts from `previous`'s counts (a resumed run's summary covers the earlier runs too). */
  constructor(previous?: EventTally) {
    if (!previous) return;
    this.accepted = previous.accepted;
    this.rejected = previous.rejected;
    for (const [code, n] of previous.reasons.byCode) this.reasons.byCode.set(code, n);
    for (const [metric, n] of previous.reasons.belowThresholdByMetric) {
      this.reasons.belowThresholdByMetric.set(metric, n);
    }
    for (const [metric, h] of previous.histograms) {
      this.histograms.set(metric, { ...h, accept: [...h.accept], reject: [...h.reject] });
    }
  }

  get events(): number {
    return this.accepted + this.rejected;
  }

  add(e: TalliedEvent): void {
    const accept = e.decision === 'accept';
    if (accept) this.accepted++;
    else {
      this.rejected++;
      this.reasons.add(e.reasons);
    }
    for (const { short } of METRICS) {
      const v = e.scores[short];
      if (typeof v !== 'number' || !Number.isFinite(v)) continue;
      const h = this.histograms.get(short)!;
      h[e.decision][Math.max(0, Math.min(100, Math.round(v)))]!++;
      if (accept) h.sumAccept += v;
      else h.sumReject += v;
    }
  }

  /** One metric's counts per integer score, both decisions together. */
  scoreCounts(metric: MetricShort): number[] {
    const h = this.histograms.get(metric)!;
    return h.accept.map((n, s) => n + h.reject[s]!);
  }
}
