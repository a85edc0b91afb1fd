import type { ModelInfo, Outcome, Reason, Scores, SourceOrigin } from '../types.ts';

/**
 * The longest audit event read back as one line or message (--resume and `report` on rejects.jsonl, `monitor` and
 * `report` on a topic): a longer one is refused (resume) or counted as malformed (report, monitor) without being held
 * whole. An event this project writes is bounded by the record limit (16 MiB by default: its id, caption and url come
 * from one record), so four times that leaves room for escaping.
 */
export const AUDIT_LINE_MAX_BYTES = 64 * 1024 * 1024;

/** Schema version of the audit event; bump only with DESIGN.md's owner. */
export const AUDIT_EVENT_VERSION = 1;

/** DESIGN.md's audit event (fixed top-level fields), keyed by `id` on the audit topic. */
export interface AuditEvent {
  v: number;
  id: string;
  decision: 'accept' | 'reject';
  reasons: Reason[];
  scores: { itm: number | null; odf: number | null; ctq: number | null; su: number | null };
  caption: string | null;
  url: string | null;
  model: ModelInfo;
  source: AuditSource;
  ts: string;
  /** Extension: present when the caption was shortened to fit the model before scoring. */
  caption_cut?: { original_chars: number; kept_chars: number };
  /** Extension: present when the event was shortened to fit the audit topic: the original lengths of what was cut. */
  trimmed?: Record<string, number>;
}

export type AuditSource =
  | { kind: 'kafka'; topic: string; partition: number; offset: string }
  | { kind: 'sqs'; queue_url: string; message_id: string }
  | { kind: 'file'; path: string; line: number }
  | { kind: 'webdataset'; path: string; key: string };

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

export function fullScores(s: Scores): AuditEvent['scores'] {
  return { itm: s.itm ?? null, odf: s.odf ?? null, ctq: s.ctq ?? null, su: s.su ?? null };
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
  };
}
