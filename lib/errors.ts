/**
 * The error catalog: every code a FilterError may carry, with its exit class (what the CLI's exit code says) and
 * whether retrying the same operation can succeed (what a retry policy may read, like kafkajs's `retriable`).
 * FilterError's `code` is typed against this table, so a code thrown anywhere without an entry here does not compile.
 *
 * Exit classes: `usage` (bad flags or arguments: exit 2), `config` (a configuration, model or input the run cannot
 * use: exit 2), `runtime` (something failed while running: exit 1). Interrupted runs exit 130 (lib/cli/main.ts).
 *
 * Every error class of the project lives here too: FilterError, its subclasses (each with its catalogued code, for
 * callers that tell the failure apart by class), and RejectError (one record's reject, with a reject reason).
 */
import { isClientError } from './support/aws-errors.ts';
import type { Reason } from './types.ts';

export type ExitClass = 'usage' | 'config' | 'runtime';

export interface ErrorSpec {
  readonly exit: ExitClass;
  /** Retrying the same operation later can succeed (a broker or server that is down, a timeout). */
  readonly retriable: boolean;
  readonly summary: string;
}

const usage = (summary: string): ErrorSpec => ({ exit: 'usage', retriable: false, summary });
const config = (summary: string): ErrorSpec => ({ exit: 'config', retriable: false, summary });
const runtime = (summary: string, retriable: boolean): ErrorSpec => ({ exit: 'runtime', retriable, summary });

