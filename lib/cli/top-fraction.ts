import { rm } from 'node:fs/promises';
import { topFractionCutoff } from '../policy/index.ts';
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
 * `below_threshold` reason naming the cutoff and the fraction.
 */
export async function applyTopFraction(
  stagingDir: string,
  options: TopFractionOptions,
  values: RankingValues,
  sinks: readonly Sink[],
  onOutcome: (o: Outcome) => void,
): Promise<{ score: number; expected: number } | undefined> {
  const cutoff = values.cutoff(options.fraction);
  if (cutoff) {
    const source = await WebDatasetSource.open({ paths: [stagingDir] }).catch(() => undefined);
    for await (const batch of source?.batches(new AbortController().signal) ?? []) {
      const outcomes = batch.records.map((r): Outcome => {
        const o = stagedOutcome(r.raw as RawSample);
        const score = o.scores[options.metric] ?? -1;
        const expected = o.expected?.[options.metric] ?? score;
        // The ranking kept float32 values: compare at that precision, or the pair at the cutoff can fall below its own
        // rounded value and be dropped.
        const keep = score > cutoff.score || (score === cutoff.score && Math.fround(expected) >= cutoff.expected);
        if (keep) return o;
        return {
          ...o,
          decision: 'reject',
          reasons: [
            {
              code: 'below_threshold',
              message: `${options.metric} ${score} is below the run's top-${options.fraction * 100}% cutoff ${cutoff.score}`,
              detail: {
                metric: options.metric,
                score,
                threshold: cutoff.score,
                op: '>=',
                mode: 'top_fraction',
                fraction: options.fraction,
              },
            },
          ],
        };
      });
      await Promise.all(sinks.map((s) => s.write(outcomes)));
      outcomes.forEach(onOutcome);
    }
  }
  await rm(stagingDir, { recursive: true, force: true });
  return cutoff;
}
