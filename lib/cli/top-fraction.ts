import { rm } from 'node:fs/promises';
import { BatchLedger } from '../pipeline/ledger.ts';
import { silentLogger, type Logger } from '../support/logger.ts';
import { RunFailure } from '../pipeline/run-failure.ts';
import { SinkWriter } from '../pipeline/sink-writer.ts';
import { Policy, topFractionCutoff, type PolicyOptions, type Verdict } from '../policy/index.ts';
import type { CuratedSampleMeta } from '../sinks/webdataset.ts';
import { WebDatasetSource } from '../sources/webdataset.ts';
import type { MetricShort, Outcome, RawSample, Scores, Sink, SourceOrigin, StoredImage } from '../types.ts';
import type { AuditSource } from '../sinks/audit-event.ts';

/** Keep the best `fraction` of a whole run on one metric (DataComp-style "top 30%" filtering for batch jobs). */
export interface TopFractionOptions {
  /** Share of the scored pairs to keep, in (0, 1]. */
  readonly fraction: number;
  /** The metric ranked on; ties are broken by its expected (continuous) score. */
  readonly metric: MetricShort;
}

/**
 * The first pass of a top-fraction run: the thresholds first (a pair that fails one is rejected as usual, with
 * `below_threshold`), then a number on the ranked metric; what passes is staged and ranked after the run. Without
 * thresholds every pair with a number on the ranked metric is staged.
 */
export class RankingPolicy extends Policy {
  /** Whether thresholds were given, i.e. the fraction is of the pairs that pass them. */
  readonly thresholded: boolean;

  constructor(
    private readonly top: TopFractionOptions,
    policy?: PolicyOptions,
  ) {
    super(policy?.thresholds ? policy : { thresholds: [{ metric: top.metric, op: '>=', value: 0 }] });
    this.thresholded = policy?.thresholds !== undefined;
  }

  override get metrics() {
    return [...new Set([...super.metrics, this.top.metric])];
  }

  override decide(scores: Parameters<Policy['decide']>[0]): Verdict {
    const verdict = super.decide(scores);
    const metric = this.top.metric;
    if (verdict.decision === 'reject' || Number.isFinite(scores[metric])) return verdict;
    const reason = { code: 'scoring_failed' as const, message: `the model gave no number for ${metric}` };
    return { decision: 'reject', reasons: [{ ...reason, detail: { metric } }] };
  }
}

/** Collects the ranking values of the first pass: 8 bytes per scored pair. */
export class RankingValues {
  private scores = new Float32Array(1024);
  private expected = new Float32Array(1024);
  length = 0;

  add(score: number, expected: number | undefined): void {
    if (this.length === this.scores.length) {
      const grow = (a: Float32Array) => {
        const b = new Float32Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.scores = grow(this.scores);
      this.expected = grow(this.expected);
    }
    this.scores[this.length] = score;
    this.expected[this.length++] = expected ?? score;
  }

  cutoff(fraction: number) {
    const values = Array.from({ length: this.length }, (_, i) => ({
      score: this.scores[i]!,
      expected: this.expected[i]!,
    }));
    return topFractionCutoff(values, fraction);
  }
}

function originOf(source: AuditSource): SourceOrigin {
  switch (source.kind) {
    case 'kafka':
      return { kind: 'kafka', topic: source.topic, partition: source.partition, offset: source.offset };
    case 'sqs':
      return { kind: 'sqs', queueUrl: source.queue_url, messageId: source.message_id };
    case 'file':
      return { kind: 'file', path: source.path, line: source.line };
    case 'webdataset':
      return { kind: 'webdataset', path: source.path, key: source.key };
  }
}

const present = (s: CuratedSampleMeta['scores'] | null): Scores | undefined =>
  s ? (Object.fromEntries(Object.entries(s).filter(([, v]) => v !== null)) as Scores) : undefined;

/** Rebuilds the outcome of a staged sample (the first pass stored every scored pair as a curated sample). */
function stagedOutcome(sample: RawSample): Outcome {
  const meta = JSON.parse(sample.members.json!.toString('utf8')) as CuratedSampleMeta;
  const ext = (['jpg', 'png', 'webp'] as const).find((e) => sample.members[e]);
  const image: StoredImage = {
    encoded: sample.members[ext!]!,
    ext: ext!,
    width: meta.width ?? 0,
    height: meta.height ?? 0,
  };
  const expected = present(meta.expected_scores);
  return {
    record: { raw: sample, origin: originOf(meta.source) },
    id: meta.id,
    pair: {
      id: meta.id,
      caption: meta.caption,
      image: { kind: 'bytes', data: image.encoded, ext: image.ext },
      ...(meta.url ? { url: meta.url } : {}),
      metadata: meta.metadata,
    },
    decision: 'accept',
    reasons: [],
    scores: present(meta.scores) ?? {},
    ...(expected ? { expected } : {}),
    image,
  };
}

/**
 * Second pass: re-reads the staged shards in order and routes each pair by the run-wide cutoff. Rejected pairs get a
 * `below_threshold` reason naming the cutoff and the fraction. The outcomes go through the same batch ledger and sink
 * retry policy as the first pass (in order, retried, flushed when idle); a staged sample that cannot be read back
 * fails the run rather than silently dropping an accept.
 */
export async function applyTopFraction(
  stagingDir: string,
  options: TopFractionOptions,
  values: RankingValues,
  sinks: readonly Sink[],
  onOutcome: (o: Outcome) => void,
  logger: Logger = silentLogger,
): Promise<{ score: number; expected: number } | undefined> {
  const cutoff = values.cutoff(options.fraction);
  if (cutoff) {
    const failure = new RunFailure();
    const ledger = new BatchLedger({
      writer: new SinkWriter({ sinks, retryBaseMs: 200, retryMaxMs: 30_000, logger }),
      maxPendingRecords: 4096,
      dedupe: false,
      hard: new AbortController().signal,
      failure,
      logger,
      onCommitted: (outcomes) => outcomes.forEach(onOutcome),
    });
    const source = await WebDatasetSource.open({ paths: [stagingDir] });
    for await (const batch of source.batches(failure.signal)) {
      const entry = await ledger.admit(batch);
      batch.records.forEach((r, i) => {
        try {
          entry.settle(i, routeStaged(stagedOutcome(r.raw as RawSample), options, cutoff));
        } catch (err) {
          failure.fail(err);
          entry.lose();
        }
      });
    }
    await ledger.drain();
    failure.throwIfFailed();
  }
  await rm(stagingDir, { recursive: true, force: true });
  return cutoff;
}

/** A staged pair kept or rejected by the run-wide cutoff. */
function routeStaged(o: Outcome, options: TopFractionOptions, cutoff: { score: number; expected: number }): Outcome {
  const score = o.scores[options.metric] ?? -1;
  const expected = o.expected?.[options.metric] ?? score;
  // The ranking kept float32 values: compare at that precision, or the pair at the cutoff can fall below its own
  // rounded value and be dropped.
  const keep = score > cutoff.score || (score === cutoff.score && Math.fround(expected) >= cutoff.expected);
  if (keep) return o;
  const detail = {
    metric: options.metric,
    score,
    threshold: cutoff.score,
    op: '>=',
    mode: 'top_fraction',
    fraction: options.fraction,
  };
  const message = `${options.metric} ${score} is below the run's top-${options.fraction * 100}% cutoff ${cutoff.score}`;
  return { ...o, decision: 'reject', reasons: [{ code: 'below_threshold', message, detail }] };
}
