import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import cliProgress from 'cli-progress';
import { Intake, type IntakeOptions } from '../intake/index.ts';
import { loadScorer, type ScorerOptions } from '../model/index.ts';
import type { PairOptions } from '../pair/index.ts';
import { Closers } from '../pipeline/closers.ts';
import { s3Client } from '../support/aws.ts';
import { runPipeline, type PipelineLogger } from '../pipeline/index.ts';
import { formatThreshold, Policy, type PolicyOptions } from '../policy/index.ts';
import {
  CLI_METRICS,
  parseMetricSelection,
  resolveMetricSelection,
  type MetricSelection,
} from '../policy/metric-selection.ts';
import { LocalAuditSink } from '../sinks/local-audit.ts';
import { LocalCuratedSink, writeDurable } from '../sinks/local-curated.ts';
import { JsonlSource } from '../sources/jsonl.ts';
import { WebDatasetSource, type WebDatasetReadOptions } from '../sources/webdataset.ts';
import type { ModelInfo, Scorer, Source } from '../types.ts';
import { FilterError } from '../types.ts';
import { OutputLock } from './out-lock.ts';
import { checkOutput, ResumedSource } from './run-output.ts';
import { SummaryCollector, formatSummary, type RunSummary } from '../metrics/run-summary.ts';
import { RankingPolicy, RankingValues, type TopFractionOptions } from '../policy/ranking.ts';
import { applyTopFraction } from './top-fraction.ts';
import { toolInfo } from '../formats/curated-sample.ts';

/** Everything `mlm-filter filter` takes; the same keys are accepted in a `--config` JSON file. */
export interface FilterJobOptions {
  /** JSONL file, `-` for stdin, a WebDataset .tar shard or a directory of shards. */
  readonly input: string;
  /** `jsonl` or `webdataset`; default: by extension (.tar or a directory means webdataset). */
  readonly inputFormat?: 'jsonl' | 'webdataset';
  /**
   * Output directory: curated/ shards, rejects.jsonl, summary.json. It must be empty (or missing) unless `resume`
   * or `overwrite` says what to do with the run it holds.
   */
  readonly out: string;
  /**
   * Continue the run `out` holds: what a stopped run left half-written is completed or discarded, records whose ids
   * the output already holds are skipped, and summary.json counts the whole output (lib/cli/run-output.ts).
   */
  readonly resume?: boolean;
  /** Remove the run `out` holds first (only a run's own files: anything else there refuses the run). */
  readonly overwrite?: boolean;
  /**
   * Take over `out`'s lock when it was taken on another host, or cannot be read: the caller says its holder is gone
   * (a lock of a process that is gone from this host is taken over without it). lib/cli/out-lock.ts.
   */
  readonly breakLock?: boolean;
  /** Model directory (or a hub id with a cached export). */
  readonly model: string;
  readonly policy?: PolicyOptions;
  /**
   * Which metrics to score: `all` (default), `policy` (exactly the metrics the policy reads, or the top-fraction
   * metric), or a list that must include every metric the policy reads. Unscored metrics are `null` in the outputs.
   * Overrides `scorer.metrics`.
   */
  readonly metrics?: MetricSelection;
  /**
   * Batch jobs: keep the best fraction of the whole run on one metric. The run is scored first (pairs that pass
   * `policy.thresholds`, when given, are staged under DIR/.staging; the others are rejected as usual), then the
   * staged pairs are routed by the run-wide cutoff. Without thresholds every scored pair is ranked.
   */
  readonly topFraction?: TopFractionOptions;
  readonly intake?: IntakeOptions;
  readonly scorer?: ScorerOptions;
  readonly pair?: PairOptions;
  /** Images fetched and decoded at once. Default 32. */
  readonly concurrency?: number;
  /** WebDataset input: most bytes one sample keeps (image, .txt, .json). Default 32 MiB (lib/sources/webdataset.ts). */
  readonly maxSampleBytes?: number;
  /** WebDataset input: sample bytes read and not yet written, the bound on memory. Default 256 MiB. */
  readonly maxPendingBytes?: number;
  /** Accepted samples per curated shard. Default 1000. */
  readonly samplesPerShard?: number;
  /** Progress display: `bar` on a TTY, `log` lines otherwise, or `none`. Default: by TTY. */
  readonly progress?: 'bar' | 'log' | 'none';
  /** Graceful stop: nothing more is read; what was read is finished and written. */
  readonly signal?: AbortSignal;
  /** Hard stop: in-flight work is abandoned (a later `resume` run scores it). */
  readonly abort?: AbortSignal;
  readonly logger?: PipelineLogger;
}

