import type { Decision, MetricShort, Reason, Scores } from '../types.ts';
import { FilterError, METRICS } from '../types.ts';

export type Comparison = '>=' | '>' | '<=' | '<';

/** One condition on one metric, e.g. `itm>=66`. */
export interface Threshold {
  readonly metric: MetricShort;
  readonly op: Comparison;
  readonly value: number;
}

/** How a score-based policy decides. */
export interface PolicyOptions {
  /** Conditions on the metrics. Default: the paper's best DataComp-medium filter, `itm>=66` AND `odf>=20`. */
  readonly thresholds?: readonly Threshold[];
  /** `and`: every condition must hold (default); `or`: one is enough. */
  readonly combine?: 'and' | 'or';
}

export const DEFAULT_THRESHOLDS: readonly Threshold[] = [
  { metric: 'itm', op: '>=', value: 66 },
  { metric: 'odf', op: '>=', value: 20 },
];

const SHORTS = new Set<string>(METRICS.map((m) => m.short));
const BY_KEY = new Map<string, MetricShort>(METRICS.map((m) => [m.key, m.short]));

/** Parses `itm>=66`, `image_text_matching>=66`, `su > 85`. Throws FilterError `bad_threshold`. */
export function parseThreshold(text: string): Threshold {
  const m = /^\s*([a-z_]+)\s*(>=|<=|>|<)\s*(\d+(?:\.\d+)?)\s*$/.exec(text);
  const metric = m ? (SHORTS.has(m[1]!) ? (m[1] as MetricShort) : BY_KEY.get(m[1]!)) : undefined;
  if (!m || !metric) {
    throw new FilterError(
      'bad_threshold',
      `cannot read threshold ${JSON.stringify(text)}: expected METRIC OP VALUE with METRIC one of ` +
        `${[...SHORTS].join(', ')} (or the full key) and OP one of >=, >, <=, <, e.g. itm>=66`,
      { threshold: text },
    );
  }
  const value = Number(m[3]);
  if (value < 0 || value > 100) {
    throw new FilterError('bad_threshold', `threshold ${text}: value must be within 0..100`, { threshold: text });
  }
  return { metric, op: m[2] as Comparison, value };
}

/** Parses a comma-separated list, e.g. from MLMF_THRESHOLDS. */
export function parseThresholds(text: string): Threshold[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(parseThreshold);
}

export const formatThreshold = (t: Threshold) => `${t.metric}${t.op}${t.value}`;

const HOLDS: Record<Comparison, (score: number, value: number) => boolean> = {
  '>=': (score, value) => score >= value,
  '>': (score, value) => score > value,
  '<=': (score, value) => score <= value,
  '<': (score, value) => score < value,
};

/**
 * A threshold handed over as data (a --config file's object, a caller) must be one parseThreshold could have made:
 * an unknown operator or metric would otherwise decide every pair the wrong way without a word.
 */
function checkThreshold(t: Threshold): Threshold {
  const { metric, op, value } = (t ?? {}) as Partial<Record<keyof Threshold, unknown>>;
  const known = typeof metric === 'string' && SHORTS.has(metric) && typeof op === 'string' && Object.hasOwn(HOLDS, op);
  if (!known || typeof value !== 'number' || !(value >= 0 && value <= 100)) {
    throw new FilterError(
      'bad_threshold',
      `threshold ${JSON.stringify(t)}: expected { metric, op, value } with metric one of ${[...SHORTS].join(', ')}, ` +
        `op one of >=, >, <=, < and value a number within 0..100`,
      { threshold: JSON.stringify(t) ?? String(t) },
    );
  }
  return t;
}

export interface Verdict {
  readonly decision: Decision;
  readonly reasons: Reason[];
}

/** Accept / reject from the scores, with a reason for every failed condition. */
export class Policy {
  readonly thresholds: readonly Threshold[];
  readonly combine: 'and' | 'or';

  constructor(options: PolicyOptions = {}) {
    this.thresholds = (options.thresholds ?? DEFAULT_THRESHOLDS).map(checkThreshold);
    this.combine = options.combine ?? 'and';
    if (this.thresholds.length === 0) throw new FilterError('bad_threshold', 'the policy needs at least one threshold');
    if (this.combine !== 'and' && this.combine !== 'or') {
      const combine = JSON.stringify(this.combine);
      throw new FilterError('bad_threshold', `the policy's combine must be "and" or "or", got ${combine}`, { combine });
    }
  }

  /** Metrics the policy reads: the scorer must produce at least these. */
  get metrics(): MetricShort[] {
    return [...new Set(this.thresholds.map((t) => t.metric))];
  }

  decide(scores: Scores): Verdict {
    const failed: Reason[] = [];
    for (const t of this.thresholds) {
      const score = scores[t.metric];
      if (score === undefined || !Number.isFinite(score)) {
        failed.push({
          code: 'scoring_failed',
          message: `the model gave no number for ${t.metric}`,
          detail: { metric: t.metric },
        });
      } else if (!HOLDS[t.op](score, t.value)) {
        failed.push({
          code: 'below_threshold',
          message: `${t.metric} ${score} fails ${formatThreshold(t)}`,
          detail: { metric: t.metric, score, threshold: t.value, op: t.op },
        });
      }
    }
    const pass = this.combine === 'and' ? failed.length === 0 : failed.length < this.thresholds.length;
    return pass ? { decision: 'accept', reasons: [] } : { decision: 'reject', reasons: failed };
  }
}
