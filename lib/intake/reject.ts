/** Builders for the intake's reject reasons, so every stage words and shapes them the same way. */
import { RejectError } from '../types.ts';

/** `detail.kind` values of `fetch_failed` (DESIGN.md fixes the first six; the rest extend them). */
export type FetchFailKind =
  | 'http_status'
  | 'timeout'
  | 'too_large'
  | 'blocked_address'
  | 'bad_content_type'
  | 'too_many_redirects'
  | 'connection_error'
  | 'empty_body'
  | 'bad_scheme';

export function fetchFailed(kind: FetchFailKind, message: string, detail: Record<string, unknown> = {}): RejectError {
  return new RejectError({ code: 'fetch_failed', message, detail: { kind, ...detail } });
}

/** `detail.kind` of `undecodable_image`. */
export type UndecodableKind = 'unsupported_format' | 'too_many_pixels' | 'decode_error';

export function undecodable(kind: UndecodableKind, message: string, detail: Record<string, unknown> = {}): RejectError {
  return new RejectError({ code: 'undecodable_image', message, detail: { kind, ...detail } });
}

export function tooSmall(message: string, detail: Record<string, unknown>): RejectError {
  return new RejectError({ code: 'image_too_small', message, detail });
}
