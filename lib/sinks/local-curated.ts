import { constants } from 'node:fs';
import { mkdir, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeCuratedSample, SAMPLE_JSON_MAX_BYTES, type CuratedSampleMeta } from '../formats/curated-sample.ts';
import { readTar } from '../formats/tar-reader.ts';
import type { ModelInfo, Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';
import { isKeptStem, joinParts, keptStem } from './kept-shard-names.ts';
import { ShardBuilder, type ShardIndex, type ShardIndexEntry } from './webdataset.ts';

/** Options of the local curated sink: accepted pairs as WebDataset shards in a directory. */
export interface LocalCuratedSinkOptions {
  /** Output directory; shards go to `<dir>/shard-NNNNNN.tar` with `<dir>/shard-NNNNNN.index.json` beside each. */
  readonly dir: string;
  readonly model: ModelInfo;
  /** Samples per shard. Default 1000 (img2dataset's default is 10000; smaller shards make results visible sooner). */
  readonly samplesPerShard?: number;
  /** Shard size cap in bytes. Default 256 MiB. */
  readonly maxShardBytes?: number;
  /** A partially filled shard is written after this long without new accepts, ms. Default 10 s. */
  readonly idleFlushMs?: number;
  /**
   * WebDataset input: name each curated shard after the input shard its samples came from (`00000.tar`), joined from
   * numbered parts when the sink closes (kept-shard-names.ts). The caller checks the names first.
   */
  readonly keepShardNames?: boolean;
}

const WRITE_NOFOLLOW = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW;
const READ_NOFOLLOW = constants.O_RDONLY | constants.O_NOFOLLOW;

/**
 * Writes a file so that readers (and a run resumed after a crash) see the old file or the new one, never half of
 * one: temp file `<path>.tmp-<pid>`, fsync, rename.
 */
export async function writeDurable(path: string, data: Buffer | string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  // O_NOFOLLOW: a symlink planted at the temp name is refused, never written through.
  const fh = await open(tmp, WRITE_NOFOLLOW, 0o666);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/**
 * Shard numbers a curated directory may hold: `shard-NNNNNN` (six digits, more past 999999) up to this bound. A name
 * past it, or not written as a run writes it (`shard-1`, `shard-0000001`), is not a run's file: a planted
 * `shard-9007199254740992.tar` must not set where numbering continues (past 2^53 every next number is the same).
 */
export const MAX_SHARD_NUMBER = 999_999_999;
/** Largest `.index.json` read back (a run's index of 1000 samples is ~200 KB). */
export const INDEX_MAX_BYTES = 64 * 1024 * 1024;

const SHARD_FILE = /^shard-(\d{6,9})\.(tar|index\.json)(\.tmp-\d+)?$/;

/** The number of a shard name (`shard-000042`), or undefined when it is not a name a run writes. */
export function shardNumber(shard: string): number | undefined {
  const digits = /^shard-(\d{6,9})$/.exec(shard)?.[1];
  if (digits === undefined) return undefined;
  const n = Number(digits);
  return n <= MAX_SHARD_NUMBER && shardName(n) === shard ? n : undefined;
}

const shardName = (n: number) => `shard-${String(n).padStart(6, '0')}`;

/** How a run writes a name in a curated directory: a shard file, shards.json or one of their temp files. */
export function curatedFileKind(name: string): 'tar' | 'index' | 'list' | 'temp' | undefined {
  if (/^shards\.json$/.test(name)) return 'list';
  if (/^shards\.json\.tmp-\d+$/.test(name)) return 'temp';
  const m = SHARD_FILE.exec(name);
  if (!m || shardNumber(`shard-${m[1]}`) === undefined) return keptFileKind(name);
  return m[3] ? 'temp' : m[2] === 'tar' ? 'tar' : 'index';
}

/** A shard named after its input shard (--keep-shard-names). */
function keptFileKind(name: string): 'tar' | 'index' | 'temp' | undefined {
  const m = /^([^.]+)\.(tar|index\.json)(\.tmp-\d+)?$/.exec(name);
  if (!m || !isKeptStem(m[1]!)) return undefined;
  return m[3] ? 'temp' : m[2] === 'tar' ? 'tar' : 'index';
}

const BLOCK = 512;

/**
 * Why an index does not describe its tar of `tarBytes` bytes, or undefined when it does: every member must lie
 * inside the tar (a size of 2^31 read as is would abort Node), and each `.json` member must be small enough to read.
 */
export function indexProblem(index: unknown, tarBytes: number): string | undefined {
  const ix = index as Partial<ShardIndex> | null;
  if (!ix || typeof ix !== 'object' || !Array.isArray(ix.samples)) return 'it is not a shard index';
  for (const sample of ix.samples as unknown[]) {
    const s = sample as Partial<ShardIndexEntry> | null;
    if (!s || typeof s.key !== 'string' || typeof s.id !== 'string' || !s.members || typeof s.members !== 'object') {
      return 'a sample entry is malformed';
    }
    for (const [ext, m] of Object.entries(s.members as Record<string, unknown>)) {
      const { offset, size } = (m ?? {}) as { offset?: unknown; size?: unknown };
      const ok = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
      if (!ok(offset) || !ok(size) || offset < BLOCK || offset + size > tarBytes) {
        return `member ${s.key}.${ext} (offset ${String(offset)}, size ${String(size)}) is outside the ${tarBytes}-byte tar`;
      }
      if (ext === 'json' && size > SAMPLE_JSON_MAX_BYTES) {
        return `member ${s.key}.json is ${size} bytes, over the ${SAMPLE_JSON_MAX_BYTES}-byte bound`;
      }
    }
    if (!s.members.json) return `sample ${s.key} has no .json member`;
  }
  return undefined;
}

/** A file opened without following a symlink, and checked to be a regular file. */
export async function openRegular(path: string): Promise<FileHandle> {
  const fh = await open(path, READ_NOFOLLOW);
  if (!(await fh.stat()).isFile()) {
    await fh.close();
    throw Object.assign(new Error(`${path} is not a regular file`), { code: 'EFTYPE' });
  }
  return fh;
}

/** A shard's index, read whole when small enough; undefined when missing, an error message when unreadable. */
export async function readIndex(indexPath: string, tarBytes: number): Promise<ShardIndex | undefined | string> {
  let fh: FileHandle;
  try {
    fh = await openRegular(indexPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return (err as Error).message;
  }
  try {
    const size = (await fh.stat()).size;
    if (size > INDEX_MAX_BYTES) return `it is ${size} bytes, over the ${INDEX_MAX_BYTES}-byte bound`;
    let index: unknown;
    try {
      index = JSON.parse(await fh.readFile('utf8'));
    } catch {
      return 'it is not JSON';
    }
    return indexProblem(index, tarBytes) ?? (index as ShardIndex);
  } finally {
    await fh.close();
  }
}

/** Reads the `.json` member of every sample an index (checked by indexProblem) lists, by its offset. */
async function readIndexedSamples(fh: FileHandle, index: ShardIndex, visit: (s: CuratedSampleMeta) => void) {
  for (const sample of index.samples) {
    const m = sample.members.json!;
    const buf = Buffer.alloc(m.size);
    const { bytesRead } = await fh.read(buf, 0, m.size, m.offset);
    if (bytesRead < m.size) throw new Error(`the tar ends inside ${sample.key}.json`);
    const meta = decodeCuratedSample(buf);
    if (!meta.ok) throw new Error(`${sample.key}.json is not a curated sample (${meta.error.message})`);
    visit(meta.value);
  }
}

/**
 * The index of a shard whose tar was written (whole, synced, then renamed) but whose index was not: a run stopped
 * between the two renames (or whose index does not describe it). Undefined when the tar does not read back whole.
 * Only `.json` members are held in memory, each up to SAMPLE_JSON_MAX_BYTES.
 */
export async function rebuildIndex(tarPath: string, shard: string): Promise<ShardIndex | undefined> {
  const samples: ShardIndexEntry[] = [];
  let fh: FileHandle;
  try {
    fh = await openRegular(tarPath);
  } catch {
    return undefined;
  }
  const bytes = (await fh.stat()).size;
  await fh.close();
  for await (const event of readTar(tarPath, SAMPLE_JSON_MAX_BYTES)) {
    if (event.type === 'unreadable') return undefined;
    if (event.name.endsWith('.json') && !event.data) return undefined;
    const dot = event.name.indexOf('.');
    const key = event.name.slice(0, dot);
    const ext = event.name.slice(dot + 1);
    let entry = samples.at(-1);
    if (entry?.key !== key) samples.push((entry = { key, id: '', members: {} }));
    entry.members[ext] = { offset: event.offset + BLOCK, size: event.size };
    if (ext === 'json') {
      const meta = decodeCuratedSample(event.data!);
      if (!meta.ok) return undefined;
      entry.id = meta.value.id;
    }
  }
  if (samples.some((s) => typeof s.id !== 'string' || !s.id)) return undefined;
  const index: ShardIndex = { v: 1, shard, count: samples.length, bytes, samples };
  // A member the tar's headers place past its end (a skipped member is not read, so readTar cannot tell).
  return indexProblem(index, bytes) ? undefined : index;
}

export class LocalCuratedSink implements Sink {
  readonly name = 'local-curated';
  readonly durability = 'durable' as const;
  /** Writes wait for their shard's cut, so the pipeline must keep handing outcomes over while they wait. */
  readonly overlappingWrites = true;
  private builder: ShardBuilder;
  private waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private next = 0;
  private idle: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();
  /** --keep-shard-names: the input shard of the samples being built, and the numbered parts of each input shard. */
  private stem: string | undefined;
  private readonly parts = new Map<string, ShardIndex[]>();
  shardsWritten = 0;

  private constructor(private readonly options: LocalCuratedSinkOptions) {
    this.builder = new ShardBuilder(options.model);
  }

  /**
   * Makes a curated directory that a stopped run (kill -9, a crash) left behind consistent, and reads back every
   * sample it then holds. A shard is in the output only once its tar and its index are both in place: temp files
   * (a write cut short) are removed, a tar without its index gets the index rebuilt from the tar (or is removed when
   * it does not read back whole), an index without its tar is removed. The samples of what was removed were never
   * in the output, so a resumed run scores them again.
   */
  static async recover(dir: string, visit: (sample: CuratedSampleMeta) => void): Promise<void> {
    const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [];
      throw err;
    });
    for (const name of names.filter((n) => curatedFileKind(n) === 'temp')) await rm(join(dir, name), { force: true });
    const shards = new Set(names.filter((n) => curatedFileKind(n) === 'tar').map((n) => n.slice(0, -'.tar'.length)));
    for (const name of names.filter((n) => curatedFileKind(n) === 'index')) {
      if (!shards.has(name.slice(0, -'.index.json'.length))) await rm(join(dir, name), { force: true });
    }
    for (const shard of [...shards].sort()) {
      const tarPath = join(dir, `${shard}.tar`);
      const indexPath = join(dir, `${shard}.index.json`);
      const fh = await openRegular(tarPath);
      try {
        let index = await readIndex(indexPath, (await fh.stat()).size);
        if (index === undefined || typeof index === 'string') {
          const problem = index;
          const rebuilt = await rebuildIndex(tarPath, shard);
          if (!rebuilt && problem === undefined) {
            await rm(tarPath, { force: true });
            continue;
          }
          // An index that does not describe its tar is rebuilt from the tar, never read as it says.
          if (!rebuilt) throw new Error(`${shard}.index.json: ${problem}, and ${shard}.tar does not read back whole`);
          index = rebuilt;
          await writeDurable(indexPath, JSON.stringify(index));
        }
        await readIndexedSamples(fh, index, visit);
      } finally {
        await fh.close();
      }
    }
  }

  /** Opens the directory; numbering continues after shards already there, so a second run never overwrites. */
  static async open(options: LocalCuratedSinkOptions): Promise<LocalCuratedSink> {
    try {
      await mkdir(options.dir, { recursive: true });
    } catch (err) {
      throw new FilterError('output_unwritable', `cannot create ${options.dir}: ${(err as Error).message}`, {
        dir: options.dir,
      });
    }
    const sink = new LocalCuratedSink(options);
    // Only names a run writes count (run-output.ts refuses a directory holding others before a run opens it).
    for (const name of await readdir(options.dir)) {
      const n = curatedFileKind(name) === 'tar' ? shardNumber(name.slice(0, -'.tar'.length)) : undefined;
      if (n !== undefined && n >= sink.next) sink.next = n + 1;
    }
    return sink;
  }

  write(outcomes: readonly Outcome[]): Promise<void> {
    const accepted = outcomes.filter((o) => o.decision === 'accept');
    if (accepted.length === 0) return Promise.resolve();
    const perShard = this.options.samplesPerShard ?? 1000;
    const maxBytes = this.options.maxShardBytes ?? 256 * 1024 * 1024;
    const durable: Promise<void>[] = [];
    for (const o of accepted) {
      if (this.options.keepShardNames) {
        const origin = o.record.origin;
        const stem = keptStem(origin.kind === 'webdataset' ? origin.path : '');
        if (this.builder.count > 0 && stem !== this.stem) durable.push(this.cut());
        this.stem = stem;
      }
      this.builder.add(o);
      if (this.builder.count >= perShard || this.builder.bytes >= maxBytes) durable.push(this.cut());
    }
    if (this.builder.count > 0) {
      durable.push(new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject })));
      clearTimeout(this.idle);
      this.idle = setTimeout(() => void this.cut().catch(() => undefined), this.options.idleFlushMs ?? 10_000);
      this.idle.unref();
    }
    return Promise.all(durable).then(() => undefined);
  }

  /** Seals the current shard and writes it; resolves the writes waiting on it. */
  private cut(): Promise<void> {
    clearTimeout(this.idle);
    this.idle = undefined;
    const builder = this.builder;
    const waiters = this.waiters;
    this.builder = new ShardBuilder(this.options.model);
    this.waiters = [];
    if (builder.count === 0) return this.chain;
    if (this.next > MAX_SHARD_NUMBER) {
      const err = new FilterError(
        'output_unwritable',
        `${this.options.dir} is full: shard numbers end at ${MAX_SHARD_NUMBER}`,
      );
      waiters.forEach((w) => w.reject(err));
      return Promise.reject(err);
    }
    const name = shardName(this.next++);
    const stem = this.stem;
    const done = this.chain.then(async () => {
      const { tar, index } = await builder.finish(name);
      await writeDurable(join(this.options.dir, `${name}.tar`), tar);
      await writeDurable(join(this.options.dir, `${name}.index.json`), JSON.stringify(index));
      this.shardsWritten++;
      if (stem !== undefined) this.parts.set(stem, [...(this.parts.get(stem) ?? []), index]);
    });
    this.chain = done.catch(() => undefined);
    done.then(
      () => waiters.forEach((w) => w.resolve()),
      (err) => waiters.forEach((w) => w.reject(err)),
    );
    return done;
  }

  async flush(): Promise<void> {
    await this.cut();
  }

  async close(): Promise<void> {
    await this.flush();
    for (const [stem, parts] of this.parts) await joinParts(this.options.dir, stem, parts);
    this.parts.clear();
    const shards = (await readdir(this.options.dir)).filter((n) => curatedFileKind(n) === 'tar').sort();
    await writeDurable(join(this.options.dir, 'shards.json'), JSON.stringify({ shards }, null, 1));
  }
}
