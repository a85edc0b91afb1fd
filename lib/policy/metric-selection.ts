/**
 * Which metrics the scorer scores (`mlm-filter filter --metrics`, the worker's MLMF_METRICS). Each metric costs its
 * own suffix decode, so scoring only what the policy reads saves work (the default policy reads itm and odf: about
 * half the decoder tokens). Unscored metrics are `null` in the curated `.json`, audit events and accepted events.
 */
import { FilterError, METRICS, type MetricShort } from '../types.ts';
import type { ErrorCode } from '../errors.ts';

/** `all` (default), `policy` (exactly what the policy reads), or an explicit list. */
export type MetricSelection = 'all' | 'policy' | readonly MetricShort[];

/** Where a selection came from: names it in messages and picks the error code. */
export interface SelectionSource {
  /** `--metrics` or `MLMF_METRICS`. */
  readonly name: string;
  /** FilterError code; the CLI's is a usage error, the worker's a configuration error. */
  readonly code: ErrorCode;
}

export const CLI_METRICS: SelectionSource = { name: '--metrics', code: 'bad_metrics' };

const ORDER = METRICS.map((m) => m.short);
const canonical = (metrics: Iterable<MetricShort>) => {
  const set = new Set(metrics);
  return ORDER.filter((m) => set.has(m));
};
const setting = (source: SelectionSource, value: string) =>
  source.name.startsWith('--') ? `${source.name} ${value}` : `${source.name}=${value}`;

/**
 * Parses `all`, `policy` or a comma-separated list of metrics (short names or full keys, e.g. `itm,odf` or
 * `image_text_matching,odf`). An unknown name throws FilterError(source.code) naming it and the accepted values.
 */
export function parseMetricSelection(text: string | readonly string[], source: SelectionSource): MetricSelection {
  const raw = typeof text === 'string' ? text : text.join(',');
  const trimmed = raw.trim();
  if (trimmed === 'all' || trimmed === 'policy') return trimmed;
  const names = trimmed
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const expected =
    `expected all, policy, or a comma-separated list of ${ORDER.join(', ')} ` +
    `(or the full keys ${METRICS.map((m) => m.key).join(', ')})`;
  if (names.length === 0) {
    throw new FilterError(source.code, `${source.name} is empty: ${expected}`, { name: source.name, value: raw });
  }
  const shorts = names.map((name) => {
    const m = METRICS.find((x) => x.short === name || x.key === name);
    if (!m) {
      throw new FilterError(source.code, `${source.name}: unknown metric '${name}'; ${expected}`, {
        name: source.name,
        metric: name,
      });
    }
    return m.short;
  });
  return canonical(shorts);
}

/**
 * The metrics to score for a selection, in the canonical order (itm, odf, ctq, su). `required` are the metrics the
 * policy (or the top-fraction ranking) reads; `requiredBy` says who reads them, e.g. `the policy reads (itm>=66,
 * odf>=20)`. An explicit list that leaves one out throws FilterError(source.code) naming it and the fix.
 */
export function resolveMetricSelection(
  selection: MetricSelection,
  required: readonly MetricShort[],
  source: SelectionSource,
  requiredBy: string,
): MetricShort[] {
  if (selection === 'all') return [...ORDER];
  if (selection === 'policy') return canonical(required);
  const chosen = canonical(selection);
  const missing = canonical(required).filter((m) => !chosen.includes(m));
  if (missing.length > 0) {
    const fixed = canonical([...chosen, ...missing]).join(',');
    throw new FilterError(
      source.code,
      `${setting(source, chosen.join(','))} leaves out ${missing.join(', ')}, which ${requiredBy}: ` +
        `add ${missing.join(',')} to ${source.name} (${setting(source, fixed)}), or use ${setting(source, 'policy')}`,
      { name: source.name, missing, metrics: chosen, required: [...required] },
    );
  }
  return chosen;
}
