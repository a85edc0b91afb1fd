import { printable } from '../backfill/shard-job.ts';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Intake, IntakeOptions } from '../intake/index.ts';
import type { MlmScorer, ScorerOptions } from '../model/index.ts';
import { openFilter, type MlmFilter } from '../filter/index.ts';
import type { PairOptions } from '../pair/index.ts';
import { Closers } from '../pipeline/closers.ts';
import { silentLogger, type Logger } from '../support/logger.ts';
import { formatThreshold, Policy, type PolicyOptions } from '../policy/index.ts';
import {
  CLI_METRICS,
  parseMetricSelection,
  resolveMetricSelection,
  type MetricSelection,
} from '../policy/metric-selection.ts';
import { LocalAuditSink } from '../sinks/local-audit.ts';
import { LocalCuratedSink, writeDurable } from '../sinks/local-curated.ts';
import { PoolOutputs, type PoolOutputsSummary } from '../sinks/pool-outputs.ts';
import { checkKeptShardNames } from '../sinks/kept-shard-names.ts';
import {
  openInputs as openRunInputs,
  redactUrl,
  type InputItem,
  type InputReport,
  type InputSource,
} from '../inputs/index.ts';
import type { ModelInfo, Outcome, Source } from '../types.ts';
import { FilterError } from '../types.ts';
import { OutputLock } from './out-lock.ts';
import { checkOutput, ResumedSource } from './run-output.ts';
import { SummaryCollector, formatSummary, type RunSummary } from '../metrics/run-summary.ts';
import { RankingPolicy, RankingValues, type TopFractionOptions } from '../policy/ranking.ts';
import { applyTopFraction } from './top-fraction.ts';
import { DecidedCounts, startProgress } from './progress.ts';
import { toolInfo } from '../formats/curated-sample.ts';
import { ScoreCache } from '../cache/score-cache.ts';
import { scopeOfModel } from '../cache/key.ts';
import { checkCachePlace } from '../cache/admin.ts';
import { dedupeSetting, ImageDedupe } from '../cache/dedupe.ts';

/** Everything `mlm-filter filter` takes; the same keys are accepted in a `--config` JSON file. */
export interface FilterJobOptions {
  /**
   * What to read, in order (lib/inputs): JSONL files, `-` for stdin, WebDataset tar shards, directories of shards,
   * brace lists (`shards/{00000..00099}.tar`), `s3://bucket/key` objects and `s3://bucket/prefix/` prefixes,
   * http(s) URLs; tar and JSONL may be gzip-compressed. Each input is recognised by its first bytes.
   */
  readonly input: string | readonly string[];
  /** `jsonl` or `webdataset`: what stdin is read as, and what every input's bytes must agree with. */
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
  /** `fallbackToCpu` defaults to false here: an execution provider that cannot start fails the run (one line). */
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
  /**
   * WebDataset input: `curated/00000.tar` holds the kept samples of input `00000.tar` (img2dataset's habit) instead of
   * numbered shards; inputs sharing a name are refused. Not with `resume`. Default false.
   */
  readonly keepShardNames?: boolean;
  /**
   * A score cache directory (lib/cache): pairs scored before, by any run on this directory with the same model,
   * prompts and metrics, take their stored scores instead of the scorer's. Default none (off).
   */
  readonly scoreCache?: string;
  /**
   * The score cache's bound in GB (10^9 bytes) of entries: past it new scores are not stored (lookups go on; the
   * summary counts them as `notStored`). Default none. `mlm-filter cache clear --older-than` makes room.
   */
  readonly scoreCacheMaxGb?: number;
  /**
   * Image dedupe (lib/cache/dedupe.ts): `exact`, `near` or `near:D` rejects a pair whose image an accepted pair already
   * had, by this run or any run on the same `scoreCache` directory (which holds it, and is required). Default off.
   */
  readonly dedupeImages?: string;
  /** Write `<out>/pairs.parquet`, a row per pair decided (lib/sinks/parquet-table.ts). Default true. */
  readonly parquet?: boolean;
  /** Progress display: `bar` on a TTY, `log` lines otherwise, or `none`. Default: by TTY. */
  readonly progress?: 'bar' | 'log' | 'none';
  /** Graceful stop: nothing more is read; what was read is finished and written. */
  readonly signal?: AbortSignal;
  /** Hard stop: in-flight work is abandoned (a later `resume` run scores it). */
  readonly abort?: AbortSignal;
  readonly logger?: Logger;
}

