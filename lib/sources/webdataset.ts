import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { IMAGE_EXTS, type UnreadableSample } from '../pair/index.ts';
import type { ByteAdmission, RawSample, Source, SourceBatch, SourceRecord } from '../types.ts';
import { FilterError, NO_COMMIT } from '../types.ts';
import { readTarEntries, type TarBytes, type TarEvent } from '../formats/tar-reader.ts';

/** Reading options shared by local and streamed shards. */
export interface WebDatasetReadOptions {
  /** Samples per batch. Default 64. */
  readonly batchSize?: number;
  /**
   * Largest member accepted, bytes. Default 64 MiB. A larger one is skipped unread and its sample ends as an
   * `invalid_record` reject (detail kind `member_too_large`).
   */
  readonly maxMemberBytes?: number;
  /**
   * Most bytes one sample keeps: its image, `.txt` and `.json` members (the only ones a pair is made of; any other
   * member is skipped unread, whatever its size). Default 32 MiB: twice what the intake takes of an inline image
   * (16 MiB) plus the caption and metadata limits. A sample over it is skipped unread from the member that crosses
   * it, and ends as an `invalid_record` reject (detail kind `sample_too_large`).
   */
  readonly maxSampleBytes?: number;
  /** Most sample bytes in one batch: a batch is cut at this or at batchSize samples, whichever comes first. Default 64 MiB. */
  readonly maxBatchBytes?: number;
}

export const WEBDATASET_DEFAULTS: Required<WebDatasetReadOptions> = {
  batchSize: 64,
  maxMemberBytes: 64 * 1024 * 1024,
  maxSampleBytes: 32 * 1024 * 1024,
  maxBatchBytes: 64 * 1024 * 1024,
};

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

/** A shard that ended before its end (cut inside a member, or without its end-of-archive blocks). */
export interface TruncatedShard {
  readonly shard: string;
  /** Where the missing part starts (the header that is cut, or the end of the last whole member). */
  readonly offset: number;
  /** Samples read whole before the cut (the sample being read when it came is not one of them). */
  readonly samplesRead: number;
  readonly message: string;
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
  /** The shards read so far that ended before their end (each is also one `truncated_shard` reject). */
  readonly truncated: TruncatedShard[] = [];

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

  async *batches(signal: AbortSignal, admission?: ByteAdmission): AsyncIterable<SourceBatch> {
    const limits = { ...WEBDATASET_DEFAULTS, ...definedOnly(this.options) };
    // A sample the pipeline could never hold in flight would wait for room for ever: it is over the sample limit.
    if (admission) limits.maxSampleBytes = Math.min(limits.maxSampleBytes, admission.capacity);
    let records: SourceRecord[] = [];
    let bytes = 0;
    const cut = (): SourceBatch => {
      const batch = { records, committer: NO_COMMIT, ...(admission ? { bytes } : {}) };
      records = [];
      bytes = 0;
      return batch;
    };
    for (const shard of this.shards) {
      const path = typeof shard === 'string' ? shard : shard.path;
      const onTruncated = (t: TruncatedShard) => this.truncated.push(t);
      for await (const item of readSamples(shard, limits, admission, signal, onTruncated)) {
        if (signal.aborted) return;
        // The reader is about to wait for room: what it read so far goes out first (its bytes may be the room).
        if (item === STARVED) {
          if (records.length > 0) yield cut();
          continue;
        }
        if (records.length > 0 && bytes + item.bytes > limits.maxBatchBytes) yield cut();
        records.push({ raw: item.sample, origin: { kind: 'webdataset', path, key: item.sample.key } });
        bytes += item.bytes;
        if (records.length >= limits.batchSize || bytes >= limits.maxBatchBytes) yield cut();
      }
    }
    if (records.length > 0 && !signal.aborted) yield cut();
  }

  async close(): Promise<void> {}
}

const definedOnly = <T extends object>(o: T): Partial<T> =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

type Limits = typeof WEBDATASET_DEFAULTS;

/** What readSamples hands the batcher: a sample with the bytes reserved for it, or word that it is about to wait. */
const STARVED = Symbol('starved');
type ReadItem = { readonly sample: RawSample; readonly bytes: number } | typeof STARVED;

