import { readFile, stat } from 'node:fs/promises';
import { buffer } from 'node:stream/consumers';
import { Command, Option, type OptionValues } from 'commander';
import { EXECUTION_PROVIDER_CHOICES, EXECUTION_PROVIDERS } from '../model/execution-providers.ts';
import { exitAfterScorerThreads } from '../model/scorer-threads.ts';
import { buildPrompt, CONVERSATION_FORMATS, isConversationFormat } from '../model/prompt.ts';
import { PIPELINE_DEFAULTS } from '../pipeline/defaults.ts';
import { DEFAULT_THRESHOLDS, formatThreshold, parseThreshold, type Threshold } from '../policy/index.ts';
import { CLI_METRICS, parseMetricSelection } from '../policy/metric-selection.ts';
import { FilterError, METRICS, type MetricKey, type MetricShort } from '../types.ts';
// The filter job pulls in onnxruntime, sharp, undici and the AWS SDK: loaded by its action, so --help stays fast.
import type { FilterJobOptions } from './filter.ts';
import { addBackfillCommands } from './backfill.ts';
import { addCacheCommands } from './cache.ts';
import { fractionThreshold, fractionThresholdMessage } from '../policy/fraction-thresholds.ts';
import type { FilterConfig } from './filter-config.ts';
import { addOpsCommands } from './ops.ts';
import { addPublishCommands } from './publish.ts';
import { addVersionOptions } from './version.ts';
import { configureUsage, reportError, shownDefault, withQuotingHint } from './usage.ts';

/** Exit codes: 0 done, 1 runtime failure, 2 bad usage or configuration, 130 interrupted. */
export const EXIT = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