/** Runs the main job: input -> MLM filter -> curated shards + rejects + summary. */
export async function runFilterJob(options: FilterJobOptions): Promise<RunSummary> {
  const top = options.topFraction;
  // In top-fraction mode the first pass applies the thresholds, if any, and stages what passes for the ranking.
  const policy = top ? new RankingPolicy(top, options.policy) : new Policy(options.policy);
  const metrics = scoredMetrics(options, policy);
  dedupeSetting(options);
  const note = noteTo(options);
  if (options.scoreCache) await checkCachePlace(options.scoreCache, options.out);
  // One run per --out, from before it is looked at until the run ends (or the process exits).
  const lock = await OutputLock.acquire(options.out, { breakLock: options.breakLock, note });
  try {
    return await runInLockedOutput(options, policy, metrics);
  } finally {
    await lock.release();
  }
}

/** Where a run tells the user something that does not stop it: its logger, else one line on stderr. */
const noteTo = (options: FilterJobOptions) => (message: string) =>
  options.logger
    ? options.logger.warn(message, { out: options.out })
    : process.stderr.write(`mlm-filter: ${message}\n`);

/** The run in a locked --out: inputs opened, sinks built, the passes run, summary.json written. */
async function runInLockedOutput(
  options: FilterJobOptions,
  policy: Policy,
  metrics: ReturnType<typeof scoredMetrics>,
): Promise<RunSummary> {
  const { input, filter, prepareOutput } = await openInputs(options, policy, metrics);
  const { scorer, intake } = filter;
  let cache: ScoreCache | undefined;
  let imageDedupe: ImageDedupe | undefined;
  try {
    // Before anything is written: a cache that cannot be opened fails the run with an untouched --out.
    if (options.scoreCache) ({ cache, imageDedupe } = await openScoreCache(options, scorer));
    options.logger?.info('intake JPEG decoder', { jpegDecoder: intake.jpegDecoder });
    await mkdir(options.out, { recursive: true }).catch((err: Error) => {
      throw new FilterError('output_unwritable', `cannot create ${options.out}: ${err.message}`, { out: options.out });
    });
    const previous = await prepareOutput();
    const source = previous ? new ResumedSource(input, previous.ids, options.pair) : input;
    const sinks = await buildSinks(options, scorer.model);
    const summary = new SummaryCollector(previous?.summary);
    const resumed = previous !== undefined;
    const passes = { source, filter, intake, scorer, policy, sinks, summary, resumed, cache, imageDedupe };
    const outputs = await runPasses(options, passes);
    const summarised = { source, inputs: input, intake, scorer, policy, summary, outputs, cache, imageDedupe };
    return await summarise(options, summarised);
  } finally {
    await Promise.all([filter.close(), input.close(), cache?.close()]);
  }
}

const inputSpecs = (options: FilterJobOptions): readonly string[] =>
  typeof options.input === 'string' ? [options.input] : options.input;

/** The output checked (nothing written yet), the input opened and the filter (model) opened, in that order. */
async function openInputs(options: FilterJobOptions, policy: Policy, metrics: ReturnType<typeof scoredMetrics>) {
  const { resume, overwrite, topFraction } = options;
  const prepareOutput = await checkOutput(options.out, { resume, overwrite, topFraction: topFraction !== undefined });
  const { source: input, items } = await openRunInputs(inputSpecs(options), {
    format: options.inputFormat,
    pair: options.pair,
    read: { maxSampleBytes: options.maxSampleBytes },
    // http(s) inputs go through the image fetcher's address guard and its `--allow-address` rules: one policy.
    http: { allowAddresses: options.intake?.allowAddresses, userAgent: options.intake?.userAgent },
  });
  try {
    if (options.keepShardNames) checkKeepShardNames(options, items);
    const filter: MlmFilter = await openFilter({
      model: options.model,
      policy,
      metrics,
      // A provider asked for and unavailable is a one-line error, unless the caller accepts cpu (scorer.fallbackToCpu).
      scorer: { ...options.scorer, fallbackToCpu: options.scorer?.fallbackToCpu ?? false },
      // The image dedupe reads each image's perceptual hash, made by the intake beside the tensor.
      intake: options.dedupeImages ? { ...options.intake, perceptualHash: true } : options.intake,
      pair: options.pair,
      concurrency: options.concurrency,
    });
    return { input, filter, prepareOutput };
  } catch (err) {
    await input.close();
    throw err;
  }
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
    keepShardNames: options.keepShardNames,
  });
  const dir = join(options.out, '.staging');
  const staging = options.topFraction ? { dir, sink: await LocalCuratedSink.open({ dir, model }) } : undefined;
  const audit = await LocalAuditSink.open({ path: join(options.out, 'rejects.jsonl'), model });
  return { curated, audit, ...(staging ? { staging } : {}) };
}

