import type { ModelInfo, Outcome } from '../types.ts';
import {
  auditScores,
  auditSource,
  auditSourceFields,
  cachedFields,
  cachedJson,
  captionCutFields,
  captionCutJson,
  fullScores,
  modelInfo,
  type AuditCached,
  type AuditScores,
  type AuditSource,
} from './audit-event.ts';
import { decodeJson, type Decoded, type Fields } from './decoded.ts';
import { toolVersion } from '../support/package-info.ts';

/** Largest `<key>.json` member read back (its caption, url and metadata are bounded by the record limit, 16 MiB). */
export const SAMPLE_JSON_MAX_BYTES = 64 * 1024 * 1024;

/** The `<key>.json` member of a curated WebDataset sample: everything training code may filter on later. */
export interface CuratedSampleMeta {
  id: string;
  key: string;
  caption: string;
  url: string | null;
  scores: AuditScores;
  expected_scores: AuditScores | null;
  width: number | null;
  height: number | null;
  model: ModelInfo;
  source: AuditSource;
  metadata: Record<string, unknown>;
  /** Present when the caption was shortened to fit the model: it was scored on its first `kept_chars` characters. */
  caption_cut?: { original_chars: number; kept_chars: number };
  /** The scores came from the score cache (--score-cache), first computed for this pair. */
  cached?: AuditCached;
  /** The mlm-filter-stream release that decided the sample; absent in samples written before 0.1.0 recorded it. */
  tool?: ToolInfo;
}

/** Which release of this tool wrote an output (curated samples, summary.json). */
export interface ToolInfo {
  name: string;
  version: string;
}

export const toolInfo = (): ToolInfo => ({ name: 'mlm-filter-stream', version: toolVersion() });

/** The metadata of an accepted outcome (with its pair and image) stored under `key`. */
export function curatedSampleMeta(outcome: Outcome, key: string, model: ModelInfo): CuratedSampleMeta {
  if (!outcome.pair || !outcome.image) throw new Error('a curated sample needs an accepted outcome with an image');
  return {
    id: outcome.id,
    key,
    caption: outcome.pair.caption,
    url: outcome.pair.url ?? null,
    scores: fullScores(outcome.scores),
    expected_scores: outcome.expected ? fullScores(outcome.expected) : null,
    width: outcome.image.width,
    height: outcome.image.height,
    model,
    source: auditSource(outcome.record.origin),
    metadata: outcome.pair.metadata,
    ...(outcome.captionCut ? { caption_cut: captionCutJson(outcome.captionCut) } : {}),
    ...(outcome.cached ? { cached: cachedJson(outcome.cached) } : {}),
    tool: toolInfo(),
  };
}

export function encodeCuratedSample(meta: CuratedSampleMeta): Buffer {
  return Buffer.from(JSON.stringify(meta), 'utf8');
}

/**
 * The one reader of `<key>.json` members (--resume's recovery, `report`, the second pass of --top-fraction): the
 * metadata with every field checked, or a typed error naming the first field that is wrong.
 */
export function decodeCuratedSample(value: string | Buffer): Decoded<CuratedSampleMeta> {
  return decodeJson(value, SAMPLE_JSON_MAX_BYTES, curatedSampleFields);
}

function curatedSampleFields(o: Fields): CuratedSampleMeta {
  const expected = o.objectOrNull('expected_scores');
  const captionCut = o.optionalObject('caption_cut');
  const tool = o.optionalObject('tool');
  const cached = o.optionalObject('cached');
  return {
    id: o.nonEmptyString('id'),
    key: o.string('key'),
    caption: o.string('caption'),
    url: o.stringOrNull('url'),
    scores: auditScores(o.object('scores')),
    expected_scores: expected && auditScores(expected),
    width: o.numberOrNull('width') ?? null,
    height: o.numberOrNull('height') ?? null,
    model: modelInfo(o.object('model')),
    source: auditSourceFields(o.object('source')),
    metadata: o.object('metadata').raw,
    ...(captionCut ? { caption_cut: captionCutFields(captionCut) } : {}),
    ...(cached ? { cached: cachedFields(cached) } : {}),
    ...(tool ? { tool: { name: tool.string('name'), version: tool.string('version') } } : {}),
  };
}
