/**
 * CloudWatch Embedded Metric Format (EMF) documents, written by hand after the public specification
 * (docs.aws.amazon.com, "Specification: Embedded metric format"): one JSON object per log line, with an `_aws`
 * metadata member naming the namespace, dimension sets and metrics, and the values as root members.
 *
 * Distributions (scores, latencies) are written as `{Values, Counts, Max, Min, Count, Sum}`, the shape CloudWatch
 * accepts for pre-aggregated values (the CloudWatch agent's EMF exporter writes histograms this way): CloudWatch then
 * computes percentiles over every value of the interval, not over per-batch averages.
 */

/** EMF limits: at most 100 metrics per directive and 100 values per distribution array. */
export const EMF_MAX_METRICS = 100;
export const EMF_MAX_VALUES = 100;

export type EmfUnit = 'Count' | 'Milliseconds' | 'Percent' | 'None';

/** A pre-aggregated set of values: each distinct value once, with how often it occurred. */
export interface EmfDistribution {
  Values: number[];
  Counts: number[];
  Max: number;
  Min: number;
  Count: number;
  Sum: number;
}

export interface EmfMetric {
  readonly name: string;
  readonly unit: EmfUnit;
  readonly value: number | EmfDistribution;
}

export interface EmfDocumentInput {
  readonly namespace: string;
  readonly timestamp: number;
  /** Dimension name -> value; all of them form the document's single dimension set. */
  readonly dimensions: Readonly<Record<string, string>>;
  readonly metrics: readonly EmfMetric[];
  /** Extra root members that are not metrics (searchable in Logs Insights, no metric cost). */
  readonly properties?: Readonly<Record<string, string | number | boolean>>;
}

/** Builds one EMF document. Throws when it would break the specification's limits (a bug in the caller). */
export function emfDocument(input: EmfDocumentInput): Record<string, unknown> {
  if (input.metrics.length === 0 || input.metrics.length > EMF_MAX_METRICS) {
    throw new RangeError(`an EMF document needs 1..${EMF_MAX_METRICS} metrics, got ${input.metrics.length}`);
  }
  const doc: Record<string, unknown> = { ...input.properties };
  for (const [k, v] of Object.entries(input.dimensions)) doc[k] = v;
  for (const m of input.metrics) {
    if (typeof m.value !== 'number' && m.value.Values.length > EMF_MAX_VALUES) {
      throw new RangeError(`EMF metric ${m.name} carries more than ${EMF_MAX_VALUES} values`);
    }
    doc[m.name] = m.value;
  }
  doc._aws = {
    Timestamp: input.timestamp,
    CloudWatchMetrics: [
      {
        Namespace: input.namespace,
        Dimensions: [Object.keys(input.dimensions)],
        Metrics: input.metrics.map((m) => ({ Name: m.name, Unit: m.unit })),
      },
    ],
  };
  return doc;
}

/**
 * Collects the values of one metric over an interval as value -> count. Values are rounded to `significantDigits`
 * so that a continuous quantity (latency) stays a small set; scores are integers and stay exact.
 */
export class ValueCounter {
  private readonly counts = new Map<number, number>();
  private n = 0;
  private sum = 0;

  constructor(private readonly significantDigits = 3) {}

  add(value: number, count = 1): void {
    if (!Number.isFinite(value) || count <= 0) return;
    const v = value === 0 ? 0 : Number(value.toPrecision(this.significantDigits));
    this.counts.set(v, (this.counts.get(v) ?? 0) + count);
    this.n += count;
    this.sum += value * count;
  }

  get count(): number {
    return this.n;
  }

  /** The collected values as EMF distributions of at most {@link EMF_MAX_VALUES} distinct values each. */
  distributions(): EmfDistribution[] {
    const entries = [...this.counts].sort((a, b) => a[0] - b[0]);
    const out: EmfDistribution[] = [];
    for (let i = 0; i < entries.length; i += EMF_MAX_VALUES) {
      const part = entries.slice(i, i + EMF_MAX_VALUES);
      const count = part.reduce((a, [, c]) => a + c, 0);
      // Sum is exact for the whole set only when it is one part; for split sets use the rounded values.
      const sum = entries.length <= EMF_MAX_VALUES ? this.sum : part.reduce((a, [v, c]) => a + v * c, 0);
      out.push({
        Values: part.map(([v]) => v),
        Counts: part.map(([, c]) => c),
        Max: part[part.length - 1]![0],
        Min: part[0]![0],
        Count: count,
        Sum: sum,
      });
    }
    return out;
  }

  reset(): void {
    this.counts.clear();
    this.n = 0;
    this.sum = 0;
  }
}