export async function openInput(
  input: string,
  format: FilterJobOptions['inputFormat'],
  pair?: PairOptions,
  read: WebDatasetReadOptions = {},
): Promise<Source> {
  const fmt =
    format ?? (input !== '-' && (/\.tar$/i.test(input) || !/\.[a-z0-9]+$/i.test(input)) ? 'webdataset' : 'jsonl');
  if (fmt === 'webdataset') return WebDatasetSource.open({ ...read, paths: [input] });
  // A line is buffered up to the record limit and no further: a longer one is refused by size, not held.
  return JsonlSource.open({
    path: input,
    ...(pair?.maxRecordBytes !== undefined ? { maxLineBytes: pair.maxRecordBytes } : {}),
  });
}

/** Runs the main job: input -> MLM filter -> curated shards + rejects + summary. */
export async function runFilterJob(options: FilterJobOptions): Promise<RunSummary> {
  const top = options.topFraction;
  // In top-fraction mode the first pass applies the thresholds, if any, and stages what passes for the ranking.
  const policy = top ? new RankingPolicy(top, options.policy) : new Policy(options.policy);
  const metrics = scoredMetrics(options, policy);
  const note = (message: string) =>
    options.logger
      ? options.logger.warn(message, { out: options.out })
      : process.stderr.write(`mlm-filter: ${message}\n`);
  // One run per --out, from before it is looked at until the run ends (or the process exits).
  const lock = await OutputLock.acquire(options.out, { breakLock: options.breakLock, note });
  try {
    return await runInLockedOutput(options, policy, metrics);
  } finally {
    await lock.release();
  }
}

/** The run in a locked --out: inputs opened, sinks built, the passes run, summary.json written. */
async function runInLockedOutput(
  options: FilterJobOptions,
  policy: Policy,
  metrics: ReturnType<typeof scoredMetrics>,
): Promise<RunSummary> {
  const { input, scorer, prepareOutput } = await openInputs(options, metrics);
  let intake: Intake | undefined;
  let passesStarted = false;
  try {
    checkScorerCovers(policy, scorer);
    // Built before --out is touched: an option it refuses (a native JPEG decoder the model's resampling cannot use)
    // must fail the run before --overwrite has removed the previous one.
    intake = openIntake(options, scorer);
    await mkdir(options.out, { recursive: true }).catch((err: Error) => {
      throw new FilterError('output_unwritable', `cannot create ${options.out}: ${err.message}`, { out: options.out });
    });
    const previous = await prepareOutput();
    const source = previous ? new ResumedSource(input, previous.ids, options.pair) : input;
    const sinks = await buildSinks(options, scorer.model);
    const summary = new SummaryCollector(previous?.summary);
    passesStarted = true;
    await runPasses(options, { source, intake, scorer, policy, sinks, summary });
    return await summarise(options, { source, intake, scorer, policy, summary });
  } finally {
    // runPasses closes the intake it was given; one built for a run that never got there is closed here.
    if (!passesStarted) await intake?.close();
    await scorer.close();
  }
}

/** The output checked (nothing written yet), the input opened and the scorer loaded, in that order. */
async function openInputs(options: FilterJobOptions, metrics: ReturnType<typeof scoredMetrics>) {
  const { resume, overwrite, topFraction } = options;
  const prepareOutput = await checkOutput(options.out, { resume, overwrite, topFraction: topFraction !== undefined });
  const input = await openInput(options.input, options.inputFormat, options.pair, {
    maxSampleBytes: options.maxSampleBytes,
  });
  const scorer: Scorer = await loadScorer(options.model, { ...options.scorer, metrics });
  return { input, scorer, prepareOutput };
}

