import type { ModelInfo } from '../types.ts';
import {
  AUDIT_LINE_MAX_BYTES,
  auditScores,
  decodeAuditEvent,
  modelInfo,
  type AuditEvent,
  type AuditScores,
} from './audit-event.ts';
import { decodeError, decodeJson, type Decoded, type Fields } from './decoded.ts';

/** Where training code finds an accepted sample (the S3 curated sink's placement of it). */
export interface SampleLocation {
  bucket: string;
  /** Key of the tar shard. */
  shard: string;
  /** The sample's key inside the shard (`<sample>.jpg|txt|json`). */
  sample: string;
}

/** One accepted pair and where training code finds it: a message of the accepted topic, keyed by id. */
export interface AcceptedEvent {
  v: 1;
  id: string;
  scores: AuditScores;
  caption: string | null;
  url: string | null;
  model: ModelInfo;
  location: SampleLocation | null;
  ts: string;
}

export function encodeAcceptedEvent(event: AcceptedEvent): string {
  return JSON.stringify(event);
}

/**
 * An accepted-topic message as `monitor` and `report` read it: only its id is required (the message key when the
 * value has none), so a topic another producer also writes to is still counted; every field present is checked.
 */
export type AcceptedMessage = Partial<Omit<AcceptedEvent, 'id'>> & { id: string };

/**
 * The one reader of the accepted topic. A message holding a whole audit event (a worker auditing accepts into the
 * accepted topic) reads as that event, decision included; any other as an {@link AcceptedMessage}.
 */
export function decodeAcceptedMessage(
  value: string | Buffer,
  key?: string | Buffer | null,
): Decoded<{ kind: 'audit'; event: AuditEvent } | { kind: 'accepted'; event: AcceptedMessage }> {
  const audit = decodeAuditEvent(value);
  if (audit.ok) return { ok: true, value: { kind: 'audit', event: audit.value } };
  const accepted = decodeJson(value, AUDIT_LINE_MAX_BYTES, (o) => acceptedFields(o, key ? key.toString() : ''));
  return accepted.ok ? { ok: true, value: { kind: 'accepted', event: accepted.value } } : accepted;
}

function acceptedFields(o: Fields, key: string): AcceptedMessage {
  const present = (k: string) => o.raw[k] !== undefined;
  const id = present('id') ? o.string('id') || key : key;
  if (!id) throw o.fail(decodeError('missing_field', 'id is missing (and the message has no key)', 'id'));
  const scores = o.optionalObject('scores');
  const location = present('location') ? o.objectOrNull('location') : undefined;
  return {
    id,
    ...(scores ? { scores: auditScores(scores) } : {}),
    ...(present('caption') ? { caption: o.stringOrNull('caption') } : {}),
    ...(present('url') ? { url: o.stringOrNull('url') } : {}),
    ...(present('model') ? { model: modelInfo(o.object('model')) } : {}),
    ...(location !== undefined ? { location: location && sampleLocation(location) } : {}),
    ...(present('ts') ? { ts: o.string('ts') } : {}),
  };
}

function sampleLocation(l: Fields): SampleLocation {
  return { bucket: l.string('bucket'), shard: l.string('shard'), sample: l.string('sample') };
}
