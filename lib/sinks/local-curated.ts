import { mkdir, open, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ModelInfo, Outcome, Sink } from '../types.ts';
import { FilterError } from '../types.ts';
import { ShardBuilder } from './webdataset.ts';

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

/** Writes a file so that readers never see a partial one: temp file, fsync, rename. */
async function writeDurable(path: string, data: Buffer | string): Promise<void> {
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
    await writeFile(join(this.options.dir, 'shards.json'), JSON.stringify({ shards }, null, 1));
  }
}
