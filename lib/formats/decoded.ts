/**
 * What every decode in lib/formats returns: the typed record, or a typed error saying which field is wrong. A decode
 * never throws on bad input: a reader decides whether a bad record is fatal (--resume), or counted and shown
 * (`report`, `monitor`).
 */

export type DecodeErrorCode = 'too_long' | 'not_json' | 'not_object' | 'missing_field' | 'wrong_type';

export interface DecodeError {
  readonly code: DecodeErrorCode;
  /** The field at fault, as a path (`source.offset`, `reasons[2].code`), for missing_field and wrong_type. */
  readonly field?: string;
  /** One line for a person: `scores.itm is not a finite number or null`. */
  readonly message: string;
}

export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: DecodeError };

/**
 * Thrown inside a decode only, caught by {@link decodeObject}: the first field found wrong ends the check. A tagged
 * plain Error rather than a class, because it never leaves this module (lib/errors.ts holds the error classes).
 */
const FIELD = Symbol('decode field error');
type FieldError = Error & { readonly [FIELD]: DecodeError };
const FieldError = (error: DecodeError): FieldError => Object.assign(new Error(error.message), { [FIELD]: error });
const isFieldError = (err: unknown): err is FieldError => err instanceof Error && FIELD in err;

export function decodeError(code: DecodeErrorCode, message: string, field?: string): DecodeError {
  return { code, message, ...(field !== undefined ? { field } : {}) };
}

export type JsonObject = Record<string, unknown>;

export const isObject = (x: unknown): x is JsonObject => !!x && typeof x === 'object' && !Array.isArray(x);

/**
 * Parses `value` (at most `maxBytes`, never parsed when longer) as one JSON object and hands it to `check`, which
 * reads its fields through {@link Fields}; any field found missing or of the wrong type becomes the error.
 */
export function decodeJson<T>(value: string | Buffer, maxBytes: number, check: (o: Fields) => T): Decoded<T> {
  const bytes = typeof value === 'string' ? Buffer.byteLength(value) : value.length;
  if (bytes > maxBytes) return { ok: false, error: decodeError('too_long', `over ${maxBytes} bytes`) };
  let raw: unknown;
  try {
    raw = JSON.parse(value.toString());
  } catch {
    return { ok: false, error: decodeError('not_json', 'not JSON') };
  }
  if (!isObject(raw)) return { ok: false, error: decodeError('not_object', 'not a JSON object') };
  return decodeObject(raw, check);
}

/** {@link decodeJson} on an object already parsed. */
export function decodeObject<T>(o: JsonObject, check: (o: Fields) => T): Decoded<T> {
  try {
    return { ok: true, value: check(new Fields(o, '')) };
  } catch (err) {
    if (isFieldError(err)) return { ok: false, error: err[FIELD] };
    throw err;
  }
}

/** Typed reads of one JSON object's fields; each throws a FieldError naming the field's path. */
export class Fields {
  constructor(
    readonly raw: JsonObject,
    private readonly path: string,
  ) {}

  private at(key: string): string {
    return this.path ? `${this.path}.${key}` : key;
  }

  private value(key: string, expected: string, ok: (x: unknown) => boolean, optional = false): unknown {
    const x = this.raw[key];
    if (x === undefined && !optional) {
      throw FieldError(decodeError('missing_field', `${this.at(key)} is missing`, this.at(key)));
    }
    if (x !== undefined && !ok(x)) {
      throw FieldError(decodeError('wrong_type', `${this.at(key)} is not ${expected}`, this.at(key)));
    }
    return x;
  }

  /** An error for a check of the caller's own (thrown, it becomes the decode's error). */
  fail(error: DecodeError): Error {
    return FieldError(error);
  }

  string(key: string): string {
    return this.value(key, 'a string', (x) => typeof x === 'string') as string;
  }

  nonEmptyString(key: string): string {
    return this.value(key, 'a non-empty string', (x) => typeof x === 'string' && x !== '') as string;
  }

  stringOrNull(key: string): string | null {
    return this.value(key, 'a string or null', (x) => x === null || typeof x === 'string') as string | null;
  }

  number(key: string): number {
    return this.value(key, 'a finite number', Number.isFinite) as number;
  }

  numberOrNull(key: string, optional = false): number | null | undefined {
    return this.value(key, 'a finite number or null', (x) => x === null || Number.isFinite(x), optional) as
      number | null | undefined;
  }

  oneOf<T extends string>(key: string, values: readonly T[]): T {
    return this.value(key, values.map((v) => `'${v}'`).join(' or '), (x) => values.includes(x as T)) as T;
  }

  object(key: string): Fields {
    return new Fields(this.value(key, 'an object', isObject) as JsonObject, this.at(key));
  }

  optionalObject(key: string): Fields | undefined {
    const x = this.value(key, 'an object', isObject, true) as JsonObject | undefined;
    return x && new Fields(x, this.at(key));
  }

  objectOrNull(key: string): Fields | null {
    const x = this.value(key, 'an object or null', (v) => v === null || isObject(v)) as JsonObject | null;
    return x && new Fields(x, this.at(key));
  }

  /** An array whose items are all objects. */
  objects(key: string): Fields[] {
    const items = this.value(key, 'an array', Array.isArray) as unknown[];
    return items.map((item, i) => {
      const path = `${this.at(key)}[${i}]`;
      if (!isObject(item)) throw FieldError(decodeError('wrong_type', `${path} is not an object`, path));
      return new Fields(item, path);
    });
  }
}
