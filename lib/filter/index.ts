/**
 * The MLM filter as one object for Node programs (the package root exports it, lib/index.ts): a loaded scorer, an
 * image intake and a policy, opened together and closed together. `score` runs pairs through the same pipeline as
 * the CLI and the worker (parse, fetch/decode, score, decide); `mlm-filter filter` opens its model with openFilter
 * and runs its passes with `run`.
 */
import { Intake, type IntakeOptions } from '../intake/index.ts';
import { loadScorer, type MlmScorer, type ScorerOptions } from '../model/index.ts';
import type { PairOptions } from '../pair/index.ts';
import { runPipeline, type PipelineOptions, type PipelineStats } from '../pipeline/index.ts';
import { parseThreshold, Policy, type Threshold } from '../policy/index.ts';
import { resolveMetricSelection, type MetricSelection } from '../policy/metric-selection.ts';
import { s3Client } from '../support/aws.ts';
import type { Decision, ModelInfo, MetricShort, Reason, Scores, Sink, Source, SourceRecord } from '../types.ts';
import { FilterError, NO_COMMIT } from '../types.ts';

export interface FilterOptions {
  /** Exported model directory, or a hub id with a cached export (README, Models). */
  readonly model: string;
  /**
   * Conditions a pair must meet to be accepted: `'itm>=66'` strings or Threshold objects. Default: `itm>=66` and
   * `odf>=20` (the paper's DataComp-medium filter). A Policy instance is taken as it is (the CLI's top-fraction runs).
   */
  readonly thresholds?: readonly (string | Threshold)[];
  /** `and` (default): every threshold holds; `or`: one is enough. */
  readonly combine?: 'and' | 'or';
  /** The policy itself, instead of thresholds and combine. */
  readonly policy?: Policy;
  /** Metrics to score: `all` (default), `policy` (those the thresholds read) or a list including those. */
  readonly metrics?: MetricSelection;
  /** Execution provider, batch size, threads, dtype... (lib/model). */
  readonly scorer?: Omit<ScorerOptions, 'metrics'>;
  /** Image fetching: allowed addresses, user agent, timeouts, JPEG decoder (lib/intake). `s3` defaults to a client
   * for MLMF_S3_ENDPOINT (else AWS). */
  readonly intake?: IntakeOptions;
  /** Record limits (caption length, record size...). */
  readonly pair?: PairOptions;
  /** Images fetched and decoded at once. Default 32. */
  readonly concurrency?: number;
}

/**
 * A pair as the worker takes it from Kafka or SQS: `{id?, caption, url}` or `{id?, caption, image: {base64} | {s3}}`
 * plus any metadata; as an object, or its JSON text (string or bytes).
 */
export type PairInput = Readonly<Record<string, unknown>> | string | Buffer;

/** The decision on one pair; `score` returns one per input, in input order. */
export interface FilterResult {
  /** The pair's id: its own, or the one derived from its image and caption (as the worker derives it). */
  readonly id: string;
  readonly decision: Decision;
  /** Why it was rejected (empty when accepted): below_threshold, fetch_failed, invalid_record... */
  readonly reasons: readonly Reason[];
  /** Scores 0..100 of the metrics scored (none when the pair never reached the scorer). */
  readonly scores: Scores;
  /** Probability-weighted scores, when the model gives them. */
  readonly expected?: Scores;
}

export interface ScoreOptions {
  /** Stops reading further pairs; those already read are finished. */
  readonly signal?: AbortSignal;
  /** Reject a pair whose id came earlier in the same call as `duplicate`. Default false. */
  readonly dedupe?: boolean;
}

/** The pipeline's parts this object owns; a run passes the rest. */
export type RunOptions = Omit<PipelineOptions, 'scorer' | 'intake' | 'policy'>;

/** An open MLM filter. Close it (the scorer holds worker threads). */
export class MlmFilter {
  private closing: Promise<void> | undefined;

  private constructor(
    /** The loaded scorer (model, metrics, execution provider). */
    readonly scorer: MlmScorer,
    readonly intake: Intake,
    readonly policy: Policy,
    private readonly options: FilterOptions,
  ) {}

