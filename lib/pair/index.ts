import { createHash } from 'node:crypto';
import type { ImageRef, Pair, RawSample, Reason, SourceRecord } from '../types.ts';
import { RejectError } from '../types.ts';

/** Limits applied while parsing a raw record into a pair. */
export interface PairOptions {
  /** Longest caption accepted, in UTF-16 code units (JS string length). Default 4096: prompts stay bounded. */
  readonly maxCaptionChars?: number;
  /** Largest raw record accepted, in bytes. Default 16 MiB (inline base64 images included). */
  readonly maxRecordBytes?: number;
  /**
   * Deepest nesting of objects/arrays in one metadata field (a scalar is 0, `{}` or `[]` is 1). Default 32: the
   * curated `.json` and the audit event must serialise without running out of stack.
   */
  readonly maxMetadataDepth?: number;
  /** Largest metadata (every field but id, url, image, caption) as JSON, in UTF-8 bytes. Default 64 KiB. */
  readonly maxMetadataBytes?: number;
}

export const PAIR_DEFAULTS: Required<PairOptions> = {
  maxCaptionChars: 4096,
  maxRecordBytes: 16 * 1024 * 1024,
  maxMetadataDepth: 32,
  maxMetadataBytes: 64 * 1024,
};

/**
 * A WebDataset sample (or the rest of a shard) that the source could not read: a truncated or corrupt shard, or a
 * member over the size limit. Parsing it throws its reason, so it ends as an `invalid_record` reject.
 */
export interface UnreadableSample extends RawSample {
  readonly unreadable: Reason;
}

const isUnreadable = (s: RawSample): s is UnreadableSample => (s as Partial<UnreadableSample>).unreadable !== undefined;

/** A WebDataset sample's image member: the first of these extensions it has, in this order, is the pair's image. */
export const IMAGE_EXTS = ['jpg', 'jpeg', 'png', 'webp', 'gif', 'bmp', 'tif', 'tiff', 'avif'];
const utf8 = new TextDecoder('utf-8', { fatal: true });
const sha256 = (...parts: (string | Buffer)[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
};

const invalid = (message: string, field?: string, extra?: Record<string, unknown>): never => {
  throw new RejectError({ code: 'invalid_record', message, ...(field ? { detail: { field, ...extra } } : {}) });
};

/** Deterministic id of a pair without one: the same url (or image bytes) and caption always give the same id. */
export function derivePairId(imageKey: string, caption: string): string {
  return sha256(imageKey, '\n', caption).slice(0, 32);
}

/**
 * Id for a record that could not be parsed into a pair: deterministic over its bytes, so replays agree. A JSON object's
 * own `id` is kept only when it is one a valid record could carry (a plain printable string of at most 256
 * characters, or an integer); anything else (bytes that are not JSON, an id with control characters) gets
 * `invalid-` + the first 24 hex digits of the sha256 of the raw bytes: an id is never fished out of broken JSON.
 */
export function rawRecordId(record: SourceRecord): string {
  const raw = record.raw;
  if (typeof raw === 'string' || Buffer.isBuffer(raw)) {
    const bytes = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw;
    const fallback = `invalid-${sha256(bytes).slice(0, 24)}`;
    if (record.size !== undefined && record.size > bytes.length) return fallback;
    try {
      const value: unknown = JSON.parse(utf8.decode(bytes));
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
        return plainId((value as Record<string, unknown>).id) ?? fallback;
      }
    } catch {
      // not UTF-8 JSON: the digest names it
    }
    return fallback;
  }
  if (isUnreadable(raw))
    return `invalid-${sha256('unreadable\n', JSON.stringify(raw.unreadable.detail ?? {})).slice(0, 24)}`;
  return plainId(raw.key) ?? `invalid-${sha256('key\n', raw.key).slice(0, 24)}`;
}

/** The id as a valid record may give it, else undefined. */
function plainId(value: unknown): string | undefined {
  if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value);
  if (typeof value === 'string' && value.length > 0 && value.length <= 256 && !hasControlChars(value)) return value;
  return undefined;
}

/**
 * Parses and validates one raw record (Kafka/SQS bytes, a JSONL line, or a WebDataset sample) into a Pair.
 * Throws only RejectError with code `invalid_record` and a message naming the field.
 */
