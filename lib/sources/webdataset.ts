import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import tarStream from 'tar-stream';
import type { RawSample, Source, SourceBatch, SourceRecord } from '../types.ts';
import { FilterError } from '../types.ts';

/** Options of the WebDataset source: img2dataset / DataComp shards (`<key>.jpg|png|webp`, `.txt`, `.json`). */
export interface WebDatasetSourceOptions {
  /** .tar shard files, or directories holding them (read in name order). */
  readonly paths: readonly string[];
  /** Samples per batch. Default 64. */
  readonly batchSize?: number;
  /** Largest member accepted, bytes; larger ones are skipped so the sample ends as an invalid/undecodable reject. */
  readonly maxMemberBytes?: number;
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

/** Streams samples out of tar shards; a sample is the run of consecutive members sharing a key. */
export class WebDatasetSource implements Source {
  private constructor(
    private readonly shards: string[],
    private readonly options: WebDatasetSourceOptions,
  ) {}

  static async open(options: WebDatasetSourceOptions): Promise<WebDatasetSource> {
    return new WebDatasetSource(await listShards(options.paths), options);
  }

  async *batches(signal: AbortSignal): AsyncIterable<SourceBatch> {
    const size = this.options.batchSize ?? 64;
    const maxMember = this.options.maxMemberBytes ?? 64 * 1024 * 1024;
    let records: SourceRecord[] = [];
    const batch = (recs: SourceRecord[]): SourceBatch => ({ records: recs, ack: async () => {} });
    for (const path of this.shards) {
      for await (const sample of readSamples(path, maxMember)) {
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

async function* readSamples(path: string, maxMember: number): AsyncGenerator<RawSample> {
  const extract = tarStream.extract();
  createReadStream(path)
    .on('error', (err) => extract.destroy(err))
    .pipe(extract);
  let current: { key: string; members: Record<string, Buffer> } | undefined;
  try {
    for await (const entry of extract) {
      const { name, type, size } = entry.header;
      if (type !== 'file' || name.startsWith('._') || name.includes('/._')) {
        entry.resume();
        continue;
      }
      const [key, ext] = splitName(name.replace(/^\.\//, ''));
      if (current && current.key !== key) {
        yield current;
        current = undefined;
      }
      current ??= { key, members: {} };
      if ((size ?? 0) > maxMember) {
        entry.resume();
        continue;
      }
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      current.members[ext] = Buffer.concat(chunks);
    }
  } catch (err) {
    throw new FilterError('input_unreadable', `cannot read shard ${path}: ${(err as Error).message}`, { path });
  }
  if (current) yield current;
}
