import { rm } from 'node:fs/promises';
import { writeOutcomes, type PipelineLogger } from '../pipeline/index.ts';
import { routeByCutoff, type Cutoff, type RankingValues, type TopFractionOptions } from '../policy/ranking.ts';
import type { CuratedSampleMeta } from '../sinks/webdataset.ts';
import { WebDatasetSource } from '../sources/webdataset.ts';
import type { Outcome, RawSample, Scores, Sink, SourceOrigin, StoredImage } from '../types.ts';
import type { AuditSource } from '../sinks/audit-event.ts';

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
  logger?: PipelineLogger,
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
