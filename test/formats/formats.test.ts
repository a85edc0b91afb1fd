import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeAcceptedMessage, encodeAcceptedEvent, type AcceptedEvent } from '../../lib/formats/accepted-event.ts';
import {
  AUDIT_LINE_MAX_BYTES,
  auditSource,
  decodeAuditEvent,
  encodeAuditEvent,
  originOf,
  toAuditEvent,
  type AuditEvent,
} from '../../lib/formats/audit-event.ts';
import { curatedSampleMeta, decodeCuratedSample, encodeCuratedSample } from '../../lib/formats/curated-sample.ts';
import type { Decoded } from '../../lib/formats/decoded.ts';
import { EventTally } from '../../lib/formats/event-tally.ts';
import type { Outcome, SourceOrigin } from '../../lib/types.ts';

const MODEL = { name: 'mlm-filter-test', revision: 'r1' };
const NOW = new Date('2026-03-01T12:00:00Z');

const ORIGINS: SourceOrigin[] = [
  { kind: 'kafka', topic: 'in', partition: 3, offset: '42' },
  { kind: 'sqs', queueUrl: 'http://127.0.0.1:9324/000000000000/q', messageId: 'm-1' },
  { kind: 'file', path: 'in.jsonl', line: 7 },
  { kind: 'webdataset', path: 'shard-000001.tar', key: 'k1' },
];

function outcome(decision: 'accept' | 'reject', origin: SourceOrigin = ORIGINS[0]!): Outcome {
  const reasons =
    decision === 'reject'
      ? [{ code: 'below_threshold' as const, message: 'itm 12 < 66', detail: { metric: 'itm', score: 12 } }]
      : [];
  return {
    record: { raw: '{}', origin },
    id: `id-${decision}`,
    pair: {
      id: `id-${decision}`,
      caption: 'a red "square" \u2603',
      image: { kind: 'url', url: 'https://example.com/a.png' },
      url: 'https://example.com/a.png',
      metadata: { extra: [1, { two: null }] },
    },
    decision,
    reasons,
    scores: { itm: 12, odf: 80 },
    expected: { itm: 12.4, odf: 79.9 },
    captionCut: { originalChars: 900, keptChars: 400 },
    image: { encoded: Buffer.from([1, 2, 3]), ext: 'png', width: 64, height: 48 },
  };
}

const DELETE = Symbol('delete');

/** `json` with the field at `path` (`model.name`, `reasons[0].code`) set to `value`, or deleted. */
function edited(json: string, path: string, value: unknown): string {
  const o = JSON.parse(json) as Record<string, unknown>;
  const keys = path.split(/\.|\[(\d+)\]/).filter((k) => k);
  const last = keys.pop()!;
  const parent = keys.reduce((x, k) => x[k] as Record<string, unknown>, o);
  if (value === DELETE) delete parent[last];
  else parent[last] = value;
  return JSON.stringify(o);
}

const AUDIT = encodeAuditEvent(toAuditEvent(outcome('reject'), MODEL, NOW));

function errorOf<T>(d: Decoded<T>) {
  assert.equal(d.ok, false, 'decode refuses it');
  return (d as Extract<Decoded<T>, { ok: false }>).error;
}

test('audit event: encode then decode gives the same event, for every source kind and both decisions', () => {
  for (const origin of ORIGINS) {
    for (const decision of ['accept', 'reject'] as const) {
      const event = toAuditEvent(outcome(decision, origin), MODEL, NOW);
      const decoded = decodeAuditEvent(encodeAuditEvent(event));
      assert.deepEqual(decoded, { ok: true, value: event });
      assert.deepEqual(decodeAuditEvent(Buffer.from(encodeAuditEvent(event))), decoded, 'bytes read the same');
    }
  }
  const trimmed: AuditEvent = {
    ...toAuditEvent(outcome('reject'), MODEL, NOW),
    caption: 'a',
    trimmed: { caption_chars: 9 },
  };
  assert.deepEqual(decodeAuditEvent(encodeAuditEvent(trimmed)), { ok: true, value: trimmed });
});

