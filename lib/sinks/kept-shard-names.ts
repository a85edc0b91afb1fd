/**
 * `--keep-shard-names` (img2dataset's habit): the kept samples of input `00000.tar` end in `curated/00000.tar`, so a
 * curated shard maps back to the shard it came from. The curated sink still cuts numbered shards as it goes (bounded
 * memory; writes become durable without waiting for a whole input shard), cutting also where the input shard changes,
 * so each numbered shard holds one input shard's samples; when the run ends, the numbered parts of each input shard
 * are joined into `<name>.tar` (tar members copied as they are, the index's offsets moved) and removed.
 */
import { constants } from 'node:fs';
import { link, open, rename, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { FilterError } from '../types.ts';
import type { ShardIndex } from './webdataset.ts';

/** A name a run may give a curated shard of its own: a plain file name, never a numbered run name (`shard-N`). */
const KEPT_STEM = /^(?!shard-\d)[A-Za-z0-9][A-Za-z0-9_-]{0,99}$/;

export const isKeptStem = (stem: string) => KEPT_STEM.test(stem);

/** The curated shard name an input shard keeps: its basename without `.tar` (or `.tar.gz`, `.tgz`). */
export function keptStem(shardPath: string): string {
  return basename(shardPath).replace(/\.(tar|tar\.gz|tgz)$/i, '');
}

/**
 * Checks the input shards before anything is written: each name must be one a curated shard can take, and no two
 * inputs may share one (`a/00000.tar` and `b/00000.tar` would both write `curated/00000.tar`).
 */
export function checkKeptShardNames(shards: readonly string[]): void {
  const seen = new Map<string, string>();
  for (const shard of shards) {
    const stem = keptStem(shard);
    if (!isKeptStem(stem)) {
      throw new FilterError(
        'bad_usage',
        `--keep-shard-names cannot name a curated shard after ${shard}: names are letters, digits, '_' and '-' ` +
          "(at most 100, not 'shard-N', which numbered shards use)",
        { shard },
      );
    }
    const other = seen.get(stem);
    if (other !== undefined) {
      throw new FilterError(
        'bad_usage',
        `--keep-shard-names: inputs ${other} and ${shard} would both write curated/${stem}.tar; rename one, or ` +
          'leave --keep-shard-names out',
        { shards: [other, shard] },
      );
    }
    seen.set(stem, shard);
  }
}

const BLOCK = 512;
const padded = (n: number) => Math.ceil(n / BLOCK) * BLOCK;
const CREATE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** Where a part's last member ends (its end-of-archive blocks follow). */
const dataEnd = (index: ShardIndex) =>
  Math.max(0, ...index.samples.flatMap((s) => Object.values(s.members).map((m) => m.offset + padded(m.size))));

/**
 * Joins the numbered parts (in order, each with its index) into `<dir>/<stem>.tar` and its index, then removes the
 * parts. A name already in the directory is never written over.
 */
export async function joinParts(dir: string, stem: string, parts: readonly ShardIndex[]): Promise<void> {
  const target = join(dir, `${stem}.tar`);
  const tmp = `${target}.tmp-${process.pid}`;
  const out = await open(tmp, CREATE_NEW, 0o666).catch((err: NodeJS.ErrnoException) => {
    throw new FilterError('output_unwritable', `cannot write ${target}: ${err.message}`, { path: target });
  });
  const joined: ShardIndex = { v: 1, shard: stem, count: 0, bytes: 0, samples: [] };
  try {
    for (const part of parts) {
      const base = joined.bytes;
      const end = dataEnd(part);
      const fh = await open(join(dir, `${part.shard}.tar`), constants.O_RDONLY | constants.O_NOFOLLOW);
      try {
        const buf = Buffer.alloc(Math.min(end, 8 << 20));
        for (let pos = 0; pos < end;) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
          if (bytesRead === 0) throw new Error(`${part.shard}.tar ends at ${pos}, before its index's ${end}`);
          await out.write(buf.subarray(0, bytesRead));
          pos += bytesRead;
        }
      } finally {
        await fh.close();
      }
      for (const s of part.samples) {
        const members = Object.fromEntries(
          Object.entries(s.members).map(([ext, m]) => [ext, { offset: base + m.offset, size: m.size }]),
        );
        joined.samples.push({ ...s, members });
      }
      joined.count += part.count;
      joined.bytes += end;
    }
    await out.write(Buffer.alloc(2 * BLOCK));
    joined.bytes += 2 * BLOCK;
    await out.sync();
  } finally {
    await out.close();
  }
  await linkNew(tmp, target);
  const indexPath = join(dir, `${stem}.index.json`);
  await open(`${indexPath}.tmp-${process.pid}`, CREATE_NEW, 0o666).then(async (fh) => {
    await fh.writeFile(JSON.stringify(joined));
    await fh.sync();
    await fh.close();
  });
  await rename(`${indexPath}.tmp-${process.pid}`, indexPath);
  for (const part of parts) {
    await unlink(join(dir, `${part.shard}.index.json`));
    await unlink(join(dir, `${part.shard}.tar`));
  }
}

/** Renames `tmp` to `target` only when nothing is there (rename(2) would replace it). */
async function linkNew(tmp: string, target: string): Promise<void> {
  try {
    await link(tmp, target);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new FilterError('output_unwritable', `cannot write ${target}: ${(err as Error).message}`, { path: target });
  }
  await unlink(tmp);
}
