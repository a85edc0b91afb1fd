/**
 * What `mlm-filter filter` would do, without doing it: `--print-config` (the effective options, as a valid --config
 * file) and `--dry-run` (what would be read and written, every check a real run makes before its first write).
 * Neither creates, locks or writes anything.
 */
import { printable } from '../backfill/shard-job.ts';
import { resolve } from 'node:path';
import { readModelDir, resolveModelDir } from '../model/model-dir.ts';
import { PAIR_DEFAULTS } from '../pair/index.ts';
import { PIPELINE_DEFAULTS } from '../pipeline/defaults.ts';
import { DEFAULT_THRESHOLDS, formatThreshold, Policy } from '../policy/index.ts';
import { RankingPolicy } from '../policy/ranking.ts';
import { CLI_METRICS, parseMetricSelection, resolveMetricSelection } from '../policy/metric-selection.ts';
import { openInputs } from '../inputs/index.ts';
import type { FilterConfig } from './filter-config.ts';
import type { FilterJobOptions } from './filter.ts';
import { checkOutput } from './run-output.ts';
import { checkCachePlace } from '../cache/admin.ts';
import { dedupeSetting } from '../cache/dedupe.ts';

/** Keys a --config file cannot hold (command-line-only or in-process), and those filled in below. */
const NOT_PRINTED = ['input', 'out', 'model', 'signal', 'abort', 'logger', 'intake', 'scorer', 'pair'];

/**
 * The options a run would use, as a --config file (command-line-only keys left out): what the flags and the file
 * set, with the defaults of the policy, the metrics and the pipeline filled in. Keys still absent take the defaults
 * `mlm-filter filter --help` shows.
 */
export function effectiveConfig(options: FilterJobOptions & FilterConfig): Record<string, unknown> {
  const given = Object.fromEntries(
    Object.entries(options).filter(([key, value]) => value !== undefined && !NOT_PRINTED.includes(key)),
  );
  const intake = Object.fromEntries(Object.entries(options.intake ?? {}).filter(([, v]) => v !== undefined));
  const scorer = Object.fromEntries(Object.entries(options.scorer ?? {}).filter(([, v]) => v !== undefined));
  return {
    ...given,
    policy: {
      thresholds: (options.policy?.thresholds ?? DEFAULT_THRESHOLDS).map(formatThreshold),
      combine: options.policy?.combine ?? 'and',
    },
    metrics: options.metrics ?? 'all',
    concurrency: options.concurrency ?? PIPELINE_DEFAULTS.intakeConcurrency,
    maxPendingBytes: options.maxPendingBytes ?? PIPELINE_DEFAULTS.maxPendingBytes,
    pair: {
      ...PAIR_DEFAULTS,
      ...Object.fromEntries(Object.entries(options.pair ?? {}).filter(([, v]) => v !== undefined)),
    },
    ...(Object.keys(intake).length ? { intake } : {}),
    ...(Object.keys(scorer).length ? { scorer } : {}),
  };
}

/**
 * The lines of `--dry-run`: the policy and metrics checked as a run checks them, the input opened and listed, the
 * model directory read (not loaded) and --out checked against --resume/--overwrite; throws the error the run would.
 */
export async function dryRun(options: FilterJobOptions): Promise<string[]> {
  const top = options.topFraction;
  const policy = top ? new RankingPolicy(top, options.policy) : new Policy(options.policy);
  const listed = options.scorer?.metrics;
  const selection = options.metrics ?? (listed?.length ? parseMetricSelection(listed, CLI_METRICS) : 'all');
  const metrics = resolveMetricSelection(selection, policy.metrics, CLI_METRICS, 'the policy');
  const out = resolve(options.out);
  const { resume, overwrite } = options;
  await checkOutput(options.out, { resume, overwrite, topFraction: top !== undefined });
  const model = readModelDir(resolveModelDir(options.model), options.scorer?.dtype ?? 'fp32');
  const lines = ['dry run: nothing was scored or written'];
  lines.push(...(await inputLines(options)));
  lines.push(`model: ${model.dir} (${model.format}, ${model.dtype})`);
  lines.push(
    `policy: ${policy.thresholds.map(formatThreshold).join(` ${policy.combine} `)}; metrics: ${metrics.join(',')}`,
  );
  if (options.scoreCache) lines.push(await checkCachePlace(options.scoreCache, options.out));
  const dedupe = dedupeSetting(options);
  if (dedupe) {
    const within =
      dedupe.mode === 'exact' ? 'same decoded pixels' : `perceptual hashes within ${dedupe.maxDistance} bits`;
    lines.push(`image dedupe: ${dedupe.mode} (${within}), remembered in the score cache`);
  }
  if (top) lines.push(`top fraction: ${top.fraction} on ${top.metric} (staged in ${out}/.staging, removed at the end)`);
  const mode = resume
    ? ' (--resume: added to the run it holds)'
    : overwrite
      ? ' (--overwrite: its run is replaced)'
      : '';
  const table = options.parquet === false ? '' : `, ${out}/pairs.parquet`;
  lines.push(
    `would write: ${out}/curated/ (WebDataset shards), ${out}/rejects.jsonl${table}, ${out}/summary.json${mode}`,
  );
  lines.push(`  and ${out}/kept_uids.npy if the records carry DataComp uids`);
  return lines;
}

async function inputLines(options: FilterJobOptions): Promise<string[]> {
  const specs = typeof options.input === 'string' ? [options.input] : options.input;
  // The run's own resolution (brace lists, directories, s3:// prefixes, URLs, formats sniffed): what it lists is read.
  const { source, items } = await openInputs(specs, {
    format: options.inputFormat,
    pair: options.pair,
    read: { maxSampleBytes: options.maxSampleBytes },
    http: { allowAddresses: options.intake?.allowAddresses, userAgent: options.intake?.userAgent },
  });
  try {
    const describe = (item: (typeof items)[number]) =>
      // An S3 key (a shared bucket's listing) may hold terminal controls: shown escaped.
      `  ${item.format === 'webdataset' ? 'WebDataset shard' : 'JSONL'}${item.gzip ? ' (gzip)' : ''} ${printable(item.name)}`;
    return [`would read: ${items.length} input(s), in this order`, ...items.map(describe)];
  } finally {
    await source.close();
  }
}
