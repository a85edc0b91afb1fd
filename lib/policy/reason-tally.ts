/**
 * Counting rejects by reason the same way everywhere an operator reads them (summary.json, `mlm-filter monitor`,
 * `mlm-filter report`): a reject counts once per distinct reason code, and `below_threshold` reasons also count per
 * metric, so "which metric rejects most" needs no second pass.
 */

/** The part of a reason the tally reads (lib/types Reason and the audit event's reasons both fit). */
export interface TalliedReason {
  readonly code: string;
  readonly detail?: Readonly<Record<string, unknown>>;
}

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
}
