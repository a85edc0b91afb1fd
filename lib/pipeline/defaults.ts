/**
 * The pipeline's defaults, in one table: runPipeline, writeOutcomes (a second pass) and the CLI's --help read them
 * here, so a pass that skips scoring cannot drift from the one that scores.
 */
export const PIPELINE_DEFAULTS = {
  /** Images fetched and decoded at once: enough to hide network latency behind scoring. */
  intakeConcurrency: 32,
  /** Longest wait for a scorer batch to fill, ms. */
  batchWaitMs: 50,
  /** Scorer batches in flight at once: one assembles while one runs. */
  scoreConcurrency: 2,
  /** Attempts for an image whose intake failed with a non-reject (unexpected) error. */
  intakeAttempts: 3,
  /** Records admitted and not yet committed: the bound on memory under any backlog. */
  maxPendingRecords: 4096,
  /** Record bytes read and not yet committed (sources that reserve them): 256 MiB. */
  maxPendingBytes: 256 * 1024 * 1024,
  /** Backoff of failing sink writes (a sink down), ms: base and cap. */
  sinkRetryBaseMs: 200,
  sinkRetryMaxMs: 30_000,
} as const;