// Argument parsers throw coded FilterErrors (commander passes them through), so a bad value reports its own catalog
// code, e.g. bad_threshold, rather than commander's generic one.
const collect = (value: string, previous: string[] = []) => [...previous, value];
const positiveInt = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) {
    throw new FilterError('invalid_option', `${name} must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return n;
};
const positiveNumber = (name: string) => (value: string) => {
  const n = Number(value);
  if (!(n > 0) || !Number.isFinite(n)) {
    throw new FilterError('invalid_option', `${name} must be a positive number, got ${JSON.stringify(value)}`);
  }
  return n;
};
const thresholdArg = (value: string, previous: Threshold[] = []) => {
  try {
    return [...previous, parseThreshold(value)];
  } catch (err) {
    throw withQuotingHint(err, value);
  }
};
/** The worker's --thresholds list is checked here (with the quoting hint) and handed on as MLMF_THRESHOLDS text. */
const thresholdListArg = (value: string) => {
  for (const condition of value.split(',').filter((c) => c.trim())) thresholdArg(condition);
  return value;
};
const topFractionArg = (value: string) => {
  const f = Number(value);
  if (!(f > 0 && f <= 1)) {
    throw new FilterError('bad_top_fraction', `--top-fraction must be within (0, 1], got ${JSON.stringify(value)}`);
  }
  return f;
};

const metricsArg = (value: string) => parseMetricSelection(value, CLI_METRICS);

function metricKey(value: string): MetricKey {
  const m = METRICS.find((x) => x.key === value || x.short === value);
  if (!m) {
    const names = METRICS.map((x) => `${x.short} (${x.key})`).join(', ');
    throw new FilterError('unknown_metric', `--metric ${JSON.stringify(value)}: metric must be one of ${names}`);
  }
  return m.key;
}

function metricShort(value: string): MetricShort {
  const m = METRICS.find((x) => x.key === value || x.short === value);
  if (!m) {
    const names = METRICS.map((x) => x.short).join(', ');
    throw new FilterError('unknown_metric', `--top-metric ${JSON.stringify(value)}: metric must be one of ${names}`);
  }
  return m.short;
}

/** `--out` must be a directory (made when missing): an existing file there is a usage error, before any model loads. */
async function checkOutDir(out: string): Promise<void> {
  const s = await stat(out).catch(() => undefined);
  if (s && !s.isDirectory()) {
    throw new FilterError(
      'output_not_directory',
      `--out ${out} is an existing file: give a directory (it is created when missing)`,
      { out },
    );
  }
}

/** The caption of `prompt --caption-file`, byte for byte; `-` reads stdin to its end (a pipe, a file or a TTY). */
async function readCaption(path: string): Promise<string> {
  // Buffer decoding, as readFile's: a byte-order mark stays in the caption (TextDecoder would drop it).
  if (path === '-') return (await buffer(process.stdin)).toString('utf8');
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new FilterError('input_unreadable', `cannot read --caption-file ${path}: ${(err as Error).message}`, {
      path,
    });
  }
}

/**
 * Graceful stop on the first SIGINT/SIGTERM (finish, flush, ack), hard stop on the second, which then also runs
 * `onHardStop` (the filter command exits there and then).
 */
function stopSignals(onHardStop?: () => void): { signal: AbortSignal; abort: AbortSignal } {
  const graceful = new AbortController();
  const hard = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    if (!graceful.signal.aborted) {
      process.stderr.write(`\n${sig}: draining (finishing in-flight pairs); send again to stop at once\n`);
      graceful.abort(new Error(sig));
    } else {
      hard.abort(new Error(sig));
      onHardStop?.();
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return { signal: graceful.signal, abort: hard.signal };
}

// Defaults are shown, not applied (shownDefault): a --config file or the environment fills what the flags leave out.
const opt = (flags: string, description: string, shown?: string) =>
  shown === undefined ? new Option(flags, description) : shownDefault(new Option(flags, description), shown);

export function buildProgram(): Command {
  const program = configureUsage(
    new Command('mlm-filter').description('Filter image-text pairs with the fine-tuned MLM filter (Wang et al. 2024)'),
  );
  addFilterCommand(program);
  addPromptCommand(program);
  addWorkerCommand(program);
  addOpsCommands(program);
  addCacheCommands(program);
  addBackfillCommands(program);
  addPublishCommands(program);
  addVersionOptions(program);
  return program;
}

function addFilterCommand(program: Command): void {
  program
    .command('filter')
    .description('score pairs from a JSONL file or WebDataset shards; write curated shards, rejects and a summary')
    .addOption(
      new Option(
        '--input <path>',
        'what to read, repeatable: JSONL, - for stdin, tar shards or a directory of them, brace lists ' +
          "('shards/{00000..00099}.tar'), s3://bucket/key or s3://bucket/prefix/, http(s) URLs; plain or gzip",
      )
        .argParser(collect)
        .makeOptionMandatory(),
    )
    .requiredOption('--out <dir>', 'output directory (curated/, rejects.jsonl, summary.json), created when missing')
    .requiredOption('--model <dir>', 'exported model directory, or a hub id with a cached export')
    .addOption(
      opt('--input-format <fmt>', 'input format (stdin, and what every input must be)', 'by content').choices([
        'jsonl',
        'webdataset',
      ]),
    )
    .addOption(
      opt(
        '--threshold <cond>',
        "keep pairs where METRIC OP VALUE holds, repeatable; quote it in a shell: --threshold 'itm>=66'; " +
          'with --top-fraction, applied first',
        DEFAULT_THRESHOLDS.map(formatThreshold).join(' and '),
      ).argParser(thresholdArg),
    )
    .addOption(opt('--combine <op>', 'how thresholds combine', 'and').choices(['and', 'or']))
    .addOption(
      opt(
        '--top-fraction <f>',
        'batch jobs: keep the best fraction (0..1] on --top-metric of the pairs that pass --threshold (of every ' +
          'scored pair without --threshold); the others are rejected as below_threshold',
        'off',
      ).argParser(topFractionArg),
    )
    .addOption(opt('--top-metric <metric>', 'metric ranked by --top-fraction', 'itm').argParser(metricShort))
    .addOption(
      opt(
        '--metrics <list>',
        'metrics to score: all, policy (only those the thresholds and --top-metric read), or e.g. itm,odf,ctq; ' +
          'unscored metrics are null in the outputs',
        'all',
      ).argParser(metricsArg),
    )
    .addOption(
      opt(
        '--allow-address <cidr|host:port>',
        'open a blocked address for image and http(s) input fetches, repeatable',
        'none',
      ).argParser(collect),
    )
    .addOption(
      opt('--user-agent <ua>', 'User-Agent for image fetches', 'mlm-filter-stream/0.1 (image-text pair filtering)'),
    )
    .addOption(
      opt('--jpeg-decoder <decoder>', 'JPEG decoder for model tensors', 'auto: native when built, else sharp').choices([
        'auto',
        'native',
        'sharp',
      ]),
    )
    .addOption(
      opt(
        '--jpeg-fast-decode',
        'speed mode: let libjpeg decode JPEGs at a DCT scale (~1.5x fewer intake CPU-seconds per pair; tensors ' +
          "~0.3-0.9/255 off the reference's PIL ones, expected scores moved by up to ~0.1 point, more on some models)",
        "off: full decode, tensors equal PIL's bit for bit",
      ),
    )
    .addOption(
      opt('--jpeg-full-decode', 'the default full decode, said explicitly (kept for older scripts)', 'on').conflicts(
        'jpegFastDecode',
      ),
    )
    .addOption(
      opt(
        '--concurrency <n>',
        'images fetched and decoded at once',
        `${PIPELINE_DEFAULTS.intakeConcurrency}`,
      ).argParser(positiveInt('--concurrency')),
    )
    .addOption(opt('--batch-size <n>', 'pairs per scorer batch', '8').argParser(positiveInt('--batch-size')))
    .addOption(
      opt(
        '--execution-provider <ep>',
        'onnxruntime execution provider; one that cannot start here is an error (execution_provider_unavailable)',
        'cpu',
      ).choices(EXECUTION_PROVIDERS),
    )
    .addOption(opt('--cpu-fallback', 'run on cpu, with a warning, when --execution-provider cannot start', 'off'))
    .addOption(opt('--dtype <dtype>', 'model files to load', 'fp32').choices(['fp32', 'fp16']))
    .addOption(
      opt('--threads <n>', 'intra-op threads per inference worker', 'all cores').argParser(positiveInt('--threads')),
    )
    .addOption(
      opt(
        '--reference-mode',
        "reproduce the reference scorer's numbers (no pad-to-square, its 1-2 greedy tokens under the checkpoint's " +
          'repetition penalty and eos ids)',
        'off',
      ),
    )
    .addOption(
      opt('--samples-per-shard <n>', 'accepted samples per curated shard', '1000').argParser(
        positiveInt('--samples-per-shard'),
      ),
    )
    .addOption(
      opt('--max-caption-chars <n>', 'longest caption accepted', '4096').argParser(positiveInt('--max-caption-chars')),
    )
    .addOption(
      opt('--max-sample-bytes <n>', 'WebDataset: most bytes a sample keeps (image, .txt, .json)', '33554432').argParser(
        positiveInt('--max-sample-bytes'),
      ),
    )
    .addOption(
      opt(
        '--max-pending-bytes <n>',
        'WebDataset: sample bytes read and not yet written',
        `${PIPELINE_DEFAULTS.maxPendingBytes}`,
      ).argParser(positiveInt('--max-pending-bytes')),
    )
    .addOption(
      opt(
        '--parquet',
        'write pairs.parquet: one row per pair decided (ids, url, caption, input, scores, reasons)',
        'on',
      ),
    )
    .addOption(opt('--no-parquet', 'do not write pairs.parquet', 'off: pairs.parquet is written'))
    .addOption(
      opt(
        '--keep-shard-names',
        "WebDataset input: curated/00000.tar holds input 00000.tar's kept samples (img2dataset's habit) instead " +
          'of numbered shards; two inputs with one name are refused',
        'off',
      ).conflicts('resume'),
    )
    .addOption(
      opt(
        '--score-cache <dir>',
        'reuse scores: pairs (image bytes, caption) scored before with this model, prompts and metrics take the ' +
          "scores stored in <dir> (an LMDB store, made if missing; see mlm-filter cache) instead of the scorer's",
        'off',
      ),
    )
    .addOption(
      opt(
        '--score-cache-max-gb <n>',
        'with --score-cache: stop storing new scores once its entries take n GB (lookups go on)',
        'no bound',
      ).argParser(positiveNumber('--score-cache-max-gb')),
    )
    .addOption(
      opt(
        '--dedupe-images <mode>',
        'reject a pair whose image was already accepted (by this run or any run on --score-cache, which it needs): ' +
          '`exact` (same decoded pixels) or `near`/`near:D` (perceptual hashes within D of 64 bits; near is near:6)',
        'off',
      ),
    )
    .addOption(
      opt(
        '--config <file>',
        'JSON file with the same options (flags win), checked against schema/filter-config.schema.json',
        'none',
      ),
    )
    .addOption(
      opt(
        '--allow-fraction-thresholds',
        'accept threshold values between 0 and 1 (the scores are 0..100: itm>=0.5 is refused as a likely itm>=50)',
        'off',
      ),
    )
    .addOption(opt('--print-config', 'print the effective options as a --config file and exit', 'off'))
    .addOption(opt('--dry-run', 'check everything and list what would be read and written, then exit', 'off'))
    .addOption(opt('--progress <mode>', 'progress display', 'bar on a TTY, else log').choices(['bar', 'log', 'none']))
    .addOption(
      opt(
        '--resume',
        'continue the run --out holds: records whose ids are there are skipped, what a stopped run left ' +
          'half-written is completed or dropped, summary.json counts every run',
        'off',
      ).conflicts('overwrite'),
    )
    .addOption(opt('--overwrite', "replace the run --out holds (removes that run's files first)", 'off'))
    .addOption(
      opt(
        '--break-lock',
        "take over --out's lock when it names a run on another host, or cannot be read (say so only when that " +
          'run is gone: a stopped run on this host is taken over without it)',
        'off',
      ),
    )
    .action(filterAction);
}

/** Runs `mlm-filter filter` with its parsed flags (a --config file fills what they leave out). */
async function filterAction(flags: OptionValues): Promise<void> {
  await checkOutDir(flags.out);
  // Loaded with --config only: ajv and the schema stay off the path of --help.
  const config: FilterConfig = flags.config
    ? await (await import('./filter-config.ts')).readFilterConfig(flags.config)
    : {};
  // A second signal exits at once, whatever is in flight or blocked (stdin): --resume repairs what it cut short. The
  // scorer threads end first (one inference call at most): exiting under one aborts the process.
  const stops = stopSignals(() => {
    process.stderr.write('stopped at once: pairs in flight were dropped (--resume scores them)\n');
    void exitAfterScorerThreads(EXIT.interrupted);
  });
  const options: FilterJobOptions = {
    ...config,
    input: flags.input,
    out: flags.out,
    model: flags.model,
    inputFormat: flags.inputFormat ?? config.inputFormat,
    metrics: flags.metrics ?? config.metrics,
    topFraction: flags.topFraction
      ? { fraction: flags.topFraction, metric: flags.topMetric ?? config.topFraction?.metric ?? 'itm' }
      : config.topFraction && { ...config.topFraction, ...(flags.topMetric ? { metric: flags.topMetric } : {}) },
    policy: {
      thresholds: flags.threshold ?? config.policy?.thresholds,
      combine: flags.combine ?? config.policy?.combine,
    },
    intake: {
      ...config.intake,
      ...(flags.allowAddress ? { allowAddresses: flags.allowAddress } : {}),
      ...(flags.userAgent ? { userAgent: flags.userAgent } : {}),
      ...(flags.jpegDecoder ? { jpegDecoder: flags.jpegDecoder } : {}),
      ...(flags.jpegFastDecode ? { jpegDctScaling: true } : {}),
      ...(flags.jpegFullDecode ? { jpegDctScaling: false } : {}),
    },
    scorer: {
      ...config.scorer,
      ...(flags.batchSize ? { batchSize: flags.batchSize } : {}),
      ...(flags.executionProvider ? { executionProvider: flags.executionProvider } : {}),
      ...(flags.cpuFallback ? { fallbackToCpu: true } : {}),
      ...(flags.dtype ? { dtype: flags.dtype } : {}),
      ...(flags.threads ? { intraOpThreads: flags.threads } : {}),
      ...(flags.referenceMode ? { referenceMode: true } : {}),
    },
    pair: { ...config.pair, ...(flags.maxCaptionChars ? { maxCaptionChars: flags.maxCaptionChars } : {}) },
    concurrency: flags.concurrency ?? config.concurrency,
    maxSampleBytes: flags.maxSampleBytes ?? config.maxSampleBytes,
    maxPendingBytes: flags.maxPendingBytes ?? config.maxPendingBytes,
    samplesPerShard: flags.samplesPerShard ?? config.samplesPerShard,
    parquet: flags.parquet ?? config.parquet,
    keepShardNames: flags.keepShardNames ?? config.keepShardNames,
    scoreCache: flags.scoreCache ?? config.scoreCache,
    scoreCacheMaxGb: flags.scoreCacheMaxGb ?? config.scoreCacheMaxGb,
    dedupeImages: flags.dedupeImages ?? config.dedupeImages,
    progress: flags.progress ?? config.progress,
    resume: flags.resume ?? config.resume,
    overwrite: flags.overwrite ?? config.overwrite,
    breakLock: flags.breakLock ?? config.breakLock,
    signal: stops.signal,
    abort: stops.abort,
  };
  const allowFractionThresholds: boolean | undefined = flags.allowFractionThresholds ?? config.allowFractionThresholds;
  refuseFractionThresholds(options, allowFractionThresholds);
  refuseScoreCacheOptions(options);
  // Before --print-config and --dry-run too: a bad --dedupe-images value is one line, nothing read.
  (await import('../cache/dedupe.ts')).dedupeSetting(options, !flags.printConfig);
  if (flags.printConfig || flags.dryRun) return planFilter({ ...options, allowFractionThresholds }, flags);
  const { formatSummary, runFilterJob } = await import('./filter.ts');
  const summary = await runFilterJob(options);
  process.stdout.write(formatSummary(summary) + '\n');
  const table = options.parquet === false ? '' : `${options.out}/pairs.parquet, `;
  process.stdout.write(
    `wrote ${options.out}/curated/, ${options.out}/rejects.jsonl, ${table}${options.out}/summary.json\n`,
  );
  if (stops.signal.aborted) process.exitCode = EXIT.interrupted;
}

/** `--score-cache ''` would silently mean no cache, and a bound without a cache bounds nothing: both refused. */
function refuseScoreCacheOptions(options: FilterJobOptions): void {
  if (options.scoreCache === '') throw new FilterError('invalid_option', '--score-cache needs a directory, got ""');
  if (options.scoreCacheMaxGb !== undefined && options.scoreCache === undefined) {
    throw new FilterError('bad_usage', '--score-cache-max-gb bounds a score cache: give --score-cache DIR too');
  }
}

const OPT_IN = '--allow-fraction-thresholds, or "allowFractionThresholds": true in a --config file,';

/** `--threshold itm>=0.5` (the CLIPScore habit) refused with `did you mean itm>=50?`, unless opted in. */
function refuseFractionThresholds(options: FilterJobOptions, allowed: boolean | undefined): void {
  const fraction = fractionThreshold(options.policy?.thresholds ?? []);
  if (!fraction || allowed) return;
  throw new FilterError('bad_threshold', fractionThresholdMessage(fraction, OPT_IN), {
    threshold: formatThreshold(fraction.found),
  });
}

/** `--print-config` and `--dry-run`: print, touch nothing. */
async function planFilter(options: FilterJobOptions & FilterConfig, flags: OptionValues): Promise<void> {
  const { dryRun, effectiveConfig } = await import('./filter-plan.ts');
  if (flags.printConfig) process.stdout.write(JSON.stringify(effectiveConfig(options), null, 2) + '\n');
  if (flags.dryRun) process.stdout.write((await dryRun(options)).join('\n') + '\n');
}

function addPromptCommand(program: Command): void {
  program
    .command('prompt')
    .description("print the exact prompt the scorer feeds the model (byte-exact with the reference's template)")
    .addOption(
      new Option('--format <fmt>', 'conversation format').choices([...CONVERSATION_FORMATS]).makeOptionMandatory(),
    )
    .requiredOption('--metric <metric>', 'itm, odf, ctq, su (or the full key)', metricKey)
    .option('--caption <text>', 'the caption (this or --caption-file is required)')
    .option('--caption-file <path>', 'read the caption from a file (- for stdin), byte for byte')
    .action(async (flags) => {
      if ((flags.caption === undefined) === (flags.captionFile === undefined)) {
        throw new FilterError('bad_usage', 'give exactly one of --caption TEXT or --caption-file PATH|-');
      }
      if (!isConversationFormat(flags.format)) throw new FilterError('bad_usage', `unknown format ${flags.format}`);
      const caption: string = flags.caption ?? (await readCaption(flags.captionFile));
      process.stdout.write(buildPrompt(flags.format, flags.metric, caption));
    });
}

function addWorkerCommand(program: Command): void {
  // Flags map onto the worker's environment names (shared with infra/), so the container and the CLI read one format.
  // [flag, variable, help, default shown in --help (the worker's own, lib/worker/config.ts)]
  const workerFlags: [flag: string, env: string, help: string, shown?: string][] = [
    ['--brokers <list>', 'MLMF_BROKERS', 'Kafka bootstrap servers, comma-separated; required with Kafka topics'],
    ['--source-topic <topic>', 'MLMF_SOURCE_TOPIC', 'topic the crawler publishes pairs to; required without SQS'],
    ['--group-id <id>', 'MLMF_GROUP_ID', 'Kafka consumer group', 'mlm-filter'],
    ['--kafka-auth <mode>', 'MLMF_KAFKA_AUTH', 'none | iam | scram-sha-512', 'none'],
    ['--sqs-queue-url <url>', 'MLMF_SQS_QUEUE_URL', 'SQS queue to consume instead of Kafka'],
    ['--bucket <name>', 'MLMF_BUCKET', 'curated S3 bucket; required'],
    ['--prefix <prefix>', 'MLMF_PREFIX', 'key prefix in the curated bucket', 'none'],
    ['--audit-topic <topic>', 'MLMF_AUDIT_TOPIC', 'Kafka topic for audit events of rejects; required'],
    ['--accepted-topic <topic>', 'MLMF_ACCEPTED_TOPIC', 'optional Kafka topic for accepted pairs', 'none'],
    ['--dlq-topic <topic>', 'MLMF_DLQ_TOPIC', 'optional dead-letter topic', 'none'],
    ['--model <dir>', 'MLMF_MODEL_DIR', 'exported model directory', '/opt/mlm-filter/model'],
    [
      '--thresholds <list>',
      'MLMF_THRESHOLDS',
      "comma-separated, quoted in a shell: 'itm>=66,odf>=20'",
      'itm>=66,odf>=20',
    ],
    ['--execution-provider <ep>', 'MLMF_EXECUTION_PROVIDER', EXECUTION_PROVIDER_CHOICES, 'cpu'],
    ['--batch-size <n>', 'MLMF_BATCH_SIZE', 'pairs per scorer batch', '8'],
    ['--metrics <list>', 'MLMF_METRICS', 'metrics to score: all | policy | e.g. itm,odf', 'all'],
    ['--health-port <port>', 'MLMF_HEALTH_PORT', 'port of GET /healthz and /metrics (0: off)', '8080'],
    ['--s3-endpoint <url>', 'MLMF_S3_ENDPOINT', 'S3-compatible endpoint (local servers)', 'AWS'],
    ['--sqs-endpoint <url>', 'MLMF_SQS_ENDPOINT', 'SQS-compatible endpoint (local servers)', 'AWS'],
    ['--allow-addresses <list>', 'MLMF_ALLOW_ADDRESSES', 'addresses opened for image fetches, comma-separated', 'none'],
    ['--score-cache-table <name>', 'MLMF_SCORE_CACHE_TABLE', "the fleet's DynamoDB score cache table", 'none'],
  ];
  const worker = program
    .command('worker')
    .description('run the streaming worker (Kafka or SQS -> curated bucket + audit topic); flags override MLMF_* env');
  for (const [flag, name, help, shown] of workerFlags) {
    const option = opt(flag, `${help} [env ${name}]`, shown);
    worker.addOption(flag.startsWith('--thresholds ') ? option.argParser(thresholdListArg) : option);
  }
  worker.action(async (flags: Record<string, string | undefined>) => {
    const { configFrom, runWorker, workerLog } = await import('../worker/run.ts');
    // Flags and environment by the settings' documented names: a flag wins over its variable, and an error names both.
    const byName = new Map(
      workerFlags.map(([flag, name]) => [name, { flag: flag.split(' ')[0]!, key: flagKey(flag) }]),
    );
    const config = configFrom({
      get: (name) => {
        const f = byName.get(name);
        return (f && flags[f.key]) ?? process.env[name];
      },
      label: (name) => {
        const f = byName.get(name);
        return f ? `${f.flag} (${name})` : name;
      },
    });
    const { drainBudgetFromEnv, stopSignals: workerStops } = await import('../worker/stop-signals.ts');
    const stop = workerStops(workerLog, drainBudgetFromEnv(), {
      exit: (code) => void exitAfterScorerThreads(code),
      code: EXIT.interrupted,
    });
    process.on('SIGINT', stop.onSignal);
    process.on('SIGTERM', stop.onSignal);
    try {
      await runWorker(config, { signal: stop.graceful, abort: stop.hard });
      if (stop.hard.aborted) process.exitCode = EXIT.interrupted;
    } finally {
      // The run closed its clients; one that still holds a socket (kafkajs's heartbeat connection after a broker
      // restart) must not keep the process alive: exit once the exit code is set and the output had time to flush.
      setTimeout(() => void exitAfterScorerThreads(Number(process.exitCode ?? 0)), 1000).unref();
    }
  });
}

/** commander's option key of a flag: `--source-topic <topic>` -> `sourceTopic`. */
const flagKey = (flag: string) =>
  flag
    .replace(/^--/, '')
    .split(' ')[0]!
    .replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** Runs the CLI; returns the exit code instead of exiting, so tests can call it. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') {
      return EXIT.ok;
    }
    // One line per error; the error catalog says which codes are usage or configuration (2) and which runtime (1).
    const report = reportError(err, program, argv);
    process.stderr.write(report.text);
    return report.exitCode;
  }
}
