import tarStream from 'tar-stream';
import type { ModelInfo, Outcome } from '../types.ts';
import { curatedSampleMeta, encodeCuratedSample } from '../formats/curated-sample.ts';

/**
 * WebDataset shards as OpenCLIP / DataComp / img2dataset read them: for each sample `<key>.<jpg|png|webp>`,
 * `<key>.txt` (caption) and `<key>.json` (scores + metadata), consecutive in one ustar file. Bytes are
 * deterministic for the same outcomes in the same order (fixed mtime, no owner names), so a replay after a crash
 * rewrites an identical shard instead of producing a different one.
 */

/** Keys may not contain '.' (WebDataset splits the extension at the first dot) and must fit a ustar name. */
const KEY_MAX = 80;
const FIXED_MTIME = new Date(0);

export function sampleKey(id: string): string {
  const clean = id.replace(/[^A-Za-z0-9_-]/g, '_');
  return clean.length > KEY_MAX ? clean.slice(0, KEY_MAX) : clean || '_';
}

export interface ShardIndexEntry {
  key: string;
  id: string;
  /** Byte offset of each member's data in the tar, and its size: random access without a scan. */
  members: Record<string, { offset: number; size: number }>;
}

/** The per-shard index written beside the tar as `<shard>.index.json`. */
export interface ShardIndex {
  v: 1;
  shard: string;
  count: number;
  bytes: number;
  samples: ShardIndexEntry[];
  /** Source positions covered (Kafka offsets), for recovery and audit. */
  source?: Record<string, unknown>;
}

const BLOCK = 512;
const padded = (n: number) => Math.ceil(n / BLOCK) * BLOCK;

/** Accumulates accepted outcomes into one shard in memory; bounded by the caller's flush thresholds. */
export class ShardBuilder {
  private readonly entries: { name: string; data: Buffer }[] = [];
  private readonly index: ShardIndexEntry[] = [];
  private readonly keys = new Set<string>();
  private size = 0;

  constructor(private readonly model: ModelInfo) {}

  get count(): number {
    return this.index.length;
  }

  /** Approximate tar size so far. */
  get bytes(): number {
    return this.size;
  }

  add(outcome: Outcome): void {
    if (!outcome.pair || !outcome.image) throw new Error('ShardBuilder.add needs an accepted outcome with an image');
    let key = sampleKey(outcome.id);
    for (let n = 1; this.keys.has(key); n++) key = `${sampleKey(outcome.id).slice(0, KEY_MAX - 6)}_${n}`;
    this.keys.add(key);
    const members: [string, Buffer][] = [
      [outcome.image.ext, outcome.image.encoded],
      ['txt', Buffer.from(outcome.pair.caption, 'utf8')],
      ['json', encodeCuratedSample(curatedSampleMeta(outcome, key, this.model))],
    ];
    const entry: ShardIndexEntry = { key, id: outcome.id, members: {} };
    for (const [ext, data] of members) {
      entry.members[ext] = { offset: this.size + BLOCK, size: data.length };
      this.entries.push({ name: `${key}.${ext}`, data });
      this.size += BLOCK + padded(data.length);
    }
    this.index.push(entry);
  }

  /** Serialises the tar and its index. */
  async finish(shard: string, source?: Record<string, unknown>): Promise<{ tar: Buffer; index: ShardIndex }> {
    const pack = tarStream.pack();
    const chunks: Buffer[] = [];
    const done = new Promise<void>((resolve, reject) => {
      pack.on('data', (c: unknown) => chunks.push(c as Buffer));
      pack.on('end', resolve);
      pack.on('error', reject);
    });
    for (const { name, data } of this.entries) {
      await new Promise<void>((resolve, reject) =>
        pack.entry({ name, size: data.length, mtime: FIXED_MTIME, mode: 0o644, uid: 0, gid: 0 }, data, (err) =>
          err ? reject(err) : resolve(),
        ),
      );
    }
    pack.finalize();
    await done;
    const tar = Buffer.concat(chunks);
    return { tar, index: { v: 1, shard, count: this.count, bytes: tar.length, samples: this.index, source } };
  }
}
