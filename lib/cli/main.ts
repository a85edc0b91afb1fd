import { exitCodeOf } from '../errors.ts';
import { readFile } from 'node:fs/promises';
import { Command, InvalidArgumentError, Option } from 'commander';
import { buildPrompt, CONVERSATION_FORMATS, isConversationFormat } from '../model/prompt.ts';
import { parseThreshold, type Threshold } from '../policy/index.ts';
import { CLI_METRICS, parseMetricSelection } from '../policy/metric-selection.ts';
import { FilterError, METRICS, type MetricKey, type MetricShort } from '../types.ts';
import { formatSummary, runFilterJob, type FilterJobOptions } from './filter.ts';
import { addOpsCommands } from './ops.ts';

/** Exit codes: 0 done, 1 runtime failure, 2 bad usage or configuration, 130 interrupted. */
export const EXIT = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

const collect = (value: string, previous: string[] = []) => [...previous, value];
const positiveInt = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer`);
  return n;
};
const thresholdArg = (value: string, previous: Threshold[] = []) => {
  try {
    return [...previous, parseThreshold(value)];
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
};

const metricsArg = (value: string) => {
  try {
    return parseMetricSelection(value, CLI_METRICS);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
};

function metricKey(value: string): MetricKey {
  const m = METRICS.find((x) => x.key === value || x.short === value);
  if (!m)
    throw new InvalidArgumentError(`metric must be one of ${METRICS.map((x) => `${x.short} (${x.key})`).join(', ')}`);
  return m.key;
}

function metricShort(value: string): MetricShort {
  const m = METRICS.find((x) => x.key === value || x.short === value);
  if (!m) throw new InvalidArgumentError(`metric must be one of ${METRICS.map((x) => x.short).join(', ')}`);
  return m.short;
}

/** Graceful stop on the first SIGINT/SIGTERM (finish, flush, ack), hard stop on the second. */
function stopSignals(): { signal: AbortSignal; abort: AbortSignal } {
  const graceful = new AbortController();
  const hard = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    if (!graceful.signal.aborted) {
      process.stderr.write(`\n${sig}: draining (finishing in-flight pairs); send again to stop at once\n`);
      graceful.abort(new Error(sig));
    } else hard.abort(new Error(sig));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return { signal: graceful.signal, abort: hard.signal };
}

export function buildProgram(): Command {
  const program = new Command('mlm-filter')
    .description('Filter image-text pairs with the fine-tuned MLM filter (Wang et al. 2024)')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('filter')
    .description('score pairs from a JSONL file or WebDataset shards; write curated shards, rejects and a summary')
    .requiredOption('--input <path>', 'JSONL file, - for stdin, a WebDataset .tar shard or a directory of shards')
    .requiredOption('--out <dir>', 'output directory (curated/, rejects.jsonl, summary.json)')
    .requiredOption('--model <dir>', 'exported model directory, or a hub id with a cached export')
    .addOption(
      new Option('--input-format <fmt>', 'input format (default: by extension)').choices(['jsonl', 'webdataset']),
    )
    .option(
      '--threshold <cond>',
      'keep pairs where METRIC OP VALUE holds, repeatable (default itm>=66 and odf>=20)',
      thresholdArg,
    )
    .addOption(new Option('--combine <op>', 'combine thresholds with').choices(['and', 'or']))
    .option(
      '--top-fraction <f>',
      'batch jobs: keep the best fraction (0..1] of the run on --top-metric instead of thresholds',
      (v) => {
        const f = Number(v);
        if (!(f > 0 && f <= 1)) throw new InvalidArgumentError('--top-fraction must be within (0, 1]');
        return f;
      },
    )
    .option('--top-metric <metric>', 'metric ranked by --top-fraction (default itm)', metricShort)
    .option(
      '--metrics <list>',
      'metrics to score: all (default), policy (only those the policy or --top-metric reads), or e.g. itm,odf,ctq; ' +
        'unscored metrics are null in the outputs',
      metricsArg,
    )
    .option('--allow-address <cidr|host:port>', 'open a blocked address for image fetches, repeatable', collect)
    .option('--user-agent <ua>', 'User-Agent for image fetches')
    .addOption(
      new Option(
        '--jpeg-decoder <decoder>',
        'JPEG decoder for model tensors (default auto: native when built)',
      ).choices(['auto', 'native', 'sharp']),
    )
    .option(
      '--jpeg-full-decode',
      "decode JPEGs at full size: tensors equal the reference's PIL ones bit for bit (slower)",
    )
    .option('--concurrency <n>', 'images fetched and decoded at once', positiveInt('--concurrency'))
    .option('--batch-size <n>', 'pairs per scorer batch', positiveInt('--batch-size'))
    .addOption(
      new Option('--execution-provider <ep>', 'onnxruntime execution provider').choices(['cuda', 'webgpu', 'cpu']),
    )
    .addOption(new Option('--dtype <dtype>', 'model files to load').choices(['fp32', 'fp16']))
    .option('--threads <n>', 'intra-op threads per inference worker', positiveInt('--threads'))
    .option('--reference-mode', "reproduce the reference scorer's numbers (no pad-to-square, 2 new tokens)")
    .option('--samples-per-shard <n>', 'accepted samples per curated shard', positiveInt('--samples-per-shard'))
    .option('--max-caption-chars <n>', 'longest caption accepted', positiveInt('--max-caption-chars'))
    .option('--config <file>', 'JSON file with the same options (flags win)')
    .addOption(new Option('--progress <mode>', 'progress display').choices(['bar', 'log', 'none']))
    .action(async (flags) => {
      const config = flags.config ? await readConfig(flags.config) : {};
      const stops = stopSignals();
      const options: FilterJobOptions = {
        ...config,
        input: flags.input,
        out: flags.out,
        model: flags.model,
        inputFormat: flags.inputFormat ?? config.inputFormat,
        metrics: flags.metrics ?? config.metrics,
        topFraction: flags.topFraction
          ? { fraction: flags.topFraction, metric: flags.topMetric ?? 'itm' }
          : config.topFraction,
        policy: {
          thresholds: flags.threshold ?? config.policy?.thresholds,
          combine: flags.combine ?? config.policy?.combine,
        },
        intake: {
          ...config.intake,
          ...(flags.allowAddress ? { allowAddresses: flags.allowAddress } : {}),
          ...(flags.userAgent ? { userAgent: flags.userAgent } : {}),
          ...(flags.jpegDecoder ? { jpegDecoder: flags.jpegDecoder } : {}),
          ...(flags.jpegFullDecode ? { jpegDctScaling: false } : {}),
        },
        scorer: {
          ...config.scorer,
          ...(flags.batchSize ? { batchSize: flags.batchSize } : {}),
          ...(flags.executionProvider ? { executionProvider: flags.executionProvider } : {}),
          ...(flags.dtype ? { dtype: flags.dtype } : {}),
          ...(flags.threads ? { intraOpThreads: flags.threads } : {}),
          ...(flags.referenceMode ? { referenceMode: true } : {}),
        },
        pair: { ...config.pair, ...(flags.maxCaptionChars ? { maxCaptionChars: flags.maxCaptionChars } : {}) },
        concurrency: flags.concurrency ?? config.concurrency,
        samplesPerShard: flags.samplesPerShard ?? config.samplesPerShard,
        progress: flags.progress ?? config.progress,
        signal: stops.signal,
      };
      const summary = await runFilterJob(options);
      process.stdout.write(formatSummary(summary) + '\n');
      process.stdout.write(
        `wrote ${options.out}/curated/, ${options.out}/rejects.jsonl, ${options.out}/summary.json\n`,
      );
      if (stops.signal.aborted) process.exitCode = EXIT.interrupted;
    });

  program
    .command('prompt')
    .description("print the exact prompt the scorer feeds the model (byte-exact with the reference's template)")
    .addOption(
      new Option('--format <fmt>', 'conversation format').choices([...CONVERSATION_FORMATS]).makeOptionMandatory(),
    )
    .requiredOption('--metric <metric>', 'itm, odf, ctq, su (or the full key)', metricKey)
    .option('--caption <text>', 'the caption (or use --caption-file)')
    .option('--caption-file <path>', 'read the caption from a file (- for stdin), byte for byte')
    .action(async (flags) => {
      if ((flags.caption === undefined) === (flags.captionFile === undefined)) {
        throw new FilterError('bad_usage', 'give exactly one of --caption or --caption-file');
      }
      if (!isConversationFormat(flags.format)) throw new FilterError('bad_usage', `unknown format ${flags.format}`);
      const caption: string =
        flags.caption ?? (await readFile(flags.captionFile === '-' ? 0 : flags.captionFile, 'utf8'));
      process.stdout.write(buildPrompt(flags.format, flags.metric, caption));
    });

  // Flags map onto the worker's environment names (shared with infra/), so the container and the CLI read one format.
  const workerFlags: [flag: string, env: string, help: string][] = [
    ['--brokers <list>', 'MLMF_BROKERS', 'Kafka bootstrap servers, comma-separated'],
    ['--source-topic <topic>', 'MLMF_SOURCE_TOPIC', 'topic the crawler publishes pairs to'],
    ['--group-id <id>', 'MLMF_GROUP_ID', 'Kafka consumer group'],
    ['--kafka-auth <mode>', 'MLMF_KAFKA_AUTH', 'none | iam | scram-sha-512'],
    ['--sqs-queue-url <url>', 'MLMF_SQS_QUEUE_URL', 'SQS queue to consume instead of Kafka'],
    ['--bucket <name>', 'MLMF_BUCKET', 'curated S3 bucket'],
    ['--prefix <prefix>', 'MLMF_PREFIX', 'key prefix in the curated bucket'],
    ['--audit-topic <topic>', 'MLMF_AUDIT_TOPIC', 'Kafka topic for audit events of rejects'],
    ['--accepted-topic <topic>', 'MLMF_ACCEPTED_TOPIC', 'optional Kafka topic for accepted pairs'],
    ['--dlq-topic <topic>', 'MLMF_DLQ_TOPIC', 'optional dead-letter topic'],
    ['--model <dir>', 'MLMF_MODEL_DIR', 'exported model directory'],
    ['--thresholds <list>', 'MLMF_THRESHOLDS', 'e.g. itm>=66,odf>=20'],
    ['--execution-provider <ep>', 'MLMF_EXECUTION_PROVIDER', 'cuda | webgpu | cpu'],
    ['--batch-size <n>', 'MLMF_BATCH_SIZE', 'pairs per scorer batch'],
    ['--metrics <list>', 'MLMF_METRICS', 'metrics to score: all (default) | policy | e.g. itm,odf'],
    ['--health-port <port>', 'MLMF_HEALTH_PORT', 'port of GET /healthz and /metrics'],
    ['--s3-endpoint <url>', 'MLMF_S3_ENDPOINT', 'S3-compatible endpoint (local servers)'],
    ['--sqs-endpoint <url>', 'MLMF_SQS_ENDPOINT', 'SQS-compatible endpoint (local servers)'],
    ['--allow-addresses <list>', 'MLMF_ALLOW_ADDRESSES', 'addresses opened for image fetches, comma-separated'],
  ];
  const worker = program
    .command('worker')
    .description('run the streaming worker (Kafka or SQS -> curated bucket + audit topic); flags override MLMF_* env');
  for (const [flag, , help] of workerFlags) worker.option(flag, help);
  worker.action(async (flags: Record<string, string | undefined>) => {
    const { configFromEnv, runWorker } = await import('../../functions/worker/main.ts');
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const [flag, name] of workerFlags) {
      const key = flag
        .replace(/^--/, '')
        .split(' ')[0]!
        .replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
      if (flags[key] !== undefined) env[name] = flags[key];
    }
    const stops = stopSignals();
    await runWorker(configFromEnv(env), { signal: stops.signal, abort: stops.abort });
  });

  addOpsCommands(program);
  return program;
}

async function readConfig(path: string): Promise<Partial<FilterJobOptions>> {
  try {
    let config = JSON.parse(await readFile(path, 'utf8')) as Partial<FilterJobOptions>;
    if (config.metrics !== undefined) {
      const raw = config.metrics as unknown;
      if (typeof raw !== 'string' && !(Array.isArray(raw) && raw.every((m) => typeof m === 'string'))) {
        throw new FilterError('bad_metrics', `${path}: metrics must be "all", "policy" or a list of metric names`, {
          path,
        });
      }
      config = { ...config, metrics: parseMetricSelection(raw, { ...CLI_METRICS, name: `${path}: metrics` }) };
    }
    if (config.policy?.thresholds) {
      const raw = config.policy.thresholds as unknown[];
      return {
        ...config,
        policy: {
          ...config.policy,
          thresholds: raw.map((t) => (typeof t === 'string' ? parseThreshold(t) : (t as Threshold))),
        },
      };
    }
    return config;
  } catch (err) {
    if (err instanceof FilterError) throw err;
    throw new FilterError('bad_config', `cannot read config ${path}: ${(err as Error).message}`, { path });
  }
}

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
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return EXIT.usage;
    if (err instanceof FilterError) {
      process.stderr.write(`mlm-filter: error [${err.code}]: ${err.message}\n`);
      // The error catalog says which codes are usage or configuration (2) and which are runtime failures (1).
      return exitCodeOf(err.code);
    }
    process.stderr.write(`mlm-filter: unexpected error: ${(err as Error)?.stack ?? err}\n`);
    return EXIT.failure;
  }
}
