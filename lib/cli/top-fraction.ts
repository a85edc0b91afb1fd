import { rm } from 'node:fs/promises';
import { writeOutcomes } from '../pipeline/index.ts';
import type { Logger } from '../support/logger.ts';
import { routeByCutoff, type Cutoff, type RankingValues, type TopFractionOptions } from '../policy/ranking.ts';
import { originOf, presentScores } from '../formats/audit-event.ts';
import { decodeCuratedSample } from '../formats/curated-sample.ts';
import { WebDatasetSource } from '../sources/webdataset.ts';
import type { Outcome, RawSample, Sink, StoredImage } from '../types.ts';

/** Rebuilds the outcome of a staged sample (the first pass stored every scored pair as a curated sample). */
function stagedOutcome(sample: RawSample): Outcome {
  const decoded = decodeCuratedSample(sample.members.json ?? '');
  if (!decoded.ok) throw new Error(`staged sample ${sample.key}.json: ${decoded.error.message}`);
  const meta = decoded.value;
  const ext = (['jpg', 'png', 'webp'] as const).find((e) => sample.members[e]);
  const image: StoredImage = {
    encoded: sample.members[ext!]!,
    ext: ext!,
    width: meta.width ?? 0,
    height: meta.height ?? 0,
  };
  const expected = meta.expected_scores && presentScores(meta.expected_scores);
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
    scores: presentScores(meta.scores),
    ...(expected ? { expected } : {}),
    image,
  };
}

/**
 * Second pass: re-reads the staged shards in order and routes each pair by the run-wide cutoff (routeByCutoff). The
 * outcomes go through the pipeline's ledger and sink retry policy (writeOutcomes: in order, retried, flushed when
 * idle); a staged sample that cannot be read back fails the run rather than silently dropping an accept.
 */
export async function applyTopFraction(
  stagingDir: string,
  options: TopFractionOptions,
  values: RankingValues,
  sinks: readonly Sink[],
  onOutcome: (o: Outcome) => void,
  logger?: Logger,
): Promise<Cutoff | undefined> {
  const cutoff = values.cutoff(options.fraction);
  if (cutoff) {
    const source = await WebDatasetSource.open({ paths: [stagingDir] });
    try {
      await writeOutcomes({
        source,
        outcomeOf: (record) => routeByCutoff(stagedOutcome(record.raw as RawSample), options, cutoff),
        sinks,
        onOutcome,
        logger,
      });
    } finally {
      await source.close();
    }
  }
  await rm(stagingDir, { recursive: true, force: true });
  return cutoff;
}