export const ERRORS = {
  // The command line and configuration files.
  bad_usage: usage('a flag or argument the command cannot take'),
  missing_option: usage('a required option, or the value of an option, is missing'),
  unknown_option: usage('an option the command does not have'),
  unknown_command: usage('a command mlm-filter does not have'),
  output_not_directory: usage('--out names an existing file, not a directory'),
  invalid_option: usage('an option value out of range or of the wrong form'),
  bad_threshold: usage('a threshold that is not METRIC OP VALUE'),
  bad_top_fraction: usage('--top-fraction outside (0, 1]'),
  bad_metrics: usage('a --metrics selection that leaves out a metric the policy reads'),
  unknown_metric: usage('a metric name that is not itm, odf, ctq, su or a full key'),
  unknown_format: usage('a conversation format the prompts do not have'),
  invalid_allow_address: usage('an --allow-address that is neither a CIDR nor host:port'),
  bad_config: config('a --config file that cannot be read, or that schema/filter-config.schema.json refuses'),
  worker_config: config("the worker's environment is incomplete or inconsistent"),
  kafka_config: config('Kafka settings that cannot work (no brokers, no topic...)'),
  kafka_config_invalid: config('Kafka client options the client refuses'),
  kafka_secret_invalid: config('the SCRAM secret is missing or not {username, password}'),
  topic_request_invalid: config('a topic provisioning request with bad properties'),
  // Models.
  model_invalid: config('the model directory is incomplete or not a supported export'),
  model_not_exported: config('a hub id without a cached export'),
  model_digest_mismatch: config('the downloaded model archive does not have the configured sha256'),
  prompt_template_invalid: config('the vendored prompt template is malformed'),
  execution_provider_unavailable: config('the requested GPU execution provider cannot be loaded here'),
  // Inputs and outputs.
  input_unreadable: config('the input path cannot be read'),
  unrecognised_input: usage(
    'an input whose bytes are neither a tar shard nor JSONL (plain or gzip), or not --input-format',
  ),
  output_unwritable: runtime('the output directory or file cannot be written', false),
  score_cache_unusable: runtime(
    "the score cache (the --score-cache directory, the fleet's DynamoDB table) cannot be opened or refuses an entry",
    false,
  ),
  // Retriable: throttling or an unreachable endpoint outlasted the retries; the next record may get through.
  score_cache_failed: runtime("a request to the fleet's DynamoDB score cache failed after retries", true),
  score_cache_foreign: usage("the --score-cache directory holds files (or keys) that are not a score cache's"),
  score_cache_in_output: usage('--score-cache is inside --out, or --out inside it (an --overwrite would remove it)'),
  output_not_empty: usage('--out holds a previous run and neither --resume nor --overwrite was given'),
  output_unresumable: config('--resume cannot read back the output (a file in it is not what a run writes)'),
  // Retriable: the run holding it ends. Exit 2, as output_not_empty: the command as given cannot run now.
  output_locked: { exit: 'usage', retriable: true, summary: 'another run holds --out (its lock names the process)' },
  output_unsafe: config(
    '--out holds a symlink, or a file of the wrong type, where a run writes: nothing is followed or removed',
  ),
  // Scoring.
  bad_pixel_values: runtime('pixel values of the wrong size for the model', false),
  scorer_failed: runtime('the scorer (its worker threads or the model run) failed', false),
  poison_input: runtime('the scorer failed on one pair alone while others scored: the pair is rejected', false),
  scorer_closed: runtime('score() after close()', false),
  // Streams.
  kafka_unavailable: runtime('the Kafka brokers cannot be reached', true),
  kafka_topic_unavailable: runtime('a topic is missing or has no leader', true),
  kafka_commit_failed: runtime('a Kafka transaction or offset commit failed', true),
  kafka_consumer_crashed: runtime('the Kafka consumer stopped', true),
  message_too_large: runtime('a message is larger than the topic accepts', false),
  partition_revoked: runtime('the partition was revoked from this worker mid-batch', false),
  sink_broken: runtime('a sink refuses every outcome with an error a retry cannot fix', false),
  sink_aborted: runtime('a sink write was abandoned (stop or revocation)', false),
  sink_refused: runtime('a sink refused one outcome for good with an uncoded error (it is dead-lettered)', false),
  sqs_delete_failed: runtime('acknowledging SQS messages failed', true),
  lag_probe_config: config("the lag probe's environment is incomplete or inconsistent"),
  // Image intake (the fetcher maps these to a record's fetch_failed reason; they never end a run).
  address_blocked: runtime('a host resolves to an address the SSRF guard refuses', false),
  dns_failed: runtime('a host name cannot be resolved (or its lookup timed out)', true),
  // Metrics.
  gpu_query_failed: runtime('nvidia-smi failed or printed something other than the GPU query', true),
  // Backfill (lib/backfill): shard jobs over SQS.
  invalid_s3_uri: usage('an s3:// URI that is not s3://bucket/key (or s3://bucket/prefix/ where a prefix is meant)'),
  invalid_job_name: usage('a job name that is not 1-128 of A-Z a-z 0-9 . _ - (starting with a letter or digit)'),
  shard_list_empty: config('no .tar shards under the --input prefix or in the list file'),
  job_not_found: config('no job manifest (manifest.json) under --output for --job'),
  shard_job_invalid: config(
    'an SQS message that is not a valid shard job {v:1, kind:"shard-job", job, input, output, shard}',
  ),
  shard_input_missing: config('the input shard of a job does not exist or may not be read (retrying cannot help)'),
  shard_read_failed: runtime('reading an input shard from S3 failed mid-object', true),
  input_changed: runtime(
    'an http(s) input changed (ETag, Last-Modified or length) between its probe and its read, or mid-read',
    true,
  ),
  shard_job_incomplete: runtime(
    'a shard job ended before its shard was read to the end and every record settled',
    true,
  ),
  backfill_output_failed: runtime(
    "writing a shard job's outputs failed after retries (the job is retried whole)",
    false,
  ),
  sqs_send_failed: runtime('sending SQS messages failed after retries', true),
  // Publishing (lib/publish): a crawler's records onto the worker's input.
  publish_invalid_records: config(
    'publish: records the worker would reject as invalid_record, repeat a pair id, or the topic or queue refuses',
  ),
  publish_incomplete: runtime(
    'publish: sending failed partway (the message says up to which line it is published)',
    true,
  ),
  sqs_queue_unavailable: runtime('the SQS queue does not exist or cannot be reached', true),
  shard_input_mismatch: config(
    "a shard job names another input (bucket, key, size, ETag) than the one its shard's done marker describes",
  ),
  shard_input_changed: config('the input shard changed (size or ETag) since enqueue listed it: enqueue a new job'),
  job_input_mismatch: config('enqueue --job names a job whose shards came from other inputs: use another --job'),
  input_keys_skipped: config('enqueue skipped input keys that cannot be shard jobs (listed); the rest were sent'),
  job_object_invalid: config("a job's manifest or marker in S3 is not what enqueue or the workers write"),
  shard_lease_lost: runtime("the shard job's SQS visibility lease was lost (another worker may hold it)", false),
  // Anything else: retriable as isRetriable takes an uncoded error (network and SDK errors are mostly transient).
  internal: runtime('an error without a code of its own (an SDK or network error, or a bug: see its message)', true),
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

const EXIT_CODES: Record<ExitClass, number> = { usage: 2, config: 2, runtime: 1 };

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERRORS, code);
}