test('audit event: originOf is the inverse of auditSource', () => {
  for (const origin of ORIGINS) assert.deepEqual(originOf(auditSource(origin)), origin);
});

test('audit event: bad JSON, a non-object and an over-long value are typed errors', () => {
  assert.equal(errorOf(decodeAuditEvent('{"id": "x",')).code, 'not_json');
  assert.equal(errorOf(decodeAuditEvent('')).code, 'not_json');
  for (const v of ['[1]', 'null', '"s"', '3']) assert.equal(errorOf(decodeAuditEvent(v)).code, 'not_object', v);
  const long = Buffer.alloc(AUDIT_LINE_MAX_BYTES + 1, ' ');
  long.write(AUDIT);
  assert.deepEqual(errorOf(decodeAuditEvent(long)), {
    code: 'too_long',
    message: `over ${AUDIT_LINE_MAX_BYTES} bytes`,
  });
});

test('audit event: each missing required field is named', () => {
  const required = ['v', 'id', 'decision', 'reasons', 'scores', 'caption', 'url', 'model', 'source', 'ts'];
  for (const field of required) {
    const error = errorOf(decodeAuditEvent(edited(AUDIT, field, DELETE)));
    assert.deepEqual(error, { code: 'missing_field', field, message: `${field} is missing` });
  }
  for (const field of ['model.revision', 'source.offset', 'reasons[0].message', 'caption_cut.kept_chars']) {
    const error = errorOf(decodeAuditEvent(edited(AUDIT, field, DELETE)));
    assert.equal(error.code, 'missing_field', field);
    assert.equal(error.field, field);
  }
});

test('audit event: wrong types are named with their path', () => {
  const cases: [field: string, value: unknown, at?: string][] = [
    ['v', '1'],
    ['id', ''],
    ['id', 7],
    ['decision', 'maybe'],
    ['reasons', {}],
    ['reasons[0]', ['below_threshold'], 'reasons'],
    ['reasons[0].code', 3],
    ['reasons[0].detail', 'x'],
    ['scores', [1, 2]],
    ['scores.itm', '12'],
    ['caption', 5],
    ['url', {}],
    ['model', 'm'],
    ['source.kind', 'ftp'],
    ['source.partition', '3'],
    ['ts', 0],
    ['trimmed.caption_chars', { caption_chars: 'many' }, 'trimmed'],
  ];
  for (const [field, value, at] of cases) {
    const error = errorOf(decodeAuditEvent(edited(AUDIT, at ?? field, value)));
    assert.equal(error.code, 'wrong_type', `${field}: ${JSON.stringify(error)}`);
    assert.equal(error.field, field);
  }
  // JSON has no Infinity, but an exponent past float range parses to it: not a score.
  const huge = AUDIT.replace('"itm":12', '"itm":1e400');
  assert.equal(errorOf(decodeAuditEvent(huge)).field, 'scores.itm');
});

test('audit event: a score a writer left out reads as null, unknown fields are not kept', () => {
  const d = decodeAuditEvent(edited(edited(AUDIT, 'scores', { itm: 3 }), 'extra', 1));
  assert.ok(d.ok);
  assert.deepEqual(d.value.scores, { itm: 3, odf: null, ctq: null, su: null });
  assert.equal('extra' in d.value, false);
});