const unreadable = (key: string, kind: string, message: string, detail: Record<string, unknown>): UnreadableSample => ({
  key,
  members: {},
  unreadable: { code: 'invalid_record', message, detail: { field: 'shard', kind, ...detail } },
});

/** How much a member's extension is worth to the pair: image rank (lower wins), 'text', or undefined (unused). */
function use(ext: string): number | 'text' | undefined {
  if (ext === 'txt' || ext === 'json') return 'text';
  const rank = IMAGE_EXTS.indexOf(ext);
  return rank === -1 ? undefined : rank;
}

/** The sample being read: the members it keeps, the bytes reserved for them, or why it is a reject. */
interface Current {
  readonly key: string;
  readonly members: Record<string, Buffer>;
  bytes: number;
  image?: string;
  problem?: { kind: 'member_too_large' | 'sample_too_large'; name: string; size: number; offset: number };
}

/**
 * The samples of one shard. Only the members a pair is made of are read (the best-ranked image, `.txt`, `.json`),
 * each after its bytes are reserved through `admission`; a sample over its limits is let go at once (its bytes
 * given back) and becomes one reject. Before waiting for room, it yields STARVED.
 */
async function* readSamples(
  shard: string | TarShard,
  limits: Limits,
  admission: ByteAdmission | undefined,
  signal: AbortSignal,
  onTruncated?: (t: TruncatedShard) => void,
): AsyncGenerator<ReadItem> {
  const path = typeof shard === 'string' ? shard : shard.path;
  const input = await openShard(shard);
  if (typeof input === 'object' && 'sample' in input) return yield input;
  const samples = new SampleAssembly(path, limits, admission);
  for await (const entry of readTarEntries(input, limits.maxMemberBytes)) {
    if (entry.type === 'unreadable') {
      const key = entry.name !== undefined ? splitName(entry.name.replace(/^\.\//, ''))[0] : undefined;
      // The sample being read when the shard ended is incomplete: it is part of the unreadable rest.
      const done = samples.endAt(key);
      if (done) yield done;
      return yield samples.unreadableRest(entry, onTruncated);
    }
    if (entry.name.startsWith('._') || entry.name.includes('/._')) continue;
    const [key, ext] = splitName(entry.name.replace(/^\.\//, ''));
    const done = samples.startMember(key);
    if (done) yield done;
    if (!samples.wants(entry, ext)) continue;
    if (admission && !admission.tryReserve(entry.size)) {
      yield STARVED;
      await admission.reserve(entry.size, signal);
    }
    const data = await entry.read!();
    // Undefined: the shard ends inside it, and the next event says so.
    if (data) samples.add(ext, data, entry.size);
    else admission?.unreserve(entry.size);
  }
  const last = samples.endAt(undefined);
  if (last) yield last;
}

/** A shard's bytes (a path is opened by the tar reader), or the one reject of a shard that cannot be opened. */
async function openShard(shard: string | TarShard): Promise<string | TarBytes | { sample: RawSample; bytes: 0 }> {
  if (typeof shard === 'string') return shard;
  try {
    return await shard.open();
  } catch (err) {
    if (err instanceof FilterError) throw err;
    const message = `shard ${shard.path} cannot be opened: ${(err as Error).message}`;
    return { sample: unreadable('@0', 'unreadable_shard', message, { shard: shard.path, offset: 0 }), bytes: 0 };
  }
}

type MemberEntry = { readonly name: string; readonly size: number; readonly offset: number; readonly read?: unknown };

/** The sample being assembled from a shard's members, and the count of samples finished (for truncation reports). */
class SampleAssembly {
  private current: Current | undefined;
  private samplesRead = 0;

  constructor(
    private readonly path: string,
    private readonly limits: Limits,
    private readonly admission: ByteAdmission | undefined,
  ) {}

  /** A member of `key` comes next: the sample before it, when another, is finished. */
  startMember(key: string): ReadItem | undefined {
    const done = this.current && this.current.key !== key ? this.finish(this.current) : undefined;
    if (done) this.current = undefined;
    this.current ??= { key, members: {}, bytes: 0 };
    return done;
  }

  /** The shard ended (at a member of `key`, if known): a sample of another key is finished, one of `key` let go. */
  endAt(key: string | undefined): ReadItem | undefined {
    const s = this.current;
    this.current = undefined;
    if (!s) return undefined;
    if (key === undefined || s.key !== key) return this.finish(s);
    this.letGo(s);
    return undefined;
  }

  /**
   * Whether `entry` is read into the sample: one of the members a pair needs, better than what it holds, within the
   * member and sample limits (a member over them marks the sample a reject, its bytes given back).
   */
  wants(entry: MemberEntry, ext: string): boolean {
    const s = this.current!;
    const worth = use(ext);
    if (s.problem || worth === undefined) return false;
    if (typeof worth === 'number' && s.image !== undefined && IMAGE_EXTS.indexOf(s.image) < worth) return false;
    const { name, size, offset } = entry;
    if (!entry.read) return this.refuse(s, { kind: 'member_too_large', name, size, offset });
    // What this member replaces (a worse image, or the same extension again: the last one wins) goes first.
    const replaced = typeof worth === 'number' ? s.image : ext;
    if (replaced !== undefined && s.members[replaced]) {
      this.admission?.unreserve(s.members[replaced].length);
      s.bytes -= s.members[replaced].length;
      delete s.members[replaced];
    }
    if (s.bytes + size > this.limits.maxSampleBytes) {
      return this.refuse(s, { kind: 'sample_too_large', name, size: s.bytes + size, offset });
    }
    return true;
  }

  /** A member read whole: `size` bytes, reserved before the read. */
  add(ext: string, data: Buffer, size: number): void {
    const s = this.current!;
    s.members[ext] = data;
    s.bytes += size;
    if (typeof use(ext) === 'number') s.image = ext;
  }

  /** The reject for the rest of a shard that cannot be read on (truncated: with the count of samples read). */
  unreadableRest(
    entry: Extract<TarEvent, { type: 'unreadable' }>,
    onTruncated?: (t: TruncatedShard) => void,
  ): ReadItem {
    const { path, samplesRead } = this;
    const cut = entry.kind === 'truncated_shard';
    const key = entry.name !== undefined ? splitName(entry.name.replace(/^\.\//, ''))[0] : undefined;
    const sample = unreadable(
      key ?? `@${entry.offset}`,
      entry.kind,
      `shard ${path} is unreadable from byte ${entry.offset}: ${entry.message}` +
        (cut ? ` (${samplesRead} samples read before it)` : ''),
      {
        shard: path,
        offset: entry.offset,
        ...(entry.name !== undefined ? { member: entry.name } : {}),
        ...(cut ? { samplesRead } : {}),
      },
    );
    if (cut) onTruncated?.({ shard: path, offset: entry.offset, samplesRead, message: entry.message });
    return { sample, bytes: 0 };
  }

  private refuse(s: Current, problem: NonNullable<Current['problem']>): false {
    s.problem = problem;
    this.letGo(s);
    return false;
  }

  private letGo(s: Current): void {
    this.admission?.unreserve(s.bytes);
    s.bytes = 0;
    for (const ext of Object.keys(s.members)) delete s.members[ext];
  }

  private finish(s: Current): ReadItem {
    this.samplesRead++;
    if (!s.problem) return { sample: { key: s.key, members: s.members }, bytes: s.bytes };
    this.letGo(s);
    return { sample: overLimit(s, this.path, this.limits), bytes: 0 };
  }
}

function overLimit(s: Current, path: string, limits: Limits): UnreadableSample {
  const { kind, name, size, offset } = s.problem!;
  const detail = { shard: path, offset, member: name, size };
  if (kind === 'member_too_large') {
    const limit = limits.maxMemberBytes;
    const message = `sample ${s.key}: member ${name} of shard ${path} claims ${size} bytes, over the ${limit}-byte limit (skipped unread)`;
    return unreadable(s.key, kind, message, { ...detail, limit });
  }
  const limit = limits.maxSampleBytes;
  const message =
    `sample ${s.key} of shard ${path}: its image, .txt and .json members come to ${size} bytes with ${name}, ` +
    `over the ${limit}-byte sample limit (skipped unread)`;
  return unreadable(s.key, kind, message, { ...detail, limit });
}
