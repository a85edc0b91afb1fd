/**
 * Brace lists in --input, as img2dataset, DataComp and clip-retrieval write shard sets (braceexpand's syntax):
 * `{00000..00099}.tar` (a numeric range; the width of a zero-padded bound is kept), `{a,b,c}.tar` (a comma list),
 * several groups in one spec (their product, in order) and groups nested inside a comma list (`{a,b{1..2}}`).
 * A range with a step (`{0..10..2}`) and letter ranges are not taken: they are left as written, and the path that
 * does not exist says so.
 */
import { FilterError } from '../types.ts';

/** Most names one --input may expand to: a typo like `{0..99999999}` is refused before it fills memory. */
export const MAX_EXPANSION = 1_000_000;

/**
 * Most brace groups in one spec: 20 groups of two already make a million names, and each group is one level of
 * recursion, so a spec of thousands is refused before it fills the stack.
 */
export const MAX_GROUPS = 64;

/** Expands every brace group of `spec`; a spec without one is returned as it is. */
export function expandBraces(spec: string, limit = MAX_EXPANSION): string[] {
  const shown = spec.length > 200 ? `${spec.slice(0, 200)}...` : spec;
  const refuse = (why: string) => new FilterError('invalid_option', `--input ${shown} ${why}`, { spec: shown, limit });
  if (scanGroups(spec).count > MAX_GROUPS) throw refuse(`has more than ${MAX_GROUPS} brace groups`);
  const out: string[] = [];
  const push = (name: string) => {
    if (out.length >= limit) throw refuse(`expands to more than ${limit} names`);
    out.push(name);
  };
  expandInto(spec, push, limit);
  return out;
}

function expandInto(spec: string, push: (name: string) => void, limit: number): void {
  const group = firstGroup(spec);
  if (!group) return push(spec);
  const head = spec.slice(0, group.open);
  const tail = spec.slice(group.close + 1);
  for (const alt of alternatives(spec.slice(group.open + 1, group.close), limit)) {
    expandInto(head + alt + tail, push, limit);
  }
}

/**
 * The first balanced `{...}` that is a range or has a top-level comma (a lone `{x}` is literal, as in a shell). One
 * pass with a stack of open braces: a spec of many unmatched `{` is linear, not a scan from each of them.
 */
function firstGroup(spec: string): { open: number; close: number } | undefined {
  return scanGroups(spec).first;
}

/** The spec's brace groups (ranges and comma lists, nested ones included): how many, and the first. */
function scanGroups(spec: string): { first?: { open: number; close: number }; count: number } {
  const opens: { at: number; comma: boolean }[] = [];
  let first: { open: number; close: number } | undefined;
  let count = 0;
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i];
    if (c === '{') opens.push({ at: i, comma: false });
    else if (c === ',' && opens.length > 0) opens[opens.length - 1]!.comma = true;
    else if (c === '}' && opens.length > 0) {
      const { at, comma } = opens.pop()!;
      if (!comma && !isRange(spec, at, i)) continue;
      count++;
      if (!first || at < first.open) first = { open: at, close: i };
    }
  }
  return { first, count };
}

const RANGE = /^(-?\d+)\.\.(-?\d+)$/;
const RANGE_AT = /(-?\d+)\.\.(-?\d+)\}/y;

/** Whether `spec[open..close]` is `{M..N}`, read in place (no copy of a long body). */
function isRange(spec: string, open: number, close: number): boolean {
  RANGE_AT.lastIndex = open + 1;
  return RANGE_AT.test(spec) && RANGE_AT.lastIndex === close + 1;
}

function alternatives(body: string, limit: number): string[] {
  const range = RANGE.exec(body);
  if (!range) return splitTopLevel(body);
  const [, a, b] = range as unknown as [string, string, string];
  const from = Number(a);
  const to = Number(b);
  // Zero-padded when either bound is written with a leading zero: `{00000..00099}` keeps five digits.
  const padded = /^-?0\d/.test(a) || /^-?0\d/.test(b);
  const width = padded ? Math.max(a.replace('-', '').length, b.replace('-', '').length) : 0;
  const step = from <= to ? 1 : -1;
  const count = Math.abs(to - from) + 1;
  // One past the limit is enough for the caller to refuse the whole spec.
  return Array.from({ length: Math.min(count, limit + 1) }, (_, i) => {
    const n = from + i * step;
    return (n < 0 ? '-' : '') + String(Math.abs(n)).padStart(width, '0');
  });
}

/** Splits a group's body at its top-level commas. */
function splitTopLevel(body: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < body.length; i++) {
    if (body[i] === '{') depth++;
    else if (body[i] === '}') depth--;
    else if (body[i] === ',' && depth === 0) {
      parts.push(body.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(body.slice(start));
  return parts;
}
