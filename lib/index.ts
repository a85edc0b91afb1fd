/**
 * The package root (`import { openFilter } from 'mlm-filter-stream'`): the MLM filter for Node programs. Open a
 * filter on an exported model, score pairs, close it; or run the whole `mlm-filter filter` job on files. The CDK
 * construct is its own package, `mlm-filter-stream-construct` (infra/).
 */
export {
  MlmFilter,
  openFilter,
  type FilterOptions,
  type FilterResult,
  type PairInput,
  type ScoreOptions,
} from './filter/index.ts';
export { runFilterJob, type FilterJobOptions } from './cli/filter.ts';
export type { RunSummary } from './metrics/run-summary.ts';
export { parseThreshold, formatThreshold, DEFAULT_THRESHOLDS, type Threshold } from './policy/index.ts';
export type { MetricSelection } from './policy/metric-selection.ts';
export type { IntakeOptions } from './intake/index.ts';
export type { ScorerOptions } from './model/index.ts';
export type { PairOptions } from './pair/index.ts';
export { FilterError, RejectError, ERRORS, type ErrorCode } from './errors.ts';
export { METRICS } from './types.ts';
export type { Decision, MetricKey, MetricShort, ModelInfo, Reason, ReasonCode, Scores } from './types.ts';