interface Passes {
  readonly source: Source;
  readonly filter: MlmFilter;
  readonly intake: Intake;
  readonly scorer: MlmScorer;
  readonly policy: Policy;
  readonly sinks: FilterSinks;
  readonly summary: SummaryCollector;
  /** Whether the run resumes an earlier one (the pool outputs read its decisions back). */
  readonly resumed: boolean;
  /** --score-cache, open. */
  readonly cache?: ScoreCache;
  /** --dedupe-images, on the --score-cache store. */
  readonly imageDedupe?: ImageDedupe;
}

/**
 * The --score-cache store, keyed for this scorer's model, prompts and metrics, and the --dedupe-images policy on the
 * same store. LMDB's native module is loaded only here: a run without --score-cache never loads it.
 */
async function openScoreCache(
  options: FilterJobOptions,
  scorer: MlmScorer,
): Promise<{ cache: ScoreCache; imageDedupe?: ImageDedupe }> {
  const { LmdbScoreStore } = await import('../cache/store.ts');
  const scope = await scopeOfModel(scorer.modelDir, scorer.model, scorer.metrics);
  const maxBytes = options.scoreCacheMaxGb === undefined ? undefined : options.scoreCacheMaxGb * 1e9;
  const store = LmdbScoreStore.open(options.scoreCache!, { maxBytes });
  const cache = new ScoreCache(store, scope);
  const dedupe = dedupeSetting(options);
  return { cache, ...(dedupe ? { imageDedupe: new ImageDedupe(store, { ...dedupe, spec: scorer.preprocess }) } : {}) };
}

/**
 * The scoring pass, then a top-fraction run's second pass over what it staged; the data-bearing sinks are closed by
 * the run (a failing close fails it), the rest whatever happens.
 */
async function runPasses(options: FilterJobOptions, run: Passes): Promise<PoolOutputsSummary | undefined> {
  const top = options.topFraction;
  const { source, summary } = run;
  const { curated, audit, staging } = run.sinks;
  const ranking = new RankingValues();
  const pool = await PoolOutputs.open(options.out, { parquet: options.parquet, resumed: run.resumed });
  // What the summary counts, the pool outputs hold: the same outcomes, decided for good.
  const decided = (o: Outcome) => {
    summary.add(o);
    pool.add(o);
  };
  let outputs: PoolOutputsSummary | undefined;
  const counts = new DecidedCounts(summary);
  const progress = startProgress(options.progress, counts, source.sizeHint);
  try {
    await run.filter.run({
      source,
      sinks: [staging?.sink ?? curated, audit],
      maxPendingBytes: options.maxPendingBytes,
      signal: options.signal,
      abort: options.abort,
      logger: options.logger,
      ...(run.cache ? { scoreCache: run.cache } : {}),
      ...(run.imageDedupe ? { imageDedupe: run.imageDedupe } : {}),
      onDecided: (o) => counts.add(o),
      onOutcome: (o) => {
        if (!top || o.decision === 'reject') decided(o);
        else ranking.add(o.scores[top.metric]!, o.expected?.[top.metric]);
      },
    });
    if (top && staging) {
      await staging.sink.flush();
      await applyTopFraction(staging.dir, top, ranking, [curated, audit], decided, options.logger);
    }
    // The sinks' close writes their last files (shards.json): a failure there fails the run, never silently.
    if (!options.abort?.aborted) {
      await Promise.all([curated.close(), audit.close()]);
      outputs = await pool.close(noteTo(options));
    }
  } finally {
    progress.stop();
    if (!outputs) await pool.discard();
    const rest = new Closers();
    [() => source.close(), async () => staging?.sink.flush()].forEach((step) => rest.last(step));
    await rest.run(options.logger ?? silentLogger);
  }
  return outputs;
}