  /** Loads the model and opens the image intake; the policy and metrics are checked first. */
  static async open(options: FilterOptions): Promise<MlmFilter> {
    const policy = options.policy ?? policyOf(options);
    const metrics = resolveMetricSelection(
      options.metrics ?? 'all',
      policy.metrics,
      { name: 'metrics', code: 'bad_metrics' },
      'the thresholds read',
    );
    const scorer = await loadScorer(options.model, { ...options.scorer, metrics });
    const missing = policy.metrics.filter((m) => !scorer.metrics.includes(m));
    if (missing.length > 0) {
      await scorer.close();
      throw new FilterError(
        'bad_threshold',
        `the policy reads ${missing.join(', ')} but the scorer does not score it`,
        {
          missing,
        },
      );
    }
    // image.s3 refs use the default AWS credential chain; MLMF_S3_ENDPOINT points at an S3-compatible server.
    const s3 = options.intake?.s3 ?? s3Client({ endpoint: process.env.MLMF_S3_ENDPOINT });
    try {
      const intake = new Intake({ ...options.intake, s3 }, scorer.preprocess);
      return new MlmFilter(scorer, intake, policy, options);
    } catch (err) {
      // An intake option refused (a native decoder the model's resampling lacks): the threads must not outlive it.
      await scorer.close();
      throw err;
    }
  }

  get model(): ModelInfo {
    return this.scorer.model;
  }

  /** The metrics scored; the others are absent from `scores`. */
  get metrics(): readonly MetricShort[] {
    return this.scorer.metrics;
  }

  /** Scores and decides `pairs`: one result per pair, in their order. Invalid pairs are rejects, not errors. */
  async score(
    pairs: Iterable<PairInput> | AsyncIterable<PairInput>,
    options: ScoreOptions = {},
  ): Promise<FilterResult[]> {
    const results: FilterResult[] = [];
    await this.run({
      source: pairSource(pairs),
      sinks: [DISCARD],
      dedupe: options.dedupe ?? false,
      signal: options.signal,
      onOutcome: (o) =>
        results.push({
          id: o.id,
          decision: o.decision,
          reasons: o.reasons,
          scores: o.scores,
          ...(o.expected ? { expected: o.expected } : {}),
        }),
    });
    return results;
  }

  /** One pipeline run with this filter's scorer, intake and policy (the CLI's passes over its sources and sinks). */
  async run(options: RunOptions): Promise<PipelineStats> {
    if (this.closing) throw new FilterError('scorer_closed', 'the filter is closed');
    return runPipeline({
      pair: this.options.pair,
      intakeConcurrency: this.options.concurrency,
      ...options,
      scorer: this.scorer,
      intake: this.intake,
      policy: this.policy,
    });
  }

  /** Stops the scorer's threads and closes the intake's connections; a second call waits for the first. */
  close(): Promise<void> {
    this.closing ??= Promise.allSettled([this.intake.close(), this.scorer.close()]).then((r) => {
      const failed = r.find((x) => x.status === 'rejected');
      if (failed) throw failed.reason;
    });
    return this.closing;
  }
}

/** Opens an MLM filter: `const f = await openFilter({ model }); await f.score(pairs); await f.close()`. */
export function openFilter(options: FilterOptions): Promise<MlmFilter> {
  return MlmFilter.open(options);
}

function policyOf(options: FilterOptions): Policy {
  const thresholds = options.thresholds?.map((t) => (typeof t === 'string' ? parseThreshold(t) : t));
  return new Policy({
    ...(thresholds ? { thresholds } : {}),
    ...(options.combine ? { combine: options.combine } : {}),
  });
}

/** Outcomes are collected through onOutcome: the pipeline still needs one sink to write to. */
const DISCARD: Sink = {
  name: 'results',
  durability: 'durable',
  write: async () => undefined,
  flush: async () => undefined,
  close: async () => undefined,
};

/** The caller's pairs as a source of 64-record batches; a record's origin is its position (1-based). */
function pairSource(pairs: Iterable<PairInput> | AsyncIterable<PairInput>): Source {
  return {
    async *batches(signal) {
      let records: SourceRecord[] = [];
      let n = 0;
      for await (const p of pairs) {
        if (signal.aborted) break;
        const raw = typeof p === 'string' || Buffer.isBuffer(p) ? p : Buffer.from(JSON.stringify(p));
        records.push({ raw, origin: { kind: 'file', path: 'score()', line: ++n } });
        if (records.length === 64) {
          yield { records, committer: NO_COMMIT };
          records = [];
        }
      }
      if (records.length > 0) yield { records, committer: NO_COMMIT };
    },
    close: async () => undefined,
  };
}
