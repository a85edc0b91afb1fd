/**
 * Newline-delimited records from a byte stream with a bound on what one line may hold in memory. readline would
 * buffer a 2 GB line whole before anyone could refuse it; here a line past `maxLineBytes` keeps only its first
 * `maxLineBytes + 1` bytes (enough for the parser to refuse it by size) while the rest is counted and dropped.
 */

export interface Line {
  /** 1-based line number. */
  readonly number: number;
  /** The line without its `\n` (and `\r` before it), or its first maxLineBytes + 1 bytes when longer. */
  readonly bytes: Buffer;
  /** The line's full length in bytes (its newline excluded). */
  readonly size: number;
}

const NL = 10;
const CR = 13;

/** Yields every line of `chunks` (the last one even without a trailing newline), in order. */
export async function* boundedLines(chunks: AsyncIterable<Buffer | string>, maxLineBytes: number): AsyncIterable<Line> {
  let parts: Buffer[] = [];
  let kept = 0; // bytes held in `parts`
  let size = 0; // bytes of the current line seen so far
  let number = 0;
  const take = (piece: Buffer): void => {
    size += piece.length;
    const room = maxLineBytes + 1 - kept;
    if (room <= 0 || piece.length === 0) return;
    const slice = piece.length > room ? piece.subarray(0, room) : piece;
    // Copy: a chunk's buffer must not stay alive through a small slice of it.
    parts.push(Buffer.from(slice));
    kept += slice.length;
  };
  const finish = (): Line => {
    let bytes = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, kept);
    let full = size;
    // A CRLF line's \r is dropped when the line was kept whole (a line of exactly maxLineBytes + \r included).
    if (bytes.length === full && bytes.length > 0 && bytes[bytes.length - 1] === CR) {
      bytes = bytes.subarray(0, bytes.length - 1);
      full--;
    }
    const line = { number: ++number, bytes, size: full };
    parts = [];
    kept = 0;
    size = 0;
    return line;
  };
  for await (const chunk of chunks) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    let start = 0;
    for (let nl = buf.indexOf(NL); nl !== -1; nl = buf.indexOf(NL, start)) {
      take(buf.subarray(start, nl));
      yield finish();
      start = nl + 1;
    }
    take(buf.subarray(start));
  }
  if (size > 0 || parts.length > 0) yield finish();
}

/** True for a line of only spaces, tabs and carriage returns (skipped, as blank lines in JSONL are). */
export function isBlank(bytes: Buffer): boolean {
  for (const b of bytes) if (b !== 32 && b !== 9 && b !== CR) return false;
  return true;
}
