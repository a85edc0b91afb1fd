import type { MetricShort } from '../types.ts';
import { EventTally, type TalliedEvent } from '../formats/event-tally.ts';

/** Quantiles reported per metric in summary.json. */
const QUANTILES = [0.05, 0.25, 0.5, 0.75, 0.95] as const;

export interface MetricSummary {
  count: number;
  mean: number | null;
  quantiles: Record<string, number | null>;
}

export interface RunSummary {
  records: number;
  decisions: { accept: number; reject: number };
  /** Each rejected record counts once per distinct reason code it carries. */
  reasons: Record<string, number>;
  scores: Record<MetricShort, MetricSummary>;
  elapsedSeconds: number;
  pairsPerSecond: number;
  /** A --resume run: records the output held when it started, and input records skipped as already there. */
  resumed?: { previousRecords: number; skippedRecords: number };
}

/** What the summary reads of an outcome; an audit event or a curated sample read back fits too (null: unscored). */
export type TalliedOutcome = TalliedEvent;

/**
 * Counts outcomes as they are acked. Scores are integers 0..100, so a 101-bin histogram per metric gives exact
 * quantiles in constant memory, however long the run.
 */
export class SummaryCollector {
  private readonly tally: EventTally;
  /** Records the output already held when this run started (--resume): counted, but not in the rate. */
  readonly previous: number = 0;
  private readonly startedAt = Date.now();

  /** Starts from `previous`'s counts: a resumed run's summary covers the whole output, earlier runs included. */
  constructor(previous?: SummaryCollector) {
    this.tally = new EventTally(previous?.tally);
    this.previous = previous?.records ?? 0;
  }

  get records(): number {
    return this.tally.events;
  }

  get accepted(): number {
    return this.tally.accepted;
  }

  get rejected(): number {
    return this.tally.rejected;
  }

  add(outcome: TalliedOutcome): void {
    this.tally.add(outcome);
  }

  get elapsedSeconds(): number {
    return (Date.now() - this.startedAt) / 1000;
  }

  get pairsPerSecond(): number {
    return (this.records - this.previous) / Math.max(this.elapsedSeconds, 1e-3);
  }

  summary(): RunSummary {
    const scores = {} as Record<MetricShort, MetricSummary>;
    for (const metric of this.tally.histograms.keys()) {
      const h = this.tally.scoreCounts(metric);
      const count = h.reduce((a, b) => a + b, 0);
      const sum = h.reduce((a, n, score) => a + n * score, 0);
      const quantiles: Record<string, number | null> = {};
      for (const q of QUANTILES) {
        let cumulative = 0;
        let value: number | null = null;
        for (let s = 0; s <= 100 && count > 0; s++) {
          cumulative += h[s]!;
          if (cumulative >= q * count) {
            value = s;
            break;
          }
        }
        quantiles[`p${Math.round(q * 100)}`] = value;
      }
      scores[metric] = { count, mean: count ? sum / count : null, quantiles };
    }
    return {
      records: this.records,
      decisions: { accept: this.accepted, reject: this.rejected },
      reasons: Object.fromEntries([...this.tally.reasons.byCode].sort((a, b) => b[1] - a[1])),
      scores,
      elapsedSeconds: Number(this.elapsedSeconds.toFixed(3)),
      pairsPerSecond: Number(this.pairsPerSecond.toFixed(2)),
    };
  }
}

export function formatSummary(s: RunSummary): string {
  const lines = [
    `records ${s.records}: accepted ${s.decisions.accept}, rejected ${s.decisions.reject} ` +
      `(${s.elapsedSeconds.toFixed(1)} s, ${s.pairsPerSecond.toFixed(1)} pairs/s)`,
  ];
  if (s.resumed) {
    lines.push(
      `resumed: ${s.resumed.previousRecords} records were already in --out, ` +
        `${s.resumed.skippedRecords} input records skipped`,
    );
  }
  if (Object.keys(s.reasons).length) {
    lines.push(
      'reject reasons: ' +
        Object.entries(s.reasons)
          .map(([k, v]) => `${k} ${v}`)
          .join(', '),
    );
  }
  for (const [metric, m] of Object.entries(s.scores)) {
    if (m.count === 0) continue;
    const q = m.quantiles;
    lines.push(`${metric}: n=${m.count} mean=${m.mean?.toFixed(1)} p5=${q.p5} p50=${q.p50} p95=${q.p95}`);
  }
  return lines.join('\n');
}
