import type { MetricShort, ModelInfo, Outcome, Scores, SourceOrigin } from '../types.ts';
import { METRICS } from '../types.ts';
import { decodeJson, type Decoded, type Fields } from './decoded.ts';

/**
 * The longest audit event read back as one line or message (--resume and `report` on rejects.jsonl, `monitor` and
 * `report` on a topic): a longer one is refused (resume) or counted as malformed (report, monitor) without being held
 * whole. An event this project writes is bounded by the record limit (16 MiB by default: its id, caption and url come
 * from one record), so four times that leaves room for escaping.
 */
export const AUDIT_LINE_MAX_BYTES = 64 * 1024 * 1024;

/** Schema version of the audit event; bump only with DESIGN.md's owner. */
export const AUDIT_EVENT_VERSION = 1;

/** A reason as the audit event carries it (lib/types Reason; read back, a code this version does not know stays). */
export interface AuditReason {
  code: string;
  message: string;
  detail?: Record<string, unknown>;
}

/** The four scores, null where the model gave none. */
export type AuditScores = Record<MetricShort, number | null>;

/** DESIGN.md's audit event (fixed top-level fields), keyed by `id` on the audit topic. */
export interface AuditEvent {
  v: number;
  id: string;
  decision: 'accept' | 'reject';
  reasons: AuditReason[];
  scores: AuditScores;
  caption: string | null;
  url: string | null;
  model: ModelInfo;
  source: AuditSource;
  ts: string;
  /** Extension: present when the caption was shortened to fit the model before scoring. */
  caption_cut?: { original_chars: number; kept_chars: number };
  /** The scores came from the score cache, first computed for this pair (--score-cache). */
  cached?: AuditCached;
  /** Extension: present when the event was shortened to fit the audit topic: the original lengths of what was cut. */
  trimmed?: Record<string, number>;
}

export type AuditSource =
  | { kind: 'kafka'; topic: string; partition: number; offset: string }
  | { kind: 'sqs'; queue_url: string; message_id: string }
  | { kind: 'file'; path: string; line: number }
  | { kind: 'webdataset'; path: string; key: string };

/** A record's origin as the audit event and the curated sample write it. */
export function auditSource(origin: SourceOrigin): AuditSource {
  switch (origin.kind) {
    case 'kafka':
      return { kind: 'kafka', topic: origin.topic, partition: origin.partition, offset: origin.offset };
    case 'sqs':
      return { kind: 'sqs', queue_url: origin.queueUrl, message_id: origin.messageId };
    case 'file':
      return { kind: 'file', path: origin.path, line: origin.line };
    case 'webdataset':
      return { kind: 'webdataset', path: origin.path, key: origin.key };
  }
}