/** The run's summary, also written durably to --out/summary.json with what the run was given. */
async function summarise(
  options: FilterJobOptions,
  run: Pick<Passes, 'source' | 'intake' | 'scorer' | 'policy' | 'summary' | 'cache' | 'imageDedupe'> & {
    inputs: InputSource;
    outputs?: PoolOutputsSummary;
  },
): Promise<RunSummary> {
  const { source, intake, policy, summary } = run;
  const inputs = run.inputs.report();
  warnTruncated(options, inputs.truncatedShards);
  const top = options.topFraction;
  const notStored = run.cache?.notStored ?? 0;
  // A cache at its bound: said once, at the end, with the count (the run itself is not affected).
  if (notStored > 0) {
    const bound = `its --score-cache-max-gb bound (${options.scoreCacheMaxGb} GB)`;
    noteTo(options)(
      `score cache ${options.scoreCache} reached ${bound}: ${notStored} scores not stored (mlm-filter cache clear makes room)`,
    );
  }
  const full = notStored > 0 ? { notStored } : {};
  const result: RunSummary = {
    ...summary.summary(),
    ...(source instanceof ResumedSource
      ? { resumed: { previousRecords: summary.previous, skippedRecords: source.skipped } }
      : {}),
  };
  const file = {
    ...result,
    tool: toolInfo(),
    // A URL's user and password are not written down.
    input: typeof options.input === 'string' ? redactUrl(options.input) : options.input.map(redactUrl),
    // Shards cut short (each is also a truncated_shard reject): the run read less than its inputs were meant to hold.
    inputs: { count: inputs.count, truncatedShards: inputs.truncatedShards },
    model: run.scorer.model,
    policy: {
      ...(top ? { topFraction: top } : {}),
      ...(policy instanceof RankingPolicy && !policy.thresholded
        ? {}
        : { thresholds: policy.thresholds, combine: policy.combine }),
    },
    // The metrics scored; the others are null in the outputs and count 0 in `scores`.
    metrics: run.scorer.metrics,
    // The provider asked for and the one that ran (they differ only after a fallback the caller allowed).
    executionProvider: {
      requested: options.scorer?.executionProvider ?? 'cpu',
      used: run.scorer.executionProvider,
    },
    interrupted: options.signal?.aborted ?? false,
    ...(run.outputs ? { outputs: run.outputs } : {}),
    intake: { jpegDecoder: intake.jpegDecoder, nativeFallbacks: intake.nativeFallbacks },
    // Hits took stored scores; misses went to the scorer (scorerPairs: the pairs it scored, this run).
    ...(run.cache
      ? { scoreCache: { dir: options.scoreCache, ...run.cache.counts, scorerPairs: run.scorer.stats().pairs, ...full } }
      : {}),
    // Pairs rejected duplicate_image this run, by kind of match.
    ...(run.imageDedupe
      ? {
          imageDedupe: {
            mode: run.imageDedupe.mode,
            maxDistance: run.imageDedupe.maxDistance,
            duplicates: { ...run.imageDedupe.counts },
          },
        }
      : {}),
  };
  await writeDurable(join(options.out, 'summary.json'), JSON.stringify(file, null, 2) + '\n');
  return result;
}

/** --keep-shard-names: refused where it cannot hold (before anything is written), else the input names checked. */
function checkKeepShardNames(options: FilterJobOptions, items: readonly InputItem[]): void {
  const refuse = (why: string) => {
    throw new FilterError('bad_usage', `--keep-shard-names ${why}`, { input: options.input });
  };
  if (items.some((item) => item.format !== 'webdataset'))
    refuse('names curated shards after input shards: the input is not WebDataset');
  // A resumed run would write a second part of a shard already named (its samples cannot be joined to it).
  if (options.resume) refuse('cannot --resume (a stopped run is re-run with --overwrite)');
  checkKeptShardNames(items.map((item) => item.name));
}

function warnTruncated(options: FilterJobOptions, cut: InputReport['truncatedShards']): void {
  for (const t of cut) {
    const message = `warning: shard ${t.shard} is truncated at byte ${t.offset} (${t.message}); ${t.samplesRead} samples read`;
    if (options.logger) options.logger.warn(message, { ...t });
    else process.stderr.write(`mlm-filter: ${printable(message)}\n`);
  }
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

export { formatSummary };