test('curated sample: encode then decode round-trips; wrong fields are typed errors', () => {
  const meta = curatedSampleMeta(outcome('accept', ORIGINS[2]), 'id-accept', MODEL);
  assert.deepEqual(meta.expected_scores, { itm: 12.4, odf: 79.9, ctq: null, su: null });
  assert.deepEqual(decodeCuratedSample(encodeCuratedSample(meta)), { ok: true, value: meta });
  const noExpected = { ...meta, expected_scores: null, width: null, height: null };
  assert.deepEqual(decodeCuratedSample(JSON.stringify(noExpected)), { ok: true, value: noExpected });
  const bad = (path: string, value: unknown) =>
    errorOf(decodeCuratedSample(edited(encodeCuratedSample(meta).toString(), path, value)));
  assert.deepEqual(bad('id', DELETE), { code: 'missing_field', field: 'id', message: 'id is missing' });
  assert.equal(bad('caption', null).field, 'caption');
  assert.equal(bad('metadata', []).field, 'metadata');
  assert.equal(bad('expected_scores.itm', 'x').field, 'expected_scores.itm');
  assert.equal(bad('source.line', '7').field, 'source.line');
  assert.equal(errorOf(decodeCuratedSample('not json')).code, 'not_json');
});

test('accepted message: the event, a keyed message without id, a whole audit event; bad ones refused', () => {
  const event: AcceptedEvent = {
    v: 1,
    id: 'a1',
    scores: { itm: 90, odf: null, ctq: null, su: 70 },
    caption: 'c',
    url: null,
    model: MODEL,
    location: { bucket: 'b', shard: 's.tar', sample: 'a1' },
    ts: NOW.toISOString(),
  };
  const { v: _v, ...read } = event;
  assert.deepEqual(decodeAcceptedMessage(encodeAcceptedEvent(event), 'ignored'), {
    ok: true,
    value: { kind: 'accepted', event: read },
  });
  assert.deepEqual(decodeAcceptedMessage('{"scores":{"itm":5}}', Buffer.from('key-7')), {
    ok: true,
    value: { kind: 'accepted', event: { id: 'key-7', scores: { itm: 5, odf: null, ctq: null, su: null } } },
  });
  const audit = toAuditEvent(outcome('reject'), MODEL, NOW);
  assert.deepEqual(decodeAcceptedMessage(encodeAuditEvent(audit)), {
    ok: true,
    value: { kind: 'audit', event: audit },
  });
  assert.equal(errorOf(decodeAcceptedMessage('{"scores":{}}')).field, 'id');
  assert.equal(errorOf(decodeAcceptedMessage('{"id":"x","scores":{"itm":"9"}}')).field, 'scores.itm');
  assert.equal(errorOf(decodeAcceptedMessage('{"id":"x","location":{"bucket":1}}')).field, 'location.bucket');
});

test('event tally: rejects counted by reason, scores per decision, a copy counts on independently', () => {
  const t = new EventTally();
  t.add({ decision: 'accept', reasons: [], scores: { itm: 90, odf: null } });
  const below = (metric: string) => ({ code: 'below_threshold', detail: { metric } });
  t.add({ decision: 'reject', reasons: [below('itm'), below('odf')], scores: { itm: 10.4, odf: 3 } });
  t.add({ decision: 'reject', reasons: [{ code: 'fetch_failed' }], scores: {} });
  assert.deepEqual([t.accepted, t.rejected, t.events], [1, 2, 3]);
  assert.deepEqual(t.reasons.rows(t.rejected), [
    { code: 'below_threshold', count: 1, share: 0.5 },
    { code: 'fetch_failed', count: 1, share: 0.5 },
  ]);
  assert.deepEqual(t.reasons.byMetric(), { itm: 1, odf: 1 });
  const itm = t.histograms.get('itm')!;
  assert.equal(itm.accept[90], 1);
  assert.equal(itm.reject[10], 1, 'rounded to its integer bin');
  assert.equal(itm.sumReject, 10.4, 'the sum is exact');
  assert.equal(t.scoreCounts('odf')[3], 1);
  const copy = new EventTally(t);
  copy.add({ decision: 'reject', reasons: [{ code: 'fetch_failed' }], scores: { itm: 10 } });
  assert.equal(t.rejected, 2, 'the original is untouched');
  assert.equal(t.histograms.get('itm')!.reject[10], 1);
  assert.equal(copy.histograms.get('itm')!.reject[10], 2);
  assert.equal(copy.reasons.byCode.get('fetch_failed'), 2);
  assert.equal(t.reasons.byCode.get('fetch_failed'), 1);
});
