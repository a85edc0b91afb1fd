import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { PAIR_DEFAULTS } from '../pair/index.ts';
import type { Source, SourceBatch, SourceRecord } from '../types.ts';
import { FilterError, NO_COMMIT } from '../types.ts';
import { boundedLines, isBlank } from './lines.ts';

/** Options of the JSONL source (a file, or `-` for stdin). */
export interface JsonlSourceOptions {
  /** Path of a .jsonl file, or `-` for standard input. */
  readonly path: string;
  /** Records per batch handed to the pipeline. Default 64. */
  readonly batchSize?: number;
  /** Stream to read instead of the path (tests, stdin). */
  readonly stream?: Readable;
  /**
   * Most bytes of one line held in memory; a longer line becomes an `invalid_record` reject (its size is reported,
   * its bytes past this are never buffered). Default: the pair parser's record limit (16 MiB).
   */
  readonly maxLineBytes?: number;
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

  async *batches(signal: AbortSignal): AsyncIterable<SourceBatch> {
    const { path } = this.options;
    const stream = this.options.stream ?? (path === '-' ? process.stdin : createReadStream(path));
    const size = this.options.batchSize ?? 64;
    const maxLineBytes = this.options.maxLineBytes ?? PAIR_DEFAULTS.maxRecordBytes;
    let records: SourceRecord[] = [];
    const batch = (recs: SourceRecord[]): SourceBatch => ({ records: recs, committer: NO_COMMIT });
    try {
      for await (const line of boundedLines(stream as AsyncIterable<Buffer>, maxLineBytes)) {
        if (signal.aborted) break;
        if (line.size <= maxLineBytes && isBlank(line.bytes)) continue;
        records.push({
          raw: line.bytes,
          origin: { kind: 'file', path, line: line.number },
          ...(line.size > line.bytes.length ? { size: line.size } : {}),
        });
        if (records.length >= size) {
          yield batch(records);
          records = [];
        }
      }
      if (records.length > 0 && !signal.aborted) yield batch(records);
    } finally {
      if (stream !== process.stdin) stream.destroy();
    }
  }

  async close(): Promise<void> {}
}
