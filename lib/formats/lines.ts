/**
 * Newline-delimited records from a byte stream with a bound on what one line may hold in memory. readline would
 * buffer a 2 GB line whole before anyone could refuse it; here a line past `maxLineBytes` keeps only its first
 * `maxLineBytes + 1` bytes (enough for the parser to refuse it by size) while the rest is counted and dropped.
 */
import type { Readable } from 'node:stream';

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

export interface BoundedLinesOptions {
  /**
   * Asked once the chunks run out: whether a last line without its newline is a line (true at the end of the input,
   * the default) or a fragment whose rest was never read (a reader stopped mid-stream), which is dropped.
   */
  readonly keepUnterminated?: () => boolean;
}

/** Yields every line of `chunks` (the last one even without a trailing newline, unless told not to), in order. */
export async function* boundedLines(
  chunks: AsyncIterable<Buffer | string>,
  maxLineBytes: number,
  options: BoundedLinesOptions = {},
): AsyncIterable<Line> {
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
  if ((size > 0 || parts.length > 0) && (options.keepUnterminated?.() ?? true)) yield finish();
}

/**
 * The chunks of a byte stream as they arrive, until it ends or `signal` aborts. On abort it still hands over what the
 * stream already holds in memory (bytes this process has read), then stops without waiting for more: a pipe its
 * writer keeps open (`tail -f x | mlm-filter filter --input -`) cannot hold a stopping run. The stream is left
 * paused, not destroyed (stdin belongs to the process), and no longer keeps the process alive.
 */
export class StreamChunks implements AsyncIterable<Buffer | string> {
  /** True once the stream reached its end; false while reading or after a stop. */
  ended = false;
  private readonly stopped = new AbortController();

  constructor(
    private readonly stream: Readable,
    private readonly signal: AbortSignal,
  ) {}

  /** Stops the iteration as an abort does (its consumer is gone). */
  stop(): void {
    this.stopped.abort();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer | string> {
    const stream = this.stream;
    const stop = AbortSignal.any([this.signal, this.stopped.signal]);
    let wake = () => {};
    let failure: Error | undefined;
    const onReadable = () => wake();
    const onEnd = () => {
      this.ended = true;
      wake();
    };
    const onError = (err: Error) => {
      failure = err;
      wake();
    };
    stream.on('readable', onReadable).on('end', onEnd).on('error', onError);
    stop.addEventListener('abort', onReadable);
    try {
      while (!stop.aborted) {
        const chunk = stream.read() as Buffer | string | null;
        if (chunk !== null) {
          yield chunk;
          continue;
        }
        if (failure) throw failure;
        if (this.ended || stream.readableEnded) {
          this.ended = true;
          return;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
      for (let chunk = stream.read() as Buffer | string | null; chunk !== null; chunk = stream.read()) yield chunk;
    } finally {
      stop.removeEventListener('abort', onReadable);
      stream.off('readable', onReadable).off('end', onEnd).off('error', onError);
      // Once no 'readable' listener is left (Node settles that on the next tick), pause() makes stdin stop reading
      // its pipe, so the process can exit while the writer keeps it open.
      process.nextTick(() => stream.pause());
    }
  }
}

/** True for a line of only spaces, tabs and carriage returns (skipped, as blank lines in JSONL are). */
export function isBlank(bytes: Buffer): boolean {
  for (const b of bytes) if (b !== 32 && b !== 9 && b !== CR) return false;
  return true;
}