/** An error with a stable code from the catalog (exit class, retriable). */
export class FilterError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly context: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'FilterError';
  }
}

/**
 * A failure of one record that must end as a reject with this reason (never a crash). Its code is the reason's, from
 * the reject-reason catalog (`ReasonCode` in lib/types.ts), not this one: it is an outcome, not an error of the run.
 */
export class RejectError extends Error {
  constructor(readonly reason: Reason) {
    super(reason.message);
    this.name = 'RejectError';
  }
}

/** Raised for one record when the scorer fails on it alone while its batch-mates score fine: a poison input. */
export class PoisonInputError extends FilterError {
  constructor(
    readonly id: string,
    cause: unknown,
  ) {
    super('poison_input', `scorer failed on pair ${id}: ${(cause as Error)?.message ?? cause}`, { id }, { cause });
    this.name = 'PoisonInputError';
  }
}

/** The scorer failed on several pairs in a row, each alone: it is broken, not the pairs. */
export class ScorerBrokenError extends FilterError {
  constructor(
    readonly consecutive: number,
    cause: unknown,
  ) {
    super(
      'scorer_failed',
      `the scorer failed on ${consecutive} pairs in a row, each alone: ${(cause as Error)?.message ?? cause}`,
      { consecutive },
      { cause },
    );
    this.name = 'ScorerBrokenError';
  }
}

/** A Kafka commit's retry budget ran out while an attempt was still waiting on the brokers. */
export class CommitBudgetSpentError extends FilterError {
  constructor(message: string) {
    super('kafka_commit_failed', message);
    this.name = 'CommitBudgetSpentError';
  }
}

/** A host resolves to an address the SSRF guard refuses; the fetcher maps it to `fetch_failed` `blocked_address`. */
export class BlockedAddressError extends FilterError {
  constructor(
    readonly host: string,
    readonly address: string,
    readonly range: string,
  ) {
    super('address_blocked', `refusing to connect to ${host} (${address}, ${range} address)`, {
      host,
      address,
      range,
    });
    this.name = 'BlockedAddressError';
  }
}

/** A host name that cannot be resolved; `dnsCode` is the resolver's (ENOTFOUND, EAI_TIMEOUT...), for the fetcher. */
export class ResolveError extends FilterError {
  constructor(
    readonly host: string,
    readonly dnsCode: string,
    message: string,
  ) {
    super('dns_failed', message, { host, dnsCode });
    this.name = 'ResolveError';
  }
}

/** The error's own string code (a FilterError's, an SDK's, a Node errno), else `fallback` from the catalog. */
export function codeOf(err: unknown, fallback: ErrorCode = 'internal'): string {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && code !== '' ? code : fallback;
}

/** The process exit code for an error code (unknown codes: 1). */
export function exitCodeOf(code: string): number {
  return isErrorCode(code) ? EXIT_CODES[ERRORS[code].exit] : 1;
}

/**
 * Whether retrying can help: the catalog's flag for a coded error; kafkajs's own `retriable` flag for its errors,
 * except that kafkajs giving up after its own retries (KafkaJSNumberOfRetriesExceeded) is an outage that may still
 * end, so the caller's slower backoff goes on; false for an AWS client error (a 4xx other than timeout and
 * throttling: the request is wrong or forbidden); otherwise true (network and server errors of the AWS SDK and
 * undici, throttling, timeouts are transient far more often than not). lib/support/retry.ts's policy reads it.
 */
export function isRetriable(err: unknown): boolean {
  const e = err as { code?: unknown; retriable?: unknown; name?: unknown } | undefined;
  if (isErrorCode(e?.code)) return ERRORS[e.code].retriable;
  if (e?.name === 'KafkaJSNumberOfRetriesExceeded') return true;
  if (typeof e?.retriable === 'boolean') return e.retriable;
  return !isClientError(err);
}
