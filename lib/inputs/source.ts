/**
 * The inputs of a run as one Source: runs of tar shards are one WebDatasetSource (local, gzip, S3 or URL bytes all
 * go through the one tar reader), each JSONL input a JsonlSource, read one after the other in the order given. An
 * input is opened when the run reaches it, so a thousand shards hold no thousand files or connections.
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type { S3Client } from '@aws-sdk/client-s3';
import { openTarFile, streamTarBytes, type TarBytes } from '../formats/tar-reader.ts';
import type { PairOptions } from '../pair/index.ts';
import { JsonlSource } from '../sources/jsonl.ts';
import {
  WebDatasetSource,
  type TarShard,
  type TruncatedShard,
  type WebDatasetReadOptions,
} from '../sources/webdataset.ts';
import type { ByteAdmission, Source, SourceBatch } from '../types.ts';
import type { HttpInputs } from './remote.ts';
import { s3Chunks } from './remote.ts';
import type { InputItem } from './resolve.ts';

export interface InputReaders {
  readonly s3: () => S3Client;
  readonly http: () => HttpInputs;
}

/** What the run's inputs said about themselves: how many there were, and the tar shards that ended before their end. */
export interface InputReport {
  /** The inputs the run was to read (after lists, directories and prefixes were expanded). */
  readonly count: number;
  readonly truncatedShards: readonly TruncatedShard[];
}

interface SourceOptions {
  readonly pair?: PairOptions;
  readonly read?: WebDatasetReadOptions;
  /** Called once by close(): the readers' clients (an http agent, an S3 client) end with the source. */
  readonly release?: () => Promise<void>;
}

export class InputSource implements Source {
  readonly sizeHint?: number;
  private release?: () => Promise<void>;
  private readonly parts: (() => Promise<Source>)[];
  private readonly tars: WebDatasetSource[] = [];
  private current?: Source;

  constructor(
    private readonly items: readonly InputItem[],
    readers: InputReaders,
    options: SourceOptions & { opened?: JsonlSource } = {},
  ) {
    this.release = options.release;
    this.sizeHint = options.opened?.sizeHint;
    this.parts = [];
    for (let i = 0; i < items.length;) {
      const item = items[i]!;
      if (item.format === 'jsonl') {
        const opened = options.opened;
        this.parts.push(opened ? async () => opened : () => openJsonl(item, readers, options.pair));
        i++;
        continue;
      }
      const run: TarShard[] = [];
      for (; i < items.length && items[i]!.format === 'webdataset'; i++) run.push(tarShard(items[i]!, readers));
      const tar = WebDatasetSource.of(run, options.read);
      this.tars.push(tar);
      this.parts.push(async () => tar);
    }
  }

  /** A single local JSONL file keeps its line count (the progress ETA); anything else reports no size. */
  static async open(
    items: readonly InputItem[],
    readers: InputReaders,
    options: SourceOptions = {},
  ): Promise<InputSource> {
    const only = items.length === 1 ? items[0]! : undefined;
    if (only?.format === 'jsonl' && only.location.kind === 'file' && !only.gzip) {
      return new InputSource(items, readers, { ...options, opened: await openJsonl(only, readers, options.pair) });
    }
    return new InputSource(items, readers, options);
  }

  async *batches(signal: AbortSignal, admission?: ByteAdmission): AsyncIterable<SourceBatch> {
    for (const open of this.parts) {
      if (signal.aborted) return;
      this.current = await open();
      try {
        yield* this.current.batches(signal, admission);
      } finally {
        await this.current.close();
        this.current = undefined;
      }
    }
  }

  report(): InputReport {
    return { count: this.items.length, truncatedShards: this.tars.flatMap((t) => t.truncated) };
  }

  async close(): Promise<void> {
    const release = this.release;
    this.release = undefined;
    try {
      await this.current?.close();
    } finally {
      await release?.();
    }
  }
}

function openJsonl(item: InputItem, readers: InputReaders, pair?: PairOptions): Promise<JsonlSource> {
  const maxLine = pair?.maxRecordBytes !== undefined ? { maxLineBytes: pair.maxRecordBytes } : {};
  const { location } = item;
  if (location.kind === 'stdin') return JsonlSource.open({ path: '-', ...maxLine });
  if (location.kind === 'file' && !item.gzip) return JsonlSource.open({ path: location.path, ...maxLine });
  // A compressed or remote JSONL input: its bytes are opened lazily, when the source first reads.
  const stream = Readable.from(lazy(() => rawChunks(item, readers)));
  return JsonlSource.open({ path: item.name, stream: item.gzip ? gunzipped(stream) : stream, ...maxLine });
}

function tarShard(item: InputItem, readers: InputReaders): TarShard {
  const { location } = item;
  return {
    path: item.name,
    async open(): Promise<TarBytes> {
      // A plain local tar is read by position: members the pair does not use are skipped unread.
      if (location.kind === 'file' && !item.gzip) return openTarFile(location.path);
      const chunks = await rawChunks(item, readers);
      // stdin was not looked at before the run: whether it is gzip is told by its first chunk, here.
      const { gzip, rest } = location.kind === 'stdin' ? await peekGzip(chunks) : { gzip: item.gzip, rest: chunks };
      const raw = Readable.from(rest);
      if (!gzip) return streamTarBytes(raw);
      const gz = gunzipped(raw);
      return { ...streamTarBytes(gz), cut: () => gz.cut };
    },
  };
}

async function rawChunks(item: InputItem, readers: InputReaders): Promise<AsyncIterable<Buffer>> {
  const { location } = item;
  if (location.kind === 'file') return createReadStream(location.path);
  if (location.kind === 's3') return s3Chunks(readers.s3(), location.loc);
  if (location.kind === 'http') return readers.http().chunks(location.url);
  return process.stdin as AsyncIterable<Buffer>;
}

async function peekGzip(chunks: AsyncIterable<Buffer>): Promise<{ gzip: boolean; rest: AsyncIterable<Buffer> }> {
  const it = chunks[Symbol.asyncIterator]();
  const first = await it.next();
  const rest = (async function* () {
    if (!first.done) yield first.value;
    for (let next = await it.next(); !next.done; next = await it.next()) yield next.value;
  })();
  return { gzip: !first.done && first.value[0] === 0x1f && first.value[1] === 0x8b, rest };
}

async function* lazy(open: () => Promise<AsyncIterable<Buffer>>): AsyncGenerator<Buffer> {
  yield* await open();
}

/**
 * The decompressed stream. A gzip stream cut short ends where its bytes end, as a cut tar does (the tar reader then
 * reports the shard truncated at the right offset); corrupt data stays an error (the shard is unreadable).
 */
function gunzipped(raw: Readable): Readable & { cut: boolean } {
  const gunzip = createGunzip();
  const out = Object.assign(new Readable({ read() {} }), { cut: false });
  raw.on('error', (err) => gunzip.destroy(err));
  raw.pipe(gunzip);
  gunzip.on('data', (chunk: Buffer) => {
    if (!out.push(chunk)) gunzip.pause();
  });
  out._read = () => gunzip.resume();
  gunzip.on('end', () => out.push(null));
  gunzip.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'Z_BUF_ERROR') {
      out.cut = true;
      out.push(null);
    } else out.destroy(err);
  });
  out._destroy = (err, cb) => {
    raw.destroy();
    gunzip.destroy();
    cb(err);
  };
  return out;
}