function checkScorerCovers(policy: Policy, scorer: Scorer): void {
  const missing = policy.metrics.filter((m) => !scorer.metrics.includes(m));
  if (missing.length) {
    throw new FilterError('bad_threshold', `the policy reads ${missing.join(', ')} but the scorer does not score it`, {
      missing,
    });
  }
}

function openIntake(options: FilterJobOptions, scorer: Scorer): Intake {
  // image.s3 refs use the default AWS credential chain; MLMF_S3_ENDPOINT points at an S3-compatible server.
  const s3 = options.intake?.s3 ?? s3Client({ endpoint: process.env.MLMF_S3_ENDPOINT });
  const intake = new Intake({ ...options.intake, s3 }, scorer.preprocess);
  options.logger?.info('intake JPEG decoder', { jpegDecoder: intake.jpegDecoder });
  return intake;
}

/** The run's sinks in --out; a top-fraction run's first pass writes its accepts to `staging` instead of `curated`. */
interface FilterSinks {
  readonly curated: LocalCuratedSink;
  readonly audit: LocalAuditSink;
  readonly staging?: { readonly dir: string; readonly sink: LocalCuratedSink };
}

async function buildSinks(options: FilterJobOptions, model: ModelInfo): Promise<FilterSinks> {
  const curated = await LocalCuratedSink.open({
    dir: join(options.out, 'curated'),
    model,
    samplesPerShard: options.samplesPerShard,
  });
  const dir = join(options.out, '.staging');
  const staging = options.topFraction ? { dir, sink: await LocalCuratedSink.open({ dir, model }) } : undefined;
  const audit = await LocalAuditSink.open({ path: join(options.out, 'rejects.jsonl'), model });
  return { curated, audit, ...(staging ? { staging } : {}) };
}

interface Passes {
  readonly source: Source;
  readonly intake: Intake;
  readonly scorer: Scorer;
  readonly policy: Policy;
  readonly sinks: FilterSinks;
  readonly summary: SummaryCollector;
}

/**
 * The scoring pass, then a top-fraction run's second pass over what it staged; the data-bearing sinks are closed by
 * the run (a failing close fails it), the rest whatever happens.
 */
async function runPasses(options: FilterJobOptions, run: Passes): Promise<void> {
  const top = options.topFraction;
  const { source, intake, summary } = run;
  const { curated, audit, staging } = run.sinks;
  const ranking = new RankingValues();
  const progress = startProgress(options.progress, summary, source.sizeHint);
  try {
    await runPipeline({
      source,
      intake,
      scorer: run.scorer,
      policy: run.policy,
      sinks: [staging?.sink ?? curated, audit],
      pair: options.pair,
      intakeConcurrency: options.concurrency,
      maxPendingBytes: options.maxPendingBytes,
      signal: options.signal,
      abort: options.abort,
      logger: options.logger,
      onOutcome: (o) => {
        if (!top || o.decision === 'reject') summary.add(o);
        else ranking.add(o.scores[top.metric]!, o.expected?.[top.metric]);
      },
    });
    if (top && staging) {
      await staging.sink.flush();
      await applyTopFraction(staging.dir, top, ranking, [curated, audit], (o) => summary.add(o), options.logger);
    }
    // The sinks' close writes their last files (shards.json): a failure there fails the run, never silently.
    if (!options.abort?.aborted) await Promise.all([curated.close(), audit.close()]);
  } finally {
    progress.stop();
    const rest = new Closers();
    [() => source.close(), () => intake.close(), async () => staging?.sink.flush()].forEach((step) => rest.last(step));
    await rest.run((msg, ctx) => options.logger?.warn(msg, ctx));
  }
}

