import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readTar } from '../sources/tar-reader.ts';
import type { ModelInfo, Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';
import { ShardBuilder, type CuratedSampleMeta, type ShardIndex, type ShardIndexEntry } from './webdataset.ts';

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
}

/**
 * Writes a file so that readers (and a run resumed after a crash) see the old file or the new one, never half of
 * one: temp file `<path>.tmp-<pid>`, fsync, rename.
 */
export async function writeDurable(path: string, data: Buffer | string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/** A temp file of writeDurable in a curated directory: what a write cut short (kill -9) leaves behind. */
const TEMP_FILE = /^(shard-\d+\.(tar|index\.json)|shards\.json)\.tmp-\d+$/;
const BLOCK = 512;

/** Reads the `.json` member of every sample a shard's index lists, by its offset. */
async function readIndexedSamples(tarPath: string, index: ShardIndex, visit: (s: CuratedSampleMeta) => void) {
  const fh = await open(tarPath, 'r');
  try {
    for (const sample of index.samples) {
      const m = sample.members.json;
      if (!m) throw new Error(`sample ${sample.key} has no .json member`);
      const buf = Buffer.alloc(m.size);
      const { bytesRead } = await fh.read(buf, 0, m.size, m.offset);
      if (bytesRead < m.size) throw new Error(`the tar ends inside ${sample.key}.json`);
      visit(JSON.parse(buf.toString('utf8')) as CuratedSampleMeta);
    }
  } finally {
    await fh.close();
  }
}

/**
 * The index of a shard whose tar was written (whole, synced, then renamed) but whose index was not: a run stopped
 * between the two renames. Undefined when the tar does not read back whole.
 */
async function rebuildIndex(tarPath: string, shard: string): Promise<ShardIndex | undefined> {
  const samples: ShardIndexEntry[] = [];
  for await (const event of readTar(tarPath, Number.MAX_SAFE_INTEGER)) {
    if (event.type === 'unreadable' || !event.data) return undefined;
    const dot = event.name.indexOf('.');
    const key = event.name.slice(0, dot);
    const ext = event.name.slice(dot + 1);
    let entry = samples.at(-1);
    if (entry?.key !== key) samples.push((entry = { key, id: '', members: {} }));
    entry.members[ext] = { offset: event.offset + BLOCK, size: event.size };
    if (ext === 'json') entry.id = (JSON.parse(event.data.toString('utf8')) as CuratedSampleMeta).id;
  }
  if (samples.some((s) => !s.id)) return undefined;
  const bytes = (await stat(tarPath)).size;
  return { v: 1, shard, count: samples.length, bytes, samples };
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
    for (const name of names.filter((n) => TEMP_FILE.test(n))) await rm(join(dir, name), { force: true });
    const shards = new Set(names.map((n) => /^(shard-\d+)\.tar$/.exec(n)?.[1]).filter((n) => n !== undefined));
    for (const name of names) {
      const shard = /^(shard-\d+)\.index\.json$/.exec(name)?.[1];
      if (shard && !shards.has(shard)) await rm(join(dir, name), { force: true });
    }
    for (const shard of [...shards].sort()) {
      const tarPath = join(dir, `${shard}.tar`);
      const indexPath = join(dir, `${shard}.index.json`);
      let index = await readFile(indexPath, 'utf8').then(
        (text) => JSON.parse(text) as ShardIndex,
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return undefined;
          throw err;
        },
      );
      if (!index) {
        index = await rebuildIndex(tarPath, shard);
        if (!index) {
          await rm(tarPath, { force: true });
          continue;
        }
        await writeDurable(indexPath, JSON.stringify(index));
      }
      await readIndexedSamples(tarPath, index, visit);
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
    const existing = (await readdir(options.dir))
      .map((n) => /^shard-(\d+)\.tar$/.exec(n)?.[1])
      .filter((n): n is string => n !== undefined)
      .map(Number);
    sink.next = existing.length ? Math.max(...existing) + 1 : 0;
    return sink;
  }

  write(outcomes: readonly Outcome[]): Promise<void> {
    const accepted = outcomes.filter((o) => o.decision === 'accept');
    if (accepted.length === 0) return Promise.resolve();
    const perShard = this.options.samplesPerShard ?? 1000;
    const maxBytes = this.options.maxShardBytes ?? 256 * 1024 * 1024;
    const durable: Promise<void>[] = [];
    for (const o of accepted) {
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
    const name = `shard-${String(this.next++).padStart(6, '0')}`;
    const done = this.chain.then(async () => {
      const { tar, index } = await builder.finish(name);
      await writeDurable(join(this.options.dir, `${name}.tar`), tar);
      await writeDurable(join(this.options.dir, `${name}.index.json`), JSON.stringify(index));
      this.shardsWritten++;
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
    const shards = (await readdir(this.options.dir)).filter((n) => n.endsWith('.tar')).sort();
    await writeDurable(join(this.options.dir, 'shards.json'), JSON.stringify({ shards }, null, 1));
  }
}