/** The inverse of {@link auditSource}: the origin of a record read back from what a run wrote. */
export function originOf(source: AuditSource): SourceOrigin {
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

export function fullScores(s: Scores): AuditScores {
  return { itm: s.itm ?? null, odf: s.odf ?? null, ctq: s.ctq ?? null, su: s.su ?? null };
}

/** The scores present (not null), as an outcome holds them. */
export function presentScores(s: AuditScores): Scores {
  return Object.fromEntries(Object.entries(s).filter(([, v]) => v !== null)) as Scores;
}

export interface AuditCached {
  first: { id: string; source: AuditSource; at: string };
}

export function cachedJson(c: NonNullable<Outcome['cached']>): AuditCached {
  return { first: { id: c.first.id, source: auditSource(c.first.source), at: c.first.at } };
}

export function cachedFields(c: Fields): AuditCached {
  const first = c.object('first');
  return {
    first: {
      id: first.nonEmptyString('id'),
      source: auditSourceFields(first.object('source')),
      at: first.string('at'),
    },
  };
}

export function captionCutJson(c: NonNullable<Outcome['captionCut']>) {
  return { original_chars: c.originalChars, kept_chars: c.keptChars };
}

export function toAuditEvent(outcome: Outcome, model: ModelInfo, now: Date = new Date()): AuditEvent {
  return {
    v: AUDIT_EVENT_VERSION,
    id: outcome.id,
    decision: outcome.decision,
    reasons: [...outcome.reasons],
    scores: fullScores(outcome.scores),
    caption: outcome.pair?.caption ?? null,
    url: outcome.pair?.url ?? null,
    model: { name: model.name, revision: model.revision },
    source: auditSource(outcome.record.origin),
    ts: now.toISOString(),
    ...(outcome.captionCut ? { caption_cut: captionCutJson(outcome.captionCut) } : {}),
    ...(outcome.cached ? { cached: cachedJson(outcome.cached) } : {}),
  };
}

/** The event's bytes as a line of rejects.jsonl or a message on the audit topic carries them. */
export function encodeAuditEvent(event: AuditEvent): string {
  return JSON.stringify(event);
}

/**
 * The one reader of audit events (rejects.jsonl read back by --resume and `report`, the audit topic read by `monitor`
 * and `report`): the event, with every field checked, or a typed error naming the first field that is wrong. A value
 * over AUDIT_LINE_MAX_BYTES is refused without being parsed.
 */
export function decodeAuditEvent(value: string | Buffer): Decoded<AuditEvent> {
  return decodeJson(value, AUDIT_LINE_MAX_BYTES, auditEventFields);
}

/** An audit event's fields, checked (also the shape of a curated sample's shared fields). */
function auditEventFields(o: Fields): AuditEvent {
  const captionCut = o.optionalObject('caption_cut');
  const trimmed = o.optionalObject('trimmed');
  const cached = o.optionalObject('cached');
  return {
    v: o.number('v'),
    id: o.nonEmptyString('id'),
    decision: o.oneOf('decision', ['accept', 'reject'] as const),
    reasons: o.objects('reasons').map(auditReason),
    scores: auditScores(o.object('scores')),
    caption: o.stringOrNull('caption'),
    url: o.stringOrNull('url'),
    model: modelInfo(o.object('model')),
    source: auditSourceFields(o.object('source')),
    ts: o.string('ts'),
    ...(captionCut ? { caption_cut: captionCutFields(captionCut) } : {}),
    ...(cached ? { cached: cachedFields(cached) } : {}),
    ...(trimmed ? { trimmed: Object.fromEntries(Object.keys(trimmed.raw).map((k) => [k, trimmed.number(k)])) } : {}),
  };
}

function auditReason(r: Fields): AuditReason {
  const detail = r.optionalObject('detail');
  return { code: r.nonEmptyString('code'), message: r.string('message'), ...(detail ? { detail: detail.raw } : {}) };
}

/** The four scores; one a writer left out reads as null. */
export function auditScores(s: Fields): AuditScores {
  return Object.fromEntries(METRICS.map(({ short }) => [short, s.numberOrNull(short, true) ?? null])) as AuditScores;
}

export function modelInfo(m: Fields): ModelInfo {
  return { name: m.string('name'), revision: m.string('revision') };
}

export function captionCutFields(c: Fields): NonNullable<AuditEvent['caption_cut']> {
  return { original_chars: c.number('original_chars'), kept_chars: c.number('kept_chars') };
}

export function auditSourceFields(s: Fields): AuditSource {
  const kind = s.oneOf('kind', ['kafka', 'sqs', 'file', 'webdataset'] as const);
  switch (kind) {
    case 'kafka':
      return { kind, topic: s.string('topic'), partition: s.number('partition'), offset: s.string('offset') };
    case 'sqs':
      return { kind, queue_url: s.string('queue_url'), message_id: s.string('message_id') };
    case 'file':
      return { kind, path: s.string('path'), line: s.number('line') };
    case 'webdataset':
      return { kind, path: s.string('path'), key: s.string('key') };
  }
}
