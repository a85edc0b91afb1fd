import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { UnreadableSample } from '../pair/index.ts';
import type { RawSample, Source, SourceBatch, SourceRecord } from '../types.ts';
import { FilterError, NO_COMMIT } from '../types.ts';
import { readTar, type TarBytes } from './tar-reader.ts';

/** Reading options shared by local and streamed shards. */
export interface WebDatasetReadOptions {
  /** Samples per batch. Default 64. */
  readonly batchSize?: number;
  /**
   * Largest member accepted, bytes. Default 64 MiB. A larger one is skipped unread and its sample ends as an
   * `invalid_record` reject (detail kind `member_too_large`).
   */
  readonly maxMemberBytes?: number;
}

/** Options of the WebDataset source: img2dataset / DataComp shards (`<key>.jpg|png|webp`, `.txt`, `.json`). */
export interface WebDatasetSourceOptions extends WebDatasetReadOptions {
  /** .tar shard files, or directories holding them (read in name order). */
  readonly paths: readonly string[];
}

/**
 * One shard the source reads: the name that origins and rejects carry (a local path, an s3:// URI) and its bytes,
 * opened when the source reaches it. An open that fails with a FilterError ends the read with that error (the
 * transport's failure: the caller retries); any other failure makes the shard one `unreadable_shard` reject.
 */
export interface TarShard {
  readonly path: string;
  open(): Promise<TarBytes>;
}

/** Expands directories into their .tar files. */
export async function listShards(paths: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    let s;
    try {
      s = await stat(p);
    } catch (err) {
      throw new FilterError('input_unreadable', `cannot read input ${p}: ${(err as Error).message}`, { path: p });
    }
    if (s.isDirectory()) {
      const names = (await readdir(p)).filter((n) => n.endsWith('.tar')).sort();
      out.push(...names.map((n) => join(p, n)));
    } else out.push(p);
  }
  if (out.length === 0) throw new FilterError('input_unreadable', `no .tar shards in ${paths.join(', ')}`, { paths });
  return out;
}

/** Splits `dir/00001.jpg` into key `dir/00001` and extension `jpg` (WebDataset: the extension starts at the first dot of the basename). */
function splitName(name: string): [string, string] {
  const slash = name.lastIndexOf('/');
  const dot = name.indexOf('.', slash + 1);
  return dot === -1 ? [name, ''] : [name.slice(0, dot), name.slice(dot + 1).toLowerCase()];
}

/**
 * Streams samples out of tar shards; a sample is the run of consecutive members sharing a key. A shard that stops
 * being readable (cut off, corrupt header) and a sample with a member over the size limit do not end the run: each
 * becomes one record that parses to an `invalid_record` reject (detail: `kind`, `shard`, `offset`), and reading goes
 * on with the next sample or shard.
 */
export class WebDatasetSource implements Source {
  private constructor(
    private readonly shards: readonly (string | TarShard)[],
    private readonly options: WebDatasetReadOptions,
  ) {}

  static async open(options: WebDatasetSourceOptions): Promise<WebDatasetSource> {
    return new WebDatasetSource(await listShards(options.paths), options);
  }

  /** Shards that are not local files (an S3 object streamed by a shard job), read in the order given. */
  static of(shards: readonly TarShard[], options: WebDatasetReadOptions = {}): WebDatasetSource {
    return new WebDatasetSource(shards, options);
  }

  async *batches(signal: AbortSignal): AsyncIterable<SourceBatch> {
    const size = this.options.batchSize ?? 64;
    const maxMember = this.options.maxMemberBytes ?? 64 * 1024 * 1024;
    let records: SourceRecord[] = [];
    const batch = (recs: SourceRecord[]): SourceBatch => ({ records: recs, committer: NO_COMMIT });
    for (const shard of this.shards) {
      const path = typeof shard === 'string' ? shard : shard.path;
      for await (const sample of readSamples(shard, maxMember)) {
        if (signal.aborted) return;
        records.push({ raw: sample, origin: { kind: 'webdataset', path, key: sample.key } });
        if (records.length >= size) {
          yield batch(records);
          records = [];
        }
      }
    }
    if (records.length > 0 && !signal.aborted) yield batch(records);
  }

  async close(): Promise<void> {}
}

const unreadable = (key: string, kind: string, message: string, detail: Record<string, unknown>): UnreadableSample => ({
  key,
  members: {},
  unreadable: { code: 'invalid_record', message, detail: { field: 'shard', kind, ...detail } },
});

async function* readSamples(shard: string | TarShard, maxMember: number): AsyncGenerator<RawSample> {
  const path = typeof shard === 'string' ? shard : shard.path;
  let input: string | TarBytes = path;
  if (typeof shard !== 'string') {
    try {
      input = await shard.open();
    } catch (err) {
      if (err instanceof FilterError) throw err;
      const message = `shard ${path} cannot be opened: ${(err as Error).message}`;
      return yield unreadable('@0', 'unreadable_shard', message, { shard: path, offset: 0 });
    }
  }
  let current:
    | { key: string; members: Record<string, Buffer>; tooLarge?: { name: string; size: number; offset: number } }
    | undefined;
  const finish = (s: NonNullable<typeof current>): RawSample => {
    if (!s.tooLarge) return { key: s.key, members: s.members };
    const { name, size, offset } = s.tooLarge;
    return unreadable(
      s.key,
      'member_too_large',
      `sample ${s.key}: member ${name} of shard ${path} claims ${size} bytes, over the ${maxMember}-byte limit (skipped unread)`,
      { shard: path, offset, member: name, size, limit: maxMember },
    );
  };
  for await (const event of readTar(input, maxMember)) {
    if (event.type === 'unreadable') {
      const key = event.name !== undefined ? splitName(event.name.replace(/^\.\//, ''))[0] : undefined;
      // The sample being read when the shard ended is incomplete: it is part of the unreadable rest.
      if (current && current.key !== key) yield finish(current);
      yield unreadable(
        key ?? `@${event.offset}`,
        event.kind,
        `shard ${path} is unreadable from byte ${event.offset}: ${event.message}`,
        { shard: path, offset: event.offset, ...(event.name !== undefined ? { member: event.name } : {}) },
      );
      return;
    }
    const { name, size, offset, data } = event;
    if (name.startsWith('._') || name.includes('/._')) continue;
    const [key, ext] = splitName(name.replace(/^\.\//, ''));
    if (current && current.key !== key) {
      yield finish(current);
      current = undefined;
    }
    current ??= { key, members: {} };
    if (data === undefined) current.tooLarge ??= { name, size, offset };
    else current.members[ext] = data;
  }
  if (current) yield finish(current);
}
