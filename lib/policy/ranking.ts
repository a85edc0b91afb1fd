/**
 * Top-fraction selection over a finished run (batch jobs, as DataComp's "top 30% by score" baselines): the first pass
 * decides with RankingPolicy and collects RankingValues; the run-wide cutoff then routes each staged pair.
 */
import type { MetricShort, Outcome, Scores } from '../types.ts';
import { FilterError } from '../types.ts';
import { Policy, type PolicyOptions, type Verdict } from './index.ts';

/** Keep the best `fraction` of a whole run on one metric. */
export interface TopFractionOptions {
  /** Share of the scored pairs to keep, in (0, 1]. */
  readonly fraction: number;
  /** The metric ranked on; ties are broken by its expected (continuous) score. */
  readonly metric: MetricShort;
}

/** The last kept pair's ranking values: a pair is kept when it ranks at or above them. */
export interface Cutoff {
  readonly score: number;
  readonly expected: number;
}

/**
 * The first pass of a top-fraction run: the thresholds first (a pair that fails one is rejected as usual, with
 * `below_threshold`), then a number on the ranked metric; what passes is staged and ranked after the run. Without
 * thresholds every pair with a number on the ranked metric is staged.
 */
export class RankingPolicy extends Policy {
  /** Whether thresholds were given, i.e. the fraction is of the pairs that pass them. */
  readonly thresholded: boolean;

  constructor(
    private readonly top: TopFractionOptions,
    policy?: PolicyOptions,
  ) {
    super(policy?.thresholds ? policy : { thresholds: [{ metric: top.metric, op: '>=', value: 0 }] });
    this.thresholded = policy?.thresholds !== undefined;
  }

  override get metrics() {
    return [...new Set([...super.metrics, this.top.metric])];
  }

  override decide(scores: Scores): Verdict {
    const verdict = super.decide(scores);
    const metric = this.top.metric;
    if (verdict.decision === 'reject' || Number.isFinite(scores[metric])) return verdict;
    const reason = { code: 'scoring_failed' as const, message: `the model gave no number for ${metric}` };
    return { decision: 'reject', reasons: [{ ...reason, detail: { metric } }] };
  }
}

/**
 * The cutoff that keeps `fraction` of the pairs ranked on one metric (at least one pair), ties broken by the expected
 * score; undefined when nothing was ranked. Throws FilterError `bad_top_fraction` outside (0, 1].
 */
export function topFractionCutoff(
  values: readonly { score: number; expected?: number }[],
  fraction: number,
): Cutoff | undefined {
  if (!(fraction > 0 && fraction <= 1)) {
    throw new FilterError('bad_top_fraction', `top fraction must be within (0, 1], got ${fraction}`, { fraction });
  }
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => b.score - a.score || (b.expected ?? b.score) - (a.expected ?? a.score));
  const keep = Math.max(1, Math.ceil(sorted.length * fraction));
  const last = sorted[keep - 1]!;
  return { score: last.score, expected: last.expected ?? last.score };
}

/** Collects the ranking values of the first pass: 8 bytes per scored pair. */
export class RankingValues {
  private scores = new Float32Array(1024);
  private expected = new Float32Array(1024);
  length = 0;

  add(score: number, expected: number | undefined): void {
    if (this.length === this.scores.length) {
      const grow = (a: Float32Array) => {
        const b = new Float32Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.scores = grow(this.scores);
      this.expected = grow(this.expected);
    }
    this.scores[this.length] = score;
    this.expected[this.length++] = expected ?? score;
  }

  cutoff(fraction: number): Cutoff | undefined {
    const values = Array.from({ length: this.length }, (_, i) => ({
      score: this.scores[i]!,
      expected: this.expected[i]!,
    }));
    return topFractionCutoff(values, fraction);
  }
}

/**
 * A staged (accepted) pair kept or rejected by the run-wide cutoff: kept when it ranks at or above the cutoff, so
 * pairs tied with the last kept one on both values are all kept. A rejected pair gets a `below_threshold` reason
 * naming the cutoff and the fraction.
 */
export function routeByCutoff(o: Outcome, options: TopFractionOptions, cutoff: Cutoff): Outcome {
  const score = o.scores[options.metric] ?? -1;
  const expected = o.expected?.[options.metric] ?? score;
  // RankingValues kept float32 values: compare at that precision, or the pair at the cutoff can fall below its own
  // rounded value and be dropped.
  const [ranked, last] = [Math.fround(score), Math.fround(cutoff.score)];
  const keep = ranked > last || (ranked === last && Math.fround(expected) >= Math.fround(cutoff.expected));
  if (keep) return o;
  const detail = {
    metric: options.metric,
    score,
    threshold: cutoff.score,
    op: '>=',
    mode: 'top_fraction',
    fraction: options.fraction,
  };
  const message = `${options.metric} ${score} is below the run's top-${options.fraction * 100}% cutoff ${cutoff.score}`;
  return { ...o, decision: 'reject', reasons: [{ code: 'below_threshold', message, detail }] };
}