export function parseRecord(record: SourceRecord, options: PairOptions = {}): Pair {
  const opts = { ...PAIR_DEFAULTS, ...options };
  const raw = record.raw;
  if (typeof raw === 'string' || Buffer.isBuffer(raw)) return parseJsonRecord(raw, opts, record.size);
  return parseSample(raw, opts);
}

function parseJsonRecord(raw: string | Buffer, opts: Required<PairOptions>, fullSize?: number): Pair {
  const size = Math.max(fullSize ?? 0, typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length);
  if (size === 0) invalid('record is empty');
  if (size > opts.maxRecordBytes) invalid(`record is ${size} bytes, over the ${opts.maxRecordBytes}-byte limit`);
  let text: string;
  try {
    text = typeof raw === 'string' ? raw : utf8.decode(raw);
  } catch {
    return invalid('record is not valid UTF-8');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return invalid(`record is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return invalid(`record must be a JSON object, got ${Array.isArray(value) ? 'array' : typeof value}`);
  }
  return fromObject(value as Record<string, unknown>, undefined, opts);
}

function parseSample(sample: RawSample, opts: Required<PairOptions>): Pair {
  if (isUnreadable(sample)) throw new RejectError(sample.unreadable);
  // img2dataset / DataComp samples: <key>.jpg|png|webp, <key>.txt caption, <key>.json metadata (may hold url, caption).
  let meta: Record<string, unknown> = {};
  const json = sample.members.json;
  if (json) {
    try {
      const parsed: unknown = JSON.parse(utf8.decode(json));
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed))
        meta = parsed as Record<string, unknown>;
      else invalid(`sample ${sample.key}: ${sample.key}.json must hold a JSON object`, 'json');
    } catch (err) {
      if (err instanceof RejectError) throw err;
      invalid(`sample ${sample.key}: ${sample.key}.json is not valid UTF-8 JSON`, 'json');
    }
  }
  const ext = IMAGE_EXTS.find((e) => sample.members[e] !== undefined);
  if (!ext) invalid(`sample ${sample.key} has no image member (one of .${IMAGE_EXTS.join(', .')})`, 'image');
  let caption: unknown = meta.caption;
  const txt = sample.members.txt;
  if (txt) {
    try {
      caption = utf8.decode(txt);
    } catch {
      invalid(`sample ${sample.key}: ${sample.key}.txt is not valid UTF-8`, 'caption');
    }
  }
  const data = sample.members[ext!]!;
  const obj: Record<string, unknown> = { ...meta, caption };
  if (obj.id === undefined) obj.id = typeof meta.key === 'string' && meta.key ? meta.key : sample.key;
  return fromObject(obj, { kind: 'bytes', data, ext: ext === 'jpeg' ? 'jpg' : ext }, opts);
}

function fromObject(obj: Record<string, unknown>, inline: ImageRef | undefined, opts: Required<PairOptions>): Pair {
  const { id: rawId, url: rawUrl, image: rawImage, caption: rawCaption, ...metadata } = obj;

  if (rawCaption === undefined || rawCaption === null) invalid('field "caption" is missing', 'caption');
  if (typeof rawCaption !== 'string') invalid(`field "caption" must be a string, got ${typeof rawCaption}`, 'caption');
  const caption = rawCaption as string;
  if (isBlankCaption(caption))
    invalid('field "caption" is empty (only whitespace or zero-width characters)', 'caption');
  if (caption.length > opts.maxCaptionChars) {
    invalid(`field "caption" has ${caption.length} characters, over the limit of ${opts.maxCaptionChars}`, 'caption');
  }
  if (/[\uD800-\uDFFF]/.test(caption.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ''))) {
    invalid('field "caption" holds an unpaired UTF-16 surrogate', 'caption');
  }

  let image: ImageRef;
  let url: string | undefined;
  let imageKey: string;
  if (inline) {
    // A sample's url only records where its embedded image came from: the same http/https check as a record's url,
    // and one that fails it is dropped (never stored nor audited) with a note in the metadata; the sample still scores.
    image = inline;
    if (rawUrl !== undefined && rawUrl !== null) {
      try {
        url = parseUrl(rawUrl);
      } catch (err) {
        if (!(err instanceof RejectError)) throw err;
        metadata.url_dropped = 'the sample\'s "url" was not an http or https URL without credentials';
      }
    }
    imageKey = url ?? `sha256:${sha256((inline as { data: Buffer }).data)}`;
  } else if (rawUrl !== undefined && rawImage !== undefined) {
    return invalid('record has both "url" and "image": give exactly one', 'image');
  } else if (rawUrl !== undefined) {
    url = parseUrl(rawUrl);
    image = { kind: 'url', url };
    imageKey = url;
  } else if (rawImage !== undefined) {
    [image, imageKey] = parseImageField(rawImage);
  } else {
    return invalid('record has neither "url" nor "image"', 'url');
  }

  let id: string;
  if (rawId === undefined || rawId === null) id = derivePairId(imageKey, caption);
  else {
    const given = plainId(rawId);
    if (given === undefined) {
      return invalid(
        'field "id" must be a non-empty string (at most 256 characters, no control characters) or an integer',
        'id',
      );
    }
    id = given;
  }
  checkMetadata(metadata, opts);

  return { id, caption, image, ...(url !== undefined ? { url } : {}), metadata };
}

// eslint-disable-next-line no-control-regex -- ids must not carry control characters (C0, C1, line separators, bidi overrides) into keys and logs
const hasControlChars = (s: string) => /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/.test(s);

/** Whitespace and the zero-width characters that render as nothing (ZWSP, ZWNJ, ZWJ, word joiner, BOM). */
const isBlankCaption = (s: string) => s.replace(/(?:\s|\u200b|\u200c|\u200d|\u2060|\ufeff)+/g, '').length === 0;

/**
 * Bounds what passes through as metadata: nesting (checked without recursion, so a hostile record cannot exhaust the
 * stack here) and serialised size. Both are checked at parse time so no later stage (curated `.json`, audit event)
 * meets a value it cannot serialise.
 */
function checkMetadata(metadata: Record<string, unknown>, opts: Required<PairOptions>): void {
  const stack: [unknown, number][] = Object.values(metadata).map((v) => [v, 1]);
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    if (depth > opts.maxMetadataDepth) {
      invalid(`metadata nests deeper than ${opts.maxMetadataDepth} levels`, 'metadata', {
        limit: 'depth',
        max: opts.maxMetadataDepth,
      });
    }
    for (const v of Object.values(value)) if (typeof v === 'object' && v !== null) stack.push([v, depth + 1]);
  }
  const bytes = Buffer.byteLength(JSON.stringify(metadata));
  if (bytes > opts.maxMetadataBytes) {
    invalid(`metadata is ${bytes} bytes as JSON, over the ${opts.maxMetadataBytes}-byte limit`, 'metadata', {
      limit: 'bytes',
      max: opts.maxMetadataBytes,
      bytes,
    });
  }
}

function parseUrl(value: unknown): string {
  if (typeof value !== 'string') return invalid(`field "url" must be a string, got ${typeof value}`, 'url');
  if (value.length > 8192) return invalid('field "url" is longer than 8192 characters', 'url');
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    return invalid(`field "url" is not a valid URL: ${JSON.stringify(value.slice(0, 200))}`, 'url');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    return invalid(`field "url" must use http or https, got ${parsed.protocol.replace(/:$/, '')}`, 'url');
  }
  if (parsed.username || parsed.password) return invalid('field "url" must not carry credentials', 'url');
  return parsed.href;
}

function parseImageField(value: unknown): [ImageRef, string] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return invalid('field "image" must be an object {"base64": ...} or {"s3": "s3://bucket/key"}', 'image');
  }
  const v = value as Record<string, unknown>;
  if (typeof v.base64 === 'string') {
    const b64 = v.base64.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(b64) || b64.length === 0) {
      return invalid('field "image.base64" is not valid base64', 'image.base64');
    }
    const data = Buffer.from(b64, 'base64');
    if (data.length === 0) return invalid('field "image.base64" decodes to zero bytes', 'image.base64');
    return [{ kind: 'base64', data }, `sha256:${sha256(data)}`];
  }
  if (typeof v.s3 === 'string') {
    const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(v.s3);
    if (!m) return invalid('field "image.s3" must look like s3://bucket/key', 'image.s3');
    return [{ kind: 's3', bucket: m[1]!, key: m[2]! }, v.s3];
  }
  return invalid('field "image" must hold "base64" (string) or "s3" (s3://bucket/key)', 'image');
}
