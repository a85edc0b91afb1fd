import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { PAIR_DEFAULTS } from '../pair/index.ts';
import type { Source, SourceBatch, SourceRecord } from '../types.ts';
import { FilterError, NO_COMMIT } from '../types.ts';
import { boundedLines, isBlank, StreamChunks, type Line } from '../formats/lines.ts';

/** Options of the JSONL source (a file, or `-` for stdin). */
export interface JsonlSourceOptions {
  /** Path of a .jsonl file, or `-` for standard input. */
  readonly path: string;
  /** Records per batch handed to the pipeline. Default 64. */
  readonly batchSize?: number;
  /**
   * Longest a partial batch waits for more lines, from its first line, ms. Default 200: a slow stream on stdin
   * (`tail -f`) flows a few lines at a time instead of waiting for a full batch or the end of the input.
   */
  readonly maxBatchWaitMs?: number;
  /** Stream to read instead of the path (tests, stdin). */
  readonly stream?: Readable;
  /**
   * Most bytes of one line held in memory; a longer line becomes an `invalid_record` reject (its size is reported,
   * its bytes past this are never buffered). Default: the pair parser's record limit (16 MiB).
   */
  readonly maxLineBytes?: number;
}

const DUE = Symbol('due');

interface Deadline {
  readonly passed: Promise<typeof DUE>;
  cancel(): void;
}

function deadline(ms: number): Deadline {
  let timer: NodeJS.Timeout | undefined;
  const passed = new Promise<typeof DUE>((resolve) => (timer = setTimeout(() => resolve(DUE), ms)));
  return { passed, cancel: () => clearTimeout(timer) };
}

/** Counts newline-terminated records so progress can show an ETA; cheap next to scoring. */
async function countLines(path: string): Promise<number> {
  let n = 0;
  let last = 10;
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) {
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) n++;
    last = chunk[chunk.length - 1] ?? last;
  }
  return last === 10 ? n : n + 1;
}

/**
 * One record per non-blank line. Lines are read lazily (the file is paused while the pipeline has no room), so the
 * backlog lives on disk, not in memory, and no line holds more than maxLineBytes. Acks are no-ops: a file has no
 * offsets to commit.
 */
export class JsonlSource implements Source {
  sizeHint?: number;
  private constructor(private readonly options: JsonlSourceOptions) {}

  static async open(options: JsonlSourceOptions): Promise<JsonlSource> {
    const source = new JsonlSource(options);
    if (!options.stream && options.path !== '-') {
      try {
        const s = await stat(options.path);
        if (!s.isFile()) throw new Error('not a regular file');
        // Lines are counted up front (for the ETA) only where that is cheap next to scoring.
        if (s.size < 512 * 1024 * 1024) source.sizeHint = await countLines(options.path);
      } catch (err) {
        throw new FilterError('input_unreadable', `cannot read input ${options.path}: ${(err as Error).message}`, {
          path: options.path,
        });
      }
    }
    return source;
  }

  /**
   * Batches of `batchSize` records, or fewer once a partial batch has waited `maxBatchWaitMs`. On abort the lines
   * already read are still handed over (a last line cut short by the stop is not a line), so a stopping run drains
   * them instead of losing them; nothing more is read.
   */
  async *batches(signal: AbortSignal): AsyncIterable<SourceBatch> {
    const { path } = this.options;
    const stream = this.options.stream ?? (path === '-' ? process.stdin : createReadStream(path));
    const size = this.options.batchSize ?? 64;
    const waitMs = this.options.maxBatchWaitMs ?? 200;
    const maxLineBytes = this.options.maxLineBytes ?? PAIR_DEFAULTS.maxRecordBytes;
    const chunks = new StreamChunks(stream, signal);
    const lines = boundedLines(chunks, maxLineBytes, { keepUnterminated: () => chunks.ended })[Symbol.asyncIterator]();
    const batch = (recs: SourceRecord[]): SourceBatch => ({ records: recs, committer: NO_COMMIT });
    let records: SourceRecord[] = [];
    let due: Deadline | undefined; // runs from the first line of a partial batch
    let next: Promise<IteratorResult<Line>> | undefined; // kept across a timed cut: a line may be on its way
    /** The records of the batch being cut; the next batch starts empty, its wait not yet running. */
    const take = (): SourceRecord[] => {
      due?.cancel();
      due = undefined;
      const taken = records;
      records = [];
      return taken;
    };
    try {
      for (;;) {
        next ??= lines.next();
        const result = due ? await Promise.race([next, due.passed]) : await next;
        if (result === DUE) {
          yield batch(take());
          continue;
        }
        next = undefined;
        if (result.done) break;
        const line = result.value;
        if (line.size <= maxLineBytes && isBlank(line.bytes)) continue;
        records.push({
          raw: line.bytes,
          origin: { kind: 'file', path, line: line.number },
          ...(line.size > line.bytes.length ? { size: line.size } : {}),
        });
        if (records.length >= size) yield batch(take());
        else due ??= deadline(waitMs);
      }
      if (records.length > 0) yield batch(take());
    } finally {
      due?.cancel();
      chunks.stop();
      // Left unawaited when the consumer stops early; its failure then has no one to tell.
      next?.catch(() => undefined);
      if (stream !== process.stdin) stream.destroy();
    }
  }

  async close(): Promise<void> {}
}