/** The run's summary, also written durably to --out/summary.json with what the run was given. */
async function summarise(
  options: FilterJobOptions,
  run: Pick<Passes, 'source' | 'intake' | 'scorer' | 'policy' | 'summary'>,
): Promise<RunSummary> {
  const { source, intake, policy, summary } = run;
  const top = options.topFraction;
  const result: RunSummary = {
    ...summary.summary(),
    ...(source instanceof ResumedSource
      ? { resumed: { previousRecords: summary.previous, skippedRecords: source.skipped } }
      : {}),
  };
  const file = {
    ...result,
    tool: toolInfo(),
    input: options.input,
    model: run.scorer.model,
    policy: {
      ...(top ? { topFraction: top } : {}),
      ...(policy instanceof RankingPolicy && !policy.thresholded
        ? {}
        : { thresholds: policy.thresholds, combine: policy.combine }),
    },
    // The metrics scored; the others are null in the outputs and count 0 in `scores`.
    metrics: run.scorer.metrics,
    interrupted: options.signal?.aborted ?? false,
    intake: { jpegDecoder: intake.jpegDecoder, nativeFallbacks: intake.nativeFallbacks },
  };
  await writeDurable(join(options.out, 'summary.json'), JSON.stringify(file, null, 2) + '\n');
  return result;
}

/**
 * The metrics the scorer scores: `options.metrics` (else `scorer.metrics` as an explicit list, else `all`), checked
 * against what the policy reads before any model loads.
 */
function scoredMetrics(options: FilterJobOptions, policy: Policy) {
  const selection: MetricSelection =
    options.metrics ??
    (options.scorer?.metrics?.length ? parseMetricSelection(options.scorer.metrics, CLI_METRICS) : 'all');
  const top = options.topFraction;
  const reads = `the policy reads (${policy.thresholds.map(formatThreshold).join(` ${policy.combine} `)})`;
  const ranks = `--top-fraction ranks on (--top-metric ${top?.metric})`;
  const thresholded = !(policy instanceof RankingPolicy) || policy.thresholded;
  const requiredBy = !top ? reads : thresholded ? `${reads} and ${ranks}` : ranks;
  return resolveMetricSelection(selection, policy.metrics, CLI_METRICS, requiredBy);
}

interface Progress {
  stop(): void;
}

function startProgress(mode: FilterJobOptions['progress'], s: SummaryCollector, total?: number): Progress {
  const chosen = mode ?? (process.stderr.isTTY ? 'bar' : 'log');
  if (chosen === 'none') return { stop() {} };
  if (chosen === 'log') {
    const timer = setInterval(() => process.stderr.write(formatProgressLine(s, total) + '\n'), 10_000);
    timer.unref();
    return { stop: () => clearInterval(timer) };
  }
  const bar = new cliProgress.SingleBar(
    {
      format: total
        ? '{bar} {percentage}% | {value}/{total} | accepted {accepted} rejected {rejected} | {rate} pairs/s | ETA {eta_formatted}'
        : '{value} processed | accepted {accepted} rejected {rejected} | {rate} pairs/s',
      stream: process.stderr,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total ?? 0, 0, { accepted: 0, rejected: 0, rate: '0.0' });
  const timer = setInterval(
    () => bar.update(s.records, { accepted: s.accepted, rejected: s.rejected, rate: s.pairsPerSecond.toFixed(1) }),
    250,
  );
  return {
    stop() {
      clearInterval(timer);
      bar.update(s.records, { accepted: s.accepted, rejected: s.rejected, rate: s.pairsPerSecond.toFixed(1) });
      bar.stop();
    },
  };
}

export function formatProgressLine(s: SummaryCollector, total?: number): string {
  const rate = s.pairsPerSecond;
  const eta = total && rate > 0 ? ` eta ${Math.max(0, (total - s.records) / rate).toFixed(0)}s` : '';
  return (
    `processed ${s.records}${total ? `/${total}` : ''} accepted ${s.accepted} rejected ${s.rejected} ` +
    `${rate.toFixed(1)} pairs/s${eta}`
  );
}

export { formatSummary };
